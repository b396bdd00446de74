//! `plexus hl7`.

use std::process::ExitCode;

/// `plexus hl7` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Hl7Command {}

/// Runs a `plexus hl7` subcommand.
pub fn run(cmd: Hl7Command) -> anyhow::Result<ExitCode> {
    match cmd {}
}
