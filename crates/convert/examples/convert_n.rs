//! Parses and converts one HL7 v2 file N times, for instruction counts that
//! do not depend on the machine's load:
//!
//!     cargo build --release -p plexus-convert --example convert_n
//!     valgrind --tool=callgrind target/release/examples/convert_n crates/convert/tests/fixtures/hl7v2/ADT01-23.hl7 1000
//!     valgrind --tool=callgrind target/release/examples/convert_n crates/convert/tests/fixtures/hl7v2/ADT01-23.hl7 1000 json
//!
//! The third argument `json` measures `hl7_to_fhir_json` (the Bundle written
//! as JSON bytes) instead of `hl7_to_fhir` (a `serde_json::Value`).
//!
//! Instructions per conversion = (total - the run with N = 0) / N. It also
//! prints the heap allocations per conversion (a counting allocator around
//! the system one), the cost callgrind shows first.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), n) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1000)) else {
        eprintln!("usage: convert_n FILE [N] [json]");
        std::process::exit(2);
    };
    let json = args.next().is_some_and(|a| a == "json");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t.replace('\n', "\r"),
        Err(e) => {
            eprintln!("{file}: {e}");
            std::process::exit(1);
        }
    };
    let opts = convert::Hl7ToFhirOptions::default();
    let (mut out_bytes, mut resources) = (0, 0);
    let (mut parse_allocs, mut convert_allocs) = (0, 0);
    for _ in 0..n {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let msg = hl7v2::Message::parse(text.as_bytes()).expect("parse");
        let parsed = ALLOCATIONS.load(Ordering::Relaxed);
        if json {
            let bytes = convert::hl7_to_fhir_json(&msg, &opts).expect("convert");
            convert_allocs += ALLOCATIONS.load(Ordering::Relaxed) - parsed;
            out_bytes += bytes.len();
        } else {
            let bundle = convert::hl7_to_fhir(&msg, &opts).expect("convert");
            convert_allocs += ALLOCATIONS.load(Ordering::Relaxed) - parsed;
            resources += bundle["entry"].as_array().map_or(0, Vec::len);
        }
        parse_allocs += parsed - before;
    }
    let per = |total: u64| total as f64 / n.max(1) as f64;
    println!(
        "{n} conversions ({}), {:.0} resources or {:.0} bytes of JSON each; allocations per message: parse {:.0}, \
         convert {:.0}",
        if json { "hl7_to_fhir_json" } else { "hl7_to_fhir" },
        per(resources as u64),
        per(out_bytes as u64),
        per(parse_allocs),
        per(convert_allocs)
    );
}
