//! Patient synchronisation (being written).
