//! One module per subcommand.

pub mod check;
pub mod convert;
pub mod hl7;
pub mod send;
pub mod serve;
pub mod sync;
pub mod token;
