//! `/api/sync/*`: patient synchronisation between the configured FHIR
//! servers, over REST (scope `sync`).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/sync/servers` | the configured server names |
//! | `GET /api/sync/patients?source=&family=&given=&birthdate=[&gender=&identifier=&limit=]` | candidates on the source |
//! | `POST /api/sync/jobs` `{source, target, patient, resources}` | 202 with the job, which runs in the background |
//! | `GET /api/sync/jobs/{id}` | one job: status, progress, counts, report |
//! | `GET /api/sync/jobs[?limit=&before=]` | recent jobs, newest first |
//!
//! A job is recorded in the store (`queued`) before the 202, then run by a
//! background task of the engine's [`JobRunner`] that writes its progress
//! (phase, resources done of total) as it goes and its counts and report at
//! the end, so a client (the dashboard) polls `GET /api/sync/jobs/{id}` until
//! the status is final. A stop of the server records the jobs it cuts off as
//! failed (see [`crate::flows::patient_sync`]).
//!
//! Errors are `application/problem+json`: an unknown server name is a 400
//! that names it, an unknown job a 404, a failing source server a 502 with
//! its diagnostics. Patient ids, names and identifiers appear in answers
//! (the caller holds the `sync` scope) but never in logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fhir::sync::{self, ClinicalFetch, PatientQuery, SyncOptions};
use fhir::{FhirClient, FhirError, ServerConfig};
use serde::Deserialize;
use serde_json::json;
use store::{NewAuditEvent, NewSyncJob, Store, StoreError, SyncJobId, SyncJobQuery};
use tracing::warn;

use crate::api::auth::{Auth, Scope};
use crate::api::problem::Problem;
use crate::flows::patient_sync::JobRunner;

/// The most candidates one search returns.
const MAX_CANDIDATES: usize = 100;

/// The configured FHIR servers as clients, built once so that connections
/// and OAuth2 tokens are shared by every request and job.
#[derive(Debug, Clone, Default)]
pub struct SyncServers {
    clients: BTreeMap<String, Result<FhirClient, String>>,
}

impl SyncServers {
    /// Clients for every `[fhir_servers.<name>]` (secrets from the
    /// environment). A server whose client cannot be built is kept with its
    /// error, which requests naming it get back.
    pub fn from_config(servers: &BTreeMap<String, ServerConfig>) -> SyncServers {
        let clients = servers
            .iter()
            .map(|(name, config)| {
                let client = FhirClient::new(name, config).map_err(|e| {
                    // A config error names the server and the variable, never a secret.
                    warn!(fhir_server = %name, error = %e, "sync api: FHIR server cannot be used");
                    e.to_string()
                });
                (name.clone(), client)
            })
            .collect();
        SyncServers { clients }
    }

    /// The configured names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// The client for `name`, or the problem to answer: 400 for a name the
    /// config does not have (naming the ones it has), 503 for a configured
    /// server whose client could not be built (a secret missing from the
    /// environment, say: the operator's problem, not the caller's).
    fn client(&self, role: &str, name: &str) -> Result<FhirClient, Problem> {
        match self.clients.get(name) {
            Some(Ok(client)) => Ok(client.clone()),
            Some(Err(e)) => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "fhir-server-config",
                "FHIR server not usable",
                format!("{role} server {name:?} cannot be used: {e}"),
            )),
            None => {
                let known: Vec<&str> = self.names().collect();
                Err(Problem::bad_request(format!(
                    "unknown {role} server {name:?}: the config has {}",
                    if known.is_empty() { "no [fhir_servers]".to_owned() } else { known.join(", ") }
                )))
            }
        }
    }
}

#[derive(Clone)]
struct SyncState {
    store: Arc<dyn Store>,
    servers: Arc<SyncServers>,
    auth: Auth,
    jobs: JobRunner,
}

/// The `/api/sync/*` routes. `auth` checks the `sync` scope on every route;
/// `jobs` runs the jobs (and records them in its store).
pub fn router(jobs: JobRunner, servers: SyncServers, auth: Auth) -> Router {
    let state = SyncState { store: Arc::clone(jobs.store()), servers: Arc::new(servers), auth, jobs };
    Router::new()
        .route("/api/sync/servers", get(list_servers))
        .route("/api/sync/patients", get(search_patients))
        .route("/api/sync/jobs", get(list_jobs).post(create_job))
        .route("/api/sync/jobs/{id}", get(get_job))
        .method_not_allowed_fallback(super::problem::wrong_method)
        .with_state(state)
}

// ----- answers --------------------------------------------------------------

/// A FHIR server's failure: the caller's fault (400), the server's (502), or
/// a timeout (504). The server's diagnostics go to the caller (who holds the
/// `sync` scope), only the class and status to the log.
fn fhir_problem(server: &str, e: &FhirError) -> Problem {
    if matches!(e, FhirError::InvalidRequest(_)) {
        return Problem::bad_request(e.to_string());
    }
    warn!(fhir_server = %server, class = %e.class(), status = e.status(), "sync api: FHIR server request failed");
    let (status, kind) = match e {
        FhirError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "fhir-timeout"),
        _ => (StatusCode::BAD_GATEWAY, "fhir-server"),
    };
    Problem::new(status, kind, "FHIR server error", format!("{server}: {e}"))
}

async fn authorize(state: &SyncState, headers: &HeaderMap) -> Result<String, Problem> {
    let caller = state.auth.authorize(headers, Scope::Sync).await.map_err(|e| e.problem())?;
    Ok(caller.token_name)
}

/// Query strings that do not parse get a problem, not axum's plain text.
fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(v)| v).map_err(|e| Problem::bad_request(e.body_text()))
}

// ----- handlers -------------------------------------------------------------

async fn list_servers(State(state): State<SyncState>, headers: HeaderMap) -> Result<Response, Problem> {
    authorize(&state, &headers).await?;
    let servers: Vec<_> = state.servers.names().map(|name| json!({ "name": name })).collect();
    Ok(Json(json!({ "servers": servers })).into_response())
}

#[derive(Debug, Deserialize)]
struct PatientParams {
    source: Option<String>,
    family: Option<String>,
    given: Option<String>,
    birthdate: Option<String>,
    gender: Option<String>,
    identifier: Option<String>,
    limit: Option<usize>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

async fn search_patients(
    State(state): State<SyncState>,
    headers: HeaderMap,
    params: Result<Query<PatientParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    authorize(&state, &headers).await?;
    let p = query(params)?;
    let source_name = non_empty(p.source).ok_or_else(|| Problem::bad_request("source is required"))?;
    let source = state.servers.client("source", &source_name)?;
    let family = non_empty(p.family).unwrap_or_default();
    let identifier = non_empty(p.identifier);
    if family.is_empty() && identifier.is_none() {
        return Err(Problem::bad_request("family (or identifier) is required"));
    }
    let query = PatientQuery {
        family,
        given: non_empty(p.given),
        birth_date: non_empty(p.birthdate),
        gender: non_empty(p.gender),
        identifier,
    };
    let limit = p.limit.unwrap_or(20).clamp(1, MAX_CANDIDATES);
    let found = sync::search_patients(&source, &query, limit).await.map_err(|e| fhir_problem(&source_name, &e))?;
    Ok(Json(found).into_response())
}

/// `POST /api/sync/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    source: String,
    target: String,
    /// The patient's id on the source.
    patient: String,
    /// Clinical types, or `["all"]`; default: [`sync::DEFAULT_RESOURCE_TYPES`].
    #[serde(default)]
    resources: Vec<String>,
    /// Levels of references to follow (default 3).
    depth: Option<usize>,
    /// Read with `Patient/$everything`.
    #[serde(default)]
    everything: bool,
}

/// The sync options a request asks for, or what is wrong with it.
fn job_options(request: &JobRequest) -> Result<SyncOptions, String> {
    let types: Vec<&str> = request.resources.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
    let mut options = match types.as_slice() {
        [] => SyncOptions::default(),
        [all] if all.eq_ignore_ascii_case("all") => SyncOptions::all_types(),
        types => {
            if let Some(bad) = types.iter().find(|t| !fhir::resource::is_valid_type(t)) {
                return Err(format!("{bad:?} is not a FHIR resource type"));
            }
            SyncOptions::for_types(types)
        }
    };
    if !fhir::resource::is_valid_id(request.patient.trim()) {
        return Err("patient must be a FHIR id (letters, digits, '-', '.', at most 64)".to_owned());
    }
    if let Some(depth) = request.depth {
        if depth > fhir::sync::MAX_REFERENCE_DEPTH {
            return Err(format!("depth must be at most {}", fhir::sync::MAX_REFERENCE_DEPTH));
        }
        options.max_reference_depth = depth;
    }
    if request.everything {
        options.fetch = ClinicalFetch::Everything;
    }
    Ok(options)
}

async fn create_job(
    State(state): State<SyncState>,
    headers: HeaderMap,
    body: Result<Json<JobRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let caller = authorize(&state, &headers).await?;
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let options = job_options(&request).map_err(Problem::bad_request)?;
    let source = state.servers.client("source", request.source.trim())?;
    let target = state.servers.client("target", request.target.trim())?;
    if source.base_url() == target.base_url() {
        return Err(Problem::bad_request(format!(
            "source {:?} and target {:?} are the same server",
            request.source, request.target
        )));
    }
    let job = state
        .store
        .create_sync_job(NewSyncJob {
            source: source.name().to_owned(),
            target: target.name().to_owned(),
            patient_id: request.patient.trim().to_owned(),
            resource_types: options.resource_types.clone(),
            requested_by: caller.clone(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid { .. } => Problem::bad_request(e.to_string()),
            e => Problem::store("recording the sync job", &e),
        })?;
    // Who started which job: the job id only, the patient is in the job.
    let audit = NewAuditEvent {
        actor: caller,
        action: "sync_job".into(),
        message_id: None,
        delivery_id: None,
        detail: Some(format!("job {}", job.id)),
    };
    if let Err(e) = state.store.record_audit(audit).await {
        warn!(error = %e.summary(), "sync api: audit event not recorded");
    }
    state.jobs.spawn(source, target, job.id, job.patient_id.clone(), options);
    let location = format!("/api/sync/jobs/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(job)).into_response())
}

async fn get_job(
    State(state): State<SyncState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    authorize(&state, &headers).await?;
    let not_found = || Problem::not_found(format!("no sync job {id:?}"));
    let job_id: SyncJobId = id.parse().map_err(|_| not_found())?;
    match state.store.sync_job(job_id).await {
        Ok(Some(job)) => Ok(Json(job).into_response()),
        Ok(None) => Err(not_found()),
        Err(e) => Err(Problem::store("reading the sync job", &e)),
    }
}

#[derive(Debug, Deserialize)]
struct JobListParams {
    limit: Option<u32>,
    before: Option<String>,
}

async fn list_jobs(
    State(state): State<SyncState>,
    headers: HeaderMap,
    params: Result<Query<JobListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    authorize(&state, &headers).await?;
    let p = query(params)?;
    let before = match p.before.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) => Some(b.parse::<SyncJobId>().map_err(|_| Problem::bad_request("before must be a job id"))?),
        None => None,
    };
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let jobs = state
        .store
        .sync_jobs(&SyncJobQuery { before, limit })
        .await
        .map_err(|e| Problem::store("listing sync jobs", &e))?;
    let next = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id.to_string())).flatten();
    Ok(Json(json!({ "jobs": jobs, "next_before": next })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_requests_are_checked_before_anything_runs() {
        let request = |patient: &str, resources: &[&str]| JobRequest {
            source: "ehr".into(),
            target: "crm".into(),
            patient: patient.into(),
            resources: resources.iter().map(|s| (*s).to_owned()).collect(),
            depth: None,
            everything: false,
        };
        assert_eq!(job_options(&request("p1", &[])).unwrap().resource_types.len(), sync::DEFAULT_RESOURCE_TYPES.len());
        assert_eq!(job_options(&request("p1", &["all"])).unwrap().resource_types.len(), sync::ALL_RESOURCE_TYPES.len());
        assert_eq!(job_options(&request("p1", &["Observation", " "])).unwrap().resource_types, ["Observation"]);
        assert!(job_options(&request("p1", &["observation"])).unwrap_err().contains("\"observation\""));
        assert!(job_options(&request("a/b", &[])).unwrap_err().contains("patient"));
    }
}
