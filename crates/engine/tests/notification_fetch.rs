//! The notification bundle fetcher against real servers: axum servers on
//! 127.0.0.1:0 for pre-signed URLs (loopback explicitly allowed in their
//! guard config, and refused by default), and a real S3-compatible server
//! (moto, from `$PLEXUS_PEERS/moto-venv`) behind a token service for the
//! temporary-credentials path. Also the acknowledgement sender against a
//! partner endpoint on 127.0.0.1:0 that answers with a redirect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use engine::flows::notification::fetch::{ErrorClass, TokenCredentials, TokenError};
use engine::flows::notification::{BundleFetcher, BundleLocation, FetchError, GuardError, NotificationConfig};
use url::Url;

const BUNDLE: &str = r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"text":"glucose"}}}]}"#;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A partner file server: a bundle, a non-bundle, a big body without a
/// length, redirects, and a slow answer.
async fn file_server() -> SocketAddr {
    let router = Router::new()
        .route("/bundle", get(|| async { BUNDLE }))
        .route("/patient", get(|| async { r#"{"resourceType":"Patient","id":"p"}"# }))
        .route("/hl7", get(|| async { "MSH|^~\\&|APP" }))
        .route("/missing", get(|| async { (http::StatusCode::FORBIDDEN, "expired signature") }))
        .route(
            "/big-streamed",
            get(|| async {
                // 64 chunks of 64 KiB, no Content-Length: only the streamed
                // count can stop it.
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 * 1024])));
                Response::new(Body::from_stream(futures::stream::iter(chunks)))
            }),
        )
        .route("/big-declared", get(|| async { vec![b' '; 4 * 1024 * 1024] }))
        .route("/redirect-ok", get(|| async { Redirect::temporary("/bundle") }))
        .route("/redirect-to-localhost", get(redirect_to_localhost))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                BUNDLE
            }),
        );
    serve(router).await
}

async fn redirect_to_localhost(req: axum::extract::Request) -> impl IntoResponse {
    let port = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit(':').next())
        .unwrap_or("1")
        .to_string();
    Redirect::temporary(&format!("http://localhost:{port}/bundle"))
}

fn config(extra_fetch: &str, limits: &str) -> NotificationConfig {
    let text = format!(
        r#"
        [fields]
        notification_id = "id"
        file_id = "fileId"
        presigned_url = "url"
        [auth.bearer]
        token = "t"
        [fetch]
        {extra_fetch}
        [acknowledgement]
        url = "https://partner.example/ack/{{notification_id}}"
        [limits]
        {limits}
        "#
    );
    let c: NotificationConfig = toml::from_str(&text).unwrap();
    c.validate("test").unwrap();
    c
}

/// Loopback explicitly allowed, as only a test should.
fn loopback_config(limits: &str) -> NotificationConfig {
    config(
        r#"allowed_hosts = ["127.0.0.1"]
        allow_http = true
        allow_private_addresses = true"#,
        limits,
    )
}

fn at(addr: SocketAddr, path: &str) -> BundleLocation {
    BundleLocation::PresignedUrl(Url::parse(&format!("http://{addr}{path}")).unwrap())
}

#[tokio::test]
async fn a_presigned_bundle_is_fetched() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&loopback_config("")).unwrap();
    let fetched = fetcher.fetch(&at(addr, "/bundle")).await.unwrap();
    assert_eq!(fetched.bytes, BUNDLE.as_bytes());
    assert_eq!(fetched.bundle["entry"][0]["resource"]["resourceType"], "Observation");
}

#[tokio::test]
async fn loopback_is_refused_by_default() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&config(
        r#"allowed_hosts = ["127.0.0.1", "localhost"]
        allow_http = true"#,
        "",
    ))
    .unwrap();
    // An address literal: refused before any connection.
    let err = fetcher.fetch(&at(addr, "/bundle")).await.unwrap_err();
    assert!(matches!(err, FetchError::Guard(GuardError::ForbiddenAddress { .. })), "{err}");
    // A name: refused by the resolver, whose addresses are the ones used.
    let url = Url::parse(&format!("http://localhost:{}/bundle", addr.port())).unwrap();
    let err = fetcher.fetch(&BundleLocation::PresignedUrl(url)).await.unwrap_err();
    assert!(matches!(err, FetchError::Guard(GuardError::ForbiddenAddress { .. })), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn hosts_off_the_allow_list_and_plain_http_are_refused() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&config(r#"allowed_hosts = ["*.partner.example"]"#, "")).unwrap();
    let err = fetcher.fetch(&at(addr, "/bundle")).await.unwrap_err();
    assert!(matches!(err, FetchError::Guard(GuardError::Scheme(ref s)) if s == "http"), "{err}");
    let url = Url::parse(&format!("https://{addr}/bundle")).unwrap();
    let err = fetcher.fetch(&BundleLocation::PresignedUrl(url)).await.unwrap_err();
    assert!(matches!(err, FetchError::Guard(GuardError::HostNotAllowed(ref h)) if h == "127.0.0.1"), "{err}");
}

#[tokio::test]
async fn redirects_are_followed_and_each_target_is_checked_again() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&loopback_config("")).unwrap();
    let fetched = fetcher.fetch(&at(addr, "/redirect-ok")).await.unwrap();
    assert_eq!(fetched.bytes, BUNDLE.as_bytes());
    // localhost is not on this allow-list (only 127.0.0.1 is).
    let err = fetcher.fetch(&at(addr, "/redirect-to-localhost")).await.unwrap_err();
    assert!(matches!(err, FetchError::Guard(GuardError::HostNotAllowed(ref h)) if h == "localhost"), "{err}");
    let err = fetcher.fetch(&at(addr, "/loop")).await.unwrap_err();
    assert!(matches!(err, FetchError::TooManyRedirects), "{err}");
}

#[tokio::test]
async fn a_body_past_the_limit_is_aborted() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&loopback_config(r#"max_bundle_bytes = "1MiB""#)).unwrap();
    for path in ["/big-streamed", "/big-declared"] {
        let err = fetcher.fetch(&at(addr, path)).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { limit: 1_048_576 }), "{path}: {err}");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
    // The same fetcher still serves a bundle under the limit.
    assert!(fetcher.fetch(&at(addr, "/bundle")).await.is_ok());
}

#[tokio::test]
async fn a_body_that_is_not_a_bundle_is_refused() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&loopback_config("")).unwrap();
    let err = fetcher.fetch(&at(addr, "/patient")).await.unwrap_err();
    assert!(matches!(err, FetchError::NotBundle(ref t) if t == "`Patient`"), "{err}");
    let err = fetcher.fetch(&at(addr, "/hl7")).await.unwrap_err();
    assert!(matches!(err, FetchError::NotJson(_)), "{err}");
    let err = fetcher.fetch(&at(addr, "/missing")).await.unwrap_err();
    assert!(matches!(err, FetchError::Status(403)), "{err}");
}

#[tokio::test]
async fn a_fetch_past_the_timeout_is_abandoned() {
    let addr = file_server().await;
    let fetcher = BundleFetcher::new(&loopback_config(r#"fetch_timeout = "200ms""#)).unwrap();
    let err = fetcher.fetch(&at(addr, "/slow")).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(d) if d == Duration::from_millis(200)), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

// ---- temporary credentials against moto (S3-compatible) ----

#[derive(Clone)]
struct TokenService {
    hits: Arc<AtomicUsize>,
    expires_in: u64,
}

async fn token(State(s): State<TokenService>, headers: http::HeaderMap, body: String) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    // Basic base64("plexus:client-secret")
    let auth_ok =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic cGxleHVzOmNsaWVudC1zZWNyZXQ=");
    if !auth_ok || body != "grant_type=client_credentials" {
        return (http::StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    // Slow enough that concurrent callers overlap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    axum::Json(serde_json::json!({
        "accessKeyId": "ASIATEMPORARY",
        "secretAccessKey": "temporary-secret",
        "sessionToken": "session-token",
        "expires_in": s.expires_in,
    }))
    .into_response()
}

async fn token_service(expires_in: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let router = Router::new().route("/token", post(token)).with_state(TokenService { hits: hits.clone(), expires_in });
    (serve(router).await, hits)
}

fn storage_config(moto: u16, token: SocketAddr, secret: &str, limits: &str) -> NotificationConfig {
    let text = format!(
        r#"
        [fields]
        notification_id = "id"
        file_id = "fileId"
        bucket = "bucket"
        key = "key"
        [auth.bearer]
        token = "t"
        [storage]
        endpoint = "http://127.0.0.1:{moto}"
        region = "us-east-1"
        token_url = "http://{token}/token"
        client_id = "plexus"
        client_secret = "{secret}"
        [acknowledgement]
        url = "https://partner.example/ack/{{file_id}}"
        [limits]
        {limits}
        "#
    );
    let c: NotificationConfig = toml::from_str(&text).unwrap();
    c.validate("test").unwrap();
    c
}

fn start_moto(suite: &str) -> Option<testkit::PeerProcess> {
    let peers = testkit::peers_or_skip(suite)?;
    let program = peers.join("moto-venv").join("bin").join("moto_server");
    if !program.is_file() {
        testkit::skip(suite, &format!("{} is not installed", program.display()));
        return None;
    }
    let port = testkit::free_port();
    let process = testkit::PeerProcess::spawn(
        &program.display().to_string(),
        &["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()],
        port,
    )
    .unwrap_or_else(|e| panic!("starting moto for {suite}: {e}"));
    Some(process)
}

/// Creates `bucket` and uploads `objects` as the partner would (moto
/// accepts any credentials).
async fn upload(port: u16, bucket: &str, objects: &[(&str, Vec<u8>)]) {
    let http = reqwest::Client::new();
    let created = http.put(format!("http://127.0.0.1:{port}/{bucket}")).send().await.unwrap();
    assert!(created.status().is_success(), "create bucket: {}", created.status());
    for (key, body) in objects {
        let put = http.put(format!("http://127.0.0.1:{port}/{bucket}/{key}")).body(body.clone()).send().await.unwrap();
        assert!(put.status().is_success(), "put {key}: {}", put.status());
    }
}

#[tokio::test]
async fn objects_are_read_with_temporary_credentials_cached_between_fetches() {
    let Some(moto) = start_moto("engine::notification_fetch::s3") else {
        return;
    };
    let (token, hits) = token_service(3600).await;
    upload(
        moto.port,
        "partner-bundles",
        &[
            ("patients/p1/2026-11-21.json", BUNDLE.as_bytes().to_vec()),
            ("patients/p2/2026-11-21.json", BUNDLE.replace("glucose", "carbs").into_bytes()),
            ("patients/p3/not-fhir.json", br#"{"resourceType":"Patient"}"#.to_vec()),
            ("patients/p4/huge.json", vec![b' '; 2 * 1024 * 1024]),
        ],
    )
    .await;
    let fetcher =
        BundleFetcher::new(&storage_config(moto.port, token, "client-secret", r#"max_bundle_bytes = "1MiB""#)).unwrap();
    let object = |key: &str| BundleLocation::Object { bucket: "partner-bundles".into(), key: key.into() };

    let first = fetcher.fetch(&object("patients/p1/2026-11-21.json")).await.unwrap();
    assert_eq!(first.bytes, BUNDLE.as_bytes());
    let second = fetcher.fetch(&object("patients/p2/2026-11-21.json")).await.unwrap();
    assert!(std::str::from_utf8(&second.bytes).unwrap().contains("carbs"));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the credentials are reused until they near expiry");

    let err = fetcher.fetch(&object("patients/p3/not-fhir.json")).await.unwrap_err();
    assert!(matches!(err, FetchError::NotBundle(_)), "{err}");
    let err = fetcher.fetch(&object("patients/p4/huge.json")).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    let err = fetcher.fetch(&object("patients/nobody.json")).await.unwrap_err();
    assert!(matches!(err, FetchError::ObjectNotFound), "{err}");
}

#[tokio::test]
async fn a_rejected_client_secret_fails_the_fetch_with_the_token_error() {
    let Some(moto) = start_moto("engine::notification_fetch::s3") else {
        return;
    };
    let (token, _hits) = token_service(3600).await;
    upload(moto.port, "bundles-2", &[("k.json", BUNDLE.as_bytes().to_vec())]).await;
    let fetcher = BundleFetcher::new(&storage_config(moto.port, token, "wrong", "")).unwrap();
    let err =
        fetcher.fetch(&BundleLocation::Object { bucket: "bundles-2".into(), key: "k.json".into() }).await.unwrap_err();
    assert!(matches!(err, FetchError::Token(TokenError::Status(401))), "{err}");
    assert_eq!(err.class(), ErrorClass::Config);
}

#[tokio::test]
async fn credentials_are_refreshed_once_for_concurrent_callers_and_again_near_expiry() {
    // Pure token-service behaviour: needs no S3 server.
    let (token, hits) = token_service(3600).await;
    let config = storage_config(1, token, "client-secret", "");
    let credentials = Arc::new(TokenCredentials::new(config.storage.as_ref().unwrap()).unwrap());
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let c = credentials.clone();
            tokio::spawn(async move { c.credential().await })
        })
        .collect();
    for call in calls {
        let credential = call.await.unwrap().unwrap();
        assert_eq!(credential.key_id, "ASIATEMPORARY");
        assert_eq!(credential.token.as_deref(), Some("session-token"));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one refresh for ten concurrent callers");

    // Credentials expiring within the refresh margin (60 s by default) are
    // fetched again on the next use.
    let (token, hits) = token_service(30).await;
    let config = storage_config(1, token, "client-secret", "");
    let credentials = TokenCredentials::new(config.storage.as_ref().unwrap()).unwrap();
    credentials.credential().await.unwrap();
    credentials.credential().await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The partner acknowledgement is a POST that the partner's endpoint must
/// take itself. An endpoint answering with a redirect (a moved API, a
/// login page) has not taken it: followed, a 302 turned the POST into a GET
/// of the other page, whose 200 recorded the partner as acknowledged
/// although it never received the acknowledgement, and Plexus fetched
/// whatever URL the partner's answer named (another host, an internal
/// address). Now the redirect fails the acknowledgement, with its status,
/// and its target is never requested.
#[tokio::test]
async fn an_acknowledgement_answered_with_a_redirect_is_not_taken_as_acknowledged() {
    use engine::flows::notification::ack::AckWorker;
    use engine::flows::notification::config::{AckAuth, AcknowledgementConfig};
    use engine::flows::notification::stage::{ACK_CONTENT_TYPE, ACK_DESTINATION, ACK_TYPE};
    use store::{DeliveryState, NewDelivery, NewMessage, StoreOptions};

    let elsewhere = Arc::new(AtomicUsize::new(0));
    let posts = Arc::new(AtomicUsize::new(0));
    let partner = serve(
        Router::new()
            .route(
                "/ack/{notification}",
                post(|State((posts, _)): State<(Arc<AtomicUsize>, Arc<AtomicUsize>)>| async move {
                    posts.fetch_add(1, Ordering::SeqCst);
                    Redirect::to("/elsewhere")
                }),
            )
            .route(
                "/elsewhere",
                get(|State((_, elsewhere)): State<(Arc<AtomicUsize>, Arc<AtomicUsize>)>| async move {
                    elsewhere.fetch_add(1, Ordering::SeqCst);
                    "a page that is not the acknowledgement endpoint"
                }),
            )
            .with_state((Arc::clone(&posts), Arc::clone(&elsewhere))),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("plexus.db").display());
    let store = store::open(&url, StoreOptions::default()).await.unwrap();
    let body = serde_json::json!({
        "message_id": uuid::Uuid::now_v7().to_string(), "notification_id": "n-1", "file_id": "f-1",
    });
    let request = store
        .accept(NewMessage {
            channel: "glucose".into(),
            received_at: chrono::Utc::now(),
            peer_addr: None,
            content_type: ACK_CONTENT_TYPE.into(),
            raw: body.to_string().into_bytes(),
            control_id: None,
            sender_key: "diabetes-app".into(),
            message_type: Some(ACK_TYPE.into()),
            event: None,
            order_key: None,
            patient_ids: Vec::new(),
            ack: None,
            deliveries: vec![NewDelivery::queued(ACK_DESTINATION)],
        })
        .await
        .unwrap();
    let store::Accepted::Stored { id } = request else { panic!("stored: {request:?}") };

    let config =
        AcknowledgementConfig { url: format!("http://{partner}/ack/{{notification_id}}"), auth: AckAuth::None };
    let worker =
        Arc::new(AckWorker::new("glucose", config, store::RetryPolicy::default(), Arc::clone(&store)).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&worker).run("node".into(), stop.clone()));
    // A bound for a failing run, not a speed check.
    let mut state = DeliveryState::Queued;
    for _ in 0..200 {
        let detail = store.get_message(id).await.unwrap().expect("kept");
        state = detail.deliveries[0].state;
        if !matches!(state, DeliveryState::Queued | DeliveryState::InFlight) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.await.unwrap();

    assert_eq!(posts.load(Ordering::SeqCst), 1, "the acknowledgement was posted once");
    assert_eq!(elsewhere.load(Ordering::SeqCst), 0, "the redirect's target is not requested");
    assert!(matches!(state, DeliveryState::Error | DeliveryState::Dead), "not acknowledged: {state:?}");
    let detail = store.get_message(id).await.unwrap().expect("kept");
    let reason = detail.deliveries[0].error_reason.clone().unwrap_or_default();
    assert!(reason.contains("HTTP 303"), "{reason}");
}
