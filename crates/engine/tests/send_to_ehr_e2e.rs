//! `$send-to-ehr` end to end through `Engine::start`: the FHIR server peer
//! as patient source, a real SQLite store, and an MLLP listener in the test
//! standing for the EHR, down at first, then up.
//!
//! A PDF submitted through the operation arrives in an ORU^R01 (and, on a
//! second destination, an MDM^T02) whose OBX-5 decodes to exactly the
//! submitted bytes, with PID from the Patient and the title and LOINC type
//! set; tracking goes preparation -> in-progress (EHR down) -> completed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use engine::api::auth::{Scope, issue_token};
use engine::config::Config;
use engine::runtime::Engine;
use hl7v2::mllp::MllpCodec;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Decoder, Encoder};

const PDF: &[u8] =
    b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj << /Type /Catalog >> endobj\n\x00\x01\x02\xFF binary part\n%%EOF\n";
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 1];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every HL7 v2 message the EHR received, in arrival order.
type Frames = Arc<Mutex<Vec<hl7v2::Message>>>;

/// The EHR: an MLLP listener on `addr` that records each message and
/// answers AA.
async fn ehr_up(addr: SocketAddr, frames: Frames) {
    ehr_answering(addr, frames, hl7v2::ack::AckCode::ApplicationAccept).await;
}

/// An MLLP listener on `addr` that records each message and answers `code`.
async fn ehr_answering(addr: SocketAddr, frames: Frames, code: hl7v2::ack::AckCode) {
    let listener = TcpListener::bind(addr).await.expect("bind the EHR's port");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let frames = Arc::clone(&frames);
            tokio::spawn(async move {
                let mut codec = MllpCodec::default();
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let message = hl7v2::Message::parse(frame.to_vec()).expect("the EHR gets valid HL7 v2");
                        let ack = hl7v2::ack::Ack::new(code, "EHR1", "20261121120000")
                            .text("unknown patient")
                            .for_message(&message);
                        frames.lock().expect("lock").push(message);
                        let mut out = BytesMut::new();
                        codec.encode(ack.as_bytes(), &mut out).expect("encode");
                        if socket.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    match socket.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn submit(&self, parameters: Value) -> (u16, Value) {
        self.submit_with_key(parameters, None).await
    }

    /// Submits with an `Idempotency-Key` header when `key` is given.
    async fn submit_with_key(&self, parameters: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/fhir/CommunicationRequest/$send-to-ehr", self.base))
            .header("content-type", "application/fhir+json")
            .body(parameters.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    async fn track(&self, url: &str) -> (u16, Value) {
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// The Communication.status of a submission.
    async fn status(&self, url: &str) -> Value {
        let (status, bundle) = self.track(url).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["type"], "collection");
        bundle["entry"][0]["resource"].clone()
    }

    /// Polls the tracking until its status is `want` (at most 60 s: a bound
    /// for a failing run, not a speed check).
    async fn wait_for(&self, url: &str, want: &str) -> Value {
        for _ in 0..600 {
            let communication = self.status(url).await;
            if communication["status"] == want {
                return communication;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tracking never reached {want}: {}", self.status(url).await);
    }
}

fn parameters(patient: &str, encounter: &str, content_type: &str, payload: &[u8], extra: &[Value]) -> Value {
    let mut list = vec![
        json!({"name": "subject", "valueReference": {"reference": format!("Patient/{patient}")}}),
        json!({"name": "context", "valueReference": {"reference": format!("Encounter/{encounter}")}}),
        json!({"name": "content-type", "valueCode": content_type}),
        json!({"name": "payload", "valueString": b64(payload)}),
    ];
    list.extend(extra.iter().cloned());
    json!({"resourceType": "Parameters", "parameter": list})
}

fn field(message: &hl7v2::Message, path: &str) -> String {
    message.get(path).map(|v| v.into_owned()).unwrap_or_default()
}

/// The document carried in the message's first OBX (ED, base64 in OBX-5-5).
fn document(message: &hl7v2::Message) -> Vec<u8> {
    assert_eq!(field(message, "OBX-2"), "ED");
    assert_eq!(field(message, "OBX-5-4"), "Base64");
    base64::engine::general_purpose::STANDARD.decode(field(message, "OBX-5-5")).expect("OBX-5-5 is base64")
}

#[tokio::test]
async fn a_document_reaches_the_ehr_as_oru_and_mdm_once_the_ehr_is_up() {
    document_reaches_the_ehr(None, "engine::send_to_ehr_e2e").await;
}

/// The same on PostgreSQL (the shared test database; the channel's name is
/// unique, so other tests' messages are not claimed).
#[tokio::test]
async fn a_document_reaches_the_ehr_on_postgres() {
    let suite = "engine::send_to_ehr_e2e::postgres";
    let Some(url) = testkit::env_or_skip("PLEXUS_TEST_POSTGRES_URL", suite) else { return };
    document_reaches_the_ehr(Some(url), suite).await;
}

/// The same on MariaDB.
#[tokio::test]
async fn a_document_reaches_the_ehr_on_mariadb() {
    let suite = "engine::send_to_ehr_e2e::mariadb";
    let Some(url) = testkit::env_or_skip("PLEXUS_TEST_MYSQL_URL", suite) else { return };
    document_reaches_the_ehr(Some(url), suite).await;
}

/// The whole path on the store at `store_url` (a SQLite file when `None`).
async fn document_reaches_the_ehr(store_url: Option<String>, suite: &str) {
    let Some(peer) = testkit::FhirPeer::start(suite) else { return };
    let client =
        fhir::FhirClient::new("ehr", &fhir::ServerConfig::new(peer.base_url.parse().expect("url"))).expect("client");
    let created = client
        .create(&json!({
            "resourceType": "Patient",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                            "system": "urn:oid:1.2.250.1.999", "value": "MRN4242"}],
            "name": [{"use": "official", "family": "Lemoine", "given": ["Claire"]}],
            "gender": "female",
            "birthDate": "1968-09-14"
        }))
        .await
        .expect("patient created");
    let patient = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("patient id").to_string();
    let created = client
        .create(&json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                        "subject": {"reference": format!("Patient/{patient}")}}))
        .await
        .expect("encounter created");
    let encounter = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("encounter id").to_string();

    // The EHR's address, with nothing listening yet.
    let ehr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()).parse().expect("address");
    let dir = tempfile::tempdir().expect("temp dir");
    let store_url = store_url.unwrap_or_else(|| format!("sqlite://{}/plexus.db", dir.path().display()));
    let channel = testkit::unique_name("documents");
    let destination = |name: &str| {
        format!(
            r#"
[[channels.{channel}.destinations]]
name = "{name}"
type = "mllp"
address = "{ehr}"
connect_timeout = "1s"
reconnect_backoff = "50ms"
reconnect_backoff_max = "200ms"
retry = {{ max_attempts = 1000, initial_backoff = "100ms", max_backoff = "300ms" }}
"#
        )
    };
    let text = format!(
        r#"
version = 1
[store]
url = "{store_url}"
[api]
listen = "127.0.0.1:0"
[fhir_servers.ehr]
base_url = "{fhir}"
[channels.{channel}.source]
type = "send_to_ehr"
patient_source = "ehr"
output = "oru_r01"
outputs = {{ mdm = "mdm_t02" }}
hl7 = {{ receiving_application = "EHR", receiving_facility = "HOSP" }}
{oru}{mdm}"#,
        fhir = peer.base_url,
        oru = destination("oru"),
        mdm = destination("mdm"),
    );
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    let engine = Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
    let base = format!("http://{}", engine.api_addr());
    let issue = |name: &'static str, scopes: &'static [Scope]| {
        let store = Arc::clone(engine.store());
        async move {
            // PostgreSQL and MariaDB are shared test databases that keep an
            // earlier run's tokens; names are unique among active tokens.
            store.revoke_api_token(name).await.expect("earlier token revoked");
            issue_token(store.as_ref(), name, scopes, None).await.expect("token issued").bearer
        }
    };

    // Without a token: 401; with a token lacking the scope: 403; both as
    // OperationOutcome, before anything is read or stored.
    let anonymous = Api { http: reqwest::Client::new(), base: base.clone(), token: None };
    let body = parameters(&patient, &encounter, "application/pdf", PDF, &[]);
    let (status, outcome) = anonymous.submit(body.clone()).await;
    assert_eq!(status, 401, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["diagnostics"], "an API token is required (Authorization: Bearer plx_...)");
    let (status, outcome) =
        anonymous.track(&format!("{base}/fhir/CommunicationRequest/$tracking?transaction-id=x")).await;
    assert_eq!(status, 401, "{outcome}");
    let reader = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: Some(issue("dashboard", &[Scope::MessagesRead]).await),
    };
    let (status, outcome) = reader.submit(body.clone()).await;
    assert_eq!(status, 403, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["diagnostics"], "the API token lacks the scope SEND_TO_EHR");
    let forged =
        Api { http: reqwest::Client::new(), base: base.clone(), token: Some("plx_0123456789abcdef_00".into()) };
    assert_eq!(forged.submit(body).await.0, 401);
    let channel_query = store::SearchQuery { channel: Some(channel.clone()), ..Default::default() };
    assert!(engine.store().search(&channel_query).await.expect("search").items.is_empty(), "nothing stored");

    let api = Api { http: reqwest::Client::new(), base, token: Some(issue("doc-platform", &[Scope::SendToEhr]).await) };

    // A discharge summary, default title, while the EHR is down.
    let (status, answer) = api
        .submit(parameters(
            &patient,
            &encounter,
            "application/pdf",
            PDF,
            &[json!({"name": "document-type", "valueCode": "18842-5"})],
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["resourceType"], "Parameters");
    let tracking_first = answer["parameter"][0]["valueUrl"].as_str().expect("tracking-url").to_string();
    let first = answer["parameter"][1]["valueString"].as_str().expect("transaction-id").to_string();
    assert_eq!(tracking_first, format!("{}/fhir/CommunicationRequest/$tracking?transaction-id={first}", api.base));
    // Stored before the answer: the store has it, with its resources.
    let found = engine
        .store()
        .search(&store::SearchQuery { control_id: Some(first.clone()), ..Default::default() })
        .await
        .expect("search");
    assert_eq!(found.items.len(), 1, "the submission is a stored message");
    assert_eq!(found.items[0].deliveries.len(), 2, "one delivery per destination");
    assert_eq!(found.items[0].sender_key, "doc-platform", "the calling application");

    // The EHR is down: attempts fail and are retried; the submission is in progress.
    let communication = api.wait_for(&tracking_first, "in-progress").await;
    assert_eq!(communication["subject"]["reference"], format!("Patient/{patient}"));
    assert!(communication.get("sent").is_none());

    // A second document for the same patient waits behind the first one
    // (one patient's documents reach the EHR in order): not yet attempted.
    let title = "Lettre de sortie | cardiologie";
    let (status, answer) = api
        .submit(parameters(
            &patient,
            &encounter,
            "image/png",
            PNG,
            &[json!({"name": "document-title", "valueString": title})],
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let tracking_second = answer["parameter"][0]["valueUrl"].as_str().expect("tracking-url").to_string();
    assert_eq!(api.status(&tracking_second).await["status"], "preparation");
    // Both destinations have tried (and failed) before the EHR comes up.
    for _ in 0..600 {
        let detail = engine.store().get_message(found.items[0].id).await.expect("read").expect("stored");
        if detail.deliveries.iter().all(|d| d.attempts >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.status(&tracking_first).await["status"], "in-progress", "still retrying while the EHR is down");
    assert_eq!(api.status(&tracking_second).await["status"], "preparation", "still behind the first");

    // The EHR comes up: both complete, each delivered once per destination.
    let frames: Frames = Arc::default();
    ehr_up(ehr, Arc::clone(&frames)).await;
    let done = api.wait_for(&tracking_first, "completed").await;
    assert!(done["sent"].as_str().is_some_and(|s| s.ends_with('Z')), "{done}");
    let done = api.wait_for(&tracking_second, "completed").await;
    assert!(done["sent"].is_string(), "{done}");

    let frames = frames.lock().expect("lock").clone();
    let kinds: Vec<String> =
        frames.iter().map(|m| format!("{}^{}", field(m, "MSH-9-1"), field(m, "MSH-9-2"))).collect();
    assert_eq!(frames.len(), 4, "{kinds:?}");
    let of = |kind: &str| -> Vec<&hl7v2::Message> {
        frames.iter().filter(|m| format!("{}^{}", field(m, "MSH-9-1"), field(m, "MSH-9-2")) == kind).collect()
    };
    let (oru, mdm) = (of("ORU^R01"), of("MDM^T02"));
    assert_eq!((oru.len(), mdm.len()), (2, 2), "{kinds:?}");

    let expected_title = "Lemoine_Claire_19680914_18842-5_MRN4242";
    for (message, bytes, loinc, title) in [(oru[0], PDF, "18842-5", expected_title), (oru[1], PNG, "11488-4", title)] {
        assert_eq!(field(message, "MSH-5"), "EHR");
        assert_eq!(field(message, "PID-3-1"), "MRN4242");
        assert_eq!(field(message, "PID-5-1"), "Lemoine");
        assert_eq!(field(message, "PID-5-2"), "Claire");
        assert_eq!(field(message, "PID-7"), "19680914");
        assert_eq!(field(message, "OBX-3-1"), loinc);
        assert_eq!(message.get("OBX-3-2").as_deref(), Some(title), "the title, escaped for HL7 and read back");
        assert_eq!(document(message), bytes, "OBX-5 decodes to exactly the submitted bytes");
    }
    for (message, bytes, title) in [(mdm[0], PDF, expected_title), (mdm[1], PNG, title)] {
        assert_eq!(field(message, "PID-3-1"), "MRN4242");
        assert_eq!(message.get("TXA-16").as_deref(), Some(title));
        assert_eq!(document(message), bytes);
    }
    assert_eq!(field(oru[0], "MSH-10"), field(mdm[0], "MSH-10"), "the control id comes from the transaction id");
    assert!(first.replace('-', "").starts_with(&field(oru[0], "MSH-10")));

    // The converted message is kept with each delivery, the created
    // resources with the message; the token's name is the default sender.
    let detail = engine.store().get_message(found.items[0].id).await.expect("read").expect("stored");
    let stored: Value = serde_json::from_slice(detail.raw.as_deref().expect("content kept")).expect("a Bundle");
    let resources: Vec<&str> = stored["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert_eq!(resources, ["Patient", "Encounter", "DocumentReference", "Binary", "CommunicationRequest"]);
    assert_eq!(stored["entry"][2]["resource"]["author"][0]["display"], "doc-platform");
    assert_eq!(stored["entry"][2]["resource"]["id"], first.as_str());

    // The attachment's url is where this server serves the Binary.
    let url = stored["entry"][2]["resource"]["content"][0]["attachment"]["url"].as_str().expect("url").to_string();
    assert_eq!(url, format!("{}/fhir/Binary/{first}", api.base));
    let (status, binary) = api.track(&url).await;
    assert_eq!(status, 200, "{binary}");
    assert_eq!(
        (binary["resourceType"].as_str(), binary["contentType"].as_str()),
        (Some("Binary"), Some("application/pdf"))
    );
    assert_eq!(binary["data"], b64(PDF));
    let (status, resource) = api.track(&format!("{}/fhir/CommunicationRequest/{first}", api.base)).await;
    assert_eq!((status, resource["status"].as_str()), (200, Some("active")), "{resource}");
    let (status, outcome) = api.track(&format!("{}/fhir/Binary/0190a1b2-0000-7000-8000-000000000000", api.base)).await;
    assert_eq!(status, 404, "{outcome}");
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        "Binary/0190a1b2-0000-7000-8000-000000000000: no such submission resource"
    );
    assert_eq!(anonymous.track(&url).await.0, 401);
    let audit = engine.store().audit_events(&store::AuditQuery::default()).await.expect("audit");
    assert!(
        audit.iter().any(|e| e.actor == "doc-platform" && e.action == "read_content"),
        "reads of contents are audited"
    );
    for delivery in &detail.deliveries {
        assert_eq!(delivery.state, store::DeliveryState::Sent);
        let sent = delivery.transformed.as_deref().expect("the message sent is kept");
        assert!(sent.starts_with(b"MSH|"), "{}", delivery.destination);
        assert!(delivery.attempts > 1, "at least one failed attempt while the EHR was down");
    }

    engine.shutdown(Duration::from_secs(5)).await;
}

/// The example configuration compiles, and every mistake in a
/// `send_to_ehr` source is reported with its path.
#[test]
fn the_example_compiles_and_mistakes_are_reported_with_their_paths() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/send-to-ehr.toml");
    let config = Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.channels[0].source.kind(), "send_to_ehr");
    assert!(
        config
            .to_string()
            .contains("documents: send_to_ehr (api listener, patients from ehr) -> ehr (mllp), archive (file)"),
        "{config}"
    );

    let text = r#"
version = 1
[fhir_servers.ehr]
base_url = "http://127.0.0.1:1/fhir"
[channels.a.source]
type = "send_to_ehr"
patient_source = "emr"
outputs = { nowhere = "json" }
public_url = "ftp://x"
[[channels.a.destinations]]
name = "ehr"
type = "file"
directory = "out"
[channels.b.source]
type = "send_to_ehr"
output = "hprim"
[channels.c.source]
type = "send_to_ehr"
"#;
    let errors = Config::from_toml_str(text).expect_err("invalid").to_string();
    for expected in [
        r#"channel "a".source.public_url: must be an http:// or https:// URL (the FHIR base)"#,
        r#"channel "a".source.patient_source: no [fhir_servers.emr] table (known: ehr)"#,
        r#"channel "a".source.outputs.nowhere: no destination of this channel has this name"#,
        r#"channel "b".source.output: unknown variant `hprim`, expected one of `oru_r01`, `mdm_t02`, `json`"#,
        r#"channel "c".source.patient_source: required: the [fhir_servers.NAME] to read patients from"#,
        r#"channel "c".source.type: channel "a" already serves $send-to-ehr (one channel per engine)"#,
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
}

/// An EHR that refuses the document (AE, dead-lettered at once) puts the
/// submission in `entered-in-error` with the reason, while a `json`
/// destination still gets the FHIR Bundle; with `[api] auth = "none"` the
/// configured default sender is the author.
#[tokio::test]
async fn a_refused_document_is_entered_in_error_and_json_goes_to_the_archive() {
    let Some(peer) = testkit::FhirPeer::start("engine::send_to_ehr_e2e::refused") else { return };
    let client =
        fhir::FhirClient::new("ehr", &fhir::ServerConfig::new(peer.base_url.parse().expect("url"))).expect("client");
    let created = client
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN7"}],
                        "name": [{"family": "Roux", "given": ["Paul"]}], "birthDate": "1990-01-02"}))
        .await
        .expect("patient created");
    let patient = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("patient id").to_string();
    let ehr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()).parse().expect("address");
    let frames: Frames = Arc::default();
    ehr_answering(ehr, Arc::clone(&frames), hl7v2::ack::AckCode::ApplicationError).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
version = 1
[store]
url = "sqlite://{dir}/plexus.db"
[api]
listen = "127.0.0.1:0"
auth = "none"
[fhir_servers.ehr]
base_url = "{fhir}"
[channels.documents.source]
type = "send_to_ehr"
patient_source = "ehr"
outputs = {{ archive = "json" }}
default_sender = "portal"
public_url = "https://plexus.example/fhir"
[[channels.documents.destinations]]
name = "ehr"
type = "mllp"
address = "{ehr}"
on_nak = "dead_letter"
retry = {{ on_failure = "dead_letter" }}
[[channels.documents.destinations]]
name = "archive"
type = "file"
directory = "{dir}/archive"
file_name = "${{message_id}}.json"
"#,
        dir = dir.path().display(),
        fhir = peer.base_url,
    );
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    let engine = Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", engine.api_addr()), token: None };

    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": format!("Patient/{patient}")}},
        {"name": "payload", "valueString": b64(PDF)},
    ]});
    let (status, answer) = api.submit(body).await;
    assert_eq!(status, 200, "{answer}");
    let tx = answer["parameter"][1]["valueString"].as_str().expect("transaction-id").to_string();
    let tracking = answer["parameter"][0]["valueUrl"].as_str().expect("tracking-url").to_string();
    assert!(
        tracking.starts_with("https://plexus.example/fhir/CommunicationRequest/$tracking?"),
        "public_url: {tracking}"
    );
    let local = format!("{}/fhir/CommunicationRequest/$tracking?transaction-id={tx}", api.base);

    let communication = api.wait_for(&local, "entered-in-error").await;
    let reason = communication["statusReason"]["text"].as_str().expect("a reason").to_string();
    assert!(reason.starts_with("delivery to ehr failed: "), "{reason}");
    assert!(reason.contains("AE"), "the EHR's answer is named: {reason}");
    assert!(communication.get("sent").is_none());
    assert_eq!(frames.lock().expect("lock").len(), 1, "dead-lettered at the first NAK, not retried");

    // The archive got the FHIR Bundle, whose Binary is the document.
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("archive"))
        .expect("archive folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&files[0]).expect("read")).expect("JSON");
    assert_eq!(bundle["resourceType"], "Bundle");
    let types: Vec<&str> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert_eq!(types, ["Patient", "DocumentReference", "Binary"]);
    assert_eq!(bundle["entry"][2]["resource"]["data"], b64(PDF));
    assert_eq!(bundle["entry"][2]["fullUrl"], format!("https://plexus.example/fhir/Binary/{tx}"));
    assert_eq!(bundle["entry"][1]["resource"]["author"][0]["display"], "portal", "no token name: the default sender");
    assert_eq!(
        bundle["entry"][1]["resource"]["content"][0]["attachment"]["url"],
        format!("https://plexus.example/fhir/Binary/{tx}")
    );

    engine.shutdown(Duration::from_secs(5)).await;
}

/// A document platform whose connection dropped after its POST sends it
/// again with the same `Idempotency-Key`: through the whole engine on
/// SQLite, retries (sequential, concurrent, and after a restart with the
/// store reopened) get the first answer, and the document is stored and
/// delivered once. The key with another document is refused; the key from
/// another application is its own; once retention removed the first
/// submission's content, the key is refused rather than guessed at.
#[tokio::test]
async fn a_retried_submission_is_stored_and_delivered_once_even_after_a_restart() {
    let Some(peer) = testkit::FhirPeer::start("engine::send_to_ehr_e2e::idempotency") else { return };
    let client =
        fhir::FhirClient::new("ehr", &fhir::ServerConfig::new(peer.base_url.parse().expect("url"))).expect("client");
    let created = client
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN8"}],
                        "name": [{"family": "Morel", "given": ["Anne"]}], "birthDate": "1981-03-04"}))
        .await
        .expect("patient created");
    let patient = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("patient id").to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
version = 1
[store]
url = "sqlite://{dir}/plexus.db"
[api]
listen = "127.0.0.1:0"
[fhir_servers.ehr]
base_url = "{fhir}"
[channels.documents.source]
type = "send_to_ehr"
patient_source = "ehr"
output = "json"
[[channels.documents.destinations]]
name = "archive"
type = "file"
directory = "{dir}/archive"
file_name = "${{message_id}}.json"
"#,
        dir = dir.path().display(),
        fhir = peer.base_url,
    );
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    let engine = Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
    let issue = |name: &'static str| {
        let store = Arc::clone(engine.store());
        async move { issue_token(store.as_ref(), name, &[Scope::SendToEhr], None).await.expect("token issued").bearer }
    };
    let (platform, portal) = (issue("doc-platform").await, issue("portal").await);
    let api = |base: &str, token: &str| Api {
        http: reqwest::Client::new(),
        base: base.to_string(),
        token: Some(token.to_string()),
    };
    let base = format!("http://{}", engine.api_addr());
    let (app, other_app) = (api(&base, &platform), api(&base, &portal));
    let letter = |title: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "subject", "valueReference": {"reference": format!("Patient/{patient}")}},
            {"name": "document-title", "valueString": title},
            {"name": "payload", "valueString": b64(PDF)},
        ]})
    };

    let (status, first) = app.submit_with_key(letter("Lettre"), Some("upload-42")).await;
    assert_eq!(status, 200, "{first}");
    let tx = first["parameter"][1]["valueString"].as_str().expect("transaction-id").to_string();
    let (status, again) = app.submit_with_key(letter("Lettre"), Some("upload-42")).await;
    assert_eq!((status, &again), (200, &first), "a retry gets the first answer");

    // Retries racing each other: one is stored, all get its answer.
    let racing: Vec<(u16, Value)> =
        futures::future::join_all((0..4).map(|_| app.submit_with_key(letter("Compte rendu"), Some("upload-43")))).await;
    let (status, answer) = &racing[0];
    assert_eq!(*status, 200, "{answer}");
    assert!(racing.iter().all(|r| r == &racing[0]), "{racing:?}");
    let raced = answer["parameter"][1]["valueString"].as_str().expect("transaction-id").to_string();
    assert_ne!(raced, tx);

    // The key with another document: refused, with the reason.
    let (status, outcome) = app.submit_with_key(letter("Autre lettre"), Some("upload-42")).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        format!(
            "Idempotency-Key: already used for another request (transaction-id {tx}); a new document needs a new key"
        )
    );
    // Another application's key is its own.
    let (status, theirs) = other_app.submit_with_key(letter("Lettre"), Some("upload-42")).await;
    assert_eq!(status, 200, "{theirs}");
    assert_ne!(theirs["parameter"][1]["valueString"], tx.as_str());

    let channel = store::SearchQuery { channel: Some("documents".into()), ..Default::default() };
    let stored = engine.store().search(&channel).await.expect("search").items;
    assert_eq!(stored.len(), 3, "upload-42, upload-43 and the portal's upload-42");
    let mut control_ids: Vec<String> = stored.iter().filter_map(|m| m.control_id.clone()).collect();
    control_ids.sort();
    let mut expected =
        vec![tx.clone(), raced.clone(), theirs["parameter"][1]["valueString"].as_str().unwrap_or("").to_string()];
    expected.sort();
    assert_eq!(control_ids, expected, "each submission is stored under its transaction id");
    let tracking = first["parameter"][0]["valueUrl"].as_str().expect("tracking-url").to_string();
    app.wait_for(&tracking, "completed").await;
    engine.shutdown(Duration::from_secs(5)).await;

    // After a restart, the store reopened: the retry still gets the first
    // answer, and nothing new is stored or delivered.
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    let engine = Engine::start(config).await.unwrap_or_else(|e| panic!("restart: {e}"));
    let app = api(&format!("http://{}", engine.api_addr()), &platform);
    let (status, again) = app.submit_with_key(letter("Lettre"), Some("upload-42")).await;
    assert_eq!((status, &again), (200, &first), "a retry after a restart gets the first answer");
    assert_eq!(engine.store().search(&channel).await.expect("search").items.len(), 3);
    for stored in &stored {
        let detail = engine.store().get_message(stored.id).await.expect("read").expect("kept");
        assert_eq!(detail.deliveries.len(), 1);
    }
    let local_tracking = format!("{}/fhir/CommunicationRequest/$tracking?transaction-id={tx}", app.base);
    app.wait_for(&local_tracking, "completed").await;
    let archived = || std::fs::read_dir(dir.path().join("archive")).map(|d| d.count()).unwrap_or(0);
    for _ in 0..600 {
        if archived() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(archived(), 3, "each document delivered once");

    // Retention removed the first submission's content (and its answer):
    // the retry cannot be compared with it, and is refused rather than
    // stored under the same transaction id or answered blindly.
    let removed = engine
        .store()
        .retention_batch(&store::RetentionRequest {
            older_than: chrono::Utc::now() + chrono::Duration::hours(1),
            mode: store::RetentionMode::Contents,
            batch_size: 100,
        })
        .await
        .expect("retention");
    assert_eq!(removed.messages, 3, "every submission delivered, so all are eligible");
    let (status, outcome) = app.submit_with_key(letter("Lettre"), Some("upload-42")).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        format!(
            "Idempotency-Key: already used (transaction-id {tx}) by a submission whose content retention has \
             removed, so this request cannot be compared with it; use a new key"
        )
    );
    assert_eq!(engine.store().search(&channel).await.expect("search").items.len(), 3);
    engine.shutdown(Duration::from_secs(5)).await;
}
