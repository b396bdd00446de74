//! Authentication against token endpoints served by the tests: the OAuth2
//! client credentials request, the SMART Backend Services JWT assertion
//! (header, claims, signature verified with the public key, expiry), token
//! reuse, refresh on expiry and on 401, one refresh at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use fhir::{AuthConfig, ClientAuthMethod, ErrorClass, FhirClient, FhirError, JwtAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support::{fast_config, fixture, serve};

/// What the token endpoint saw and how it answers.
#[derive(Default)]
struct TokenLog {
    requests: Vec<(HeaderMap, HashMap<String, String>)>,
    /// Seconds in `expires_in` of the tokens issued.
    expires_in: u64,
    /// Tokens the FHIR endpoint refuses with 401.
    revoked: Vec<String>,
    /// Authorization headers the FHIR endpoint saw.
    fhir_auth: Vec<String>,
}

type Shared = Arc<Mutex<TokenLog>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, TokenLog> {
    s.lock().expect("lock")
}

async fn token_endpoint(
    State(log): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Slow enough that concurrent callers overlap with a fetch in progress.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut log = lock(&log);
    log.requests.push((headers, form));
    let n = log.requests.len();
    let body = json!({"access_token": format!("token-{n}"), "token_type": "bearer", "expires_in": log.expires_in});
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn fhir_endpoint(State(log): State<Shared>, headers: HeaderMap) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut log = lock(&log);
    log.fhir_auth.push(auth.clone());
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if token.is_empty() || log.revoked.iter().any(|t| t == token) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "").into_response();
    }
    let body = json!({"resourceType": "Patient", "id": "1"});
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/fhir+json")], body.to_string()).into_response()
}

/// A token endpoint at `/token`, a SMART configuration at
/// `/fhir/.well-known/smart-configuration`, and a FHIR endpoint at
/// `/fhir/Patient/{id}` that wants a bearer token.
async fn servers(expires_in: u64) -> (String, Shared) {
    let log: Shared = Arc::new(Mutex::new(TokenLog { expires_in, ..TokenLog::default() }));
    let app = Router::new()
        .route("/token", post(token_endpoint))
        .route("/fhir/Patient/{id}", get(fhir_endpoint))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(|headers: HeaderMap| async move {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                axum::Json(json!({"token_endpoint": format!("http://{host}/token"),
                                  "token_endpoint_auth_methods_supported": ["private_key_jwt"]}))
            }),
        )
        .with_state(log.clone());
    (serve(app).await, log)
}

fn secrets(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k| map.get(k).cloned()
}

fn client_credentials(base: &str, method: ClientAuthMethod, refresh_before: u64) -> FhirClient {
    let mut config = fast_config(&format!("{base}/fhir"));
    config.auth = AuthConfig::ClientCredentials {
        token_url: format!("{base}/token").parse().expect("url"),
        client_id: "plexus client".into(),
        client_secret_env: "CRM_SECRET".into(),
        client_auth: method,
        scopes: vec!["system/Patient.read".into(), "system/Observation.write".into()],
        refresh_before_expiry_secs: refresh_before,
    };
    FhirClient::with_secrets("crm", &config, &secrets(&[("CRM_SECRET", "s3cr:t&")])).expect("client")
}

#[tokio::test]
async fn client_credentials_request_and_token_reuse() {
    let (base, log) = servers(3600).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretBasic, 60);
    c.read("Patient", "1").await.expect("first read");
    c.read("Patient", "2").await.expect("second read");
    let log = lock(&log);
    assert_eq!(log.requests.len(), 1, "the token is reused");
    let (headers, form) = &log.requests[0];
    assert_eq!(form.get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(form.get("scope").map(String::as_str), Some("system/Patient.read system/Observation.write"));
    assert!(!form.contains_key("client_secret"), "basic auth keeps the secret out of the body");
    // RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).expect("basic");
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(basic.strip_prefix("Basic ").expect("Basic")).expect("base64");
    assert_eq!(String::from_utf8(decoded).expect("utf8"), "plexus+client:s3cr%3At%26");
    assert_eq!(log.fhir_auth, vec!["Bearer token-1", "Bearer token-1"]);
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let (base, log) = servers(3600).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretPost, 60);
    c.read("Patient", "1").await.expect("read");
    let log = lock(&log);
    let (headers, form) = &log.requests[0];
    assert!(headers.get(header::AUTHORIZATION).is_none());
    assert_eq!(form.get("client_id").map(String::as_str), Some("plexus client"));
    assert_eq!(form.get("client_secret").map(String::as_str), Some("s3cr:t&"));
}

#[tokio::test]
async fn a_token_shorter_lived_than_the_refresh_margin_is_fetched_once_per_lifetime() {
    // Regression: expires_in 1 s with the 60 s margin made every token due
    // at once, and every request fetched a new one. It is used for nine
    // tenths of its lifetime, then refreshed.
    let (base, log) = servers(1).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretBasic, 60);
    for id in ["1", "2", "3"] {
        c.read("Patient", id).await.expect("read");
    }
    assert_eq!(lock(&log).requests.len(), 1, "one token for requests within its lifetime");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.read("Patient", "4").await.expect("read after expiry");
    let log = lock(&log);
    assert_eq!(log.requests.len(), 2, "refreshed once it expired");
    assert_eq!(log.fhir_auth, vec!["Bearer token-1", "Bearer token-1", "Bearer token-1", "Bearer token-2"]);
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let (base, log) = servers(3600).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretBasic, 60);
    let reads = (0..10).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.read("Patient", &i.to_string()).await })
    });
    for r in futures::future::join_all(reads).await {
        r.expect("task").expect("read");
    }
    let log = lock(&log);
    assert_eq!(log.requests.len(), 1, "never two refreshes at once");
    assert!(log.fhir_auth.iter().all(|a| a == "Bearer token-1"));
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let (base, log) = servers(3600).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretBasic, 60);
    c.read("Patient", "1").await.expect("read");
    lock(&log).revoked.push("token-1".into());
    c.read("Patient", "2").await.expect("read after the server revoked the token");
    {
        let log = lock(&log);
        assert_eq!(log.requests.len(), 2);
        assert_eq!(log.fhir_auth, vec!["Bearer token-1", "Bearer token-1", "Bearer token-2"]);
    }
    // A server that refuses every token: one refresh, then the 401 comes
    // back (no loop).
    lock(&log).revoked.extend(["token-2".to_owned(), "token-3".to_owned()]);
    let err = c.read("Patient", "3").await.expect_err("still 401");
    assert_eq!((err.status(), err.class()), (Some(401), ErrorClass::Permanent));
    assert_eq!(lock(&log).requests.len(), 3);
}

#[tokio::test]
async fn missing_secret_is_a_config_error_naming_the_variable() {
    let mut config = fast_config("http://127.0.0.1:9/fhir");
    config.auth = AuthConfig::Bearer { token_env: "PLEXUS_TEST_NO_SUCH_TOKEN".into() };
    let err = FhirClient::with_secrets("crm", &config, &secrets(&[])).expect_err("no secret");
    assert_eq!(err.class(), ErrorClass::Config);
    assert!(err.to_string().contains("PLEXUS_TEST_NO_SUCH_TOKEN"), "{err}");
}

#[tokio::test]
async fn static_bearer_and_basic_headers_and_no_secret_in_debug_output() {
    let (base, log) = servers(3600).await;
    let mut config = fast_config(&format!("{base}/fhir"));
    config.auth = AuthConfig::Bearer { token_env: "TOKEN".into() };
    let c = FhirClient::with_secrets("crm", &config, &secrets(&[("TOKEN", "static-abc")])).expect("client");
    c.read("Patient", "1").await.expect("read");
    assert_eq!(lock(&log).fhir_auth, vec!["Bearer static-abc"]);
    assert!(!format!("{c:?}").contains("static-abc"), "the token never shows in Debug");

    config.auth = AuthConfig::Basic { username: "svc".into(), password_env: "PW".into() };
    let c = FhirClient::with_secrets("crm", &config, &secrets(&[("PW", "pa55")])).expect("client");
    // The mock only takes Bearer tokens: the Basic request is refused, and
    // a static credential is not retried.
    let err = c.read("Patient", "1").await.expect_err("the mock wants Bearer");
    assert_eq!(err.status(), Some(401));
    let seen = lock(&log).fhir_auth.last().cloned().unwrap_or_default();
    assert_eq!(seen, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:pa55")));
    assert!(!format!("{c:?}").contains("pa55"));
}

/// The claims of a SMART client assertion, as the token endpoint reads them.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    jti: String,
}

fn smart_client(base: &str, algorithm: JwtAlgorithm, key_file: &str, token_url: Option<String>) -> FhirClient {
    let mut config = fast_config(&format!("{base}/fhir"));
    config.auth = AuthConfig::SmartBackend {
        client_id: "plexus-backend".into(),
        token_url: token_url.map(|u| u.parse().expect("url")),
        algorithm,
        kid: "plexus-key-1".into(),
        private_key_env: None,
        private_key_file: Some(fixture(key_file)),
        scopes: vec!["system/*.read".into()],
        assertion_lifetime_secs: 300,
        refresh_before_expiry_secs: 60,
    };
    FhirClient::with_secrets("ehr", &config, &secrets(&[])).expect("client")
}

/// Verifies one token request's assertion with `public_key`; returns its
/// claims.
fn verify_assertion(form: &HashMap<String, String>, algorithm: Algorithm, public_pem: &str, token_url: &str) -> Claims {
    assert_eq!(form.get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(form.get("scope").map(String::as_str), Some("system/*.read"));
    assert_eq!(
        form.get("client_assertion_type").map(String::as_str),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let jwt = form.get("client_assertion").expect("assertion");
    let header = jsonwebtoken::decode_header(jwt).expect("header");
    assert_eq!(header.alg, algorithm);
    assert_eq!(header.kid.as_deref(), Some("plexus-key-1"));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let pem = std::fs::read(fixture(public_pem)).expect("public key");
    let key = match algorithm {
        Algorithm::RS384 => DecodingKey::from_rsa_pem(&pem),
        _ => DecodingKey::from_ec_pem(&pem),
    }
    .expect("decoding key");
    let mut validation = Validation::new(algorithm);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&["plexus-backend"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation).expect("signature and claims verify").claims;
    assert_eq!(claims.sub, "plexus-backend");
    assert_eq!(claims.iss, "plexus-backend");
    assert_eq!(claims.aud, token_url);
    let now = jsonwebtoken::get_current_timestamp();
    assert!(claims.exp > now && claims.exp <= now + 300, "exp {} is at most 5 minutes ahead of {now}", claims.exp);
    assert!(!claims.jti.is_empty());
    claims
}

#[tokio::test]
async fn smart_backend_rs384_assertion_is_signed_and_fresh_each_time() {
    // The server revokes the first token: the refresh signs a new
    // assertion.
    let (base, log) = servers(3600).await;
    let token_url = format!("{base}/token");
    let c = smart_client(&base, JwtAlgorithm::RS384, "keys/rsa-private.pem", Some(token_url.clone()));
    c.read("Patient", "1").await.expect("read");
    lock(&log).revoked.push("token-1".into());
    c.read("Patient", "2").await.expect("read");
    let log = lock(&log);
    assert_eq!(log.requests.len(), 2);
    let first = verify_assertion(&log.requests[0].1, Algorithm::RS384, "keys/rsa-public.pem", &token_url);
    let second = verify_assertion(&log.requests[1].1, Algorithm::RS384, "keys/rsa-public.pem", &token_url);
    assert_ne!(first.jti, second.jti, "a fresh jti per assertion");
    assert_eq!(log.fhir_auth, vec!["Bearer token-1", "Bearer token-1", "Bearer token-2"]);
}

#[tokio::test]
async fn smart_backend_es384_discovers_the_token_endpoint() {
    let (base, log) = servers(3600).await;
    let c = smart_client(&base, JwtAlgorithm::ES384, "keys/ec-private.pem", None);
    c.read("Patient", "1").await.expect("read");
    c.read("Patient", "2").await.expect("read");
    let log = lock(&log);
    assert_eq!(log.requests.len(), 1, "token reused");
    verify_assertion(&log.requests[0].1, Algorithm::ES384, "keys/ec-public.pem", &format!("{base}/token"));
}

#[tokio::test]
async fn a_tampered_assertion_does_not_verify() {
    // The verification above is meaningful: the same key that verifies the
    // assertion rejects it once a claim is changed.
    let (base, log) = servers(3600).await;
    let token_url = format!("{base}/token");
    let c = smart_client(&base, JwtAlgorithm::RS384, "keys/rsa-private.pem", Some(token_url.clone()));
    c.read("Patient", "1").await.expect("read");
    let jwt = lock(&log).requests[0].1["client_assertion"].clone();
    let mut validation = Validation::new(Algorithm::RS384);
    validation.set_audience(&[&token_url]);
    let rsa = DecodingKey::from_rsa_pem(&std::fs::read(fixture("keys/rsa-public.pem")).expect("key")).expect("key");
    assert!(jsonwebtoken::decode::<Value>(&jwt, &rsa, &validation).is_ok());
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
    claims["sub"] = json!("someone-else");
    let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
    assert!(jsonwebtoken::decode::<Value>(&forged, &rsa, &validation).is_err());
}

#[tokio::test]
async fn token_endpoint_errors_are_reported_without_secrets() {
    let app = Router::new().route(
        "/token",
        post(|| async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_client", "error_description": "unknown client"})),
            )
        }),
    );
    let base = serve(app).await;
    let c = client_credentials(&base, ClientAuthMethod::ClientSecretPost, 60);
    let err = c.read("Patient", "1").await.expect_err("no token");
    assert!(matches!(err, FhirError::Auth { status: Some(401), transient: false, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "crm: authentication failed: token endpoint answered HTTP 401: invalid_client: unknown client"
    );
    assert!(!err.to_string().contains("s3cr"));
}
