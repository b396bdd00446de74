//! One module per subcommand.

pub mod convert;
pub mod hl7;
pub mod sync;
