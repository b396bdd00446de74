//! The `json` output of partner notifications, end to end with real
//! sockets: a partner simulator (pre-signed bundle URLs, acknowledgement
//! endpoint), the engine (SQLite temp file), and an HTTP receiver standing
//! in for a system that takes JSON. The bundle's Observations go through a
//! mapping-rules file; a bundle that breaks a rule fails its delivery with
//! the rule's message and the partner is not acknowledged.

mod partner_support;

use std::net::SocketAddr;
use std::time::Duration;

use engine::config::Config;
use engine::runtime::Engine;
use partner_support::{presigned, presigned_glucose_source, settled, start_partner, wait_until};
use serde_json::{Value, json};
use store::{DeliveryState, FailureClass, MessageId};

const SECRET: &str = "partner-secret";

const RULES: &str = r#"version: 1
name: glucose readings for the diabetes clinic's system
rules:
  - name: value
    source: valueQuantity.value
    target: glucose.value
    required: true
  - name: unit
    source: valueQuantity.unit
    target: glucose.unit
  - name: measured at
    source: effectiveDateTime
    target: measured_at
    required: true
  - name: loinc
    source: code.coding[system=http://loinc.org].code
    target: loinc
"#;

fn bundle(second_value: Value) -> Vec<u8> {
    let reading = |value: Value, at: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
            "effectiveDateTime": at,
            "valueQuantity": {"value": value, "unit": "mg/dL"}}})
    };
    let mut second = reading(second_value.clone(), "2026-11-21T12:30:00+01:00");
    if second_value.is_null() {
        second["resource"].as_object_mut().unwrap().remove("valueQuantity");
    }
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Device", "id": "meter"}},
        reading(json!(95), "2026-11-21T08:30:00+01:00"),
        second,
    ]}))
    .unwrap()
}

async fn start_engine(dir: &std::path::Path, partner: SocketAddr) -> Engine {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules").join("glucose.yaml"), RULES).unwrap();
    let text = format!(
        r#"version = 1
[store]
url = "sqlite://{dir}/plexus.db"
[api]
listen = "127.0.0.1:0"
{source}
[[channels.glucose.destinations]]
name = "clinic"
type = "http"
url = "http://{partner}/readings"
retry = {{ max_attempts = 3, initial_backoff = "100ms", max_backoff = "100ms" }}
"#,
        dir = dir.display(),
        source = presigned_glucose_source(
            r#"output = { format = "json", rules = "rules/glucose.yaml", resources = ["Observation"] }"#,
            SECRET,
            partner
        )
    );
    // Compiled with the folder, as `plexus serve --config` does: the rules
    // path is relative to it.
    let path = dir.join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"))
}

/// Posts the notification `id` of the pre-signed file `file`, signed; it
/// must be accepted.
async fn notify(engine: SocketAddr, id: &str, file: &str, partner: SocketAddr) -> MessageId {
    let body = presigned(partner, id, file);
    let (status, answer) = partner_support::notify(&reqwest::Client::new(), engine, &body, None, SECRET).await;
    assert_eq!(status, 202, "{answer}");
    answer["message_id"].as_str().unwrap().parse().unwrap()
}

/// The channel's one delivery of `id`, once settled.
async fn delivery(engine: &Engine, id: MessageId) -> store::DeliveryDetail {
    settled(engine, id).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observations_arrive_mapped_and_a_broken_rule_fails_the_delivery() {
    let (partner, partner_addr) = start_partner().await;
    partner.add_file("good", bundle(json!(140)));
    partner.add_file("broken", bundle(Value::Null));
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), partner_addr).await;
    let addr = engine.source_addr("glucose").unwrap();

    let good = notify(addr, "n1", "good", partner_addr).await;
    let d = delivery(&engine, good).await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    let received = partner.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "application/json");
    let body: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(
        body,
        json!([
            {"glucose": {"value": 95, "unit": "mg/dL"}, "measured_at": "2026-11-21T08:30:00+01:00", "loinc": "2339-0"},
            {"glucose": {"value": 140, "unit": "mg/dL"}, "measured_at": "2026-11-21T12:30:00+01:00", "loinc": "2339-0"}
        ])
    );
    // The mapped JSON is the delivery's transformed content.
    assert_eq!(d.transformed.as_deref(), Some(&received[0].1[..]));
    wait_until("the acknowledgement", Duration::from_secs(30), || !partner.acks().is_empty()).await;

    // The second reading has no value: the rule says which and where.
    let broken = notify(addr, "n2", "broken", partner_addr).await;
    let d = delivery(&engine, broken).await;
    assert_eq!(d.state, DeliveryState::Error);
    assert_eq!(d.attempts, 1, "a rule violation is not retried");
    assert_eq!(d.error_class, Some(FailureClass::Permanent));
    let reason = d.error_reason.unwrap();
    assert!(
        reason.contains(
            "mapping entry 2 (Observation) with glucose.yaml: rule 'value' at input path 'valueQuantity.value'"
        ),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(partner.received().len(), 1, "the broken bundle reached the receiver");
    assert_eq!(partner.acked_files(), ["good"], "acknowledged undelivered data");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_broken_rules_file_is_reported_by_the_config_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "version: 1\nrules:\n  - name: v\n    source: \"a[\"\n    target: b\n")
        .unwrap();
    let text = r#"version = 1
[channels.glucose.source]
type = "notification"
outputs = { clinic = { format = "json", rules = "bad.yaml" }, other = { format = "json" } }
fields = { notification_id = "id", file_id = "f", presigned_url = "u" }
auth.bearer.token = "t"
fetch.allowed_hosts = ["files.partner.example"]
acknowledgement.url = "https://partner.example/ack/{file_id}"
[[channels.glucose.destinations]]
name = "clinic"
type = "http"
url = "https://clinic.example/readings"
[[channels.glucose.destinations]]
name = "other"
type = "http"
url = "https://clinic.example/other"
"#;
    let path = dir.path().join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("channel \"glucose\".source.outputs.clinic.rules") && e.contains("rule 'v'"), "{e}");
    assert!(e.contains("channel \"glucose\".source.outputs.other") && e.contains("needs mapping rules"), "{e}");
}

/// Regression (session 8, helper H's review): a notification whose only
/// destination filters the converted output out has nothing left to
/// deliver, so the partner must be acknowledged. Before, only a sent
/// delivery told the flow that a destination was done: the filtered one
/// never did, and the partner waited for an acknowledgement that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_output_every_destination_filters_out_is_acknowledged() {
    let (partner, partner_addr) = start_partner().await;
    let mut readings: Value = serde_json::from_slice(&bundle(json!(140))).unwrap();
    readings["entry"].as_array_mut().unwrap().insert(
        0,
        json!({"resource": {"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN1"}], "name": [{"family": "Test"}]}}),
    );
    partner.add_file("readings", serde_json::to_vec(&readings).unwrap());
    let dir = tempfile::tempdir().unwrap();
    // The configuration check reads a notification channel's filters as
    // JSON (its stored content); at delivery this one meets the converted
    // ORU^R01, which has no such JSON member, so it rejects it.
    let channels = format!(
        r#"{source}
[[channels.glucose.destinations]]
name = "clinic"
type = "http"
url = "http://{partner_addr}/readings"
filter = ['json:resourceType == "Patient"']
"#,
        source = presigned_glucose_source(r#"output = "oru_r01""#, SECRET, partner_addr)
    );
    let engine = partner_support::start_engine(dir.path(), &channels).await;
    let addr = engine.source_addr("glucose").unwrap();

    let id = notify(addr, "n1", "readings", partner_addr).await;
    let d = delivery(&engine, id).await;
    assert_eq!(d.state, DeliveryState::Filtered, "{:?}", d.error_reason);
    wait_until("the acknowledgement", Duration::from_secs(30), || !partner.acks().is_empty()).await;
    assert_eq!(partner.acked_files(), ["readings"]);
    assert!(partner.received().is_empty(), "filtered data reached the receiver");
    engine.shutdown(Duration::from_secs(5)).await;
}
