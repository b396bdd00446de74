//! The `json` output of partner notifications, end to end with real
//! sockets: a partner simulator (pre-signed bundle URLs, acknowledgement
//! endpoint), the engine (SQLite temp file), and an HTTP receiver standing
//! in for a system that takes JSON. The bundle's Observations go through a
//! mapping-rules file; a bundle that breaks a rule fails its delivery with
//! the rule's message and the partner is not acknowledged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use engine::config::Config;
use engine::flows::notification::verify::sign;
use engine::runtime::Engine;
use serde_json::{Value, json};
use store::{DeliveryState, FailureClass, MessageId};
use tokio::net::TcpListener;

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

#[derive(Default)]
struct World {
    files: Mutex<HashMap<String, Vec<u8>>>,
    acks: Mutex<Vec<String>>,
    received: Mutex<Vec<(String, Bytes)>>,
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start_world() -> (Arc<World>, SocketAddr) {
    async fn file(State(w): State<Arc<World>>, Path(name): Path<String>) -> Response {
        match w.files.lock().unwrap().get(&name) {
            Some(body) => body.clone().into_response(),
            None => (http::StatusCode::NOT_FOUND, "no such file").into_response(),
        }
    }
    async fn ack(State(w): State<Arc<World>>, Path(file): Path<String>) -> Response {
        w.acks.lock().unwrap().push(file);
        http::StatusCode::NO_CONTENT.into_response()
    }
    async fn receive(State(w): State<Arc<World>>, headers: HeaderMap, body: Bytes) -> Response {
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        w.received.lock().unwrap().push((ct, body));
        http::StatusCode::CREATED.into_response()
    }
    let world = Arc::new(World::default());
    let router = Router::new()
        .route("/files/{name}", get(file))
        .route("/ack/{file}", post(ack))
        .route("/readings", post(receive))
        .with_state(Arc::clone(&world));
    (world, serve(router).await)
}

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

async fn start_engine(dir: &std::path::Path, world: SocketAddr) -> Engine {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules").join("glucose.yaml"), RULES).unwrap();
    let text = format!(
        r#"version = 1
[store]
url = "sqlite://{dir}/plexus.db"
[api]
listen = "127.0.0.1:0"
[channels.glucose]
content = "json"
[channels.glucose.source]
type = "notification"
output = {{ format = "json", rules = "rules/glucose.yaml", resources = ["Observation"] }}
[channels.glucose.source.fields]
notification_id = "id"
file_id = "file.id"
presigned_url = "file.url"
[channels.glucose.source.auth.hmac]
secret = "{SECRET}"
[channels.glucose.source.fetch]
allowed_hosts = ["127.0.0.1"]
allow_http = true
allow_private_addresses = true
[channels.glucose.source.acknowledgement]
url = "http://{world}/ack/{{file_id}}"
[[channels.glucose.destinations]]
name = "clinic"
type = "http"
url = "http://{world}/readings"
retry = {{ max_attempts = 3, initial_backoff = "100ms", max_backoff = "100ms" }}
"#,
        dir = dir.display()
    );
    // Compiled with the folder, as `plexus serve --config` does: the rules
    // path is relative to it.
    let path = dir.join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"))
}

async fn notify(engine: SocketAddr, id: &str, file: &str, world: SocketAddr) -> MessageId {
    let body = json!({"id": id, "file": {"id": file, "url": format!("http://{world}/files/{file}")}}).to_string();
    let ts = chrono::Utc::now().timestamp().to_string();
    let response = reqwest::Client::new()
        .post(format!("http://{engine}/channels/glucose/notifications"))
        .header("x-timestamp", &ts)
        .header("x-signature", sign(SECRET.as_bytes(), &ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["message_id"].as_str().unwrap().parse().unwrap()
}

async fn settled(engine: &Engine, id: MessageId) -> store::DeliveryDetail {
    let start = Instant::now();
    loop {
        let mut detail = engine.store().get_message(id).await.unwrap().unwrap();
        let d = detail.deliveries.remove(0);
        if !matches!(d.state, DeliveryState::Queued | DeliveryState::InFlight) {
            return d;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the delivery of {id} did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observations_arrive_mapped_and_a_broken_rule_fails_the_delivery() {
    let (world, world_addr) = start_world().await;
    world.files.lock().unwrap().insert("good".into(), bundle(json!(140)));
    world.files.lock().unwrap().insert("broken".into(), bundle(Value::Null));
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), world_addr).await;
    let addr = engine.source_addr("glucose").unwrap();

    let good = notify(addr, "n1", "good", world_addr).await;
    let d = settled(&engine, good).await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    let received = world.received.lock().unwrap().clone();
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
    let start = Instant::now();
    while world.acks.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no acknowledgement");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The second reading has no value: the rule says which and where.
    let broken = notify(addr, "n2", "broken", world_addr).await;
    let d = settled(&engine, broken).await;
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
    assert_eq!(world.received.lock().unwrap().len(), 1, "the broken bundle reached the receiver");
    assert_eq!(world.acks.lock().unwrap().clone(), vec!["good".to_string()], "acknowledged undelivered data");
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
