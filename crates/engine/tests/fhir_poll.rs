//! The `fhir_poll` source against the real FHIR peer (a fresh Medplum-based
//! server per test, `testkit::FhirPeer`; skipped without `PLEXUS_PEERS`):
//!
//! - every resource changed since `start` arrives once as a message and is
//!   written by a `file` destination, across pages (page_size 2), with the
//!   extra search parameters applied (`Observation?category=laboratory`);
//! - later runs without changes store nothing; an updated resource arrives
//!   again (its new version) and moves the checkpoint;
//! - the checkpoints survive a restart: a new engine on the same store reads
//!   only what changed after them;
//! - a run against a server that is down fails without moving the
//!   checkpoint, and the next runs retry.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::config::Config;
use engine::runtime::Engine;
use serde_json::{Value, json};
use store::SearchQuery;

const CHANNEL: &str = "ehr-changes";
const LIMIT: Duration = Duration::from_secs(30);

fn channel(fhir: &str) -> String {
    format!(
        r#"
[fhir_servers.ehr]
base_url = "{fhir}"
retry = {{ max_retries = 0 }}

[channels.{CHANNEL}]
content = "fhir"
[channels.{CHANNEL}.source]
type = "fhir_poll"
server = "ehr"
resources = ["Patient", "Observation?category=laboratory"]
interval = "100ms"
page_size = 2
start = "2000-01-01T00:00:00Z"

[[channels.{CHANNEL}.destinations]]
name = "archive"
type = "file"
directory = "out"
"#
    )
}

async fn start_engine(dir: &Path, fhir: &str) -> Engine {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\nauth = \"none\"\n{}",
        dir.display(),
        channel(fhir)
    );
    let mut config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    config.base_dir = dir.to_path_buf();
    Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"))
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < LIMIT, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs of the engine's poll that ended (successfully).
fn runs(engine: &Engine) -> u64 {
    engine.fhir_poll_stats(CHANNEL).expect("a fhir_poll channel").runs.load(Ordering::Relaxed)
}

/// Waits for two more complete runs than now: at least one started after
/// this call.
async fn two_more_runs(engine: &Engine) {
    let target = runs(engine) + 2;
    wait_until("two more poll runs", async || runs(engine) >= target).await;
}

/// The channel's messages' control ids (the polled resource versions).
async fn control_ids(engine: &Engine) -> Vec<String> {
    let query = SearchQuery { channel: Some(CHANNEL.into()), limit: 1000, ..SearchQuery::default() };
    let page = engine.store().search(&query).await.unwrap();
    let mut ids: Vec<String> = page.items.into_iter().filter_map(|m| m.control_id).collect();
    ids.sort();
    ids
}

fn files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files(&e.path()) } else { 1 }).sum()
}

async fn create(http: &reqwest::Client, base: &str, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_owned();
    let response = http
        .post(format!("{base}/{t}"))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "creating a {t}");
    response.json().await.unwrap()
}

fn key(resource: &Value) -> String {
    format!(
        "{}/{}/_history/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap(),
        resource["meta"]["versionId"].as_str().unwrap()
    )
}

fn observation(patient: &str, category: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "valueQuantity": {"value": 95, "unit": "mg/dL"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_resources_arrive_once_per_version_and_the_checkpoint_survives_a_restart() {
    let Some(peer) = testkit::FhirPeer::start("engine::fhir_poll") else { return };
    let base = peer.base_url.clone();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();

    let mut expected = Vec::new();
    let mut patients = Vec::new();
    for family in ["Poll-A", "Poll-B", "Poll-C"] {
        let p = create(&http, &base, json!({"resourceType": "Patient", "name": [{"family": family}]})).await;
        expected.push(key(&p));
        let id = p["id"].as_str().unwrap().to_owned();
        expected.push(key(&create(&http, &base, observation(&id, "laboratory")).await));
        // Not asked for: the extra search parameter leaves it out.
        create(&http, &base, observation(&id, "vital-signs")).await;
        patients.push(p);
    }
    expected.sort();

    let engine = start_engine(dir.path(), &base).await;
    wait_until("every resource stored", async || control_ids(&engine).await.len() >= expected.len()).await;
    two_more_runs(&engine).await;
    // Each version once, over several pages; nothing else.
    assert_eq!(control_ids(&engine).await, expected);
    let stats = engine.fhir_poll_stats(CHANNEL).unwrap();
    assert_eq!(stats.stored.load(Ordering::Relaxed), 6);
    assert_eq!(stats.failed_runs.load(Ordering::Relaxed), 0);
    let out = dir.path().join("out");
    wait_until("six files written", async || files(&out) == 6).await;
    // The message is the resource as the server sent it, ordered by patient.
    let query = SearchQuery {
        channel: Some(CHANNEL.into()),
        message_type: Some("Observation".into()),
        limit: 10,
        ..SearchQuery::default()
    };
    let observations = engine.store().search(&query).await.unwrap().items;
    assert_eq!(observations.len(), 3);
    assert!(observations.iter().all(|m| m.order_key.as_deref().is_some_and(|k| k.starts_with("Patient/"))));

    // An update is a new version: it arrives again, once.
    let mut changed = patients[1].clone();
    changed["name"] = json!([{"family": "Poll-B", "given": ["Corrected"]}]);
    let response = http
        .put(format!("{base}/Patient/{}", changed["id"].as_str().unwrap()))
        .header("content-type", "application/fhir+json")
        .body(changed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let changed: Value = response.json().await.unwrap();
    expected.push(key(&changed));
    expected.sort();
    wait_until("the new version stored", async || control_ids(&engine).await.len() >= expected.len()).await;
    two_more_runs(&engine).await;
    assert_eq!(control_ids(&engine).await, expected);
    let checkpoint = engine.store().poll_checkpoint(CHANNEL, "Patient").await.unwrap().expect("saved");
    let stamp: chrono::DateTime<chrono::Utc> = changed["meta"]["lastUpdated"].as_str().unwrap().parse().unwrap();
    assert_eq!(checkpoint.last_updated, stamp);
    assert_eq!(checkpoint.seen_at_checkpoint, [key(&changed)]);
    // The channel view shows where the poll stands, per type.
    let view: Value = http
        .get(format!("http://{}/api/channels/{CHANNEL}", engine.api_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = view["checkpoints"].as_array().expect("checkpoints in the channel view");
    assert_eq!(
        shown.iter().map(|c| c["resource_type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["Observation", "Patient"]
    );
    let shown_at: chrono::DateTime<chrono::Utc> = shown[1]["last_updated"].as_str().unwrap().parse().unwrap();
    assert_eq!(shown_at, stamp);
    engine.shutdown(Duration::from_secs(5)).await;

    // Restarted on the same store: the checkpoints hold, so only what
    // changed since is read.
    let late = create(&http, &base, json!({"resourceType": "Patient", "name": [{"family": "Poll-D"}]})).await;
    expected.push(key(&late));
    expected.sort();
    let engine = start_engine(dir.path(), &base).await;
    wait_until("the late patient stored", async || control_ids(&engine).await.len() >= expected.len()).await;
    two_more_runs(&engine).await;
    assert_eq!(control_ids(&engine).await, expected);
    let stats = engine.fhir_poll_stats(CHANNEL).unwrap();
    assert_eq!(stats.stored.load(Ordering::Relaxed), 1, "only the late patient is new after the restart");
    // Each run reads from the checkpoints: only the versions at their
    // instants come back (one Patient, one Observation), skipped without
    // being stored; from `start` every run would re-read all eight.
    let runs = stats.runs.load(Ordering::Relaxed);
    let duplicates = stats.duplicates.load(Ordering::Relaxed);
    assert!(duplicates <= 2 * (runs + 1), "{duplicates} re-reads in {runs} runs");
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_fails_the_run_and_leaves_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on a port just freed.
    let port = testkit::free_port();
    let engine = start_engine(dir.path(), &format!("http://127.0.0.1:{port}/fhir/R4")).await;
    let stats = engine.fhir_poll_stats(CHANNEL).unwrap();
    wait_until("two failed runs", async || stats.failed_runs.load(Ordering::Relaxed) >= 2).await;
    assert_eq!(stats.runs.load(Ordering::Relaxed), 0);
    let checkpoint = engine.store().poll_checkpoint(CHANNEL, "Patient").await.unwrap().expect("the start is saved");
    assert_eq!(checkpoint.last_updated.to_rfc3339(), "2000-01-01T00:00:00+00:00");
    assert!(control_ids(&engine).await.is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}
