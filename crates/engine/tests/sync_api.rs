//! `/api/sync/*` through the router: refusals (401, 403, 400 naming the
//! unknown server, 404) with `Router::oneshot` on a SQLite store with real
//! tokens, and a real job between two FHIR peers (the Synthea patient from
//! an EHR peer into a fresh target peer): POST the job, poll it until it
//! ends, check its counts; a second job creates and updates nothing.
//!
//! Jobs cut off: a running engine stopped while a job waits on a FHIR
//! server that never answers records it as interrupted; an engine started
//! on a store where a stopped server left jobs unfinished records them as
//! interrupted; on a shared store only jobs older than the threshold count.

mod ops_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engine::api::auth::{Auth, Scope, issue_token};
use engine::api::sync::{SyncServers, router};
use engine::flows::patient_sync::{
    Abandoned, INTERRUPTED_BY_STOP, INTERRUPTED_FOUND_AT_START, JobRunner, STALE_AFTER, fail_abandoned_jobs,
};
use fhir::{FhirClient, ServerConfig};
use ops_support::{Harness, config, eventually, json_of, open_store};
use serde_json::{Value, json};
use store::{Clock, NewSyncJob, Store, StoreOptions, SyncJobId, SyncJobOutcome, SyncJobStatus, SyncJobUpdate};
use testkit::FhirPeer;
use tower::ServiceExt as _;

struct Api {
    router: Router,
    store: Arc<dyn Store>,
    sync_token: String,
    read_token: String,
    _dir: tempfile::TempDir,
}

async fn api(servers: &[(&str, &str)]) -> Api {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let sync_token = issue_token(store.as_ref(), "sync-ops", &[Scope::Sync], None).await.expect("token").bearer;
    let read_token = issue_token(store.as_ref(), "reader", &[Scope::MessagesRead], None).await.expect("token").bearer;
    let configs: BTreeMap<String, ServerConfig> = servers
        .iter()
        .map(|(name, base)| ((*name).to_owned(), ServerConfig::new(url::Url::parse(base).expect("url"))))
        .collect();
    let router =
        router(JobRunner::new(Arc::clone(&store)), SyncServers::from_config(&configs), Auth::new(Arc::clone(&store)));
    Api { router, store, sync_token, read_token, _dir: dir }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = match body {
            Some(b) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("answer");
        let status = response.status();
        let content_type =
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, content_type, json)
    }
}

#[tokio::test]
async fn refusals_are_problems_with_the_right_status() {
    let api = api(&[("ehr", "http://127.0.0.1:9/fhir"), ("crm", "http://127.0.0.1:10/fhir")]).await;
    let job = json!({"source": "ehr", "target": "crm", "patient": "p1"});

    // 401: no token, a malformed token.
    for token in [None, Some("plx_nonsense")] {
        for (method, uri) in [("GET", "/api/sync/jobs"), ("GET", "/api/sync/patients?source=ehr&family=X")] {
            let (status, ct, body) = api.call(method, uri, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} with {token:?}");
            assert_eq!(ct, "application/problem+json");
            assert_eq!(body["status"], 401);
        }
        let (status, _, _) = api.call("POST", "/api/sync/jobs", token, Some(job.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // 403: a valid token without the sync scope; nothing recorded.
    let (status, ct, body) = api.call("POST", "/api/sync/jobs", Some(&api.read_token), Some(job.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(ct, "application/problem+json");
    assert!(body["detail"].as_str().unwrap_or("").contains("sync"), "{body}");
    assert!(api.store.sync_jobs(&store::SyncJobQuery::default()).await.expect("list").is_empty());

    let t = Some(api.sync_token.as_str());
    // 400: unknown server names, named in the answer.
    let (status, ct, body) = api
        .call("POST", "/api/sync/jobs", t, Some(json!({"source": "ehr", "target": "nowhere", "patient": "p1"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ct, "application/problem+json");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains("\"nowhere\"") && detail.contains("crm, ehr"), "{detail}");
    let (status, _, body) = api.call("GET", "/api/sync/patients?source=epic&family=Smith", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap_or("").contains("\"epic\""), "{body}");
    // 400: bad requests.
    for bad in [
        json!({"source": "ehr", "target": "ehr", "patient": "p1"}),
        json!({"source": "ehr", "target": "crm", "patient": "a/b"}),
        json!({"source": "ehr", "target": "crm", "patient": "p1", "resources": ["observation"]}),
        json!({"source": "ehr", "target": "crm"}),
        json!({"source": "ehr", "target": "crm", "patient": "p1", "colour": "blue"}),
    ] {
        let (status, ct, _) = api.call("POST", "/api/sync/jobs", t, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(ct, "application/problem+json", "{bad}");
    }
    let (status, _, _) = api.call("GET", "/api/sync/patients?source=ehr", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no name");
    let (status, _, _) = api.call("GET", "/api/sync/patients?source=ehr&family=X&limit=many", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "bad limit");
    let (status, _, _) = api.call("GET", "/api/sync/jobs?before=yesterday", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "bad cursor");
    assert!(api.store.sync_jobs(&store::SyncJobQuery::default()).await.expect("list").is_empty());

    // 404: unknown job ids, well-formed or not.
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-job".to_owned()] {
        let (status, ct, _) = api.call("GET", &format!("/api/sync/jobs/{id}"), t, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(ct, "application/problem+json");
    }
    // 502: the source server is down (port 9 answers nothing), with its name.
    let (status, ct, body) = api.call("GET", "/api/sync/patients?source=ehr&family=X", t, None).await;
    assert!(status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT, "{status}");
    assert_eq!(ct, "application/problem+json");
    assert!(body["detail"].as_str().unwrap_or("").starts_with("ehr: "), "{body}");

    let (status, _, body) = api.call("GET", "/api/sync/servers", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"servers": [{"name": "crm"}, {"name": "ehr"}]}));
}

#[tokio::test]
async fn a_configured_server_without_its_secret_is_a_503_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let mut crm = ServerConfig::new(url::Url::parse("http://127.0.0.1:10/fhir").expect("url"));
    crm.auth = fhir::AuthConfig::Bearer { token_env: "PLEXUS_TEST_UNSET_CRM_TOKEN".into() };
    let ehr = ServerConfig::new(url::Url::parse("http://127.0.0.1:9/fhir").expect("url"));
    let servers = BTreeMap::from([("crm".to_owned(), crm), ("ehr".to_owned(), ehr)]);
    let api = Api {
        router: router(JobRunner::new(Arc::clone(&store)), SyncServers::from_config(&servers), Auth::disabled()),
        store,
        sync_token: String::new(),
        read_token: String::new(),
        _dir: dir,
    };
    let job = json!({"source": "ehr", "target": "crm", "patient": "p1"});
    let (status, ct, body) = api.call("POST", "/api/sync/jobs", None, Some(job)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(ct, "application/problem+json");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains("\"crm\"") && detail.contains("PLEXUS_TEST_UNSET_CRM_TOKEN"), "{detail}");
    assert!(api.store.sync_jobs(&store::SyncJobQuery::default()).await.expect("list").is_empty());
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/tests/fixtures").join(name)
}

/// Loads the Synthea bundle into `ehr`; returns the patient's id there.
async fn load_ehr(ehr: &FhirClient) -> String {
    let text = std::fs::read_to_string(fixture("synthea-patient-bundle.json")).expect("bundle fixture");
    let bundle: Value = serde_json::from_str(&text).expect("bundle json");
    let response = ehr.transaction(&bundle).await.expect("load the bundle");
    let entries = fhir::bundle::entry_responses(&response);
    assert_eq!(entries.len(), 319);
    entries
        .iter()
        .filter_map(|e| e.written_key())
        .find(|k| k.resource_type == "Patient")
        .expect("the patient's location")
        .id
}

/// Polls the job until its status is final; returns it and the progress
/// phases seen on the way.
async fn wait_for(api: &Api, id: &str) -> (Value, Vec<String>) {
    let mut phases = Vec::new();
    for _ in 0..1200 {
        let (status, _, job) = api.call("GET", &format!("/api/sync/jobs/{id}"), Some(&api.sync_token), None).await;
        assert_eq!(status, StatusCode::OK);
        if let Some(phase) = job["progress"]["phase"].as_str()
            && phases.last().map(String::as_str) != Some(phase)
        {
            phases.push(phase.to_owned());
        }
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return (job, phases);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not end within two minutes");
}

fn total(job: &Value, what: &str) -> u64 {
    job["counts"].as_object().expect("counts").values().map(|c| c[what].as_u64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_syncs_the_synthea_patient_between_two_peers() {
    let suite = "engine::sync_api::a_job_syncs_the_synthea_patient_between_two_peers";
    let Some(ehr_peer) = FhirPeer::start(suite) else { return };
    let Some(crm_peer) = FhirPeer::start(suite) else { return };
    let api = api(&[("ehr", &ehr_peer.base_url), ("crm", &crm_peer.base_url)]).await;
    let ehr =
        FhirClient::new("ehr", &ServerConfig::new(url::Url::parse(&ehr_peer.base_url).expect("url"))).expect("client");
    let patient = load_ehr(&ehr).await;
    let t = Some(api.sync_token.as_str());

    // The candidates, by name and birth date.
    let (status, _, found) = api
        .call("GET", "/api/sync/patients?source=ehr&family=Brekke496&given=Aaron697&birthdate=1945-12-10", t, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let candidates = found["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 1, "{found}");
    assert_eq!(candidates[0]["id"], patient.as_str());

    let request = json!({"source": "ehr", "target": "crm", "patient": patient, "resources": ["all"]});
    let (status, _, job) = api.call("POST", "/api/sync/jobs", t, Some(request.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["requested_by"], "sync-ops");
    let id = job["id"].as_str().expect("id").to_owned();
    let (job, phases) = wait_for(&api, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(total(&job, "fetched"), 319, "{job}");
    assert_eq!(total(&job, "created"), 319, "{job}");
    assert_eq!(total(&job, "failed"), 0, "{job}");
    assert_eq!(job["counts"]["Patient"]["created"], 1);
    assert_eq!(job["counts"]["Observation"]["created"], job["counts"]["Observation"]["fetched"]);
    assert!(job["started_at"].is_string() && job["finished_at"].is_string(), "{job}");
    assert_eq!(job["report"]["status"], "succeeded");
    // The last progress stored is the end of the write phase.
    assert_eq!(job["progress"]["phase"], "write", "{job}");
    assert_eq!(job["progress"]["done"], job["progress"]["total"], "{job}");
    assert!(!phases.is_empty());

    // The target holds what the EHR holds.
    let crm =
        FhirClient::new("crm", &ServerConfig::new(url::Url::parse(&crm_peer.base_url).expect("url"))).expect("client");
    let observations = crm
        .search_all(&fhir::Search::new("Observation").param("_count", "1000"))
        .await
        .expect("search")
        .resources
        .len() as u64;
    assert_eq!(Some(observations), job["counts"]["Observation"]["created"].as_u64());

    // A second job writes nothing; both are listed, newest first.
    let (status, _, second) = api.call("POST", "/api/sync/jobs", t, Some(request)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second_id = second["id"].as_str().expect("id").to_owned();
    let (second, _) = wait_for(&api, &second_id).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!((total(&second, "created"), total(&second, "updated")), (0, 0), "{second}");
    assert_eq!(total(&second, "unchanged"), 319);
    // It started from the first job's target ids: one batch of reads by id.
    assert_eq!(second["report"]["requests"]["target"]["requests"], 1, "{}", second["report"]["requests"]);
    assert_eq!(second["report"]["target_ids"], job["report"]["target_ids"]);

    let (status, _, list) = api.call("GET", "/api/sync/jobs?limit=10", t, None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["id"].as_str()).collect();
    assert_eq!(ids, [second_id.as_str(), id.as_str()]);
    assert!(list["jobs"][0]["report"].is_null(), "listings leave the report out");
    api.store.close().await;
}

/// An HTTP server that accepts connections and never answers: a job
/// reading from it runs until something stops it.
async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// The `[fhir_servers]` of an engine syncing from `ehr` to a target that
/// nothing serves.
fn fhir_servers(ehr: SocketAddr) -> String {
    format!(
        "[fhir_servers.ehr]\nbase_url = \"http://{ehr}/fhir\"\n[fhir_servers.crm]\nbase_url = \"http://127.0.0.1:9/fhir\"\n"
    )
}

#[tokio::test]
async fn a_graceful_stop_records_its_running_jobs_as_interrupted() {
    let h = Harness::start(&fhir_servers(silent_server().await)).await;
    let token = h.token("sync-ops", &[Scope::Sync]).await;
    let request = reqwest::Client::new()
        .post(format!("http://{}/api/sync/jobs", h.api()))
        .bearer_auth(&token)
        .json(&json!({"source": "ehr", "target": "crm", "patient": "p1"}));
    let (status, job) = json_of(request.send().await.expect("POST")).await;
    assert_eq!(status, 202, "{job}");
    let id: SyncJobId = job["id"].as_str().expect("id").parse().expect("a job id");
    eventually("the job runs (waiting on the silent EHR)", async || {
        h.store().sync_job(id).await.unwrap().unwrap().status == SyncJobStatus::Running
    })
    .await;
    let dir = h.stop().await;

    // What the stopped engine left in its store.
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let job = store.sync_job(id).await.unwrap().expect("the job");
    assert_eq!(job.status, SyncJobStatus::Failed, "{job:?}");
    assert_eq!(job.error.as_deref(), Some(INTERRUPTED_BY_STOP));
    assert!(job.finished_at.is_some(), "{job:?}");
    store.close().await;
}

fn new_job(requested_by: &str) -> NewSyncJob {
    NewSyncJob {
        source: "ehr".into(),
        target: "crm".into(),
        patient_id: "p1".into(),
        resource_types: vec!["Observation".into()],
        requested_by: requested_by.into(),
    }
}

/// Records a job, started when `started`.
async fn record_job(store: &dyn Store, requested_by: &str, started: bool) -> SyncJobId {
    let id = store.create_sync_job(new_job(requested_by)).await.expect("create").id;
    if started {
        store.update_sync_job(id, SyncJobUpdate::Started).await.expect("start");
    }
    id
}

#[tokio::test]
async fn a_restart_records_the_jobs_a_stopped_server_left_unfinished_as_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    // What a killed server leaves behind: a job queued, one running, one
    // that had finished.
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let queued = record_job(store.as_ref(), "queued", false).await;
    let running = record_job(store.as_ref(), "running", true).await;
    let finished = record_job(store.as_ref(), "finished", true).await;
    let outcome =
        SyncJobOutcome { status: SyncJobStatus::Succeeded, counts: BTreeMap::new(), error: None, report: None };
    store.update_sync_job(finished, SyncJobUpdate::Finished(outcome)).await.expect("finish");
    store.close().await;

    let config = config(dir.path(), &fhir_servers(silent_server().await));
    let h = Harness::start_in(dir, config).await;
    for id in [queued, running] {
        let job = h.store().sync_job(id).await.unwrap().expect("the job");
        assert_eq!(job.status, SyncJobStatus::Failed, "{job:?}");
        assert_eq!(job.error.as_deref(), Some(INTERRUPTED_FOUND_AT_START));
        assert!(job.finished_at.is_some(), "{job:?}");
    }
    let job = h.store().sync_job(finished).await.unwrap().expect("the job");
    assert_eq!((job.status, job.error), (SyncJobStatus::Succeeded, None), "a final status never changes");
    // The API shows it too.
    let token = h.token("sync-ops", &[Scope::Sync]).await;
    let request = reqwest::Client::new().get(format!("http://{}/api/sync/jobs/{running}", h.api())).bearer_auth(&token);
    let (status, job) = json_of(request.send().await.expect("GET")).await;
    assert_eq!((status, job["status"].as_str()), (200, Some("failed")), "{job}");
    assert_eq!(job["error"], INTERRUPTED_FOUND_AT_START);
    h.stop().await;
}

/// On PostgreSQL or MariaDB other processes may be running the unfinished
/// jobs: only those whose last record is older than the threshold are
/// taken for abandoned (the rule is the same on every backend; SQLite with
/// a manual clock plays the shared store).
#[tokio::test]
async fn on_a_shared_store_only_jobs_older_than_the_threshold_are_abandoned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Clock::manual(chrono::Utc::now());
    let store = open_store(dir.path(), StoreOptions { clock: clock.clone(), ..StoreOptions::default() }).await;
    let old_queued = record_job(store.as_ref(), "old-queued", false).await;
    let old_running = record_job(store.as_ref(), "old-running", true).await;
    let started_late = record_job(store.as_ref(), "started-late", false).await;
    clock.advance(STALE_AFTER - Duration::from_secs(600));
    store.update_sync_job(started_late, SyncJobUpdate::Started).await.expect("start");
    let recent = record_job(store.as_ref(), "recent", true).await;
    clock.advance(Duration::from_secs(1200));

    let failed = fail_abandoned_jobs(store.as_ref(), Abandoned::OlderThan(STALE_AFTER)).await.expect("checked");
    assert_eq!(failed, 2);
    for (id, status) in [
        (old_queued, SyncJobStatus::Failed),
        (old_running, SyncJobStatus::Failed),
        (started_late, SyncJobStatus::Running),
        (recent, SyncJobStatus::Running),
    ] {
        let job = store.sync_job(id).await.unwrap().expect("the job");
        assert_eq!(job.status, status, "{}", job.requested_by);
        let error = (status == SyncJobStatus::Failed).then_some(INTERRUPTED_FOUND_AT_START);
        assert_eq!(job.error.as_deref(), error, "{}", job.requested_by);
    }
    // Once recorded, a second check finds nothing more.
    assert_eq!(fail_abandoned_jobs(store.as_ref(), Abandoned::OlderThan(STALE_AFTER)).await.expect("checked"), 0);
    store.close().await;
}
