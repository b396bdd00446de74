//! Sources: where a channel receives messages (one file per connector).
