//! `plexus`: the command-line entry point of the Plexus integration engine.
//!
//! Each subcommand lives in its own module under `cli/`, with a clap `Args`
//! struct and a `run` function; this file only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod logging;

/// mimalloc rather than the C library's malloc: conversions and message
/// handling build many small values, and with glibc malloc/free were about
/// 40% of an HL7 v2 to FHIR conversion (docs/benchmarks.md, "Conversion").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Plexus, a healthcare integration engine (HL7 v2, FHIR R4).
#[derive(Debug, Parser)]
#[command(name = "plexus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: listen, store, deliver, until SIGTERM/SIGINT.
    Serve(cli::serve::ServeArgs),
    /// Check a configuration file and print every error with its path.
    Check(cli::check::CheckArgs),
    /// Send HL7 v2 messages over MLLP and report the ACKs; a load generator.
    Send(cli::send::SendArgs),
    /// Work with HL7 v2 files: inspect, validate, get a field, build an ACK.
    #[command(subcommand)]
    Hl7(cli::hl7::Hl7Command),
    /// Convert between HL7 v2 and FHIR R4, or apply mapping rules.
    #[command(subcommand)]
    Convert(cli::convert::ConvertCommand),
    /// Patient synchronisation between FHIR servers.
    #[command(subcommand)]
    Sync(cli::sync::SyncCommand),
    /// API tokens for the REST API: create, list, revoke.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
}

impl Command {
    /// Commands that only read files and print: the ones people pipe into
    /// `head`, `grep -q` or `less`. They open no socket, so SIGPIPE can only
    /// come from stdout.
    fn is_offline_filter(&self) -> bool {
        matches!(self, Command::Check(_) | Command::Hl7(_) | Command::Convert(_))
    }
}

/// Rust starts programs with SIGPIPE ignored, so printing to a pipe whose
/// reader has gone (`plexus check ... | head -1`) makes `println!` panic with
/// a backtrace. A Unix filter should instead end silently, as `cat` does:
/// give SIGPIPE back its default action. Only for offline commands: `serve`,
/// `send` and `sync` write to sockets, where a peer that hangs up must be an
/// error to handle, never the end of the process.
#[allow(unsafe_code)] // one libc call; see the SAFETY note
fn die_quietly_on_closed_stdout() {
    // SAFETY: called first thing in main, before any other thread exists;
    // setting a signal's disposition to SIG_DFL has no other precondition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_offline_filter() {
        die_quietly_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Send(args) => cli::send::run(args),
        Command::Hl7(cmd) => cli::hl7::run(cmd),
        Command::Convert(cmd) => cli::convert::run(cmd),
        Command::Sync(cmd) => cli::sync::run(cmd),
        Command::Token(cmd) => cli::token::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
