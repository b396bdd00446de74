//! Destinations: where a channel delivers (one file per connector).
