//! The patient sync against small axum servers, for source and target
//! behaviour the peers do not have.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fhir::FhirClient;
use fhir::sync::{self, SyncOptions, SyncStatus};
use serde_json::{Value, json};

use crate::support::{fast_config, serve_fhir};

fn fhir_json(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/fhir+json")], body.to_string()).into_response()
}

fn searchset(resources: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "searchset", "total": resources.len(),
           "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()})
}

/// A client of `base` that sends one request per read and write (no batch
/// or transaction Bundles), so a mock needs plain routes only.
fn plain_client(name: &str, base: &str) -> FhirClient {
    let mut config = fast_config(base);
    config.batches = false;
    config.transactions = false;
    FhirClient::new(name, &config).expect("client")
}

/// A target that holds nothing and accepts every conditional update (201),
/// recording `METHOD path` of each write and the resources written.
async fn empty_target() -> (FhirClient, Arc<Mutex<Vec<Value>>>) {
    let written: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = Arc::clone(&written);
    let app = Router::new().fallback(move |req: Request| {
        let log = Arc::clone(&log);
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.expect("body");
            if method == Method::GET {
                return fhir_json(StatusCode::OK, searchset(vec![]));
            }
            let mut resource: Value = serde_json::from_slice(&body).expect("resource");
            let mut guard = log.lock().expect("lock");
            resource["id"] = json!(format!("t{}", guard.len() + 1));
            guard.push(resource.clone());
            let t = path.rsplit('/').next().unwrap_or("").to_owned();
            let location = format!("/fhir/{t}/{}/_history/1", resource["id"].as_str().unwrap_or(""));
            (StatusCode::CREATED, [(header::LOCATION, location)], Json(resource)).into_response()
        }
    });
    (plain_client("crm", &serve_fhir(app).await), written)
}

#[tokio::test]
async fn resources_of_other_patients_from_a_source_that_ignores_the_patient_parameter_are_not_synced() {
    // The source ignores `patient` on Observation searches and answers with
    // every Observation it has, another patient's among them.
    let app = Router::new().fallback(|req: Request| async move {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/fhir/Patient/p" => fhir_json(StatusCode::OK, json!({"resourceType": "Patient", "id": "p"})),
            "/fhir/Observation" => fhir_json(
                StatusCode::OK,
                searchset(vec![
                    json!({"resourceType": "Observation", "id": "mine", "status": "final", "code": {"text": "a"},
                           "subject": {"reference": "Patient/p"}}),
                    json!({"resourceType": "Observation", "id": "theirs", "status": "final", "code": {"text": "HIV"},
                           "subject": {"reference": "Patient/someone-else"}}),
                ]),
            ),
            _ => fhir_json(StatusCode::NOT_FOUND, json!({"resourceType": "OperationOutcome", "issue": []})),
        }
    });
    let source = plain_client("ehr", &serve_fhir(app).await);
    let (target, written) = empty_target().await;
    let report =
        sync::sync_patient(&source, &target, "p", &SyncOptions::for_types(&["Observation"]), &sync::NoProgress).await;

    let written = written.lock().expect("lock").clone();
    let codes: Vec<&str> = written.iter().filter_map(|r| r["code"]["text"].as_str()).collect();
    assert_eq!(codes, vec!["a"], "only the patient's own Observation is written: {written:#?}");
    assert!(
        !written.iter().any(|r| r.to_string().contains("someone-else")),
        "nothing of the other patient reaches the target"
    );
    assert_eq!(report.status, SyncStatus::PartiallyFailed, "{report:#?}");
    assert_eq!(report.fetch_errors.len(), 1, "{report:#?}");
    assert_eq!(report.fetch_errors[0].resource_type, "Observation");
    assert!(report.fetch_errors[0].reason.contains("do not reference the patient"), "{report:#?}");
    assert_eq!(report.per_type["Observation"].fetched, 1);
}

#[tokio::test]
async fn a_reference_depth_over_the_limit_fails_the_run_before_any_request() {
    let (source, _) = empty_target().await;
    let (target, written) = empty_target().await;
    let options = SyncOptions { max_reference_depth: sync::MAX_REFERENCE_DEPTH + 1, ..SyncOptions::default() };
    let report = sync::sync_patient(&source, &target, "p", &options, &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Failed, "{report:#?}");
    let error = report.error.expect("the run's error");
    assert!(error.message.contains("reference depth 11 is over the limit of 10"), "{error:?}");
    assert_eq!(report.requests.source.requests + report.requests.target.requests, 0, "nothing sent");
    assert!(written.lock().expect("lock").is_empty());

    // The limit itself is allowed.
    let options = SyncOptions { max_reference_depth: sync::MAX_REFERENCE_DEPTH, ..SyncOptions::default() };
    let report = sync::sync_patient(&source, &target, "p", &options, &sync::NoProgress).await;
    assert!(report.error.as_ref().is_none_or(|e| !e.message.contains("over the limit")), "{report:#?}");
}
