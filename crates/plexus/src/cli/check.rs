//! `plexus check --config FILE`: compile a configuration and print every
//! problem with its path, without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use engine::config::{Config, LoadError};

/// Arguments of `plexus check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file (TOML, `version = 1`).
    #[arg(long, short = 'c', env = "PLEXUS_CONFIG")]
    pub config: PathBuf,
}

/// Prints a short summary and exits 0 when the file is valid; prints every
/// error (`path: message`, one per line) and exits 1 when it is not.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match Config::load(&args.config) {
        Ok(config) => {
            println!("{}: valid", args.config.display());
            print!("{config}");
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(errors)) => {
            eprintln!("{}: {} error(s)", args.config.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("{e}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e @ LoadError::Read { .. }) => Err(e.into()),
    }
}
