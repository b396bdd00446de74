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

/// Makes a panic a log line that says where, not what.
///
/// Why: `serve` handles patients' messages, a panic's text can quote them
/// (a slicing panic quotes the string it slices, an `expect` may format a
/// field), and Rust's default hook prints that text to stderr, which is the
/// server's log. Here the place and the thread are logged at error level and
/// the text only at debug level, which an operator turns on deliberately
/// (no patient data at info or above). The engine turns panics inside a
/// delivery attempt into failed attempts; this covers every other thread.
pub fn log_panics_without_their_text() {
    std::panic::set_hook(Box::new(report_panic));
}

fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_else(|| "?".into());
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    tracing::error!(thread, %location, "a thread panicked (its message is logged at debug level only: it may quote message content)");
    let payload = info.payload();
    let text = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    tracing::debug!(thread, %location, panic = text.unwrap_or("(not text)"), "the panic's message");
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_of_a_panic(level: tracing::Level) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // The hook is process-wide: put the previous one back at once (a
        // failing test running beside this one would lose its message
        // meanwhile, nothing else).
        let previous = std::panic::take_hook();
        log_panics_without_their_text();
        let result = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("PID-5 was DUCK^DONALD"))
        });
        std::panic::set_hook(previous);
        assert!(result.is_err());
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_panic_is_logged_with_its_place_and_its_text_only_at_debug() {
        let info = log_of_a_panic(tracing::Level::INFO);
        assert!(info.contains("a thread panicked"), "{info}");
        assert!(info.contains("logging.rs:"), "{info}");
        assert!(!info.contains("DUCK"), "patient data at info: {info}");
        let debug = log_of_a_panic(tracing::Level::DEBUG);
        assert!(debug.contains("PID-5 was DUCK^DONALD"), "{debug}");
    }
}
