//! What `convert_n` and `convert_n_mimalloc` share: a counting wrapper
//! around an allocator, and the loop that parses and converts one file N
//! times. The two examples differ only in the allocator they count.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// An allocator that counts allocations (and reallocations) on their way to
/// the one it wraps.
pub struct Counting<A>(pub A);

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the wrapped allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the wrapped allocator's.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// Parses and converts FILE N times (arguments `FILE [N] [json]`) and prints
/// the allocations per message; `name` is the example's name for the usage line.
pub fn run(name: &str) {
    let mut args = std::env::args().skip(1);
    let (Some(file), n) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1000)) else {
        eprintln!("usage: {name} FILE [N] [json]");
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
