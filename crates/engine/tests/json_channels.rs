//! JSON and FHIR channels with transform steps, through the running engine:
//! a FHIR Bundle POSTed to an http source, converted by `fhir_to_hl7` and
//! delivered over MLLP to an in-test listener; a practice-management JSON
//! body mapped by `mapping_rules` to a FHIR Patient posted to an in-test
//! HTTP server; bad bodies answered with the specific reason; per-patient
//! order keys for JSON bodies. Real sockets, a real SQLite store in a temp
//! dir.
//!
//! The Bundle is tests/fixtures/synthea-patient-observations.json: the
//! Synthea patient of /work/shared/data/fhir (see fixtures/PROVENANCE.md).

mod ops_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use engine::config::Config;
use engine::runtime::Engine;
use ops_support::{ReceivedText, text_receiver};
use store::{DeliveryDetail, DeliveryState, FailureClass, MessageDetail, MessageId};
use tokio::net::TcpListener;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A config with `body`'s channels, loaded from a file in `dir` beside a
/// copy of examples/pms-patient.yaml (relative rule files resolve against
/// the config file's folder).
fn config(dir: &Path, body: &str) -> Result<Config, String> {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n{body}",
        dir.display()
    );
    std::fs::copy(examples().join("pms-patient.yaml"), dir.join("pms-patient.yaml")).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}

/// An MLLP listener that answers AA to every frame and keeps the messages:
/// its address (for a config) and what it got.
async fn emr() -> (String, ReceivedText) {
    let (addr, seen) = text_receiver().await;
    (addr.to_string(), seen)
}

/// An HTTP server that records each request's content type and body.
async fn fhir_server() -> (String, Arc<Mutex<Vec<(String, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/fhir/Patient",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = Arc::clone(&log);
            async move {
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                log.lock().unwrap().push((ct, body));
                (axum::http::StatusCode::CREATED, [("content-type", "application/fhir+json")], "{}")
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fhir/Patient", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// POSTs `body` to `channel`'s http source; the status, content type and
/// JSON answer.
async fn post(engine: &Engine, channel: &str, media: &str, body: String) -> (u16, String, serde_json::Value) {
    let url = format!("http://{}/channels/{channel}/messages", engine.api_addr());
    let r = reqwest::Client::new().post(url).header("content-type", media).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = r.text().await.unwrap();
    (status, ct, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn message_id(answer: &serde_json::Value) -> MessageId {
    answer["message_id"].as_str().expect("a message id").parse().unwrap()
}

/// The message once its delivery to `destination` left the queue (polls;
/// 30 s only bounds a hung test).
async fn settled(engine: &Engine, id: MessageId, destination: &str) -> (MessageDetail, DeliveryDetail) {
    for _ in 0..600 {
        if let Some(detail) = engine.store().get_message(id).await.unwrap()
            && let Some(d) = detail.deliveries.iter().find(|d| d.destination == destination)
            && !matches!(d.state, DeliveryState::Queued | DeliveryState::InFlight)
        {
            let d = d.clone();
            return (detail, d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the delivery of {id} to {destination} did not settle");
}

fn fhir_channel(emr: &str) -> String {
    format!(
        r#"
[channels.fhir-in]
content = "fhir"
[channels.fhir-in.source]
type = "http"
[[channels.fhir-in.destinations]]
name = "emr"
type = "mllp"
address = "{emr}"
retry = {{ max_attempts = 3, initial_backoff = "1s", max_backoff = "1s" }}
[[channels.fhir-in.destinations.transform]]
type = "fhir_to_hl7"
message = "ORU_R01"
sending_facility = "HOSP"
receiving_application = "EMR"
assigning_authorities = {{ "http://hospital.smarthealthit.org" = "HOSP" }}
[[channels.fhir-in.destinations.transform]]
type = "set"
path = "MSH-6"
value = "WARD"
when = 'MSH-9-1 == "ORU"'
"#
    )
}

#[tokio::test]
async fn a_fhir_bundle_reaches_the_emr_as_a_valid_oru_with_the_patient_and_observations() {
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), &fhir_channel(&addr)).unwrap()).await.unwrap();
    let bundle = fixture("synthea-patient-observations.json");
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", bundle.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let (detail, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);

    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let oru = hl7v2::Message::parse(received[0].as_bytes()).unwrap();
    let issues: Vec<String> = hl7v2::validate::validate(&oru).iter().map(|i| i.to_string()).collect();
    assert!(issues.is_empty(), "the ORU validates: {issues:#?}");
    let get = |path: &str| oru.get(path).map(|v| v.into_owned()).unwrap_or_default();
    assert_eq!((get("MSH-9-1"), get("MSH-9-2")), ("ORU".to_owned(), "R01".to_owned()));
    assert_eq!((get("MSH-4"), get("MSH-5"), get("MSH-6")), ("HOSP".to_owned(), "EMR".to_owned(), "WARD".to_owned()));
    // The patient's identifiers (every one, in order: Synthea's id, then the
    // MRN with the configured authority), name and birth date.
    assert_eq!(get("PID-3(1)-1"), "2fa15bc7-8866-461a-9000-f739e425860a");
    assert_eq!(
        (get("PID-3(2)-1"), get("PID-3(2)-4-1"), get("PID-3(2)-5")),
        ("2fa15bc7-8866-461a-9000-f739e425860a".to_owned(), "HOSP".to_owned(), "MR".to_owned())
    );
    assert_eq!((get("PID-5-1"), get("PID-5-2")), ("Brekke496".to_owned(), "Aaron697".to_owned()));
    assert_eq!(get("PID-7"), "19451210");
    // One OBX per Observation, with LOINC code, value and unit.
    let obx: Vec<(String, String, String, String)> = (1..=3)
        .map(|i| {
            let g = |f: &str| get(&format!("OBX({i})-{f}"));
            (g("3-1"), g("3-3"), g("5"), g("6-1"))
        })
        .collect();
    assert_eq!(oru.segments_named("OBX").count(), 3);
    assert_eq!((obx[0].0.as_str(), obx[0].1.as_str(), obx[0].3.as_str()), ("8302-2", "LN", "cm"));
    assert!(obx[0].2.starts_with("173.90189"), "{obx:?}");
    assert_eq!((obx[1].0.as_str(), obx[1].3.as_str()), ("72514-3", "{score}"));
    assert_eq!((obx[2].0.as_str(), obx[2].3.as_str()), ("29463-7", "kg"));
    assert!(obx[2].2.starts_with("84.16772"), "{obx:?}");
    for i in 1..=3 {
        assert_eq!(get(&format!("OBX({i})-2")), "NM");
        assert_eq!(get(&format!("OBX({i})-11")), "F");
    }
    // The delivery keeps what was sent; the message is ordered by patient.
    assert_eq!(d.transformed.as_deref(), Some(received[0].as_bytes()));
    assert_eq!(
        detail.summary.order_key.as_deref(),
        Some("https://github.com/synthetichealth/synthea|2fa15bc7-8866-461a-9000-f739e425860a")
    );
    assert_eq!(detail.raw.as_deref(), Some(bundle.as_bytes()), "the stored message is the Bundle as received");
    // The message browser finds it by any of the Patient's identifiers (the
    // social security number here), as PID-3 makes HL7 v2 messages findable.
    let query = store::SearchQuery { patient_id: Some("999-93-7537".into()), ..Default::default() };
    let found = engine.store().search(&query).await.unwrap();
    assert_eq!(found.items.iter().map(|m| m.id).collect::<Vec<_>>(), [detail.summary.id]);
    let query = store::SearchQuery { patient_id: Some("not-an-id".into()), ..Default::default() };
    assert!(engine.store().search(&query).await.unwrap().items.is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn json_filter_rules_let_bundles_with_observations_through_and_record_the_rule_that_filtered_the_rest() {
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let channel = fhir_channel(&addr).replace(
        "[channels.fhir-in.source]",
        "filter = ['json:resourceType == \"Bundle\"', 'exists(json:entry[resource.resourceType=Observation])']\n\
         [channels.fhir-in.source]",
    );
    let engine = Engine::start(config(dir.path(), &channel).unwrap()).await.unwrap();

    let bundle = fixture("synthea-patient-observations.json");
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", bundle).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);

    // A Patient on its own, then a Bundle of nothing but a Patient: each
    // stopped by its own rule, which the delivery records.
    let patient = r#"{"resourceType": "Patient", "id": "p1"}"#;
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", patient.to_owned()).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Filtered);
    assert_eq!(d.filter_rule.as_deref(), Some(r#"channel filter: json:resourceType == "Bundle""#));
    let only_patient = r#"{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p2"}}]}"#;
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", only_patient.to_owned()).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Filtered);
    assert_eq!(d.filter_rule.as_deref(), Some("channel filter: exists(json:entry[resource.resourceType=Observation])"));
    assert_eq!(seen.lock().unwrap().len(), 1, "only the Bundle with observations reached the EMR");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_resource_the_destination_cannot_convert_fails_its_delivery_permanently_naming_the_reason() {
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), &fhir_channel(&addr)).unwrap()).await.unwrap();
    // A FHIR resource (accepted: the conversion is the destination's), but
    // nothing an ORU^R01 can be made of.
    let org = r#"{"resourceType": "Organization", "name": "Nobody"}"#;
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", org.into()).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Error, "blocked, not retried");
    assert_eq!(d.attempts, 1);
    assert_eq!(d.error_class, Some(FailureClass::Permanent));
    let reason = d.error_reason.unwrap();
    assert!(
        reason.starts_with(
            "destination transform: channel \"fhir-in\".destination[0].transform[0]: cannot convert the message: "
        ),
        "{reason}"
    );
    assert!(
        reason.ends_with("cannot convert the message: required Patient (the input has none) is missing"),
        "{reason}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the EMR");

    // The server keeps serving: the Bundle after it goes through.
    let (status, _, answer) =
        post(&engine, "fhir-in", "application/fhir+json", fixture("synthea-patient-observations.json")).await;
    assert_eq!(status, 202);
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A fhir channel converting to ORU^R01 in its own transform, delivering
/// over MLLP to `emr`; `channel_line` and `destination_line` go into the
/// channel's and the destination's tables (a filter, say).
fn converting_channel(emr: &str, channel_line: &str, destination_line: &str) -> String {
    format!(
        r#"
[channels.fhir-in]
content = "fhir"
{channel_line}
[channels.fhir-in.source]
type = "http"
[[channels.fhir-in.transform]]
type = "fhir_to_hl7"
message = "ORU_R01"
[[channels.fhir-in.destinations]]
name = "emr"
type = "mllp"
address = "{emr}"
{destination_line}
"#
    )
}

#[tokio::test]
async fn a_channel_level_conversion_answers_a_body_it_cannot_convert_with_an_operation_outcome() {
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let body = converting_channel(&addr, "", r#"filter = ['MSH-9-1 == "ORU"']"#);
    let engine = Engine::start(config(dir.path(), &body).unwrap()).await.unwrap();
    let org = r#"{"resourceType": "Organization", "name": "Nobody"}"#;
    let (status, media, answer) = post(&engine, "fhir-in", "application/fhir+json", org.into()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(media, "application/fhir+json");
    assert_eq!(answer["resourceType"], "OperationOutcome");
    assert_eq!(answer["issue"][0]["code"], "invalid");
    let diagnostics = answer["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.starts_with(
            "invalid message: channel \"fhir-in\".transform[0]: cannot convert the message: required Patient (the input has none) is missing"
        ),
        "{diagnostics}"
    );
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", "[1, 2]".into()).await;
    assert_eq!(status, 400, "not a resource: {answer}");
    assert_eq!(engine.store().search(&Default::default()).await.unwrap().items.len(), 0, "nothing stored");

    // The server keeps serving; the destination filter reads the HL7 v2
    // message the channel's conversion made.
    let (status, _, answer) =
        post(&engine, "fhir-in", "application/fhir+json", fixture("synthea-patient-observations.json")).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    assert_eq!(seen.lock().unwrap().len(), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_body_the_channel_filter_stops_is_stored_as_filtered_not_refused_by_the_conversion_it_never_meets() {
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let body = converting_channel(&addr, r#"filter = ['json:resourceType == "Bundle"']"#, "");
    let engine = Engine::start(config(dir.path(), &body).unwrap()).await.unwrap();
    // An Organization cannot become an ORU, but the channel filter stops it
    // first: it is stored and recorded as filtered, not answered 400.
    let org = r#"{"resourceType": "Organization", "name": "Nobody"}"#;
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", org.into()).await;
    assert_eq!(status, 202, "{answer}");
    let (_, d) = settled(&engine, message_id(&answer), "emr").await;
    assert_eq!(d.state, DeliveryState::Filtered);
    assert_eq!(d.filter_rule.as_deref(), Some(r#"channel filter: json:resourceType == "Bundle""#));
    // A Bundle the filter lets through still meets the check at arrival.
    let empty = r#"{"resourceType": "Bundle", "type": "collection", "entry": []}"#;
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", empty.into()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(seen.lock().unwrap().is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_patient_with_more_identifiers_than_the_index_keeps_is_stored_and_found_by_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[channels.fhir-in]\ncontent = \"fhir\"\n[channels.fhir-in.source]\ntype = \"http\"\n";
    let engine = Engine::start(config(dir.path(), body).unwrap()).await.unwrap();
    // 100 identifiers, a blank one and one longer than the index takes:
    // stored whole, indexed by what the index can hold.
    let mut identifiers = vec![serde_json::json!({"value": "   "}), serde_json::json!({"value": "L".repeat(300)})];
    identifiers.extend((0..100).map(|i| serde_json::json!({"system": "urn:oid:1.2.3", "value": format!("MRN-{i}")})));
    let patient = serde_json::json!({"resourceType": "Patient", "identifier": identifiers}).to_string();
    let (status, _, answer) = post(&engine, "fhir-in", "application/fhir+json", patient).await;
    assert_eq!(status, 202, "{answer}");
    let id = message_id(&answer);
    let detail = engine.store().get_message(id).await.unwrap().unwrap();
    assert_eq!(detail.patient_ids.len(), 64, "{:?}", detail.patient_ids);
    assert_eq!(detail.patient_ids[0], "MRN-0");
    let query = store::SearchQuery { patient_id: Some("MRN-0".into()), ..Default::default() };
    assert_eq!(engine.store().search(&query).await.unwrap().items.len(), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

fn pms_channel(url: &str, emr: &str) -> String {
    format!(
        r#"
[channels.pms-in]
content = "json"
order_key = "json:patient.id"
[channels.pms-in.source]
type = "http"
[[channels.pms-in.transform]]
type = "mapping_rules"
rules = "pms-patient.yaml"
[[channels.pms-in.destinations]]
name = "fhir"
type = "http"
url = "{url}"
[[channels.pms-in.destinations]]
name = "emr"
type = "mllp"
address = "{emr}"
[[channels.pms-in.destinations.transform]]
type = "fhir_to_hl7"
message = "ADT_A08"
"#
    )
}

const PMS_PATIENT: &str = r#"{"patient": {"id": "123456", "first_name": " Jane ", "last_name": "Doe", "sex": "F",
    "dob": "01/31/1980", "phone": " 555-0100 "}}"#;

#[tokio::test]
async fn practice_management_json_is_mapped_to_a_fhir_patient_and_an_adt() {
    let (url, posted) = fhir_server().await;
    let (addr, seen) = emr().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), &pms_channel(&url, &addr)).unwrap()).await.unwrap();
    let (status, _, answer) = post(&engine, "pms-in", "application/json", PMS_PATIENT.into()).await;
    assert_eq!(status, 202, "{answer}");
    let id = message_id(&answer);
    let (detail, d) = settled(&engine, id, "fhir").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    assert_eq!(detail.summary.order_key.as_deref(), Some("123456"));

    let requests = posted.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (content_type, body) = &requests[0];
    assert_eq!(content_type, "application/fhir+json");
    let patient: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        patient,
        serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{"system": "https://pms.example/chart", "value": "123456"}],
            "name": [{"family": "Doe", "given": ["Jane"]}],
            "gender": "female",
            "birthDate": "1980-01-31",
            "telecom": [{"system": "phone", "value": "555-0100"}]
        })
    );
    assert_eq!(d.transformed.as_deref(), Some(&body[..]));

    let (_, d) = settled(&engine, id, "emr").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    let adt = hl7v2::Message::parse(seen.lock().unwrap()[0].as_bytes()).unwrap();
    let get = |path: &str| adt.get(path).map(|v| v.into_owned()).unwrap_or_default();
    assert_eq!((get("MSH-9-1"), get("MSH-9-2")), ("ADT".to_owned(), "A08".to_owned()));
    assert_eq!(
        (get("PID-3-1"), get("PID-5-1"), get("PID-7"), get("PID-8")),
        ("123456".into(), "Doe".into(), "19800131".into(), "F".into())
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_body_the_rules_reject_gets_every_violation_as_problem_details() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::start(config(dir.path(), &pms_channel("http://127.0.0.1:9/fhir/Patient", "127.0.0.1:9")).unwrap())
            .await
            .unwrap();
    let bad = r#"{"patient": {"id": "12", "sex": "X", "dob": "1980-01-31"}}"#;
    let (status, media, answer) = post(&engine, "pms-in", "application/json", bad.into()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(media, "application/problem+json");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "channel \"pms-in\".transform[0]: cannot convert the message: mapping rules pms-patient.yaml: "
        ),
        "{detail}"
    );
    for expected in [
        "rule 'chart number' at input path 'patient.id'",
        "rule 'family name' at input path 'patient.last_name'",
        "rule 'sex' at input path 'patient.sex'",
        "rule 'birth date' at input path 'patient.dob'",
    ] {
        assert!(detail.contains(expected), "{expected} in {detail}");
    }
    // The refused values are patient data: none is echoed back.
    for value in ["1980-01-31", "'X'", "\"X\""] {
        assert!(!detail.contains(value), "{value} echoed in {detail}");
    }
    assert_eq!(engine.store().search(&Default::default()).await.unwrap().items.len(), 0, "nothing stored");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_fhir_channel_maps_fhir_back_to_the_practice_management_json() {
    let (url, posted) = fhir_server().await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
[channels.to-pms]
content = "fhir"
[channels.to-pms.source]
type = "http"
[[channels.to-pms.destinations]]
name = "pms"
type = "http"
url = "{url}"
transform = [{{ type = "mapping_rules", rules = "pms-patient.yaml", reverse = true }}]
"#
    );
    let engine = Engine::start(config(dir.path(), &body).unwrap()).await.unwrap();
    let patient = r#"{"resourceType": "Patient", "identifier": [{"system": "https://pms.example/chart", "value": "654321"}],
        "name": [{"family": "Roe", "given": ["Ann"]}], "gender": "male", "birthDate": "1970-12-01"}"#;
    let (status, _, answer) = post(&engine, "to-pms", "application/fhir+json", patient.into()).await;
    assert_eq!(status, 202, "{answer}");
    let id = message_id(&answer);
    let (detail, d) = settled(&engine, id, "pms").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    // The default order key of a fhir channel: the Patient's identifier.
    assert_eq!(detail.summary.order_key.as_deref(), Some("https://pms.example/chart|654321"));
    let (content_type, body) = posted.lock().unwrap()[0].clone();
    assert_eq!(content_type, "application/json");
    let pms: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        pms,
        serde_json::json!({"patient": {"id": "654321", "first_name": "Ann", "last_name": "Roe", "sex": "M", "dob": "12/01/1970"}})
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn configuration_errors_name_the_step_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let errors = |body: &str| config(dir.path(), body).unwrap_err();
    let base = fhir_channel("127.0.0.1:9");

    let e = errors(&base.replace("message = \"ORU_R01\"", "message = \"ORU_R02\""));
    assert!(
        e.contains(
            "channel \"fhir-in\".destination[0].transform[0].message: \"ORU_R02\" is not a message fhir_to_hl7 makes"
        ),
        "{e}"
    );
    let e = errors(&base.replace("sending_facility = \"HOSP\"", "version = \"3.0\"\nprocessing_id = \"X\""));
    assert!(e.contains("transform[0].version: \"3.0\" is not an HL7 v2 version"), "{e}");
    assert!(e.contains("transform[0].processing_id: \"X\" must be P, T or D"), "{e}");
    let e = errors(&base.replace("sending_facility =", "sending_facilty ="));
    assert!(e.contains("transform[0]") && e.contains("sending_facilty"), "{e}");

    // HL7 v2 steps need a conversion first; JSON steps need JSON.
    let unconverted = base.replace(
        "type = \"fhir_to_hl7\"\nmessage = \"ORU_R01\"\nsending_facility = \"HOSP\"\nreceiving_application = \"EMR\"\n\
         assigning_authorities = { \"http://hospital.smarthealthit.org\" = \"HOSP\" }",
        "type = \"route\"\nto = [\"emr\"]",
    );
    assert!(unconverted.contains("type = \"route\""), "{unconverted}");
    let e = errors(&unconverted);
    assert!(
        e.contains(
            "channel \"fhir-in\".destination[0].transform[1]: works on HL7 v2, but here the content is still JSON"
        ),
        "{e}"
    );
    assert!(e.contains("destination[0].transform[1].when: a `when` rule reads HL7 v2 fields"), "{e}");
    let hl7 = "[channels.adt.source]\ntype = \"mllp\"\nlisten = \"127.0.0.1:0\"\n[[channels.adt.transform]]\ntype = \"fhir_to_hl7\"\nmessage = \"ORU_R01\"\n";
    assert!(
        errors(hl7).contains("channel \"adt\".transform[0]: reads JSON, but here the content is an HL7 v2 message")
    );
    // Filter rules read json: paths on JSON content, HL7 v2 paths on HL7 v2.
    let e = errors(
        &base.replace("[channels.fhir-in.source]", "filter = ['MSH-9-1 == \"ORU\"']\n[channels.fhir-in.source]"),
    );
    assert!(
        e.contains(
            r#"channel "fhir-in".filter: "MSH-9-1 == \"ORU\"" reads HL7 v2 fields, but here the content is JSON"#
        ),
        "{e}"
    );
    let e = errors(&unconverted.replace(
        "[[channels.fhir-in.destinations.transform]]\ntype = \"route\"",
        "filter = ['PID-8 == \"F\"']\n[[channels.fhir-in.destinations.transform]]\ntype = \"route\"",
    ));
    assert!(e.contains("channel \"fhir-in\".destination[0].filter: \"PID-8 == \\\"F\\\"\" reads HL7 v2 fields"), "{e}");
    // A destination's filter runs before its own transform: on this channel
    // it meets the JSON body.
    let json_filtered = base.replace(
        "[[channels.fhir-in.destinations.transform]]\ntype = \"fhir_to_hl7\"",
        "filter = ['json:resourceType == \"Bundle\"']\n[[channels.fhir-in.destinations.transform]]\ntype = \"fhir_to_hl7\"",
    );
    assert!(json_filtered.contains("filter = ['json:"), "{json_filtered}");
    config(dir.path(), &json_filtered).unwrap();
    // A `when` rule reads the HL7 v2 message: a json: path there is refused.
    let e = errors(&base.replace("when = 'MSH-9-1 == \"ORU\"'", "when = 'json:resourceType == \"Bundle\"'"));
    assert!(
        e.contains(r#"destination[0].transform[1].when: "json:resourceType == \"Bundle\"" reads json: paths, but a `when` rule reads the HL7 v2 message"#),
        "{e}"
    );
    assert!(
        errors(
            &hl7.replace("[channels.adt.source]", "[channels.adt]\nfilter = 'exists(json:id)'\n[channels.adt.source]")
        )
        .contains(r#"channel "adt".filter: "exists(json:id)" reads json: paths"#)
    );
    let e = errors(&base.replace(
        "[channels.fhir-in.source]",
        "filter = ['json:entry[*].resource.id == \"x\"']\n[channels.fhir-in.source]",
    ));
    assert!(e.contains("channel \"fhir-in\".filter[0]: ") && e.contains("`[*]` is not allowed"), "{e}");

    // Rule files are read and compiled at load.
    let pms = pms_channel("http://127.0.0.1:9/", "127.0.0.1:9");
    let e = errors(&pms.replace("pms-patient.yaml", "missing.yaml"));
    assert!(e.contains("channel \"pms-in\".transform[0].rules: cannot read ") && e.contains("missing.yaml"), "{e}");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "version: 1\nrules:\n  - name: broken\n    source: a[\n    target: b\n",
    )
    .unwrap();
    let e = errors(&pms.replace("pms-patient.yaml", "bad.yaml"));
    assert!(e.contains("channel \"pms-in\".transform[0].rules: ") && e.contains("bad.yaml: rule 'broken'"), "{e}");
    let e = errors(&pms.replace("pms-patient.yaml", "plexus.toml"));
    assert!(e.contains("transform[0].rules: ") && e.contains("plexus.toml: rule file (toml)"), "{e}");

    // Order keys follow the content.
    let e = errors(&pms.replace("json:patient.id", "PID-3-1"));
    assert!(e.contains("channel \"pms-in\".order_key: \"PID-3-1\": a JSON body has no HL7 v2 fields"), "{e}");
    let e = errors(&pms.replace("json:patient.id", "json:patient[*].id"));
    assert!(e.contains("channel \"pms-in\".order_key: ") && e.contains("[*] is not allowed"), "{e}");
    let e = errors(
        &hl7.replace("[channels.adt.source]", "[channels.adt]\norder_key = \"json:patient.id\"\n[channels.adt.source]"),
    );
    assert!(e.contains("channel \"adt\".order_key: a json: order key needs content"), "{e}");
}

#[test]
fn the_example_configuration_loads() {
    let path = examples().join("fhir-to-hl7.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fhir = config.channels.iter().find(|c| c.name == "fhir-in").expect("the example's FHIR channel");
    assert_eq!(fhir.order_key, engine::config::OrderKey::FhirPatient);
    let pms = config.channels.iter().find(|c| c.name == "pms-in").expect("the example's JSON channel");
    assert!(pms.transform.checks_json());
}

/// A body over every channel's `max_body_size` is refused while it is read;
/// it still gets the channel's kind of answer (an OperationOutcome for a
/// `fhir` channel, problem details for the others), not axum's plain text,
/// and nothing is stored.
#[tokio::test]
async fn a_body_over_the_largest_limit_is_answered_as_a_problem_of_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[channels.fhir-in]
content = "fhir"
[channels.fhir-in.source]
type = "http"
max_body_size = "1KiB"
[[channels.fhir-in.destinations]]
name = "archive"
type = "file"
directory = "out"

[channels.hl7-in.source]
type = "http"
max_body_size = "2KiB"
[[channels.hl7-in.destinations]]
name = "archive"
type = "file"
directory = "out-hl7"
"#;
    let engine = Engine::start(config(dir.path(), body).unwrap()).await.unwrap();
    let big = format!(r#"{{"resourceType": "Patient", "text": "{}"}}"#, "x".repeat(8 * 1024));
    let (status, media, answer) = post(&engine, "fhir-in", "application/fhir+json", big).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(media, "application/fhir+json");
    assert_eq!(answer["resourceType"], "OperationOutcome");
    assert_eq!(answer["issue"][0]["code"], "too-costly");

    let (status, media, answer) = post(&engine, "hl7-in", "text/plain", "x".repeat(8 * 1024)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(media, "application/problem+json");
    assert_eq!(answer["status"], 413);
    assert_eq!(engine.store().search(&Default::default()).await.unwrap().items.len(), 0, "nothing stored");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// POSTs `body` to `channel` with an `Idempotency-Key`; the status, content
/// type and JSON answer.
async fn post_keyed(
    engine: &Engine,
    channel: &str,
    media: &str,
    key: &str,
    body: &str,
) -> (u16, String, serde_json::Value) {
    let url = format!("http://{}/channels/{channel}/messages", engine.api_addr());
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", media)
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = r.text().await.unwrap();
    (status, ct, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// An `Idempotency-Key` reused with another body is refused with 422 (the
/// idempotency-key draft's answer) naming the reuse, in the channel's kind
/// of problem: answering it as a duplicate dropped the new body silently.
/// A retry with the same body still gets the original answer, before and
/// after the refusal, and only the first body is stored.
#[tokio::test]
async fn an_idempotency_key_reused_for_another_body_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[channels.pms]
content = "json"
[channels.pms.source]
type = "http"
[[channels.pms.destinations]]
name = "archive"
type = "file"
directory = "out"

[channels.fhir-in]
content = "fhir"
[channels.fhir-in.source]
type = "http"
[[channels.fhir-in.destinations]]
name = "archive"
type = "file"
directory = "out-fhir"
"#;
    let engine = Engine::start(config(dir.path(), body).unwrap()).await.unwrap();
    let order = r#"{"patient": {"id": "P1"}, "order": "CBC"}"#;
    let other = r#"{"patient": {"id": "P2"}, "order": "BMP"}"#;

    let (status, _, first) = post_keyed(&engine, "pms", "application/json", "order-7", order).await;
    assert_eq!((status, &first["duplicate"]), (202, &serde_json::json!(false)), "{first}");
    let (status, _, again) = post_keyed(&engine, "pms", "application/json", "order-7", order).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!((&again["message_id"], &again["duplicate"]), (&first["message_id"], &serde_json::json!(true)));

    let (status, media, refused) = post_keyed(&engine, "pms", "application/json", "order-7", other).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(media, "application/problem+json");
    assert_eq!((refused["status"].as_u64(), refused["title"].as_str()), (Some(422), Some("Idempotency-Key reused")));
    let detail = refused["detail"].as_str().unwrap();
    let original = first["message_id"].as_str().unwrap();
    assert!(detail.starts_with("Idempotency-Key: already used for another body"), "{detail}");
    assert!(detail.contains(original), "names the message the key belongs to: {detail}");

    let (status, _, after) = post_keyed(&engine, "pms", "application/json", "order-7", order).await;
    assert_eq!(
        (status, &after["message_id"], &after["duplicate"]),
        (202, &first["message_id"], &serde_json::json!(true))
    );

    let query = store::SearchQuery { channel: Some("pms".into()), ..Default::default() };
    let stored = engine.store().search(&query).await.unwrap().items;
    assert_eq!(stored.len(), 1, "the other body is not stored under the key");
    let detail = engine.store().get_message(message_id(&first)).await.unwrap().unwrap();
    assert_eq!(detail.raw.as_deref(), Some(order.as_bytes()), "the key keeps its first body");

    // A FHIR channel answers the same refusal as an OperationOutcome.
    let patient = r#"{"resourceType": "Patient", "id": "a"}"#;
    let changed = r#"{"resourceType": "Patient", "id": "b"}"#;
    let (status, _, _) = post_keyed(&engine, "fhir-in", "application/fhir+json", "patient-1", patient).await;
    assert_eq!(status, 202);
    let (status, media, outcome) = post_keyed(&engine, "fhir-in", "application/fhir+json", "patient-1", changed).await;
    assert_eq!((status, media.as_str()), (422, "application/fhir+json"), "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "business-rule");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("Idempotency-Key: already used for another body"), "{diagnostics}");
    engine.shutdown(Duration::from_secs(5)).await;
}
