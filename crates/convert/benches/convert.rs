//! Conversions per second on one core: HL7 v2 ADT^A01 and ORU^R01 to a FHIR
//! R4 Bundle (parse included, and conversion alone), and FHIR to ORU^R01.
//! Figures go to docs/benchmarks.md ("Conversion").
//!
//!     cargo bench -p plexus-convert --bench convert

use std::hint::black_box;

// The allocator of the `plexus` binary; the `throughput` example measures
// the system allocator for comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7v2");
    // Real traffic separates segments with CR.
    std::fs::read_to_string(dir.join(name)).expect("fixture").replace('\n', "\r")
}

fn hl7_to_fhir(c: &mut Criterion) {
    let opts = convert::Hl7ToFhirOptions::default();
    for (label, file) in [
        ("ADT^A01 dense", "ADT-A01-01.hl7"),
        ("ADT^A01 typical", "ADT01-23.hl7"),
        ("ORU^R01 dense", "ORU-R01-01.hl7"),
        ("ORU^R01 CBC", "LRI_2.0-NG_CBC_Typ_Message.hl7"),
    ] {
        let text = fixture(file);
        let parsed = hl7v2::Message::parse(text.as_bytes()).expect("parse");
        let mut g = c.benchmark_group(format!("hl7_to_fhir {label}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("parse + convert", |b| {
            b.iter(|| {
                let msg = hl7v2::Message::parse(black_box(text.as_bytes())).unwrap();
                convert::hl7_to_fhir(&msg, &opts).unwrap()
            })
        });
        g.bench_function("convert", |b| b.iter(|| convert::hl7_to_fhir(black_box(&parsed), &opts).unwrap()));
        g.bench_function("convert + serialise JSON", |b| {
            b.iter(|| serde_json::to_vec(&convert::hl7_to_fhir(black_box(&parsed), &opts).unwrap()).unwrap())
        });
        // The direct path: the same bytes, no serde_json::Value.
        g.bench_function("parse + convert to JSON bytes", |b| {
            b.iter(|| {
                let msg = hl7v2::Message::parse(black_box(text.as_bytes())).unwrap();
                convert::hl7_to_fhir_json(&msg, &opts).unwrap()
            })
        });
        g.bench_function("convert to JSON bytes", |b| {
            b.iter(|| convert::hl7_to_fhir_json(black_box(&parsed), &opts).unwrap())
        });
        g.finish();
    }
}

fn fhir_to_hl7(c: &mut Criterion) {
    let opts = convert::FhirToHl7Options::default();
    let oru = fixture("ORU-R01-01.hl7");
    let bundle = convert::hl7_to_fhir_text(&oru, &Default::default()).unwrap();
    let mut g = c.benchmark_group("fhir_to_hl7 ORU^R01");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bundle from ORU-R01-01", |b| {
        b.iter(|| convert::fhir_to_hl7(black_box(&bundle), convert::TargetMessage::OruR01, &opts).unwrap())
    });
    g.finish();
}

criterion_group!(benches, hl7_to_fhir, fhir_to_hl7);
criterion_main!(benches);
