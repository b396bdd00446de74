//! `plexus convert`.

use std::process::ExitCode;

/// `plexus convert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConvertCommand {}

/// Runs a `plexus convert` subcommand.
pub fn run(cmd: ConvertCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
