//! The HTTP face of document submission: `POST
//! /fhir/CommunicationRequest/$send-to-ehr` and `GET
//! /fhir/CommunicationRequest/$tracking?transaction-id=...`.
//!
//! One [`router`] over [`SendToEhrState`]. Every refusal is a FHIR
//! OperationOutcome with `application/fhir+json`, including a body that is
//! not JSON or too large (axum's own extractor errors are plain text, so the
//! body is read as bytes and parsed here).
//!
//! Storage is a [`TrackingStore`]: the engine's message store
//! ([`super::persist::StoreTracking`]), or [`MemoryTrackingStore`] in tests.
//! Access control is a [`CallerAuth`]: the engine passes its API tokens
//! (scope [`SEND_TO_EHR_SCOPE`]; 401 without a valid token, 403 without the
//! scope). [`NoAuth`] lets every caller in, for router unit tests only.
//!
//! Besides the operation and `$tracking`, the router serves the resources a
//! submission created (`GET /fhir/Binary/{id}`, `DocumentReference/{id}`,
//! `CommunicationRequest/{id}`), so the DocumentReference's attachment url
//! resolves. A submission's resources and tracking are served to the
//! application that made it only ([`TrackingStore::get`] and
//! [`TrackingStore::resources`] take the caller): transaction ids are not
//! secrets, and a document in a patient's chart is not for every holder of
//! the scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::build::{Outputs, outputs};
use super::config::SendToEhrConfig;
use super::outcome::Rejection;
use super::request::validate_request;
use super::source::{PatientSource, Resolved, resolve};
use super::tracking::{TrackingRecord, not_found, success_parameters, tracking_bundle};

/// The API token scope both routes require.
pub const SEND_TO_EHR_SCOPE: &str = "SEND_TO_EHR";

/// The FHIR JSON media type of every answer.
const FHIR_JSON: &str = "application/fhir+json";

/// Room for the Parameters around the base64 payload.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The calling application's name (the default sender), when known.
    pub application: Option<String>,
}

/// Checks a request's credentials for a scope: 401 (no or bad token) and
/// 403 (token without the scope) as a [`Rejection`], which becomes an
/// OperationOutcome. The engine's API tokens implement it (see
/// `sources::send_to_ehr`).
#[async_trait]
pub trait CallerAuth: Send + Sync {
    /// The caller, or why it is refused.
    async fn authorize(&self, headers: &HeaderMap, scope: &str) -> Result<Caller, Rejection>;
}

/// Lets everyone in, with no application name. For unit tests of the
/// router only: the engine always checks API tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

#[async_trait]
impl CallerAuth for NoAuth {
    async fn authorize(&self, _headers: &HeaderMap, _scope: &str) -> Result<Caller, Rejection> {
        Ok(Caller::default())
    }
}

/// Why the tracking store failed.
#[derive(Debug, thiserror::Error)]
#[error("tracking store: {0}")]
pub struct TrackingStoreError(pub String);

/// An accepted submission, as the [`TrackingStore`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// Its tracking (status `preparation`).
    pub record: TrackingRecord,
    /// The created resources.
    pub outputs: Outputs,
    /// The Patient and Encounter it was resolved against.
    pub resolved: Resolved,
    /// The calling application (its API token's name), when known.
    pub caller: Option<String>,
    /// What the operation answers, kept with the submission so that a
    /// retry with the same `Idempotency-Key` gets the very same answer.
    pub receipt: Receipt,
}

/// The operation's answer to a submission and the digest of the request
/// it answered ([`SendToEhrRequest::digest`](super::request::SendToEhrRequest::digest)):
/// a retry is answered with `response` only if its request has the same
/// digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// SHA-256 (hex) of the validated request.
    pub request_digest: String,
    /// The success Parameters sent back.
    pub response: Value,
}

/// A submission already stored under a transaction id (a retry's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Stored with this answer.
    Answered(Receipt),
    /// Stored, but its answer is gone (retention removed the contents):
    /// whether the retry is the same request cannot be told.
    Forgotten,
}

/// Where submissions and their tracking are kept.
#[async_trait]
pub trait TrackingStore: Send + Sync {
    /// Keeps a new submission: its tracking and its resources. Returns once
    /// it is durable (the operation answers 200 only then): `None` when it
    /// was stored, or the submission already stored under its transaction
    /// id (a concurrent retry with the same `Idempotency-Key` got there
    /// first), in which case nothing was stored.
    async fn insert(&self, submission: Submission) -> Result<Option<Earlier>, TrackingStoreError>;
    /// The submission stored under `transaction_id`, if any, with its
    /// answer.
    async fn earlier(&self, transaction_id: &str) -> Result<Option<Earlier>, TrackingStoreError>;
    /// The tracking of the submission `caller` made under `transaction_id`,
    /// `None` when unknown or made by another caller.
    async fn get(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<TrackingRecord>, TrackingStoreError>;
    /// The created resources of the submission `caller` made under
    /// `transaction_id`, `None` when unknown, made by another caller, or
    /// removed by retention. The reader (`caller`, or `anonymous`) is
    /// recorded where reads of contents are audited.
    async fn resources(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<Outputs>, TrackingStoreError>;
}

/// The audit actor of a read by `caller` (no name: authentication is off).
pub fn reader_name(caller: Option<&str>) -> &str {
    caller.unwrap_or(crate::api::auth::ANONYMOUS)
}

/// An in-memory [`TrackingStore`] (lost on restart).
#[derive(Debug, Default)]
pub struct MemoryTrackingStore {
    entries: Mutex<HashMap<String, Entry>>,
}

/// One submission kept in memory: tracking, resources, answer, and the
/// calling application that made it.
type Entry = (TrackingRecord, Outputs, Receipt, Option<String>);

impl MemoryTrackingStore {
    /// A submission's resources, when known.
    pub fn outputs(&self, transaction_id: &str) -> Option<Outputs> {
        self.lock().get(transaction_id).map(|(_, o, _, _)| o.clone())
    }

    /// Replaces a submission's tracking (as the delivery would).
    pub fn update(&self, record: TrackingRecord) {
        if let Some(entry) = self.lock().get_mut(&record.transaction_id) {
            entry.0 = record;
        }
    }

    /// How many submissions are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves the map consistent (each
        // operation is one insert or read), so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl TrackingStore for MemoryTrackingStore {
    async fn insert(&self, submission: Submission) -> Result<Option<Earlier>, TrackingStoreError> {
        let Submission { record, outputs, receipt, caller, .. } = submission;
        // As the message store: the first submission under an id stays.
        match self.lock().entry(record.transaction_id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(Some(Earlier::Answered(e.get().2.clone()))),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((record, outputs, receipt, caller));
                Ok(None)
            }
        }
    }

    async fn earlier(&self, transaction_id: &str) -> Result<Option<Earlier>, TrackingStoreError> {
        Ok(self.lock().get(transaction_id).map(|(_, _, receipt, _)| Earlier::Answered(receipt.clone())))
    }

    async fn get(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<TrackingRecord>, TrackingStoreError> {
        Ok(self.lock().get(transaction_id).filter(|e| e.3.as_deref() == caller).map(|(r, _, _, _)| r.clone()))
    }

    async fn resources(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<Outputs>, TrackingStoreError> {
        Ok(self.lock().get(transaction_id).filter(|e| e.3.as_deref() == caller).map(|(_, o, _, _)| o.clone()))
    }
}

/// What the routes need.
#[derive(Clone)]
pub struct SendToEhrState {
    /// The flow's configuration.
    pub config: Arc<SendToEhrConfig>,
    /// The public FHIR base of this server (`https://plexus.example/fhir`),
    /// for the tracking URL.
    pub fhir_base: String,
    /// Where `subject` and `context` are resolved.
    pub source: Arc<dyn PatientSource>,
    /// Where submissions are kept.
    pub tracking: Arc<dyn TrackingStore>,
    /// Who may call.
    pub auth: Arc<dyn CallerAuth>,
    /// The channel's stop/start switch (the API's channel stop): while it
    /// is stopped, submissions are refused with 503 and `Retry-After`, as
    /// every other source of a stopped channel refuses new messages.
    /// Tracking and the stored resources stay readable.
    pub switch: Arc<crate::api::control::ChannelSwitch>,
}

impl std::fmt::Debug for SendToEhrState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendToEhrState")
            .field("config", &self.config)
            .field("fhir_base", &self.fhir_base)
            .finish_non_exhaustive()
    }
}

/// Base64 characters per line the body limit leaves room for: PEM's 64,
/// the shortest line length encoders use (MIME uses 76).
const BASE64_LINE_CHARS: usize = 64;

/// A line break as it stands in the JSON string: `\r\n`, escaped.
const LINE_BREAK_BYTES: usize = 4;

/// The two routes, with a body limit that fits the configured payload
/// limit in base64, broken into lines (allowed, and what MIME and PEM
/// encoders write), plus the Parameters around it.
pub fn router(state: SendToEhrState) -> Router {
    let body_limit = body_limit(state.config.max_payload.as_usize());
    Router::new()
        .route("/fhir/CommunicationRequest/$send-to-ehr", post(send_to_ehr))
        .route("/fhir/CommunicationRequest/$tracking", get(tracking))
        .route("/fhir/Binary/{id}", get(|s, h, id| read_resource(s, h, "Binary", id)))
        .route("/fhir/DocumentReference/{id}", get(|s, h, id| read_resource(s, h, "DocumentReference", id)))
        .route("/fhir/CommunicationRequest/{id}", get(|s, h, id| read_resource(s, h, "CommunicationRequest", id)))
        // Anything else under /fhir, and a route called with another
        // method, is answered as FHIR too (an OperationOutcome).
        .route("/fhir/{*path}", any(no_such_route))
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The HTTP body limit for documents of at most `max_payload` bytes.
fn body_limit(max_payload: usize) -> usize {
    let base64 = max_payload.div_ceil(3).saturating_mul(4);
    let breaks = base64.div_ceil(BASE64_LINE_CHARS).saturating_mul(LINE_BREAK_BYTES);
    base64.saturating_add(breaks).saturating_add(ENVELOPE_BYTES)
}

async fn no_such_route() -> Rejection {
    Rejection::one(
        404,
        None,
        "not-found",
        "Plexus serves CommunicationRequest/$send-to-ehr, CommunicationRequest/$tracking and the submissions' \
         Binary, DocumentReference and CommunicationRequest here; the EHR's other resources are on its own server",
    )
}

async fn wrong_method() -> Rejection {
    Rejection::one(405, None, "not-supported", "this route does not take this method")
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = fhir_json(status, &self.to_operation_outcome());
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme it wants.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"plexus\""));
        }
        response
    }
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

async fn send_to_ehr(
    State(state): State<SendToEhrState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match state.auth.authorize(&headers, SEND_TO_EHR_SCOPE).await {
        Ok(caller) => caller,
        Err(rejection) => return rejection.into_response(),
    };
    // Checked after the caller is known, so that only callers allowed to
    // submit learn the channel's state.
    if state.switch.is_stopped() {
        tracing::debug!("send-to-ehr refused: the channel is stopped");
        let mut response =
            Rejection::one(503, None, "transient", "the channel is stopped; retry later").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(crate::ingest::STOPPED_RETRY_AFTER_SECS));
        return response;
    }
    match submit(&state, caller, &headers, body, Utc::now()).await {
        Ok(answer) => fhir_json(StatusCode::OK, &answer),
        Err(rejection) => {
            // Diagnostics may quote request values: debug only.
            tracing::debug!(status = rejection.status, problems = ?rejection.diagnostics(), "send-to-ehr refused");
            rejection.into_response()
        }
    }
}

async fn submit(
    state: &SendToEhrState,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    now: DateTime<Utc>,
) -> Result<Value, Rejection> {
    let body = body.map_err(|e| {
        let status = e.status().as_u16();
        let status = if status == 413 { 413 } else { 400 };
        Rejection::one(
            status,
            None,
            if status == 413 { "too-long" } else { "structure" },
            format!("request body: {}", e.body_text()),
        )
    })?;
    let key = idempotency_key(headers)?;
    let json: Value = serde_json::from_slice(&body)
        .map_err(|e| Rejection::one(400, None, "structure", format!("request body: not JSON ({e})")))?;
    let request = validate_request(&json, &state.config, caller.application.as_deref())?;
    let digest = request.digest();
    // With a key, the transaction id is the key's (per calling
    // application): a retry names the submission it repeats, which is
    // answered again before the patient source is asked anything.
    let transaction_id = match &key {
        Some(key) => {
            let transaction_id = keyed_transaction_id(caller.application.as_deref(), key);
            let earlier = state.tracking.earlier(&transaction_id).await.map_err(|e| {
                tracing::error!(error = %e, "send-to-ehr: earlier submission not readable");
                Rejection::one(503, None, "transient", "the submission could not be checked; retry later")
            })?;
            if let Some(earlier) = earlier {
                return answer_again(earlier, &digest, &transaction_id);
            }
            transaction_id
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let resolved = resolve(&request, state.source.as_ref()).await?;
    let outputs = outputs(&request, &resolved, &state.fhir_base, &transaction_id, now);
    let record = TrackingRecord::new(&transaction_id, &request.patient_id, now);
    let response = success_parameters(&state.fhir_base, &transaction_id);
    let receipt = Receipt { request_digest: digest.clone(), response: response.clone() };
    let submission = Submission { record, outputs, resolved, caller: caller.application, receipt };
    let earlier = state.tracking.insert(submission).await.map_err(|e| {
        tracing::error!(error = %e, "send-to-ehr: submission not stored");
        Rejection::one(503, None, "transient", "the submission could not be stored; retry later")
    })?;
    if let Some(earlier) = earlier {
        // A concurrent retry with the same key was stored first.
        return answer_again(earlier, &digest, &transaction_id);
    }
    tracing::info!(transaction_id = %transaction_id, bytes = request.payload.len(), "send-to-ehr: submission accepted");
    Ok(response)
}

/// The request's `Idempotency-Key` header, if any (the rules of HTTP
/// ingest, [`crate::sources::http::idempotency_key`]). A key that is given
/// but unusable is refused (400) rather than ignored: the caller counts on
/// it to make a retry safe.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    crate::sources::http::idempotency_key(headers).map_err(|why| Rejection::one(400, None, "structure", why))
}

/// The transaction id of the submission made with `key` by `caller`: a
/// UUID (version 8) from the SHA-256 of both, so the same key from another
/// application names another submission, and the store's duplicate
/// detection (same channel, sender and control id) catches a retry.
pub fn keyed_transaction_id(caller: Option<&str>, key: &str) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(b"plexus send-to-ehr idempotency key\0");
    hash.update(caller.unwrap_or("").as_bytes());
    hash.update(b"\0");
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// The answer to a retry of an `earlier` submission: its own answer when
/// the request is the same, otherwise a refusal (the key was reused for
/// another document, which must not be dropped silently nor filed under
/// the first one's id).
fn answer_again(earlier: Earlier, digest: &str, transaction_id: &str) -> Result<Value, Rejection> {
    match earlier {
        Earlier::Answered(receipt) if receipt.request_digest == digest => {
            tracing::info!(transaction_id = %transaction_id, "send-to-ehr: retry answered with the stored submission");
            Ok(receipt.response)
        }
        Earlier::Answered(_) => Err(Rejection::one(
            422,
            None,
            "business-rule",
            format!(
                "Idempotency-Key: already used for another request (transaction-id {transaction_id}); \
                 a new document needs a new key"
            ),
        )),
        Earlier::Forgotten => Err(Rejection::one(
            422,
            None,
            "business-rule",
            format!(
                "Idempotency-Key: already used (transaction-id {transaction_id}) by a submission whose content \
                 retention has removed, so this request cannot be compared with it; use a new key"
            ),
        )),
    }
}

/// `GET /fhir/{Binary|DocumentReference|CommunicationRequest}/{transaction-id}`:
/// the resources a submission created (the DocumentReference's attachment
/// url points at the Binary here).
async fn read_resource(
    State(state): State<SendToEhrState>,
    headers: HeaderMap,
    resource_type: &'static str,
    Path(id): Path<String>,
) -> Response {
    match read(&state, &headers, resource_type, &id).await {
        Ok(resource) => fhir_json(StatusCode::OK, &resource),
        Err(rejection) => rejection.into_response(),
    }
}

async fn read(state: &SendToEhrState, headers: &HeaderMap, resource_type: &str, id: &str) -> Result<Value, Rejection> {
    let caller = state.auth.authorize(headers, SEND_TO_EHR_SCOPE).await?;
    let pick: fn(Outputs) -> Value = match resource_type {
        "Binary" => |o| o.binary,
        "DocumentReference" => |o| o.document_reference,
        "CommunicationRequest" => |o| o.communication_request,
        _ => {
            return Err(Rejection::one(
                404,
                None,
                "not-supported",
                format!(
                    "{resource_type}: only Binary, DocumentReference and CommunicationRequest of a submission are served here"
                ),
            ));
        }
    };
    let not_found =
        || Rejection::one(404, None, "not-found", format!("{resource_type}/{id}: no such submission resource"));
    if !super::request::is_fhir_id(id) {
        return Err(not_found());
    }
    // Another application's submission is answered as an unknown one:
    // transaction ids are not secrets (a keyed one is computed from the
    // application's name and its Idempotency-Key).
    let outputs = state.tracking.resources(id, caller.application.as_deref()).await.map_err(|e| {
        tracing::error!(error = %e, "send-to-ehr: resources not readable");
        Rejection::one(503, None, "transient", "the resource is unavailable; retry later")
    })?;
    outputs.map(pick).ok_or_else(not_found)
}

async fn tracking(State(state): State<SendToEhrState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    match track(&state, &headers, query.as_deref().unwrap_or(""), Utc::now()).await {
        Ok(bundle) => fhir_json(StatusCode::OK, &bundle),
        Err(rejection) => rejection.into_response(),
    }
}

async fn track(
    state: &SendToEhrState,
    headers: &HeaderMap,
    query: &str,
    now: DateTime<Utc>,
) -> Result<Value, Rejection> {
    let caller = state.auth.authorize(headers, SEND_TO_EHR_SCOPE).await?;
    let ids: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "transaction-id")
        .map(|(_, v)| v.into_owned())
        .collect();
    let transaction_id = match ids.as_slice() {
        [] => {
            return Err(Rejection::one(
                400,
                Some("transaction-id"),
                "required",
                "transaction-id: required query parameter is missing",
            ));
        }
        [one] if one.trim().is_empty() => {
            return Err(Rejection::one(400, Some("transaction-id"), "required", "transaction-id: is empty"));
        }
        [one] => one.trim(),
        _ => {
            return Err(Rejection::one(
                400,
                Some("transaction-id"),
                "structure",
                "transaction-id: given more than once",
            ));
        }
    };
    let record = state.tracking.get(transaction_id, caller.application.as_deref()).await.map_err(|e| {
        tracing::error!(error = %e, "send-to-ehr: tracking not readable");
        Rejection::one(503, None, "transient", "tracking is unavailable; retry later")
    })?;
    match record {
        Some(record) if !record.is_expired(now, state.config.tracking_retention.get()) => {
            Ok(tracking_bundle(&[record]))
        }
        _ => Err(not_found(transaction_id)),
    }
}
