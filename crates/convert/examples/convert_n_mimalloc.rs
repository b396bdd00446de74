//! `convert_n` with mimalloc (the `plexus` binary's allocator) behind the
//! counting wrapper, for instruction counts of the build that ships:
//! callgrind over `convert_n` counts glibc malloc's work, about a hundred
//! instructions per allocation, where mimalloc spends a few dozen, so it
//! overstates what fewer allocations save in `plexus`.
//!
//!     cargo build --release -p plexus-convert --example convert_n_mimalloc
//!     valgrind --tool=callgrind target/release/examples/convert_n_mimalloc FILE 1000 json
//!
//! Instructions per conversion = (total - the run with N = 0) / N.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// mimalloc, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is mimalloc's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), n) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1000)) else {
        eprintln!("usage: convert_n_mimalloc FILE [N] [json]");
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
    let mut out = 0usize;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        let msg = hl7v2::Message::parse(text.as_bytes()).expect("parse");
        out += if json {
            convert::hl7_to_fhir_json(&msg, &opts).expect("convert").len()
        } else {
            convert::hl7_to_fhir(&msg, &opts).expect("convert").as_object().map_or(0, |o| o.len())
        };
    }
    let per = |total: u64| total as f64 / n.max(1) as f64;
    println!(
        "{n} conversions ({}), {:.0} bytes or members each; allocations per message (parse + convert) {:.0}",
        if json { "hl7_to_fhir_json" } else { "hl7_to_fhir" },
        per(out as u64),
        per(ALLOCATIONS.load(Ordering::Relaxed) - before)
    );
}
