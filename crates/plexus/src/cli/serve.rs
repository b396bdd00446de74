//! `plexus serve --config FILE`: run the engine until SIGTERM or SIGINT.
//!
//! Start-up fails fast (non-zero exit, the reason on stderr and in the log)
//! when the config is invalid or a component cannot start. A signal stops
//! the sources first (no new messages; the commits in flight finish, so
//! every AA sent is backed by a stored message), then the workers (up to
//! `--grace`), then the store. A second signal during that exits at once:
//! nothing acknowledged is lost by it, deliveries in flight are simply
//! retried at the next start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use engine::config::{Config, LoadError};
use engine::runtime::Engine;
use tracing::{error, info};

use crate::logging::{self, LogFormat};

/// Arguments of `plexus serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (TOML, `version = 1`).
    #[arg(long, short = 'c', env = "PLEXUS_CONFIG")]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PLEXUS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber syntax, e.g. `info`,
    /// `engine=debug`). `RUST_LOG` is used when this is not given. Levels
    /// above debug never carry patient data.
    #[arg(long, env = "PLEXUS_LOG")]
    pub log: Option<String>,
    /// How long workers may take to finish the deliveries they hold at
    /// shutdown, in seconds.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

/// Runs the engine until a signal.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format, args.log.as_deref())?;
    logging::log_panics_without_their_text();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(LoadError::Invalid(errors)) => {
            eprintln!("{}: {} error(s)", args.config.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("plexus")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, Duration::from_secs(args.grace)))
}

async fn serve(config: Config, grace: Duration) -> anyhow::Result<ExitCode> {
    info!(version = env!("CARGO_PKG_VERSION"), channels = config.channels.len(), "starting plexus");
    let engine = match Engine::start(config).await {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "start-up failed");
            return Err(e.into());
        }
    };
    let signal = wait_for_signal().await?;
    info!(signal, "shutting down: no new messages; finishing the ones in flight");
    tokio::select! {
        _ = engine.shutdown(grace) => {}
        second = wait_for_signal() => {
            info!(signal = second.unwrap_or("?"), "second signal: exiting now; deliveries in flight will be retried at the next start");
            return Ok(ExitCode::from(130));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<&'static str> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok("Ctrl-C")
}
