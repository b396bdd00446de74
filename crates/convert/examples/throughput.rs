//! Conversions per CPU-second (user + system time of this process, from
//! /proc/self/stat), for machines too loaded for wall-clock benchmarks: a
//! thread that gets a third of a core still spends its own CPU time on the
//! work only. Linux only. The criterion benchmark (benches/convert.rs) is
//! the reference; this is the cross-check quoted beside it.
//!
//!     cargo run --release -p plexus-convert --example throughput
//!     cargo run --release -p plexus-convert --example throughput_mimalloc
//!
//! The first uses the system allocator (glibc malloc), the second mimalloc,
//! the global allocator of the `plexus` binary. Each file is measured twice:
//! parse + `hl7_to_fhir` (a `serde_json::Value`), and parse +
//! `hl7_to_fhir_json` (the Bundle's JSON bytes, written directly).
//!
//! Arguments, if any, name the fixtures to run (e.g. `ADT01-23.hl7`) and
//! `json` or `value` to run one path only (for a profiler).

use std::path::Path;
use std::time::Instant;

/// CPU seconds used by this process so far (utime + stime, in clock ticks
/// of 1/100 s), or None where /proc is not readable.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs every file for 5 CPU-seconds per path and prints the rates.
pub fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7v2");
    let opts = convert::Hl7ToFhirOptions::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| {
        let files: Vec<&String> = args.iter().filter(|a| a.ends_with(".hl7")).collect();
        files.is_empty() || files.iter().any(|f| *f == name)
    };
    let only = |path: &str| !args.iter().any(|a| a == "json" || a == "value") || args.iter().any(|a| a == path);
    for file in ["ADT-A01-01.hl7", "ADT01-23.hl7", "ORU-R01-01.hl7", "LRI_2.0-NG_CBC_Typ_Message.hl7"] {
        if !wanted(file) {
            continue;
        }
        let text = match std::fs::read_to_string(dir.join(file)) {
            Ok(t) => t.replace('\n', "\r"),
            Err(e) => {
                eprintln!("{file}: {e}");
                continue;
            }
        };
        for (label, json) in [("parse+convert (Value)", false), ("parse+convert to JSON bytes", true)] {
            if !only(if json { "json" } else { "value" }) {
                continue;
            }
            let (Some(start), wall) = (cpu_secs(), Instant::now()) else {
                eprintln!("/proc/self/stat is not readable");
                return;
            };
            let mut done = 0u64;
            while cpu_secs().is_some_and(|now| now - start < 5.0) {
                for _ in 0..200 {
                    let Ok(msg) = hl7v2::Message::parse(text.as_bytes()) else { return };
                    if json {
                        std::hint::black_box(convert::hl7_to_fhir_json(&msg, &opts).is_ok());
                    } else {
                        std::hint::black_box(convert::hl7_to_fhir(&msg, &opts).is_ok());
                    }
                }
                done += 200;
            }
            let cpu = cpu_secs().unwrap_or(start) - start;
            println!(
                "{file}: {:.0} {label} per CPU-second ({:.0} per wall-second)",
                done as f64 / cpu.max(0.01),
                done as f64 / wall.elapsed().as_secs_f64()
            );
        }
    }
}
