//! The `http` source: `POST /channels/{name}/messages`.
//!
//! ```toml
//! [channels.lab-http.source]
//! type = "http"
//! # listen = "0.0.0.0:8081"   # own listener; by default the API listener
//! max_body_size = "16MiB"
//! ```
//!
//! HL7 v2 channels take a body of type `x-application/hl7-v2+er7`,
//! `application/hl7-v2` or `text/plain` and answer with the ACK as the body
//! (`x-application/hl7-v2+er7`) and a status that follows MSA-1: 200 for
//! AA/CA, 400 for AR/CR, 500 for AE/CE (503 with `Retry-After` when the
//! store could not take the message or the channel is stopped, so the
//! client retries). JSON and FHIR channels take
//! `application/json` or `application/fhir+json` and answer 202 with
//! `{"message_id": ..., "duplicate": ...}`; problems are JSON too (RFC 9457
//! problem details, or a FHIR OperationOutcome for FHIR channels). An
//! `Idempotency-Key` header makes a JSON POST safe to retry: the same key
//! within the store's duplicate window is stored once ([`idempotency_key`]:
//! an unusable key is refused with 400, not ignored); the same key with
//! another body is refused with 422, not answered as a duplicate.
//!
//! The handler is the same whether it is mounted on the API listener or on
//! the source's own: [`router`] serves the channels it is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::config::de::PathBuf as CfgPath;
use crate::config::{ByteSize, ConfigErrors, ContentKind};
use crate::destinations::HL7_V2_CONTENT_TYPE;
use crate::ingest::{AckOutcome, ChannelIngest, JsonOutcome, Received};

/// Configuration of an `http` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address and port of a listener of its own. When absent, the channel
    /// is served on the API listener (`[api] listen`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The largest body accepted; larger ones get 413. Default `16MiB`.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: ByteSize,
}

fn default_max_body_size() -> ByteSize {
    ByteSize::mib(16)
}

impl HttpSourceConfig {
    /// Checks the settings (no I/O).
    pub fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.max_body_size.0 == 0 {
            errors.push(path.key("max_body_size").to_string(), "must be more than 0");
        }
    }
}

/// One channel served over HTTP.
#[derive(Debug, Clone)]
pub struct HttpChannel {
    /// Its ingest path.
    pub ingest: Arc<ChannelIngest>,
    /// Its body limit.
    pub max_body_size: usize,
}

#[derive(Debug, Clone)]
struct HttpState {
    channels: Arc<HashMap<String, HttpChannel>>,
}

/// The routes for `channels`: `POST /channels/{name}/messages`. The router
/// needs `ConnectInfo<SocketAddr>` (serve it with
/// `into_make_service_with_connect_info`) to record the sender's address.
pub fn router(channels: Vec<HttpChannel>) -> Router {
    // The largest per-channel limit bounds what axum buffers; each handler
    // then checks its own channel's limit.
    let limit = channels.iter().map(|c| c.max_body_size).max().unwrap_or(0);
    let channels: HashMap<String, HttpChannel> =
        channels.into_iter().map(|c| (c.ingest.name().to_string(), c)).collect();
    Router::new()
        .route("/channels/{name}/messages", post(post_message))
        .method_not_allowed_fallback(|| async {
            problem(ContentKind::Json, StatusCode::METHOD_NOT_ALLOWED, "method not allowed", "send messages with POST")
        })
        .layer(DefaultBodyLimit::max(limit.max(1)))
        .with_state(HttpState { channels: Arc::new(channels) })
}

async fn post_message(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(channel) = state.channels.get(&name) else {
        return problem(
            ContentKind::Json,
            StatusCode::NOT_FOUND,
            "no such channel",
            "no http source serves this channel",
        );
    };
    let kind = channel.ingest.content();
    // A body over the largest channel's limit is refused while it is read:
    // answered like any other refusal, not with axum's plain text.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(kind, StatusCode::PAYLOAD_TOO_LARGE, "body too large", "the body exceeds max_body_size");
        }
        Err(_) => {
            return problem(kind, StatusCode::BAD_REQUEST, "unreadable body", "the request body could not be read");
        }
    };
    if body.len() > channel.max_body_size {
        return problem(kind, StatusCode::PAYLOAD_TOO_LARGE, "body too large", "the body exceeds max_body_size");
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let peer = Some(peer.to_string());
    match kind {
        ContentKind::Hl7v2 => {
            if !matches!(media.as_str(), "x-application/hl7-v2+er7" | "application/hl7-v2" | "text/plain") {
                return problem(
                    kind,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported media type",
                    "send HL7 v2 as x-application/hl7-v2+er7 or text/plain",
                );
            }
            let out = channel.ingest.ingest_hl7(Received::now(body.to_vec(), peer)).await;
            let status = match out.outcome {
                AckOutcome::Accepted => StatusCode::OK,
                AckOutcome::Rejected => StatusCode::BAD_REQUEST,
                AckOutcome::Errored if out.store_failed => StatusCode::SERVICE_UNAVAILABLE,
                AckOutcome::Errored => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut response = (status, out.ack.unwrap_or_default()).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(HL7_V2_CONTENT_TYPE));
            with_retry_after(response)
        }
        ContentKind::Json | ContentKind::Fhir => {
            if !matches!(media.as_str(), "application/json" | "application/fhir+json") {
                return problem(
                    kind,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported media type",
                    "send application/json or application/fhir+json",
                );
            }
            let mut received = Received::now(body.to_vec(), peer);
            received.idempotency_key = match idempotency_key(&headers) {
                Ok(key) => key,
                Err(why) => return problem(kind, StatusCode::BAD_REQUEST, "unusable Idempotency-Key", &why),
            };
            match channel.ingest.ingest_json(received).await {
                JsonOutcome::Stored { message_id, duplicate } => (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({ "message_id": message_id.to_string(), "duplicate": duplicate })),
                )
                    .into_response(),
                JsonOutcome::Invalid(detail) => problem(kind, StatusCode::BAD_REQUEST, "invalid message", &detail),
                JsonOutcome::Unavailable(detail) => {
                    with_retry_after(problem(kind, StatusCode::SERVICE_UNAVAILABLE, "message not stored", &detail))
                }
                // 422, as draft-ietf-httpapi-idempotency-key-header answers a
                // key reused with another payload (and $send-to-ehr does).
                JsonOutcome::KeyReused { original } => problem(
                    kind,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency-Key reused",
                    &format!(
                        "Idempotency-Key: already used for another body (message {original}); \
                         this body was not stored: a new message needs a new key"
                    ),
                ),
            }
        }
    }
}

/// A 503 from this source (the channel is stopped, or the store could not
/// take the message) is transient: it says when to send again, as the
/// `$send-to-ehr` and notification sources do, so a sender that honours
/// `Retry-After` does not hammer a stopped channel.
fn with_retry_after(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(crate::ingest::STOPPED_RETRY_AFTER_SECS));
    }
    response
}

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The request's `Idempotency-Key` header, if any: 1 to
/// [`MAX_IDEMPOTENCY_KEY`] visible ASCII characters (spaces inside
/// allowed), bare or as a structured-field string (`"..."`, as
/// draft-ietf-httpapi-idempotency-key-header writes it). A header that is
/// given but unusable (empty, too long, repeated, other characters) is an
/// error, for the caller to hear: ignoring it would silently store each
/// retry again, the very thing the caller sent the key to prevent. The
/// error names the header.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("Idempotency-Key: given more than once".into());
    }
    let visible_ascii = "Idempotency-Key: only visible ASCII characters are allowed";
    let value = value.to_str().map_err(|_| visible_ascii.to_string())?.trim();
    let key = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    if key.is_empty() {
        return Err("Idempotency-Key: is empty".into());
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!("Idempotency-Key: longer than {MAX_IDEMPOTENCY_KEY} characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(visible_ascii.into());
    }
    Ok(Some(key.to_string()))
}

/// A JSON problem: RFC 9457 problem details, or an OperationOutcome for
/// FHIR channels. `detail` never holds message content.
fn problem(kind: ContentKind, status: StatusCode, title: &str, detail: &str) -> Response {
    let (body, media) = match kind {
        ContentKind::Fhir => {
            let code = match status {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::PAYLOAD_TOO_LARGE => "too-costly",
                StatusCode::SERVICE_UNAVAILABLE => "transient",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "not-supported",
                StatusCode::UNPROCESSABLE_ENTITY => "business-rule",
                _ => "invalid",
            };
            (
                json!({
                    "resourceType": "OperationOutcome",
                    "issue": [{ "severity": "error", "code": code, "diagnostics": format!("{title}: {detail}") }]
                }),
                "application/fhir+json",
            )
        }
        _ => (
            json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail }),
            "application/problem+json",
        ),
    };
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    /// The routes of one JSON channel `pms` on a SQLite store in `dir`.
    async fn json_channel(dir: &std::path::Path) -> (Router, Arc<dyn store::Store>) {
        let config = crate::config::Config::from_toml_str(&format!(
            r#"
version = 1
[channels.pms]
content = "json"
[channels.pms.source]
type = "http"
[[channels.pms.destinations]]
name = "archive"
type = "file"
directory = "{}/out"
"#,
            dir.display()
        ))
        .unwrap_or_else(|e| panic!("config: {e}"));
        let url = format!("sqlite://{}/plexus.db", dir.display());
        let store = store::open(&url, store::StoreOptions::default()).await.expect("store opened");
        let ingest = Arc::new(ChannelIngest::new(&config.channels[0], Arc::clone(&store)));
        (router(vec![HttpChannel { ingest, max_body_size: 1 << 20 }]), store)
    }

    async fn post(app: &Router, key: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut request = Request::post("/channels/pms/messages").header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let mut request = request.body(Body::from(r#"{"patient": {"id": "P1"}}"#)).expect("request");
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let response = app.clone().oneshot(request).await.expect("answer");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    /// The same key is stored once; a key the store could not use (too
    /// long) is refused with the reason instead of being dropped, which
    /// stored every retry again.
    #[tokio::test]
    async fn an_idempotency_key_stores_once_and_an_unusable_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (app, store) = json_channel(dir.path()).await;
        let (status, first) = post(&app, Some("order-1")).await;
        assert_eq!((status, &first["duplicate"]), (StatusCode::ACCEPTED, &serde_json::json!(false)), "{first}");
        let (status, again) = post(&app, Some("\"order-1\"")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!((&again["message_id"], &again["duplicate"]), (&first["message_id"], &serde_json::json!(true)));

        let long = "k".repeat(MAX_IDEMPOTENCY_KEY + 1);
        let (status, problem) = post(&app, Some(&long)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["detail"], "Idempotency-Key: longer than 200 characters");
        let (status, problem) = post(&app, Some("a\tb")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["detail"], "Idempotency-Key: only visible ASCII characters are allowed");
        let (status, problem) = post(&app, Some(" ")).await;
        assert_eq!((status, problem["detail"].as_str()), (StatusCode::BAD_REQUEST, Some("Idempotency-Key: is empty")));

        let query = store::SearchQuery { channel: Some("pms".into()), ..Default::default() };
        assert_eq!(store.search(&query).await.expect("search").items.len(), 1, "only order-1 is stored");
        store.close().await;
    }
}
