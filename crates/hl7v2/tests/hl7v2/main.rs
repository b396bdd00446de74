//! The crate's integration tests (one binary): the sample messages in
//! tests/fixtures (see PROVENANCE.md there), property tests, and MLLP over
//! real TCP sockets.

mod fixtures;
mod messy;
mod peers;
mod properties;
