//! The `hl7_to_fhir` transform step through the running engine: MLLP in, the
//! channel's conversion, an HTTP destination standing in for a FHIR server
//! (axum on 127.0.0.1:0), a real SQLite store in a temp dir.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use bytes::BytesMut;
use engine::config::Config;
use engine::runtime::Engine;
use hl7v2::mllp::MllpCodec;
use store::{DeliveryDetail, DeliveryState, FailureClass, SearchQuery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

fn adt(event: &str, control_id: &str) -> String {
    format!(
        "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^{event}^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|{event}|20261121120000\r\
         PID|1||4711^^^HOSP^MR||DOE^JANE||19800101|F\r\
         PV1|1|I\r"
    )
}

fn config(dir: &Path, body: &str) -> Result<Config, String> {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n{body}",
        dir.display()
    );
    let mut config = Config::from_toml_str(&text).map_err(|e| e.to_string())?;
    config.base_dir = dir.to_path_buf();
    Ok(config)
}

/// A channel converting to FHIR and posting the result to `url`.
fn channel(url: &str) -> String {
    format!(
        r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.transform]]
type = "hl7_to_fhir"
identifier_systems = {{ HOSP = "https://hospital.example/mrn" }}
[[channels.adt-in.destinations]]
name = "fhir"
type = "http"
url = "{url}"
retry = {{ max_attempts = 3, initial_backoff = "1s", max_backoff = "1s" }}
"#
    )
}

/// An HTTP server that records each request's content type and body.
async fn fhir_server() -> (String, Arc<Mutex<Vec<(String, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/fhir",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = Arc::clone(&log);
            async move {
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                log.lock().unwrap().push((ct, body));
                (
                    axum::http::StatusCode::OK,
                    [("content-type", "application/fhir+json")],
                    "{\"resourceType\":\"Bundle\"}",
                )
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Sends `message` over MLLP and returns MSA-1 of the ACK.
async fn send(addr: SocketAddr, message: &str) -> String {
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

/// The delivery of the message `control_id` once it left the queue (polls;
/// 30 s only bounds a hung test).
async fn settled_delivery(engine: &Engine, control_id: &str) -> DeliveryDetail {
    let store = engine.store();
    for _ in 0..600 {
        let query = SearchQuery { control_id: Some(control_id.to_owned()), ..SearchQuery::default() };
        if let Some(summary) = store.search(&query).await.unwrap().items.first() {
            let mut detail = store.get_message(summary.id).await.unwrap().unwrap();
            if let Some(d) = detail.deliveries.pop()
                && !matches!(d.state, DeliveryState::Queued | DeliveryState::InFlight)
            {
                return d;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the delivery of {control_id} did not settle");
}

#[tokio::test]
async fn an_adt_arrives_at_the_fhir_endpoint_as_a_transaction_bundle() {
    let (url, seen) = fhir_server().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), &channel(&url)).unwrap()).await.unwrap();
    assert_eq!(send(engine.source_addr("adt-in").unwrap(), &adt("A01", "CONV1")).await, "AA");

    let d = settled_delivery(&engine, "CONV1").await;
    assert_eq!(d.state, DeliveryState::Sent, "{:?}", d.error_reason);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (content_type, body) = &requests[0];
    assert_eq!(content_type, "application/fhir+json");
    let bundle: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    let patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .expect("a Patient from PID");
    assert_eq!(patient["resource"]["identifier"][0]["system"], "https://hospital.example/mrn");
    assert_eq!(patient["resource"]["identifier"][0]["value"], "4711");
    assert_eq!(patient["resource"]["name"][0]["family"], "DOE");
    assert_eq!(patient["resource"]["birthDate"], "1980-01-01");
    // The delivery keeps what was sent: the Bundle, not the HL7 v2 message.
    assert_eq!(d.transformed.as_deref(), Some(&body[..]));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_unsupported_event_is_accepted_and_its_delivery_fails_permanently_naming_it() {
    let (url, seen) = fhir_server().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), &channel(&url)).unwrap()).await.unwrap();
    // Accepted (the message is stored): conversion happens at delivery time.
    assert_eq!(send(engine.source_addr("adt-in").unwrap(), &adt("A17", "CONV2")).await, "AA");

    let d = settled_delivery(&engine, "CONV2").await;
    assert_eq!(d.state, DeliveryState::Error, "blocked, not retried");
    assert_eq!(d.attempts, 1, "a conversion error is not retried");
    assert_eq!(d.error_class, Some(FailureClass::Permanent));
    let reason = d.error_reason.unwrap();
    assert!(
        reason
            .contains("channel \"adt-in\".transform[0]: cannot convert the message: unsupported message type ADT^A17"),
        "{reason}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the FHIR endpoint");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn configuration_errors_name_the_step_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9/fhir";
    let bad_uri = channel(url).replace("https://hospital.example/mrn", "hosp-mrn");
    let e = config(dir.path(), &bad_uri).unwrap_err();
    assert!(e.contains("adt-in") && e.contains("transform[0].identifier_systems.HOSP"), "{e}");
    assert!(e.contains("\"hosp-mrn\" is not a URI"), "{e}");

    let unknown_key = channel(url).replace("identifier_systems =", "identifier_system =");
    let e = config(dir.path(), &unknown_key).unwrap_err();
    assert!(e.contains("transform[0]") && e.contains("identifier_system"), "{e}");

    let step_after = channel(url).replace(
        "[[channels.adt-in.destinations]]",
        "[[channels.adt-in.transform]]\ntype = \"set\"\npath = \"MSH-5\"\nvalue = \"X\"\n[[channels.adt-in.destinations]]",
    );
    let e = config(dir.path(), &step_after).unwrap_err();
    assert!(e.contains("transform[1]") && e.contains("only route steps may follow a conversion"), "{e}");

    let destination_step = channel(url).replace(
        "retry = {",
        "transform = [{ type = \"set\", path = \"MSH-5\", value = \"X\" }, { type = \"route\", to = [\"fhir\"] }]\nretry = {",
    );
    let e = config(dir.path(), &destination_step).unwrap_err();
    assert!(e.contains("only route steps may follow a conversion") && e.contains("before the conversion"), "{e}");
    assert_eq!(e.matches("only route steps").count(), 1, "the route step is allowed: {e}");
}

#[test]
fn the_example_configuration_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hl7-to-fhir.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let channel = config.channels.iter().find(|c| c.name == "hl7-to-fhir").expect("the example's channel");
    assert!(channel.transform.converts());
}
