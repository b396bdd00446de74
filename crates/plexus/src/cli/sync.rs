//! `plexus sync`.

use std::process::ExitCode;

/// `plexus sync` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SyncCommand {}

/// Runs a `plexus sync` subcommand.
pub fn run(cmd: SyncCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
