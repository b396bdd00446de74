//! Transforms over the HL7 v2 fixtures of crates/hl7v2/tests/fixtures
//! (synthetic messages from Microsoft's FHIR-Converter sample data; see the
//! PROVENANCE.md there): every step type, configured from TOML as a user
//! would, applied to every fixture; the result must parse again and hold
//! what the steps wrote, and the parts no step touched must be unchanged.

mod ops_support;

use std::sync::Arc;

use engine::transform::{StepConfig, Transform, TransformContext};
use hl7v2::Message;
use ops_support::fixtures;

fn transform(toml_text: &str) -> Transform {
    #[derive(serde::Deserialize)]
    struct Doc {
        transform: Vec<StepConfig>,
    }
    let doc: Doc = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"));
    Transform::compile(&doc.transform, "channel \"fixtures\".transform").unwrap_or_else(|e| panic!("{e}"))
}

const STEPS: &str = r#"
[[transform]]
type = "set"
path = "MSH-5"
value = "PLEXUS & CO"

[[transform]]
type = "copy"
from = "MSH-10"
to = "ZPX-1"

[[transform]]
type = "map"
path = "PID-8"
to = "ZPX-2"
table = { F = "female", M = "male" }
default = "other"

[[transform]]
type = "delete"
path = "NTE"

[[transform]]
type = "route"
to = ["lab"]
when = 'MSH-9-1 in ["ORU", "OUL"]'

[[transform]]
type = "javascript"
script = '''
var family = msg.get("PID-5-1");
msg.set("ZPX-3", family.toUpperCase());
msg.set("ZPX-4", String(msg.count("OBX")));
channelMap.put("type", msg.get("MSH-9-1"));
logger.info("transformed");
'''
"#;

/// Segments other than MSH, NTE and the added ZPX, as they were.
fn untouched(msg: &Message) -> Vec<Vec<u8>> {
    msg.segments().filter(|s| !matches!(s.name(), "MSH" | "NTE" | "ZPX")).map(|s| s.raw().to_vec()).collect()
}

#[test]
fn every_step_on_every_fixture() {
    let t = transform(STEPS);
    for (name, original) in fixtures() {
        let mut msg = original.clone();
        let mut ctx = TransformContext::new("fixtures", &name);
        let outcome = t.apply(&mut msg, &mut ctx).unwrap_or_else(|e| panic!("{name}: {e}"));

        // What was written reads back, after a full encode and re-parse.
        let again = Message::parse(msg.encode()).unwrap_or_else(|e| panic!("{name}: re-parse: {e}"));
        assert_eq!(again.get("MSH-5").as_deref(), Some("PLEXUS & CO"), "{name}");
        assert_eq!(again.get_raw("ZPX-1"), original.get_raw("MSH-10"), "{name}");
        let expected_sex = match original.valued("PID-8").as_deref() {
            Some("F") => "female",
            Some("M") => "male",
            _ => "other",
        };
        assert_eq!(again.get("ZPX-2").as_deref(), Some(expected_sex), "{name}");
        assert_eq!(again.segments_named("NTE").count(), 0, "{name}");
        let family = original.valued("PID-5-1").map(|f| f.to_uppercase()).unwrap_or_default();
        assert_eq!(again.get("ZPX-3").as_deref().unwrap_or(""), family, "{name}");
        assert_eq!(
            again.get("ZPX-4").as_deref(),
            Some(original.segments_named("OBX").count().to_string().as_str()),
            "{name}"
        );
        assert_eq!(ctx.channel_map.get("type").map(String::as_str), original.get("MSH-9-1").as_deref(), "{name}");

        // Routing: results go to the lab only.
        let results = matches!(original.get("MSH-9-1").as_deref(), Some("ORU" | "OUL"));
        assert!(outcome.routes_to("lab"), "{name}");
        assert_eq!(outcome.routes_to("billing"), !results, "{name}");

        // Everything else is as it was, MSH fields other than MSH-5 too.
        assert_eq!(untouched(&again), untouched(&original), "{name}");
        for n in (1..=21).filter(|n| *n != 5) {
            let path = format!("MSH-{n}");
            assert_eq!(again.get_raw(path.as_str()), original.get_raw(path.as_str()), "{name} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_at_once_from_many_tasks() {
    let t = Arc::new(transform(STEPS));
    let fixtures = fixtures();
    let mut tasks = Vec::new();
    for (name, msg) in fixtures.clone() {
        let t = Arc::clone(&t);
        tasks.push(tokio::spawn(async move {
            let ctx = TransformContext::new("fixtures", &name);
            let (out, _, _) = t.apply_blocking(msg, ctx).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, out.encode())
        }));
    }
    // Deterministic: the concurrent results equal a sequential run.
    for (task, (name, original)) in tasks.into_iter().zip(fixtures) {
        let (task_name, encoded) = task.await.unwrap();
        assert_eq!(task_name, name);
        let mut msg = original;
        t.apply(&mut msg, &mut TransformContext::new("fixtures", &name)).unwrap();
        assert_eq!(encoded, msg.encode(), "{name}");
    }
}
