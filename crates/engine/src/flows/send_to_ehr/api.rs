//! The HTTP face of document submission: `POST
//! /fhir/CommunicationRequest/$send-to-ehr` and `GET
//! /fhir/CommunicationRequest/$tracking?transaction-id=...`.
//!
//! One [`router`] over [`SendToEhrState`]. Every refusal is a FHIR
//! OperationOutcome with `application/fhir+json`, including a body that is
//! not JSON or too large (axum's own extractor errors are plain text, so the
//! body is read as bytes and parsed here).
//!
//! Storage is a [`TrackingStore`]; [`MemoryTrackingStore`] serves tests and
//! trials (the store-backed one comes with the runtime wiring). Access
//! control is the [`CallerAuth`] hook: API tokens with the
//! [`SEND_TO_EHR_SCOPE`] scope (401 without a token, 403 without the scope)
//! plug in there. [`NoAuth`] lets every caller in and must not be used on a
//! network others can reach.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::build::{Outputs, outputs};
use super::config::SendToEhrConfig;
use super::outcome::Rejection;
use super::request::validate_request;
use super::source::{PatientSource, resolve};
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

/// Checks a request's credentials for a scope. The API token work
/// implements this: 401 (no or bad token) and 403 (token without the
/// scope) as a [`Rejection`], which becomes an OperationOutcome.
pub trait CallerAuth: Send + Sync {
    /// The caller, or why it is refused.
    fn authorize(&self, headers: &HeaderMap, scope: &str) -> Result<Caller, Rejection>;
}

/// Lets everyone in, with no application name. For tests and local trials
/// only, until API tokens exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

impl CallerAuth for NoAuth {
    fn authorize(&self, _headers: &HeaderMap, _scope: &str) -> Result<Caller, Rejection> {
        Ok(Caller::default())
    }
}

/// Why the tracking store failed.
#[derive(Debug, thiserror::Error)]
#[error("tracking store: {0}")]
pub struct TrackingStoreError(pub String);

/// Where submissions and their tracking are kept.
#[async_trait]
pub trait TrackingStore: Send + Sync {
    /// Keeps a new submission: its tracking and its resources.
    async fn insert(&self, record: TrackingRecord, outputs: Outputs) -> Result<(), TrackingStoreError>;
    /// A submission's tracking, `None` when unknown.
    async fn get(&self, transaction_id: &str) -> Result<Option<TrackingRecord>, TrackingStoreError>;
}

/// An in-memory [`TrackingStore`] (lost on restart).
#[derive(Debug, Default)]
pub struct MemoryTrackingStore {
    entries: Mutex<HashMap<String, (TrackingRecord, Outputs)>>,
}

impl MemoryTrackingStore {
    /// A submission's resources, when known.
    pub fn outputs(&self, transaction_id: &str) -> Option<Outputs> {
        self.lock().get(transaction_id).map(|(_, o)| o.clone())
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TrackingRecord, Outputs)>> {
        // A panic while holding the lock leaves the map consistent (each
        // operation is one insert or read), so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl TrackingStore for MemoryTrackingStore {
    async fn insert(&self, record: TrackingRecord, outputs: Outputs) -> Result<(), TrackingStoreError> {
        self.lock().insert(record.transaction_id.clone(), (record, outputs));
        Ok(())
    }

    async fn get(&self, transaction_id: &str) -> Result<Option<TrackingRecord>, TrackingStoreError> {
        Ok(self.lock().get(transaction_id).map(|(r, _)| r.clone()))
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
}

impl std::fmt::Debug for SendToEhrState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendToEhrState").field("config", &self.config).field("fhir_base", &self.fhir_base).finish_non_exhaustive()
    }
}

/// The two routes, with a body limit that fits the configured payload
/// limit in base64 plus the Parameters around it.
pub fn router(state: SendToEhrState) -> Router {
    let payload = state.config.max_payload.as_usize();
    let body_limit = payload.saturating_add(payload / 3).saturating_add(ENVELOPE_BYTES);
    Router::new()
        .route("/fhir/CommunicationRequest/$send-to-ehr", post(send_to_ehr))
        .route("/fhir/CommunicationRequest/$tracking", get(tracking))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        fhir_json(status, &self.to_operation_outcome())
    }
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

async fn send_to_ehr(State(state): State<SendToEhrState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match submit(&state, &headers, body, Utc::now()).await {
        Ok(answer) => fhir_json(StatusCode::OK, &answer),
        Err(rejection) => {
            // Diagnostics may quote request values: debug only.
            tracing::debug!(status = rejection.status, problems = ?rejection.diagnostics(), "send-to-ehr refused");
            rejection.into_response()
        }
    }
}

async fn submit(state: &SendToEhrState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>, now: DateTime<Utc>) -> Result<Value, Rejection> {
    let caller = state.auth.authorize(headers, SEND_TO_EHR_SCOPE)?;
    let body = body.map_err(|e| {
        let status = e.status().as_u16();
        let status = if status == 413 { 413 } else { 400 };
        Rejection::one(status, None, if status == 413 { "too-long" } else { "structure" }, format!("request body: {}", e.body_text()))
    })?;
    let json: Value =
        serde_json::from_slice(&body).map_err(|e| Rejection::one(400, None, "structure", format!("request body: not JSON ({e})")))?;
    let request = validate_request(&json, &state.config, caller.application.as_deref())?;
    let resolved = resolve(&request, state.source.as_ref()).await?;
    let transaction_id = uuid::Uuid::now_v7().to_string();
    let outputs = outputs(&request, &resolved, &transaction_id, now);
    let record = TrackingRecord::new(&transaction_id, &request.patient_id, now);
    state.tracking.insert(record, outputs).await.map_err(|e| {
        tracing::error!(error = %e, "send-to-ehr: submission not stored");
        Rejection::one(503, None, "transient", "the submission could not be stored; retry later")
    })?;
    tracing::info!(transaction_id = %transaction_id, bytes = request.payload.len(), "send-to-ehr: submission accepted");
    Ok(success_parameters(&state.fhir_base, &transaction_id))
}

async fn tracking(State(state): State<SendToEhrState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    match track(&state, &headers, query.as_deref().unwrap_or(""), Utc::now()).await {
        Ok(bundle) => fhir_json(StatusCode::OK, &bundle),
        Err(rejection) => rejection.into_response(),
    }
}

async fn track(state: &SendToEhrState, headers: &HeaderMap, query: &str, now: DateTime<Utc>) -> Result<Value, Rejection> {
    state.auth.authorize(headers, SEND_TO_EHR_SCOPE)?;
    let ids: Vec<String> =
        url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "transaction-id").map(|(_, v)| v.into_owned()).collect();
    let transaction_id = match ids.as_slice() {
        [] => return Err(Rejection::one(400, Some("transaction-id"), "required", "transaction-id: required query parameter is missing")),
        [one] if one.trim().is_empty() => {
            return Err(Rejection::one(400, Some("transaction-id"), "required", "transaction-id: is empty"));
        }
        [one] => one.trim(),
        _ => return Err(Rejection::one(400, Some("transaction-id"), "structure", "transaction-id: given more than once")),
    };
    let record = state.tracking.get(transaction_id).await.map_err(|e| {
        tracing::error!(error = %e, "send-to-ehr: tracking not readable");
        Rejection::one(503, None, "transient", "tracking is unavailable; retry later")
    })?;
    match record {
        Some(record) if !record.is_expired(now, state.config.tracking_retention.get()) => Ok(tracking_bundle(&[record])),
        _ => Err(not_found(transaction_id)),
    }
}
