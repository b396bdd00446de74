//! One module per subcommand.

pub mod check;
pub mod convert;
pub mod hl7;
pub mod serve;
pub mod sync;
