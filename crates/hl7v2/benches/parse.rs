//! Parser benchmark: parse + read PID-5 + read every OBX-5 (what a router
//! does with each message), encode, edit, build an ACK, validate.
//!
//! Compare with the JavaScript parsers on the same files:
//! `node ../shared/peers/parse-bench.js FILE` (see docs/benchmarks.md).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hl7v2::Message;
use hl7v2::ack::{Ack, AckCode};

fn load(relative: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Same bytes as the JavaScript peer parses: CR separators, no trailing CR.
    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\r").replace('\n', "\r");
    text.trim_end_matches('\r').as_bytes().to_vec()
}

/// Parse, then read PID-5 (family and given name) and every OBX-5.
fn parse_and_read(bytes: &[u8]) -> usize {
    let msg = Message::parse(bytes).expect("benchmark input parses");
    let mut n = 0;
    n += msg.get("PID-5-1").map_or(0, |v| v.len());
    n += msg.get("PID-5-2").map_or(0, |v| v.len());
    for obx in msg.segments_named("OBX") {
        n += obx.get(5).map_or(0, |v| v.len());
    }
    n
}

fn benches(c: &mut Criterion) {
    let inputs =
        [("oru_r01_2kb", load("benches/data/oru_r01_2kb.hl7")), ("ORU-R01-01", load("tests/fixtures/ORU-R01-01.hl7"))];
    let mut group = c.benchmark_group("parse_read");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in &inputs {
        group.bench_function(*name, |b| b.iter(|| parse_and_read(black_box(bytes))));
    }
    group.finish();

    let mut group = c.benchmark_group("write");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in &inputs {
        let msg = Message::parse(bytes.as_slice()).expect("parses");
        group.bench_function(format!("encode_unchanged/{name}"), |b| b.iter(|| black_box(&msg).encode()));
        group.bench_function(format!("set_and_encode/{name}"), |b| {
            b.iter(|| {
                let mut m = black_box(&msg).clone();
                m.set("PID-5-2", "Jean-Luc").expect("set");
                m.encode()
            })
        });
        group.bench_function(format!("ack/{name}"), |b| {
            b.iter(|| {
                Ack::new(AckCode::ApplicationAccept, "ACK20261121000001", "20261121120000")
                    .for_message(black_box(&msg))
                    .encode()
            })
        });
        group.bench_function(format!("validate/{name}"), |b| b.iter(|| hl7v2::validate::validate(black_box(&msg))));
    }
    group.finish();
}

criterion_group!(hl7v2_benches, benches);
criterion_main!(hl7v2_benches);
