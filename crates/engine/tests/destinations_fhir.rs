//! The `fhir` destination against the real FHIR peer (a fresh Medplum-based
//! server per test, `testkit::FhirPeer`; skipped without `PLEXUS_PEERS`):
//!
//! - partner notifications with output `fhir`: the bundle (a `collection`,
//!   as partners store it) creates its resources on the server exactly
//!   once; a duplicate notification, the same bundle under another file id
//!   and a replay create nothing new;
//! - an HL7 ADT^A01 over MLLP through `hl7_to_fhir` creates the Patient.

mod partner_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use engine::config::Config;
use hl7v2::mllp::MllpCodec;
use partner_support::{presigned, presigned_glucose_source, settled, start_engine, start_partner, wait_until};
use serde_json::{Value, json};
use store::{DeliveryState, MessageId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

const SECRET: &str = "partner-secret";
const PATIENT_URN: &str = "urn:uuid:0b6f1c55-8f5e-4d6e-9a53-2f7c1d1e0a01";
/// How long a test waits for the partner to be acknowledged.
const LIMIT: Duration = Duration::from_secs(30);

/// New data as a partner stores it: a `collection` with the patient (by
/// identifier, no id), the meter (with an id) and two glucose readings
/// (neither id nor identifier) referring to both by fullUrl.
fn bundle() -> Vec<u8> {
    let reading = |value: u32, at: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
            "subject": {"reference": PATIENT_URN}, "device": {"reference": "urn:uuid:meter"},
            "effectiveDateTime": at,
            "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}})
    };
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": PATIENT_URN, "resource": {"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.276.0.76.4.8", "value": "DA-4711"}], "name": [{"family": "Doe"}]}},
        {"fullUrl": "urn:uuid:meter", "resource": {"resourceType": "Device", "id": "meter-4711",
            "deviceName": [{"name": "glucose meter", "type": "model-name"}]}},
        reading(95, "2026-11-21T08:30:00+01:00"),
        reading(140, "2026-11-21T12:30:00+01:00"),
    ]}))
    .unwrap()
}

fn notification_channel(fhir: &str, partner: SocketAddr) -> String {
    format!(
        r#"
[fhir_servers.hospital]
base_url = "{fhir}"

{source}
[[channels.glucose.destinations]]
name = "ehr"
type = "fhir"
server = "hospital"
retry = {{ max_attempts = 5, initial_backoff = "100ms", max_backoff = "200ms" }}
"#,
        source = presigned_glucose_source(r#"output = "fhir""#, SECRET, partner)
    )
}

/// Posts the notification `id` of the pre-signed file `file`, signed.
async fn notify(http: &reqwest::Client, engine: SocketAddr, id: &str, file: &str, partner: SocketAddr) -> (u16, Value) {
    partner_support::notify(http, engine, &presigned(partner, id, file), None, SECRET).await
}

/// Every resource of `resource_type` on the server (the peer answers
/// searches of a fresh server in one page).
async fn all(http: &reqwest::Client, base: &str, resource_type: &str) -> Vec<Value> {
    let page: Value =
        http.get(format!("{base}/{resource_type}?_count=100")).send().await.unwrap().json().await.unwrap();
    page["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notified_bundle_is_created_on_the_fhir_server_exactly_once() {
    let Some(peer) = testkit::FhirPeer::start("engine::destinations_fhir") else { return };
    let (partner, partner_addr) = start_partner().await;
    partner.add_file("f1", bundle());
    partner.add_file("f1-copy", bundle());
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &notification_channel(&peer.base_url, partner_addr)).await;
    let addr = engine.source_addr("glucose").unwrap();
    let http = reqwest::Client::new();

    let (status, answer) = notify(&http, addr, "n1", "f1", partner_addr).await;
    assert_eq!(status, 202, "{answer}");
    let id: MessageId = answer["message_id"].as_str().unwrap().parse().unwrap();
    wait_until("the acknowledgement", LIMIT, || partner.acks().len() == 1).await;

    let deliveries = settled(&engine, id).await;
    assert_eq!(deliveries[0].state, DeliveryState::Sent, "{:?}", deliveries[0].error_reason);
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!(patients[0]["identifier"][0]["value"], "DA-4711");
    let patient_ref = format!("Patient/{}", patients[0]["id"].as_str().unwrap());
    let devices = all(&http, &peer.base_url, "Device").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["id"], "meter-4711");
    let readings = all(&http, &peer.base_url, "Observation").await;
    assert_eq!(readings.len(), 2, "{readings:?}");
    for r in &readings {
        // The bundle's fullUrls became references to the created resources.
        assert_eq!(r["subject"]["reference"], patient_ref.as_str(), "{r}");
        assert_eq!(r["device"]["reference"], "Device/meter-4711", "{r}");
    }
    // The server's answer is kept with the delivery.
    let response = deliveries[0].attempt_log.last().and_then(|a| a.response.clone());
    match response {
        Some(store::Response::Http { status, body_excerpt }) => {
            assert_eq!(status, 200);
            assert!(body_excerpt.contains("transaction-response"), "{body_excerpt}");
        }
        other => panic!("no HTTP response kept: {other:?}"),
    }

    // The same notification again, and the same bundle under another file
    // id (a new delivery of the same data): nothing new on the server.
    let (status, answer) = notify(&http, addr, "n1", "f1", partner_addr).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");
    let (status, answer) = notify(&http, addr, "n2", "f1-copy", partner_addr).await;
    assert_eq!(status, 202, "{answer}");
    let copy: MessageId = answer["message_id"].as_str().unwrap().parse().unwrap();
    wait_until("the acknowledgements", LIMIT, || partner.acks().len() == 3).await;
    assert_eq!(settled(&engine, copy).await[0].state, DeliveryState::Sent);

    // A replay of the first one delivers it again: still nothing new.
    let replay = store::ReplayRequest {
        message_id: id,
        destination: None,
        actor: "test".into(),
        reason: Some("replay to the FHIR server".into()),
    };
    assert_eq!(engine.store().replay(replay).await.unwrap().replayed.len(), 1);
    wait_until("the replay's acknowledgement", LIMIT, || partner.acks().len() == 4).await;
    let deliveries = settled(&engine, id).await;
    assert_eq!(deliveries[0].state, DeliveryState::Sent);
    assert_eq!(deliveries[0].attempt_log.len(), 2, "delivered twice (the replay)");

    assert_eq!(all(&http, &peer.base_url, "Patient").await.len(), 1);
    assert_eq!(all(&http, &peer.base_url, "Device").await.len(), 1);
    assert_eq!(all(&http, &peer.base_url, "Observation").await.len(), 2);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_is_not_fhir_fails_permanently_with_the_reason() {
    let Some(peer) = testkit::FhirPeer::start("engine::destinations_fhir") else { return };
    let (partner, partner_addr) = start_partner().await;
    // A Bundle of a type the destination does not deliver.
    let document = json!({"resourceType": "Bundle", "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "status": "final"}}]});
    partner.add_file("doc", serde_json::to_vec(&document).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &notification_channel(&peer.base_url, partner_addr)).await;
    let http = reqwest::Client::new();
    let (status, answer) = notify(&http, engine.source_addr("glucose").unwrap(), "n9", "doc", partner_addr).await;
    assert_eq!(status, 202, "{answer}");
    let id: MessageId = answer["message_id"].as_str().unwrap().parse().unwrap();
    let d = &settled(&engine, id).await[0];
    assert_eq!(d.state, DeliveryState::Error);
    assert_eq!(d.attempts, 1, "not retried");
    let reason = d.error_reason.as_deref().unwrap_or("");
    assert!(reason.contains("\"document\" is not delivered"), "{reason}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(partner.acks().is_empty(), "acknowledged undelivered data");
    assert!(all(&http, &peer.base_url, "Composition").await.is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adt_through_hl7_to_fhir_creates_the_patient() {
    let Some(peer) = testkit::FhirPeer::start("engine::destinations_fhir") else { return };
    let dir = tempfile::tempdir().unwrap();
    let channels = format!(
        r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.transform]]
type = "hl7_to_fhir"
identifier_systems = {{ HOSP = "https://hospital.example/mrn" }}
[[channels.adt-in.destinations]]
name = "ehr"
type = "fhir"
url = "{}"
retry = {{ max_attempts = 3, initial_backoff = "100ms", max_backoff = "100ms" }}
"#,
        peer.base_url
    );
    let engine = start_engine(dir.path(), &channels).await;
    let adt = "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A01^ADT_A01|FHIR1|P|2.5.1\r\
               EVN|A01|20261121120000\r\
               PID|1||4711^^^HOSP^MR||DOE^JANE||19800101|F\r\
               PV1|1|I\r";
    let addr = engine.source_addr("adt-in").unwrap();
    for control_id in ["FHIR1", "FHIR2"] {
        // The same patient twice (the second a new message): one Patient.
        assert_eq!(send_mllp(addr, &adt.replace("FHIR1", control_id)).await, "AA");
    }
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let page = engine
            .store()
            .search(&store::SearchQuery { channel: Some("adt-in".into()), ..Default::default() })
            .await
            .unwrap();
        let mut done = 0;
        for item in &page.items {
            let d = settled(&engine, item.id).await;
            assert_eq!(d[0].state, DeliveryState::Sent, "{:?}", d[0].error_reason);
            done += 1;
        }
        if done == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the messages were not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!(patients[0]["identifier"][0]["system"], "https://hospital.example/mrn");
    assert_eq!(patients[0]["identifier"][0]["value"], "4711");
    assert_eq!(patients[0]["name"][0]["family"], "DOE");
    engine.shutdown(Duration::from_secs(5)).await;
}

/// The `pms-in` channel of examples/fhir-to-hl7.toml (PMS JSON through
/// mapping rules to a Patient with a chart-number identifier), delivered
/// with `by_identifier` as given.
fn pms_channel(fhir: &str, by_identifier: &str) -> String {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pms-patient.yaml");
    format!(
        r#"
[channels.pms-in]
content = "json"
order_key = "json:patient.id"
[channels.pms-in.source]
type = "http"
[[channels.pms-in.transform]]
type = "mapping_rules"
rules = "{rules}"
[[channels.pms-in.destinations]]
name = "fhir"
type = "fhir"
url = "{fhir}"
by_identifier = "{by_identifier}"
retry = {{ max_attempts = 1, on_failure = "dead_letter" }}
"#
    )
}

/// Posts a PMS patient record to the engine's `pms-in` channel and waits
/// until its delivery settled, returning the message id.
async fn post_pms(http: &reqwest::Client, engine: &engine::runtime::Engine, family: &str) -> MessageId {
    let body = json!({"patient": {"id": "123456", "first_name": "Jane", "last_name": family, "sex": "F", "dob": "01/31/1980"}});
    let url = format!("http://{}/channels/pms-in/messages", engine.api_addr());
    let answer: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
    let id: MessageId = answer["message_id"].as_str().unwrap_or_else(|| panic!("{answer}")).parse().unwrap();
    let deliveries = settled(engine, id).await;
    assert_eq!(deliveries[0].state, DeliveryState::Sent, "{:?}", deliveries[0].error_reason);
    id
}

/// Regression (examples/fhir-to-hl7.toml): the PMS channel POSTed each
/// Patient to `.../Patient` with an `http` destination, so a retry or a
/// replay created a second Patient, and with `by_identifier = "create"` an
/// edited record left the server's Patient as it was. With `by_identifier
/// = "update"` (what the example now uses) the Patient is written by its
/// chart number: created once, updated by the edit, and a replay changes
/// nothing. The example itself is checked to use that form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_identifier_update_keeps_one_patient_with_the_latest_record() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fhir-to-hl7.toml")).unwrap();
    let pms_fhir = example.split("[[channels.pms-in.destinations]]").nth(1).unwrap_or_default();
    assert!(pms_fhir.contains("type = \"fhir\"") && pms_fhir.contains("by_identifier = \"update\""), "{pms_fhir}");

    let Some(peer) = testkit::FhirPeer::start("engine::destinations_fhir") else { return };
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &pms_channel(&peer.base_url, "update")).await;
    let http = reqwest::Client::new();

    let first = post_pms(&http, &engine, "Doe").await;
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    let patient_id = patients[0]["id"].clone();
    assert_eq!(patients[0]["identifier"][0]["system"], "https://pms.example/chart");

    // The PMS sends the edited record: the same Patient, updated.
    post_pms(&http, &engine, "Doe-Smith").await;
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!((&patients[0]["id"], &patients[0]["name"][0]["family"]), (&patient_id, &json!("Doe-Smith")));

    // A replay of the first record is delivered again and writes the same
    // Patient (the operator asked for that content): still one.
    let replay = store::ReplayRequest { message_id: first, destination: None, actor: "test".into(), reason: None };
    assert_eq!(engine.store().replay(replay).await.unwrap().replayed.len(), 1);
    let deliveries = settled(&engine, first).await;
    assert_eq!(deliveries[0].state, DeliveryState::Sent, "{:?}", deliveries[0].error_reason);
    assert_eq!(deliveries[0].attempt_log.len(), 2, "delivered twice (the replay)");
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!(patients[0]["id"], patient_id);
    engine.shutdown(Duration::from_secs(5)).await;
}

/// `by_identifier = "create"` (the default) never overwrites what the
/// server holds: the edited record is delivered (200) but changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_identifier_create_leaves_the_servers_patient_as_it_is() {
    let Some(peer) = testkit::FhirPeer::start("engine::destinations_fhir") else { return };
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &pms_channel(&peer.base_url, "create")).await;
    let http = reqwest::Client::new();
    post_pms(&http, &engine, "Doe").await;
    post_pms(&http, &engine, "Doe-Smith").await;
    let patients = all(&http, &peer.base_url, "Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert_eq!(patients[0]["name"][0]["family"], "Doe");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_fhir_destination_must_name_a_configured_server() {
    let text = r#"
version = 1
[fhir_servers.ehr]
base_url = "https://ehr.example/fhir/R4"
[channels.c.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.c.destinations]]
name = "a"
type = "fhir"
server = "crm"
[[channels.c.destinations]]
name = "b"
type = "fhir"
server = "ehr"
url = "https://ehr.example/fhir/R4"
[[channels.c.destinations]]
name = "c"
type = "fhir"
colour = "red"
"#;
    let e = Config::from_toml_str(text).unwrap_err().to_string();
    assert!(e.contains("channel \"c\".destination[0].server") && e.contains("no [fhir_servers.crm]"), "{e}");
    assert!(e.contains("(configured: ehr)"), "{e}");
    assert!(e.contains("channel \"c\".destination[1].url") && e.contains("not both"), "{e}");
    assert!(e.contains("destination[2]") && e.contains("colour"), "{e}");
}

async fn send_mllp(addr: SocketAddr, message: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut codec = MllpCodec::default();
    let mut out = BytesMut::new();
    codec.encode(message.as_bytes(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = codec.decode(&mut buf).unwrap() {
            let ack = hl7v2::Message::parse(frame.to_vec()).unwrap();
            return ack.get("MSA-1").map(|v| v.into_owned()).unwrap_or_default();
        }
        let n =
            tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf)).await.expect("an ACK").unwrap();
        assert!(n > 0, "the connection closed before the ACK");
    }
}
