//! Request counts by server and status (`fhir::telemetry`), as the engine's
//! `plexus_fhir_requests_total` reports them.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use fhir::telemetry::{Answer, requests};

use crate::support::{client, serve_fhir};

#[tokio::test]
async fn every_attempt_is_counted_by_server_and_status() {
    let app = Router::new()
        .route("/fhir/Patient/1", get(|| async { (StatusCode::OK, r#"{"resourceType":"Patient","id":"1"}"#) }))
        .route("/fhir/Patient/2", get(|| async { StatusCode::NOT_FOUND }));
    // A name of its own: other tests in this process count under theirs.
    let c = client("telemetry-it", &serve_fhir(app).await);
    c.read("Patient", "1").await.unwrap();
    c.read("Patient", "1").await.unwrap();
    assert!(c.read("Patient", "2").await.is_err());
    let mine: Vec<(Answer, u64)> =
        requests().into_iter().filter(|(s, _, _)| s == "telemetry-it").map(|(_, a, n)| (a, n)).collect();
    assert_eq!(mine, vec![(Answer::Status(200), 2), (Answer::Status(404), 1)]);
}
