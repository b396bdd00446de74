//! Logging set-up: tracing-subscriber with an environment filter, as text
//! for people or JSON lines for log shippers, on stderr.
//!
//! The filter comes from `--log`, else `RUST_LOG`, else `info`. Plexus logs
//! message ids, channel names, counts and error kinds at info level and
//! above; message contents and patient identifiers appear, if anywhere, at
//! debug level or below, which an operator turns on deliberately.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Fails on an invalid filter.
pub fn init(format: LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).with_context(|| format!("invalid log filter {f:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
