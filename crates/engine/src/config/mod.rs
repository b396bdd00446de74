//! Configuration: one TOML file (`version = 1`), read raw with serde, then
//! compiled into typed, validated structs. Compiling collects every error
//! with its path before failing, and does no I/O (sockets, files and
//! databases are opened later by each component's `build`).

mod error;

pub use error::{ConfigError, ConfigErrors};
