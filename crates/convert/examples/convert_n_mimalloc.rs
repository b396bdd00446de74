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

#[path = "support/convert_n.rs"]
mod support;

#[global_allocator]
static GLOBAL: support::Counting<mimalloc::MiMalloc> = support::Counting(mimalloc::MiMalloc);

fn main() {
    support::run("convert_n_mimalloc");
}
