//! The REST client against small axum servers on 127.0.0.1:0: retries and
//! their limits, OperationOutcome errors, paging, gzip, conditional headers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post, put};
use fhir::{ErrorClass, FhirClient, FhirError, Search};
use serde_json::{Value, json};

use crate::support::{client, fast_config, mock_client, serve_fhir};

fn fhir_json(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/fhir+json")], body.to_string()).into_response()
}

fn outcome(code: &str, diagnostics: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]})
}

fn patient(id: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "meta": {"versionId": "1"}})
}

/// Counts the requests a mock route got.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

/// A mock server with one route whose handler counts its requests (with
/// `State<Hits>`); returns it and the counter.
fn counted(path: &str, route: MethodRouter<Hits>) -> (Router, Hits) {
    let hits = Hits::default();
    (Router::new().route(path, route).with_state(hits.clone()), hits)
}

impl Hits {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn server_answering_503_twice_then_200_is_retried() {
    let (app, hits) = counted(
        "/fhir/Patient/{id}",
        get(|State(hits): State<Hits>| async move {
            if hits.next() <= 2 {
                fhir_json(StatusCode::SERVICE_UNAVAILABLE, outcome("transient", "warming up"))
            } else {
                fhir_json(StatusCode::OK, patient("1"))
            }
        }),
    );
    let c = mock_client(app).await;
    let p = c.read("Patient", "1").await.expect("third attempt succeeds");
    assert_eq!(p["id"], "1");
    assert_eq!(hits.get(), 3);
    let stats = c.stats();
    assert_eq!((stats.requests, stats.retries), (3, 2));
}

#[tokio::test]
async fn bad_request_with_operation_outcome_reports_its_diagnostics() {
    let (app, hits) = counted(
        "/fhir/Patient",
        post(|State(hits): State<Hits>| async move {
            hits.next();
            fhir_json(
                StatusCode::BAD_REQUEST,
                json!({"resourceType": "OperationOutcome", "issue": [{
                    "severity": "error", "code": "invalid",
                    "diagnostics": "Patient.birthDate: '20-03-1962' is not a valid date",
                    "expression": ["Patient.birthDate"]}]}),
            )
        }),
    );
    let c = mock_client(app).await;
    let err = c.create(&json!({"resourceType": "Patient", "birthDate": "20-03-1962"})).await.expect_err("rejected");
    assert_eq!(hits.get(), 1, "a 400 is not retried");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.class(), ErrorClass::Permanent);
    let outcome = err.outcome().expect("typed outcome");
    assert_eq!(outcome.issues[0].code, "invalid");
    assert_eq!(outcome.issues[0].expression, vec!["Patient.birthDate"]);
    assert_eq!(
        err.to_string(),
        "mock: POST Patient: HTTP 400: error invalid: Patient.birthDate: '20-03-1962' is not a \
         valid date at Patient.birthDate"
    );
}

#[tokio::test]
async fn retries_stop_at_the_configured_limit() {
    let (app, hits) = counted(
        "/fhir/Patient/{id}",
        get(|State(hits): State<Hits>| async move {
            hits.next();
            fhir_json(StatusCode::BAD_GATEWAY, json!({}))
        }),
    );
    let mut config = fast_config(&serve_fhir(app).await);
    config.retry.max_retries = 2;
    let c = FhirClient::new("mock", &config).expect("client");
    let err = c.read("Patient", "1").await.expect_err("always 502");
    assert_eq!(hits.get(), 3, "one attempt and two retries");
    assert_eq!((err.status(), err.class()), (Some(502), ErrorClass::Transient));
}

#[tokio::test]
async fn retry_after_is_honoured_and_too_long_a_wait_is_not_retried() {
    let (app, hits) = counted(
        "/fhir/Patient/{id}",
        get(|State(hits): State<Hits>, axum::extract::Path(id): axum::extract::Path<String>| async move {
            let n = hits.next();
            if id == "long" {
                // An hour: beyond the client's cap, so no retry.
                return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "3600")], "").into_response();
            }
            if n == 1 {
                (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "0")], "").into_response()
            } else {
                fhir_json(StatusCode::OK, patient(&id))
            }
        }),
    );
    let c = mock_client(app).await;
    c.read("Patient", "short").await.expect("retried after Retry-After: 0");
    assert_eq!(hits.get(), 2);

    let err = c.read("Patient", "long").await.expect_err("not retried");
    assert_eq!(hits.get(), 3);
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(matches!(
        err,
        FhirError::Status { status: 429, retry_after: Some(d), .. } if d.as_secs() == 3600
    ));
}

#[tokio::test]
async fn a_plain_create_is_not_retried_after_a_502_but_a_conditional_one_is() {
    let (app, hits) = counted(
        "/fhir/Patient",
        post(|State(hits): State<Hits>, headers: HeaderMap| async move {
            let n = hits.next();
            if n == 1 || (n == 2 && headers.contains_key("if-none-exist")) {
                fhir_json(StatusCode::BAD_GATEWAY, json!({}))
            } else {
                fhir_json(StatusCode::CREATED, patient("new"))
            }
        }),
    );
    let c = mock_client(app).await;
    // The proxy may have passed the create on before failing: sending it
    // again could create the patient twice.
    let err = c.create(&json!({"resourceType": "Patient"})).await.expect_err("not retried");
    assert_eq!((err.status(), hits.get()), (Some(502), 1));
    let ok = c
        .create_if_none_exist(&json!({"resourceType": "Patient"}), &[("identifier", "s|1")])
        .await
        .expect("retried: the condition makes it idempotent");
    assert!(ok.created());
    assert_eq!(hits.get(), 3);
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let (app, hits) = counted(
        "/fhir/Patient/{id}",
        get(|State(hits): State<Hits>| async move {
            hits.next();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            fhir_json(StatusCode::OK, patient("1"))
        }),
    );
    let mut config = fast_config(&serve_fhir(app).await);
    config.request_timeout_secs = 1;
    config.retry.max_retries = 1;
    let c = FhirClient::new("mock", &config).expect("client");
    let err = c.read("Patient", "1").await.expect_err("times out");
    assert!(matches!(err, FhirError::Timeout { attempts: 2, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn search_follows_next_links_and_refuses_other_hosts() {
    let app = Router::new().route(
        "/fhir/Observation",
        get(|req: Request| async move {
            let query = req.uri().query().unwrap_or("").to_owned();
            let page = |ids: &[&str], next: Option<String>| {
                let mut b = json!({"resourceType": "Bundle", "type": "searchset",
                    "entry": ids.iter().map(|id| json!({"resource": {"resourceType": "Observation", "id": id},
                                                         "search": {"mode": "match"}})).collect::<Vec<_>>()});
                if let Some(next) = next {
                    b["link"] = json!([{"relation": "next", "url": next}]);
                }
                b
            };
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
            if query.contains("page=2") {
                fhir_json(StatusCode::OK, page(&["c"], None))
            } else if query.contains("code=evil") {
                fhir_json(StatusCode::OK, page(&["a"], Some("http://203.0.113.9/fhir/Observation?page=2".into())))
            } else {
                fhir_json(StatusCode::OK, page(&["a", "b"], Some(format!("http://{host}/fhir/Observation?page=2"))))
            }
        }),
    );
    let c = mock_client(app).await;
    let all = c.search_all(&Search::new("Observation").param("patient", "Patient/1")).await.expect("pages");
    let ids: Vec<&str> = all.resources.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    assert_eq!(all.pages, 2);
    assert_eq!(c.stats().paging_requests, 1);

    let err = c.search_all(&Search::new("Observation").param("code", "evil")).await.expect_err("foreign link");
    assert!(err.to_string().contains("another server"), "{err}");
}

#[tokio::test]
async fn total_without_links_and_ignored_offset_is_an_error_not_a_short_result() {
    // A server that reports 5 matches, sends 2, no link, and ignores
    // _offset: returning 2 would silently lose 3 resources.
    let app = Router::new().route(
        "/fhir/Condition",
        get(|| async {
            fhir_json(
                StatusCode::OK,
                json!({"resourceType": "Bundle", "type": "searchset", "total": 5,
                "entry": [{"resource": {"resourceType": "Condition", "id": "1"}},
                          {"resource": {"resourceType": "Condition", "id": "2"}}]}),
            )
        }),
    );
    let c = mock_client(app).await;
    let err = c.search_all(&Search::new("Condition")).await.expect_err("truncated");
    assert!(err.to_string().contains("ignores _offset"), "{err}");
}

#[tokio::test]
async fn responses_are_gzip_decoded() {
    let app = Router::new()
        .route(
            "/fhir/Patient/{id}",
            get(|headers: HeaderMap| async move {
                let accepts =
                    headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let mut p = patient("1");
                p["note"] = json!("x".repeat(4096));
                p["acceptEncoding"] = json!(accepts);
                fhir_json(StatusCode::OK, p)
            }),
        )
        // Compresses only when the request accepts gzip: a client that
        // did not ask, or could not decode, fails the assertions below.
        .layer(tower_http::compression::CompressionLayer::new().gzip(true));
    let c = mock_client(app).await;
    let p = c.read("Patient", "1").await.expect("decoded");
    assert!(p["acceptEncoding"].as_str().is_some_and(|a| a.contains("gzip")), "{}", p["acceptEncoding"]);
    assert_eq!(p["note"].as_str().map(str::len), Some(4096));
}

#[tokio::test]
async fn conditional_writes_send_the_right_urls_and_headers() {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let record = |seen: Arc<std::sync::Mutex<Vec<String>>>| {
        move |req: Request| {
            let seen = seen.clone();
            async move {
                let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                seen.lock().expect("lock").push(format!(
                    "{} {} if-match={} if-none-exist={} prefer={} type={}",
                    req.method(),
                    req.uri(),
                    h("if-match"),
                    h("if-none-exist"),
                    h("prefer"),
                    h("content-type"),
                ));
                let status = if req.method() == axum::http::Method::PUT { StatusCode::OK } else { StatusCode::CREATED };
                (status, [(header::LOCATION, "Patient/9/_history/2"), (header::ETAG, "W/\"2\"")], "").into_response()
            }
        }
    };
    let app = Router::new()
        .route("/fhir/Patient", any(record(seen.clone())))
        .route("/fhir/Patient/{id}", put(record(seen.clone())));
    let c = mock_client(app).await;
    let p = json!({"resourceType": "Patient", "id": "9"});
    let w = c.update_if_match(&p, "1").await.expect("update");
    assert_eq!((w.status, w.key.as_ref().map(|k| k.id.as_str()), w.version_id.as_deref()), (200, Some("9"), Some("2")));
    let w = c.conditional_update(&p, &[("identifier", "urn:mrn|A,1")]).await.expect("conditional update");
    assert_eq!(w.key.map(|k| k.id), Some("9".into()), "the id comes from Location when there is no body");
    c.create_if_none_exist(&p, &[("identifier", "urn:mrn|A")]).await.expect("conditional create");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            "PUT /fhir/Patient/9 if-match=W/\"1\" if-none-exist=- prefer=return=representation type=application/fhir+json",
            "PUT /fhir/Patient?identifier=urn%3Amrn%7CA%2C1 if-match=- if-none-exist=- prefer=return=representation type=application/fhir+json",
            "POST /fhir/Patient if-match=- if-none-exist=identifier=urn%3Amrn%7CA prefer=return=representation type=application/fhir+json",
        ]
    );
}

#[tokio::test]
async fn search_post_sends_a_form_body() {
    let app = Router::new().route(
        "/fhir/Patient/_search",
        post(|headers: HeaderMap, body: String| async move {
            let ok = headers.get(header::CONTENT_TYPE).is_some_and(|v| v == "application/x-www-form-urlencoded")
                && body == "family=Brekke&birthdate=1945-12-10&_count=200";
            if ok {
                fhir_json(StatusCode::OK, json!({"resourceType": "Bundle", "type": "searchset", "total": 0}))
            } else {
                fhir_json(StatusCode::BAD_REQUEST, outcome("invalid", &body))
            }
        }),
    );
    let c = mock_client(app).await;
    let page = c
        .search_post(&Search::new("Patient").param("family", "Brekke").param("birthdate", "1945-12-10"))
        .await
        .expect("form search");
    assert_eq!(page["total"], 0);
}

#[tokio::test]
async fn everything_reads_every_page_of_the_operation() {
    let app = Router::new().route(
        "/fhir/Patient/p1/$everything",
        get(|req: Request| async move {
            let q = req.uri().query().unwrap_or("").to_owned();
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
            if q.contains("page=2") {
                fhir_json(
                    StatusCode::OK,
                    json!({"resourceType": "Bundle", "type": "searchset",
                    "entry": [{"resource": {"resourceType": "Observation", "id": "o1"}}]}),
                )
            } else if q != "_type=Observation%2CCondition" {
                fhir_json(StatusCode::BAD_REQUEST, outcome("invalid", &q))
            } else {
                fhir_json(
                    StatusCode::OK,
                    json!({"resourceType": "Bundle", "type": "searchset",
                    "link": [{"relation": "next", "url": format!("http://{host}/fhir/Patient/p1/$everything?page=2")}],
                    "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}},
                              {"resource": {"resourceType": "Condition", "id": "c1"}}]}),
                )
            }
        }),
    );
    let c = mock_client(app).await;
    let all = c.patient_everything("p1", &[("_type", "Observation,Condition")]).await.expect("everything");
    let ids: Vec<&str> = all.resources.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, vec!["p1", "c1", "o1"]);
}

#[tokio::test]
async fn a_rejected_batch_falls_back_to_single_reads_once() {
    let batch_hits = Hits::default();
    let app = Router::new()
        .route(
            "/fhir/",
            post(|State(hits): State<Hits>| async move {
                hits.next();
                fhir_json(StatusCode::METHOD_NOT_ALLOWED, outcome("not-supported", "no batches here"))
            }),
        )
        .route(
            "/fhir/Patient/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<String>| async move {
                if id == "gone" {
                    fhir_json(StatusCode::GONE, outcome("deleted", "deleted"))
                } else {
                    fhir_json(StatusCode::OK, patient(&id))
                }
            }),
        )
        .with_state(batch_hits.clone());
    let c = mock_client(app).await;
    let urls: Vec<String> = ["Patient/a", "Patient/gone", "Patient/b"].iter().map(|s| s.to_string()).collect();
    let answers = c.get_many(&urls).await.expect("fallback");
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].as_ref().expect("a")["id"], "a");
    assert!(answers[1].as_ref().expect_err("gone").is_not_found());
    assert_eq!(answers[2].as_ref().expect("b")["id"], "b");
    c.get_many(&urls).await.expect("again");
    assert_eq!(batch_hits.get(), 1, "the client remembers the server refuses batches");
}

#[tokio::test]
async fn requests_cannot_be_steered_by_resource_content() {
    let c = client("mock", "http://127.0.0.1:9/fhir");
    for bad in [
        json!({"resourceType": "../admin", "id": "1"}),
        json!({"resourceType": "Patient", "id": "1/../../x"}),
        json!({"resourceType": "Patient"}),
    ] {
        let err = c.update(&bad).await.expect_err("refused before sending");
        assert!(matches!(err, FhirError::InvalidRequest(_)), "{err:?}");
    }
    assert_eq!(c.stats().requests, 0);
}

#[tokio::test]
async fn included_resources_come_back_apart_from_the_matches() {
    // (The peer ignores _include, so a mock plays a server that honours it.)
    let app = Router::new().route(
        "/fhir/Observation",
        get(|req: Request| async move {
            let q = req.uri().query().unwrap_or("").to_owned();
            if !q.contains("_include=Observation%3Asubject") {
                return fhir_json(StatusCode::BAD_REQUEST, outcome("invalid", &q));
            }
            fhir_json(
                StatusCode::OK,
                json!({"resourceType": "Bundle", "type": "searchset", "total": 2,
                "entry": [
                    {"resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p"}},
                     "search": {"mode": "match"}},
                    {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
                    {"resource": {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p"}},
                     "search": {"mode": "match"}},
                    {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}
                ]}),
            )
        }),
    );
    let c = mock_client(app).await;
    let r = c
        .search_all(&Search::new("Observation").param("patient", "Patient/p").param("_include", "Observation:subject"))
        .await
        .expect("search");
    let ids = |v: &[Value]| v.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect::<Vec<_>>();
    assert_eq!(ids(&r.resources), vec!["o1", "o2"]);
    assert_eq!(ids(&r.included), vec!["p"]);
}

#[tokio::test]
async fn next_links_that_loop_back_to_an_earlier_page_are_an_error_not_an_endless_read() {
    // Page 1 links to page 2, page 2 back to page 1 (a server whose paging
    // cursor wraps around): following it would read the two pages forever.
    let (app, hits) = counted(
        "/fhir/Observation",
        get(|State(hits): State<Hits>, req: Request| async move {
            hits.next();
            let q = req.uri().query().unwrap_or("").to_owned();
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
            let (id, next) = if q.contains("page=2") { ("b", "page=1") } else { ("a", "page=2") };
            fhir_json(
                StatusCode::OK,
                json!({"resourceType": "Bundle", "type": "searchset",
                       "link": [{"relation": "next", "url": format!("http://{host}/fhir/Observation?{next}")}],
                       "entry": [{"resource": {"resourceType": "Observation", "id": id}}]}),
            )
        }),
    );
    let c = mock_client(app).await;
    let result =
        tokio::time::timeout(std::time::Duration::from_secs(10), c.search_all(&Search::new("Observation"))).await;
    let err = result.expect("ends instead of paging forever").expect_err("a looping next link");
    assert!(err.to_string().contains("earlier page"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(hits.get(), 3, "the first page, page 2, page 1 again: then it stops");
}

#[tokio::test]
async fn patient_candidates_cut_to_the_limit_are_reported_truncated() {
    // A server that ignores _count: three matches, no total, no next link.
    let app = Router::new().route(
        "/fhir/Patient",
        get(|| async {
            fhir_json(
                StatusCode::OK,
                json!({"resourceType": "Bundle", "type": "searchset",
                       "entry": (["a", "b", "c"].iter().map(|id| json!({"resource": {
                           "resourceType": "Patient", "id": id, "birthDate": "1945-12-10",
                           "name": [{"family": "Brekke", "given": [id]}]}})).collect::<Vec<_>>())}),
            )
        }),
    );
    let c = mock_client(app).await;
    let query = fhir::sync::PatientQuery {
        family: "Brekke".into(),
        birth_date: Some("1945-12-10".into()),
        ..fhir::sync::PatientQuery::default()
    };
    let found = fhir::sync::search_patients(&c, &query, 2).await.expect("search");
    let ids: Vec<&str> = found.candidates.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(found.truncated, "a third patient matched and is not shown");
    let all = fhir::sync::search_patients(&c, &query, 3).await.expect("search");
    assert_eq!((all.candidates.len(), all.truncated), (3, false));
}

#[tokio::test]
async fn a_batch_entry_answered_503_is_read_again_on_its_own() {
    let reads = Hits::default();
    let app = Router::new()
        .route(
            "/fhir/",
            post(|| async {
                fhir_json(
                    StatusCode::OK,
                    json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
                        {"resource": patient("a"), "response": {"status": "200 OK"}},
                        {"response": {"status": "503 Service Unavailable",
                                      "outcome": outcome("transient", "database busy")}},
                        {"response": {"status": "404 Not Found", "outcome": outcome("not-found", "no such patient")}}
                    ]}),
                )
            }),
        )
        .route(
            "/fhir/Patient/{id}",
            get(|State(hits): State<Hits>, axum::extract::Path(id): axum::extract::Path<String>| async move {
                hits.next();
                fhir_json(StatusCode::OK, patient(&id))
            }),
        )
        .with_state(reads.clone());
    let c = mock_client(app).await;
    let urls: Vec<String> = ["Patient/a", "Patient/b", "Patient/gone"].iter().map(|s| s.to_string()).collect();
    let answers = c.get_many(&urls).await.expect("batch");
    assert_eq!(answers[0].as_ref().expect("a")["id"], "a");
    assert_eq!(answers[1].as_ref().expect("b read again")["id"], "b");
    assert!(answers[2].as_ref().expect_err("404 stays").is_not_found());
    assert_eq!(reads.get(), 1, "only the 503 entry is read again, not the 404");
}
