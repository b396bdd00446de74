//! `$send-to-ehr` and `$tracking` over HTTP (Router::oneshot, no socket):
//! every refusal asserted with its status and diagnostics, the success
//! answer, tracking, the auth hook; and the FHIR client as patient source
//! against the FHIR server peer.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use engine::flows::send_to_ehr::api::{
    Caller, CallerAuth, MemoryTrackingStore, NoAuth, SEND_TO_EHR_SCOPE, SendToEhrState, TrackingStore, router,
};
use engine::flows::send_to_ehr::config::SendToEhrConfig;
use engine::flows::send_to_ehr::tracking::TrackingStatus;
use engine::flows::send_to_ehr::{PatientSource, Rejection, SourceError};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const PDF: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj <<>> endobj\n%%EOF\n";
const SEND: &str = "/fhir/CommunicationRequest/$send-to-ehr";

/// Patients and Encounters by id; `down` makes every read fail.
#[derive(Default)]
struct MemorySource {
    resources: HashMap<String, Value>,
    down: bool,
}

#[async_trait]
impl PatientSource for MemorySource {
    async fn patient(&self, id: &str) -> Result<Option<Value>, SourceError> {
        self.read("Patient", id)
    }
    async fn encounter(&self, id: &str) -> Result<Option<Value>, SourceError> {
        self.read("Encounter", id)
    }
}

impl MemorySource {
    fn read(&self, kind: &str, id: &str) -> Result<Option<Value>, SourceError> {
        if self.down {
            // What a FHIR client reports for a server that is down.
            return Err(SourceError::Fhir(fhir::FhirError::Status {
                context: fhir::RequestContext {
                    server: "ehr".into(),
                    method: "GET".into(),
                    path: format!("{kind}/{id}"),
                },
                status: 503,
                outcome: None,
                retry_after: None,
            }));
        }
        Ok(self.resources.get(&format!("{kind}/{id}")).cloned())
    }
}

fn source() -> MemorySource {
    let mut resources = HashMap::new();
    resources.insert(
        "Patient/p1".into(),
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
               "name": [{"family": "Durand", "given": ["Léa"]}], "birthDate": "1975-06-30"}),
    );
    resources.insert(
        "Encounter/e1".into(),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"}}),
    );
    // Names its patient by a logical identifier only: cannot be checked.
    resources.insert(
        "Encounter/e3".into(),
        json!({"resourceType": "Encounter", "id": "e3", "status": "finished",
               "subject": {"identifier": {"system": "urn:oid:1.2.3", "value": "MRN1"}}}),
    );
    resources.insert("Encounter/e2".into(), json!({"resourceType": "Encounter", "id": "e2", "status": "finished", "subject": {"reference": "Patient/other"}}));
    MemorySource { resources, down: false }
}

struct App {
    router: axum::Router,
    store: Arc<MemoryTrackingStore>,
}

fn app_with(config: SendToEhrConfig, source: MemorySource, auth: Arc<dyn CallerAuth>) -> App {
    app_on(Arc::new(MemoryTrackingStore::default()), config, source, auth)
}

/// An app over `store` (two apps on one store stand for a restart).
fn app_on(
    store: Arc<MemoryTrackingStore>,
    config: SendToEhrConfig,
    source: MemorySource,
    auth: Arc<dyn CallerAuth>,
) -> App {
    let state = SendToEhrState {
        config: Arc::new(config),
        fhir_base: "https://plexus.example/fhir".into(),
        source: Arc::new(source),
        tracking: store.clone(),
        auth,
        switch: Arc::default(),
    };
    App { router: router(state), store }
}

fn app() -> App {
    app_with(SendToEhrConfig::default(), source(), Arc::new(NoAuth))
}

async fn call(app: &App, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.router.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/fhir+json"),
        "every answer is FHIR JSON"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

async fn post(app: &App, body: &Value) -> (StatusCode, Value) {
    post_raw(app, body.to_string().into_bytes()).await
}

async fn post_raw(app: &App, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::post(SEND)
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(Body::from(body))
        .expect("request");
    call(app, request).await
}

/// POSTs `body` with these headers (`Idempotency-Key`, `Authorization`).
async fn post_with(app: &App, body: &Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = Request::post(SEND).header(header::CONTENT_TYPE, "application/fhir+json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    call(app, request.body(Body::from(body.to_string())).expect("request")).await
}

fn transaction_id(answer: &Value) -> String {
    assert_eq!(answer["parameter"][1]["name"], "transaction-id", "{answer}");
    answer["parameter"][1]["valueString"].as_str().expect("transaction id").to_string()
}

async fn track(app: &App, query: &str) -> (StatusCode, Value) {
    call(
        app,
        Request::get(format!("/fhir/CommunicationRequest/$tracking{query}")).body(Body::empty()).expect("request"),
    )
    .await
}

fn parameters(list: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": list})
}

fn body(extra: &[Value]) -> Value {
    let mut list = vec![
        json!({"name": "subject", "valueReference": {"reference": "Patient/p1"}}),
        json!({"name": "payload", "valueString": base64::engine::general_purpose::STANDARD.encode(PDF)}),
    ];
    for e in extra {
        list.retain(|p| p["name"] != e["name"]);
        if e.get("drop").is_none() {
            list.push(e.clone());
        }
    }
    parameters(Value::Array(list))
}

fn diagnostics(outcome: &Value) -> Vec<String> {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn a_valid_submission_is_stored_answered_and_tracked() {
    let app = app();
    let (status, answer) = post(
        &app,
        &body(&[
            json!({"name": "context", "valueReference": {"reference": "Encounter/e1"}}),
            json!({"name": "document-type", "valueCode": "18842-5"}),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["resourceType"], "Parameters");
    assert_eq!(answer["parameter"][1]["name"], "transaction-id");
    let tx = answer["parameter"][1]["valueString"].as_str().expect("transaction id").to_string();
    assert!(uuid::Uuid::parse_str(&tx).is_ok(), "{tx}");
    assert_eq!(answer["parameter"][0]["name"], "tracking-url");
    assert_eq!(
        answer["parameter"][0]["valueUrl"],
        format!("https://plexus.example/fhir/CommunicationRequest/$tracking?transaction-id={tx}")
    );

    let outputs = app.store.outputs(&tx).expect("stored");
    assert_eq!(outputs.title, "Durand_Léa_19750630_18842-5_MRN1");
    assert_eq!(outputs.document_reference["context"]["encounter"][0]["reference"], "Encounter/e1");
    assert_eq!(outputs.binary["data"], base64::engine::general_purpose::STANDARD.encode(PDF));

    let (status, bundle) = track(&app, &format!("?transaction-id={tx}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundle["type"], "collection");
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "Communication");
    assert_eq!(bundle["entry"][0]["resource"]["status"], "preparation");

    let mut record = app.store.get(&tx, None).await.expect("readable").expect("known");
    let sent = chrono::Utc::now();
    record.advance(TrackingStatus::InProgress, sent).expect("in progress");
    record.advance(TrackingStatus::Completed { sent }, sent).expect("completed");
    app.store.update(record);
    let (_, bundle) = track(&app, &format!("?transaction-id={tx}")).await;
    assert_eq!(bundle["entry"][0]["resource"]["status"], "completed");
    assert!(bundle["entry"][0]["resource"]["sent"].is_string());
}

#[tokio::test]
async fn every_invalid_request_gets_its_status_and_diagnostics() {
    let app = app();
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"resourceType": "Patient"}), 400, "request body: expected a FHIR Parameters resource, got Patient"),
        (
            body(&[json!({"name": "subject", "valueString": "Patient/p1"})]),
            400,
            "subject: expected valueReference, got valueString",
        ),
        (
            body(&[json!({"name": "payload", "valueString": "***"})]),
            400,
            "payload: not valid base64 (Invalid symbol 42, offset 0.)",
        ),
        (
            body(&[json!({"name": "title", "valueString": "x"})]),
            400,
            "title: unknown parameter (expected one of subject, context, content-type, document-type, document-title, sender-identifier, payload)",
        ),
        (
            body(&[json!({"name": "subject", "drop": true})]),
            422,
            "subject: required parameter is missing (a reference to Patient/{id})",
        ),
        (
            body(&[json!({"name": "payload", "drop": true})]),
            422,
            "payload: required parameter is missing (the document, base64)",
        ),
        (
            body(&[json!({"name": "subject", "valueReference": {"reference": "Patient/123"}})]),
            422,
            "Resource contains reference to Patient/123 but this resource is not valid",
        ),
        (
            body(&[json!({"name": "context", "valueReference": {"reference": "Encounter/e9"}})]),
            422,
            "Resource contains reference to Encounter/e9 but this resource is not valid",
        ),
        (
            body(&[json!({"name": "context", "valueReference": {"reference": "Encounter/e2"}})]),
            422,
            "context: Encounter/e2 is not an encounter of Patient/p1",
        ),
        (
            body(&[json!({"name": "context", "valueReference": {"reference": "Encounter/e3"}})]),
            422,
            "context: Encounter/e3 has no subject reference, so it cannot be checked to be an encounter of Patient/p1",
        ),
        (
            body(&[json!({"name": "document-type", "valueCode": "12345-6"})]),
            422,
            "document-type: `12345-6` is not an accepted LOINC document type (accepted: 11488-4, 34133-9, 18842-5, 11506-3, 57133-1, 34117-2, 28570-0, 11502-2, 18748-4, 59284-0, 57833-6)",
        ),
        (
            body(&[json!({"name": "content-type", "valueCode": "image/png"})]),
            422,
            "content-type: the payload's bytes are not image/png (they look like application/pdf)",
        ),
        (
            body(&[json!({"name": "content-type", "valueCode": "application/zip"})]),
            422,
            "content-type: `application/zip` is not accepted (accepted: application/pdf, image/jpeg, image/png, text/plain)",
        ),
        (
            body(&[json!({"name": "sender-identifier", "valueString": "1234"})]),
            422,
            "sender-identifier: an RPPS number has 11 digits, got 4",
        ),
    ];
    for (request, status, expected) in cases {
        let (got, outcome) = post(&app, &request).await;
        assert_eq!(got.as_u16(), status, "{expected}: {outcome}");
        assert_eq!(diagnostics(&outcome), [expected]);
    }
    assert!(app.store.is_empty(), "nothing refused is stored");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400() {
    let (status, outcome) = post_raw(&app(), b"PDF please".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(diagnostics(&outcome), ["request body: not JSON (expected value at line 1 column 1)"]);
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused() {
    let config = SendToEhrConfig { max_payload: engine::config::ByteSize(64), ..SendToEhrConfig::default() };
    let app = app_with(config, source(), Arc::new(NoAuth));
    let mut pdf = PDF.to_vec();
    pdf.resize(100, b' ');
    let (status, outcome) = post(
        &app,
        &body(&[json!({"name": "payload", "valueString": base64::engine::general_purpose::STANDARD.encode(&pdf)})]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(diagnostics(&outcome), ["payload: about 100 bytes, over the limit of 64 bytes"]);
    // A body far over the HTTP limit never reaches validation.
    let (status, outcome) = post_raw(&app, vec![b' '; 200 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(diagnostics(&outcome)[0].split(':').next(), Some("request body"));
}

/// Line breaks in the base64 payload are allowed, so a document of exactly
/// `max_payload` bytes, encoded in lines (64 characters as in PEM, CRLF
/// escaped as `\r\n` in the JSON string, 4 bytes a line), is accepted:
/// the HTTP body limit leaves room for them. Before, it left 64 KiB for the
/// whole envelope, and a 2 MiB document in lines (174 KB of line breaks)
/// was refused with 413 although within the limit.
#[tokio::test]
async fn a_document_of_the_largest_size_encoded_in_lines_is_accepted() {
    let max = 2 * 1024 * 1024;
    let config = SendToEhrConfig { max_payload: engine::config::ByteSize(max), ..SendToEhrConfig::default() };
    let app = app_with(config, source(), Arc::new(NoAuth));
    let mut pdf = PDF.to_vec();
    pdf.resize(max as usize, b'%');
    let encoded = base64::engine::general_purpose::STANDARD.encode(&pdf);
    let lines: Vec<&str> = encoded.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("base64")).collect();
    let (status, answer) = post(&app, &body(&[json!({"name": "payload", "valueString": lines.join("\r\n")})])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let tx = transaction_id(&answer);
    assert_eq!(app.store.outputs(&tx).expect("stored").binary["data"], encoded, "the bytes as sent");
}

#[tokio::test]
async fn a_patient_source_that_is_down_gives_503() {
    let app = app_with(SendToEhrConfig::default(), MemorySource { down: true, ..source() }, Arc::new(NoAuth));
    let (status, outcome) = post(&app, &body(&[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(diagnostics(&outcome), ["the patient source could not be reached; retry later"]);
}

#[tokio::test]
async fn tracking_refusals() {
    let app = app();
    let (status, outcome) = track(&app, "?transaction-id=0190a1b2-0000-7000-8000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        diagnostics(&outcome),
        [
            "transaction-id: no submission 0190a1b2-0000-7000-8000-000000000000 (unknown, or older than the tracking retention)"
        ]
    );
    let (status, outcome) = track(&app, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(diagnostics(&outcome), ["transaction-id: required query parameter is missing"]);
    let (status, outcome) = track(&app, "?transaction-id=a&transaction-id=b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(diagnostics(&outcome), ["transaction-id: given more than once"]);
}

/// Other paths under /fhir and other methods are refused as FHIR too: an
/// OperationOutcome with 404 or 405, never an empty body.
#[tokio::test]
async fn other_fhir_paths_and_methods_get_operation_outcomes() {
    let app = app();
    for (method, uri, status) in [
        (Method::GET, "/fhir/Patient/p1", StatusCode::NOT_FOUND),
        (Method::GET, "/fhir/metadata", StatusCode::NOT_FOUND),
        (Method::GET, SEND, StatusCode::METHOD_NOT_ALLOWED),
        (Method::DELETE, "/fhir/Binary/b1", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let request = Request::builder().method(method.clone()).uri(uri).body(Body::empty()).expect("request");
        let (got, outcome) = call(&app, request).await;
        assert_eq!(got, status, "{method} {uri}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{method} {uri}");
    }
}

/// Stands in for API tokens: a bearer `good` has the scope, `weak` has not.
struct TokenAuth;

#[async_trait]
impl CallerAuth for TokenAuth {
    async fn authorize(&self, headers: &HeaderMap, scope: &str) -> Result<Caller, Rejection> {
        assert_eq!(scope, SEND_TO_EHR_SCOPE);
        match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            Some("Bearer good") => Ok(Caller { application: Some("doc-platform".into()) }),
            Some("Bearer other") => Ok(Caller { application: Some("portal".into()) }),
            Some("Bearer weak") => Err(Rejection::one(403, None, "forbidden", "token lacks the SEND_TO_EHR scope")),
            _ => Err(Rejection::one(401, None, "login", "an API token is required")),
        }
    }
}

#[tokio::test]
async fn the_auth_hook_refuses_before_anything_is_read() {
    let app = app_with(SendToEhrConfig::default(), source(), Arc::new(TokenAuth));
    let send = |token: Option<&str>| {
        let mut request = Request::post(SEND);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Body::from(body(&[]).to_string())).expect("request")
    };
    let (status, outcome) = call(&app, send(None)).await;
    assert_eq!(
        (status, diagnostics(&outcome)),
        (StatusCode::UNAUTHORIZED, vec!["an API token is required".to_string()])
    );
    let (status, outcome) = call(&app, send(Some("weak"))).await;
    assert_eq!(
        (status, diagnostics(&outcome)),
        (StatusCode::FORBIDDEN, vec!["token lacks the SEND_TO_EHR scope".to_string()])
    );
    let (status, outcome) = track(&app, "?transaction-id=x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{outcome}");
    let (status, answer) = call(&app, send(Some("good"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let tx = answer["parameter"][1]["valueString"].as_str().expect("transaction id");
    let outputs = app.store.outputs(tx).expect("stored");
    assert_eq!(
        outputs.document_reference["author"][0]["display"], "doc-platform",
        "the token's application is the default sender"
    );
}

/// A retry with the same `Idempotency-Key` (the connection dropped after
/// the POST) is answered with the first answer and files nothing new,
/// whatever the JSON around the same request looks like; the key with
/// another document is refused; other keys, and no key, submit anew.
#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_stores_nothing() {
    let app = app();
    let request = body(&[json!({"name": "document-title", "valueString": "Lettre"})]);
    let (status, first) = post_with(&app, &request, &[("idempotency-key", "upload-0001")]).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let tx = transaction_id(&first);
    assert!(uuid::Uuid::parse_str(&tx).is_ok(), "{tx}");
    assert_eq!(app.store.len(), 1);

    let (status, again) = post_with(&app, &request, &[("idempotency-key", "upload-0001")]).await;
    assert_eq!((status, &again), (StatusCode::OK, &first), "the same answer, same transaction id");
    // The same request written otherwise: parameters in another order, the
    // key as a structured-field string.
    let mut reordered = request.clone();
    reordered["parameter"].as_array_mut().expect("parameters").reverse();
    let (status, again) = post_with(&app, &reordered, &[("idempotency-key", "\"upload-0001\"")]).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    assert_eq!(app.store.len(), 1, "a retry stores nothing");

    // The key reused for another document: refused, nothing stored.
    let other = body(&[json!({"name": "document-title", "valueString": "Lettre 2"})]);
    let (status, outcome) = post_with(&app, &other, &[("idempotency-key", "upload-0001")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{outcome}");
    assert_eq!(
        diagnostics(&outcome),
        [format!(
            "Idempotency-Key: already used for another request (transaction-id {tx}); a new document needs a new key"
        )]
    );
    assert_eq!(outcome["issue"][0]["code"], "business-rule");
    assert_eq!(app.store.len(), 1);
    assert_eq!(app.store.outputs(&tx).expect("kept").title, "Lettre", "the first document is untouched");

    // Another key, or none, is another submission.
    let (status, answer) = post_with(&app, &request, &[("idempotency-key", "upload-0002")]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_ne!(transaction_id(&answer), tx);
    let (_, a) = post(&app, &request).await;
    let (_, b) = post(&app, &request).await;
    assert_ne!(transaction_id(&a), transaction_id(&b), "without a key every POST is a submission");
    assert_eq!(app.store.len(), 4);
}

/// A retry is answered from the stored submission, before the patient
/// source is asked: it succeeds while the source is down (after a restart
/// here: a second router on the same store).
#[tokio::test]
async fn a_retry_is_answered_while_the_patient_source_is_down() {
    let store = Arc::new(MemoryTrackingStore::default());
    let up = app_on(Arc::clone(&store), SendToEhrConfig::default(), source(), Arc::new(NoAuth));
    let (status, first) = post_with(&up, &body(&[]), &[("idempotency-key", "k1")]).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let down = app_on(
        Arc::clone(&store),
        SendToEhrConfig::default(),
        MemorySource { down: true, ..source() },
        Arc::new(NoAuth),
    );
    let (status, again) = post_with(&down, &body(&[]), &[("idempotency-key", "k1")]).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    let (status, outcome) = post_with(&down, &body(&[]), &[("idempotency-key", "k2")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a new key is a new submission: {outcome}");
    assert_eq!(store.len(), 1);
}

/// Keys belong to the calling application: the same key from another
/// application's token is another submission.
#[tokio::test]
async fn the_same_key_from_another_application_is_another_submission() {
    let app = app_with(SendToEhrConfig::default(), source(), Arc::new(TokenAuth));
    let (status, mine) =
        post_with(&app, &body(&[]), &[("idempotency-key", "k1"), ("authorization", "Bearer good")]).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    let (status, theirs) =
        post_with(&app, &body(&[]), &[("idempotency-key", "k1"), ("authorization", "Bearer other")]).await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    assert_ne!(transaction_id(&mine), transaction_id(&theirs));
    assert_eq!(app.store.len(), 2);
    // Without a token, nothing is answered, not even a stored submission.
    let (status, _) = post_with(&app, &body(&[]), &[("idempotency-key", "k1")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A key the caller counts on but that cannot be used is refused, not
/// ignored.
#[tokio::test]
async fn unusable_idempotency_keys_are_refused() {
    let app = app();
    let long = "k".repeat(201);
    for (value, expected) in [
        ("  ", "Idempotency-Key: is empty"),
        ("\"\"", "Idempotency-Key: is empty"),
        (long.as_str(), "Idempotency-Key: longer than 200 characters"),
        ("a\tb", "Idempotency-Key: only visible ASCII characters are allowed"),
    ] {
        let (status, outcome) = post_with(&app, &body(&[]), &[("idempotency-key", value)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{value:?}: {outcome}");
        assert_eq!(diagnostics(&outcome), [expected], "{value:?}");
    }
    let (status, outcome) = post_with(&app, &body(&[]), &[("idempotency-key", "a"), ("idempotency-key", "b")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(diagnostics(&outcome), ["Idempotency-Key: given more than once"]);
    let request = Request::post(SEND)
        .header("idempotency-key", axum::http::HeaderValue::from_bytes(b"caf\xC3\xA9").expect("header"))
        .body(Body::from(body(&[]).to_string()))
        .expect("request");
    let (status, outcome) = call(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(diagnostics(&outcome), ["Idempotency-Key: only visible ASCII characters are allowed"]);
    assert!(app.store.is_empty());
}

/// The FHIR client as patient source against the FHIR server peer: a
/// stored Patient and Encounter resolve, an unknown id is `None` (404).
#[tokio::test]
async fn fhir_client_resolves_against_the_fhir_peer() {
    let Some(peer) = testkit::FhirPeer::start("engine::send_to_ehr_api::fhir_peer") else { return };
    let client =
        fhir::FhirClient::new("ehr", &fhir::ServerConfig::new(peer.base_url.parse().expect("url"))).expect("client");
    let created = client
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN9"}], "name": [{"family": "Petit"}]}))
        .await
        .expect("patient created");
    let patient_id = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("patient id").to_string();
    let created = client
        .create(&json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": {"reference": format!("Patient/{patient_id}")}}))
        .await
        .expect("encounter created");
    let encounter_id = created.resource.as_ref().and_then(|r| r["id"].as_str()).expect("encounter id").to_string();

    let patient = client.patient(&patient_id).await.expect("source answers").expect("patient found");
    assert_eq!(patient["identifier"][0]["value"], "MRN9");
    assert!(client.encounter(&encounter_id).await.expect("source answers").is_some());
    assert_eq!(client.patient("does-not-exist").await.expect("404 is not an error"), None);

    let store = Arc::new(MemoryTrackingStore::default());
    let app = App {
        router: router(SendToEhrState {
            config: Arc::new(SendToEhrConfig::default()),
            fhir_base: "http://127.0.0.1/fhir".into(),
            source: Arc::new(client),
            tracking: store.clone(),
            auth: Arc::new(NoAuth),
            switch: Arc::default(),
        }),
        store,
    };
    let (status, answer) = post(
        &app,
        &body(&[
            json!({"name": "subject", "valueReference": {"reference": format!("Patient/{patient_id}")}}),
            json!({"name": "context", "valueReference": {"reference": format!("Encounter/{encounter_id}")}}),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, outcome) =
        post(&app, &body(&[json!({"name": "subject", "valueReference": {"reference": "Patient/123"}})])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(diagnostics(&outcome), ["Resource contains reference to Patient/123 but this resource is not valid"]);
}

/// A submission is read back only by the application that made it: the
/// patient's document (Binary), its DocumentReference and
/// CommunicationRequest, and its tracking. Another application with the
/// `SEND_TO_EHR` scope gets 404, as for an unknown id, even when it knows
/// the transaction id: a keyed one is computed from the submitting
/// application's name and its `Idempotency-Key` (often its own document id),
/// both easy to guess. Real API tokens and the message store (SQLite).
#[tokio::test]
async fn another_application_cannot_read_or_track_a_submission() {
    use engine::api::auth::{Auth, Scope, issue_token};
    use engine::flows::send_to_ehr::api::keyed_transaction_id;
    use engine::flows::send_to_ehr::persist::StoreTracking;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("plexus.db").display());
    let store = store::open(&url, store::StoreOptions::default()).await.expect("store");
    let token = |name: &'static str| {
        let store = Arc::clone(&store);
        async move { issue_token(store.as_ref(), name, &[Scope::SendToEhr], None).await.expect("token").bearer }
    };
    let (platform, portal) = (token("doc-platform").await, token("portal").await);
    let router = router(SendToEhrState {
        config: Arc::new(SendToEhrConfig::default()),
        fhir_base: "https://plexus.example/fhir".into(),
        source: Arc::new(source()),
        tracking: Arc::new(StoreTracking::new(Arc::clone(&store), "documents", vec!["ehr".into()])),
        auth: Arc::new(Auth::new(Arc::clone(&store))),
        switch: Arc::default(),
    });
    let call = |method: Method, uri: String, token: &str, body: Option<&Value>| {
        let router = router.clone();
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("idempotency-key", "upload-42")
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .body(Body::from(body.map(Value::to_string).unwrap_or_default()))
            .expect("request");
        async move {
            let response = router.oneshot(request).await.expect("router answers");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (status, serde_json::from_slice::<Value>(&bytes).expect("JSON body"))
        }
    };

    let (status, answer) = call(Method::POST, SEND.into(), &platform, Some(&body(&[]))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let tx = transaction_id(&answer);
    assert_eq!(tx, keyed_transaction_id(Some("doc-platform"), "upload-42"), "anyone can compute it");

    let reads = [
        format!("/fhir/Binary/{tx}"),
        format!("/fhir/DocumentReference/{tx}"),
        format!("/fhir/CommunicationRequest/{tx}"),
        format!("/fhir/CommunicationRequest/$tracking?transaction-id={tx}"),
    ];
    for uri in &reads {
        let (status, outcome) = call(Method::GET, uri.clone(), &portal, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{uri}");
        assert_eq!(outcome["issue"][0]["code"], "not-found", "{uri}");
        let (status, resource) = call(Method::GET, uri.clone(), &platform, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {resource}");
    }
    let (_, binary) = call(Method::GET, reads[0].clone(), &platform, None).await;
    assert_eq!(binary["data"], base64::engine::general_purpose::STANDARD.encode(PDF));

    // Only the submitting application read the contents (three resources,
    // then the Binary again; tracking is not a read of contents).
    let audit = store
        .audit_events(&store::AuditQuery { message_id: None, before_id: None, limit: 100 })
        .await
        .expect("audit trail");
    let readers: Vec<&str> = audit.iter().filter(|e| e.action == "read_content").map(|e| e.actor.as_str()).collect();
    assert_eq!(readers, ["doc-platform"; 4], "{audit:?}");
}
