//! The throughput example (conversions per CPU-second) with mimalloc as the
//! global allocator, as in the `plexus` binary:
//!
//!     cargo run --release -p plexus-convert --example throughput_mimalloc

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "throughput.rs"]
mod throughput;

fn main() {
    throughput::main();
}
