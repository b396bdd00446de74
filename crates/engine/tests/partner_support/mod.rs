//! The partner simulator shared by the notification tests (axum on
//! 127.0.0.1:0), and the steps around it: start an engine on a channel
//! config, post a signed notification, wait for its deliveries to settle.
//!
//! The simulator serves pre-signed files (`GET /files/{name}`, 403 for an
//! unknown or expired one, as object storage answers), the token service of
//! the temporary-credentials path (`POST /token`), acknowledgements either
//! as `POST /ack/{file}` (no credentials) or as
//! `POST /ack/{notification}/{file}` (bearer [`ACK_TOKEN`], JSON body naming
//! both, with a settable number of 503 answers first), and a JSON receiver
//! standing in for a clinic's system (`POST /readings`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use store::{DeliveryState, MessageId};
use tokio::net::TcpListener;

/// The bearer token the `/ack/{notification}/{file}` endpoint expects.
pub const ACK_TOKEN: &str = "ack-token";

/// What the partner serves and what it was sent.
#[derive(Default)]
pub struct Partner {
    /// Pre-signed files by name.
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    /// Acknowledgements received: (notification id, file id); the
    /// notification id is empty for `/ack/{file}`.
    acks: Mutex<Vec<(String, String)>>,
    /// Acknowledgement calls still to answer 503 (`/ack/{notification}/{file}`).
    pub ack_failures: AtomicUsize,
    /// Calls of `/ack/{notification}/{file}`, failed ones included.
    pub ack_calls: AtomicUsize,
    /// Bodies posted to `/readings`, with their content type.
    received: Mutex<Vec<(String, Bytes)>>,
}

impl Partner {
    /// Offers `body` under `/files/{name}`.
    pub fn add_file(&self, name: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(name.to_owned(), body);
    }

    /// Acknowledgements so far: (notification id, file id).
    pub fn acks(&self) -> Vec<(String, String)> {
        self.acks.lock().unwrap().clone()
    }

    /// The file ids acknowledged so far.
    pub fn acked_files(&self) -> Vec<String> {
        self.acks().into_iter().map(|(_, file)| file).collect()
    }

    /// What `/readings` received: (content type, body).
    pub fn received(&self) -> Vec<(String, Bytes)> {
        self.received.lock().unwrap().clone()
    }
}

/// Serves `router` on a port of its own.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Starts the partner simulator.
pub async fn start_partner() -> (Arc<Partner>, SocketAddr) {
    let partner = Arc::new(Partner::default());
    let router = Router::new()
        .route("/files/{name}", get(file))
        .route("/token", post(token))
        .route("/ack/{file}", post(ack_file))
        .route("/ack/{notification}/{file}", post(ack))
        .route("/readings", post(receive))
        .with_state(Arc::clone(&partner));
    (partner, serve(router).await)
}

async fn file(State(p): State<Arc<Partner>>, Path(name): Path<String>) -> Response {
    match p.files.lock().unwrap().get(&name) {
        Some(body) => body.clone().into_response(),
        None => (http::StatusCode::FORBIDDEN, "expired").into_response(),
    }
}

async fn token(headers: HeaderMap, body: String) -> Response {
    // Basic base64("plexus:client-secret")
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic cGxleHVzOmNsaWVudC1zZWNyZXQ=");
    if !ok || body != "grant_type=client_credentials" {
        return (http::StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    axum::Json(json!({
        "accessKeyId": "ASIATEMPORARY", "secretAccessKey": "temporary-secret",
        "sessionToken": "session-token", "expires_in": 3600
    }))
    .into_response()
}

async fn ack_file(State(p): State<Arc<Partner>>, Path(file): Path<String>) -> Response {
    p.acks.lock().unwrap().push((String::new(), file));
    http::StatusCode::NO_CONTENT.into_response()
}

async fn ack(
    State(p): State<Arc<Partner>>,
    Path((notification, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    p.ack_calls.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {ACK_TOKEN}")) {
        return (http::StatusCode::UNAUTHORIZED, "no token").into_response();
    }
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sent["notification_id"], notification.as_str());
    assert_eq!(sent["file_id"], file.as_str());
    if p.ack_failures.load(Ordering::SeqCst) > 0 {
        p.ack_failures.fetch_sub(1, Ordering::SeqCst);
        return (http::StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    p.acks.lock().unwrap().push((notification, file));
    http::StatusCode::NO_CONTENT.into_response()
}

async fn receive(State(p): State<Arc<Partner>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    p.received.lock().unwrap().push((content_type, body));
    http::StatusCode::CREATED.into_response()
}

/// Starts an engine on a SQLite file in `dir` with the API on a port of
/// its own and `channels` (the rest of the config).
pub async fn start_engine(dir: &std::path::Path, channels: &str) -> Engine {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n{channels}",
        dir.display()
    );
    let mut config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    config.base_dir = dir.to_path_buf();
    Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"))
}

/// The `glucose` channel's notification source for pre-signed files of the
/// partner at `partner`, signed with `secret` and acknowledged to it, as
/// TOML; `output` is the source's `output = ...` line.
pub fn presigned_glucose_source(output: &str, secret: &str, partner: SocketAddr) -> String {
    format!(
        r#"[channels.glucose]
content = "json"
[channels.glucose.source]
type = "notification"
{output}
[channels.glucose.source.fields]
notification_id = "id"
file_id = "file.id"
presigned_url = "file.url"
[channels.glucose.source.auth.hmac]
secret = "{secret}"
[channels.glucose.source.fetch]
allowed_hosts = ["127.0.0.1"]
allow_http = true
allow_private_addresses = true
[channels.glucose.source.acknowledgement]
url = "http://{partner}/ack/{{file_id}}"
"#
    )
}

/// A notification of the pre-signed file `file` of the partner at `partner`.
pub fn presigned(partner: SocketAddr, id: &str, file: &str) -> Value {
    json!({"id": id, "file": {"id": file, "url": format!("http://{partner}/files/{file}")}})
}

/// Posts `body` to the `glucose` channel's notification endpoint, signed
/// at `ts` (now when `None`) with `secret`; an error answer must be a
/// problem document.
pub async fn notify(
    http: &reqwest::Client,
    engine: SocketAddr,
    body: &Value,
    ts: Option<i64>,
    secret: &str,
) -> (u16, Value) {
    let body = body.to_string();
    let ts = ts.unwrap_or_else(|| chrono::Utc::now().timestamp()).to_string();
    let response = http
        .post(format!("http://{engine}/channels/glucose/notifications"))
        .header("content-type", "application/json")
        .header("x-timestamp", &ts)
        .header("x-signature", sign(secret.as_bytes(), &ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let media = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(media, "application/problem+json", "{status} {value}");
    }
    (status, value)
}

/// Waits until `done`, failing the test after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deliveries of `id` once none is queued or in flight.
pub async fn settled(engine: &Engine, id: MessageId) -> Vec<store::DeliveryDetail> {
    let start = Instant::now();
    loop {
        let detail = engine.store().get_message(id).await.unwrap().unwrap();
        if detail.deliveries.iter().all(|d| !matches!(d.state, DeliveryState::Queued | DeliveryState::InFlight)) {
            return detail.deliveries;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the deliveries of {id} did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
