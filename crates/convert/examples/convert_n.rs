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

#[path = "support/convert_n.rs"]
mod support;

#[global_allocator]
static GLOBAL: support::Counting<std::alloc::System> = support::Counting(std::alloc::System);

fn main() {
    support::run("convert_n");
}
