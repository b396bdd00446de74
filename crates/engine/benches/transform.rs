//! What filters and transforms cost per message, as a destination worker
//! pays it: parse the stored bytes, evaluate the rules, apply the steps,
//! encode the result.
//!
//! Run: `cargo bench -p plexus-engine --bench transform`. The peer for the
//! JavaScript step, measured the same way in the same run, is Node.js
//! running the same script with a fresh `vm` context per message (what a
//! sandboxed Node transformer has to do):
//! `node crates/engine/benches/js-peer.js crates/hl7v2/tests/fixtures/ADT-A01-01.hl7`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::filter::Filter;
use engine::transform::{JavascriptStep, StepConfig, Transform, TransformContext};
use hl7v2::Message;

/// The same script as js-peer.js.
pub const SCRIPT: &str = r#"
var family = msg.get("PID-5-1");
msg.set("PID-5-1", family.toUpperCase());
msg.set("PV1-2", msg.get("PV1-2") === "P" ? "O" : msg.get("PV1-2"));
msg.set("MSH-5", "PLEXUS");
"#;

fn fixture() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures/ADT-A01-01.hl7");
    std::fs::read(path).expect("fixture")
}

fn builtin_steps() -> Transform {
    #[derive(serde::Deserialize)]
    struct Doc {
        transform: Vec<StepConfig>,
    }
    let doc: Doc = toml::from_str(
        r#"
        [[transform]]
        type = "set"
        path = "MSH-5"
        value = "PLEXUS"
        [[transform]]
        type = "map"
        path = "PV1-2"
        table = { P = "O", I = "I", E = "E" }
        [[transform]]
        type = "copy"
        from = "PID-3(1)-1"
        to = "PID-2-1"
        [[transform]]
        type = "delete"
        path = "NK1"
        "#,
    )
    .unwrap();
    Transform::compile(&doc.transform, "bench").unwrap()
}

fn bench(c: &mut Criterion) {
    let raw = fixture();
    let parsed = Message::parse(raw.clone()).unwrap();
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(1));

    let rule =
        Filter::compile(r#"MSH-9-1 == "ADT" && MSH-9-2 in ["A01","A04","A08"] && PID-8 != "" && PID-7 =~ /^19/"#)
            .unwrap();
    assert!(rule.matches(&parsed));
    group.bench_function("filter: 4 conditions on a parsed ADT^A01", |b| {
        b.iter(|| black_box(rule.matches(black_box(&parsed))))
    });

    let steps = builtin_steps();
    group.bench_function("parse + set, map, copy, delete + encode", |b| {
        b.iter(|| {
            let mut msg = Message::parse(black_box(raw.clone())).unwrap();
            let mut ctx = TransformContext::new("bench", "id");
            steps.apply(&mut msg, &mut ctx).unwrap();
            black_box(msg.encode())
        })
    });

    let js = Transform::compile(&[StepConfig::Javascript(JavascriptStep::inline(SCRIPT))], "bench").unwrap();
    group.bench_function("parse + javascript step (fresh sandbox) + encode", |b| {
        b.iter(|| {
            let mut msg = Message::parse(black_box(raw.clone())).unwrap();
            let mut ctx = TransformContext::new("bench", "id");
            js.apply(&mut msg, &mut ctx).unwrap();
            black_box(msg.encode())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
