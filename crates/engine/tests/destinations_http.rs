//! The HTTP destination against an axum server on 127.0.0.1:0 that checks
//! headers, authentication and the HMAC signature the way a receiver would,
//! and answers with the statuses a test asks for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use engine::destinations::{
    BuildContext, DeliveryError, Destination, DestinationConfig, ErrorClass, Outbound, ResponseKind,
};
use hmac::{KeyInit, Mac};

mod destinations_pki;
use destinations_pki::Pki;

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Server {
    received: Arc<Mutex<Vec<Received>>>,
}

const HMAC_KEY: &str = "test-hmac-key-not-a-real-secret";

/// The receiver side of the documented HMAC scheme, written from the
/// documentation: `sha256=hex(HMAC-SHA256(key, timestamp + "." + body))`,
/// compared in constant time, timestamps older than 5 minutes refused.
fn verify_hmac(headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let timestamp = headers.get("x-plexus-timestamp").and_then(|v| v.to_str().ok()).ok_or("no timestamp")?;
    let seconds: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return Err("stale timestamp");
    }
    let signature = headers
        .get("x-plexus-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .ok_or("no signature")?;
    let signature = hex::decode(signature).map_err(|_| "signature is not hex")?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| "signature mismatch")
}

async fn record(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> Received {
    let received = Received { headers, body };
    server.received.lock().unwrap().push(received.clone());
    received
}

async fn ok(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    (StatusCode::CREATED, "{\"id\":\"r-1\"}").into_response()
}

async fn hmac_checked(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let r = record(state, headers, body).await;
    match verify_hmac(&r.headers, &r.body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(why) => (StatusCode::UNAUTHORIZED, why).into_response(),
    }
}

async fn bearer_checked(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let r = record(state, headers, body).await;
    match r.headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer tok-123") => StatusCode::OK.into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn too_many(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "slow down").into_response()
}

async fn unavailable(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response()
}

async fn bad_request(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    (StatusCode::BAD_REQUEST, "{\"error\":\"PID-3 is required\"}").into_response()
}

async fn redirect(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    (StatusCode::TEMPORARY_REDIRECT, [("location", "/ok")]).into_response()
}

async fn slow(state: State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    record(state, headers, body).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    StatusCode::OK.into_response()
}

async fn start() -> (String, Server) {
    let server = Server::default();
    let app = axum::Router::new()
        .route("/ok", post(ok).put(ok))
        .route("/hmac", post(hmac_checked))
        .route("/bearer", post(bearer_checked))
        .route("/429", post(too_many))
        .route("/503", post(unavailable))
        .route("/400", post(bad_request))
        .route("/307", post(redirect))
        .route("/slow", post(slow))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, server)
}

const HL7: &[u8] = b"MSH|^~\\&|PLEXUS|HOSP|CRM|HOSP|20261121093000||ADT^A01^ADT_A01|H1|P|2.5.1\rPID|1||PX1^^^HOSP^MR\r";

fn outbound() -> Outbound<'static> {
    Outbound {
        content: HL7,
        content_type: "x-application/hl7-v2+er7",
        message_id: "0190f0a1-0000-7000-8000-0000000000aa",
        channel: "adt-in",
        control_id: Some("H1"),
        received_at: chrono::Utc::now(),
    }
}

async fn build(toml_text: &str) -> Destination {
    let config: DestinationConfig = toml::from_str(toml_text).unwrap();
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("destination", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    config.build(&BuildContext::new("adt-in", "crm")).await.unwrap()
}

#[tokio::test]
async fn raw_body_with_headers_and_content_type() {
    let (base, server) = start().await;
    let dest = build(&format!(
        "type = \"http\"\nurl = \"{base}/ok\"\nheaders = {{ \"X-Source\" = \"plexus\", \"X-Api-Key\" = \"k-1\" }}\n"
    ))
    .await;
    let response = dest.send(&outbound()).await.unwrap();
    assert_eq!(response.kind, ResponseKind::Http(201));
    assert_eq!(response.summary, "HTTP 201");
    assert_eq!(response.body.as_deref(), Some("{\"id\":\"r-1\"}"));
    let received = server.received.lock().unwrap();
    let r = &received[0];
    assert_eq!(r.body.as_ref(), HL7, "the message as it is");
    assert_eq!(r.headers["content-type"], "x-application/hl7-v2+er7");
    assert_eq!(r.headers["x-source"], "plexus");
    assert_eq!(r.headers["x-api-key"], "k-1");
    assert!(r.headers["user-agent"].to_str().unwrap().starts_with("plexus/"));
}

#[tokio::test]
async fn method_put_and_a_templated_json_body() {
    let (base, server) = start().await;
    let dest = build(&format!(
        r#"
        type = "http"
        url = "{base}/ok"
        method = "put"
        content_type = "application/json"
        body = '{{"id": {{{{ message_id|tojson }}}}, "control_id": {{{{ control_id|tojson }}}}, "channel": {{{{ channel|tojson }}}}, "hl7": {{{{ message|tojson }}}}}}'
        "#
    ))
    .await;
    dest.send(&outbound()).await.unwrap();
    let received = server.received.lock().unwrap();
    let r = &received[0];
    assert_eq!(r.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["id"], "0190f0a1-0000-7000-8000-0000000000aa");
    assert_eq!(json["control_id"], "H1");
    assert_eq!(json["channel"], "adt-in");
    assert_eq!(json["hl7"].as_str().unwrap().as_bytes(), HL7);
}

#[tokio::test]
async fn bearer_token_is_sent() {
    let (base, _server) = start().await;
    let dest = build(&format!(
        "type = \"http\"\nurl = \"{base}/bearer\"\nauth = {{ type = \"bearer\", token = \"tok-123\" }}\n"
    ))
    .await;
    assert_eq!(dest.send(&outbound()).await.unwrap().summary, "HTTP 200");

    let wrong =
        build(&format!("type = \"http\"\nurl = \"{base}/bearer\"\nauth = {{ type = \"bearer\", token = \"nope\" }}\n"))
            .await;
    let err = wrong.send(&outbound()).await.unwrap_err();
    assert!(matches!(err, DeliveryError::HttpStatus { status: 401, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn basic_auth_is_sent() {
    let (base, server) = start().await;
    let dest = build(&format!(
        "type = \"http\"\nurl = \"{base}/ok\"\nauth = {{ type = \"basic\", username = \"plexus\", password = \"pw:1\" }}\n"
    ))
    .await;
    dest.send(&outbound()).await.unwrap();
    let received = server.received.lock().unwrap();
    use base64::Engine as _;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("plexus:pw:1"));
    assert_eq!(received[0].headers["authorization"], expected.as_str());
}

#[tokio::test]
async fn hmac_signed_requests_verify_on_the_receiver() {
    let (base, server) = start().await;
    let dest = build(&format!(
        "type = \"http\"\nurl = \"{base}/hmac\"\nauth = {{ type = \"hmac\", secret = \"{HMAC_KEY}\" }}\n"
    ))
    .await;
    let response = dest.send(&outbound()).await.unwrap();
    assert_eq!(response.summary, "HTTP 204");

    // The same request with a tampered body fails verification: the
    // signature covers the body.
    let received = server.received.lock().unwrap().pop().unwrap();
    let mut tampered = received.body.to_vec();
    tampered[0] = b'X';
    assert_eq!(verify_hmac(&received.headers, &tampered), Err("signature mismatch"));

    let wrong_key =
        build(&format!("type = \"http\"\nurl = \"{base}/hmac\"\nauth = {{ type = \"hmac\", secret = \"other\" }}\n"))
            .await;
    let err = wrong_key.send(&outbound()).await.unwrap_err();
    assert!(matches!(err, DeliveryError::HttpStatus { status: 401, .. }), "{err:?}");
}

#[tokio::test]
async fn status_429_is_transient_with_retry_after() {
    let (base, _server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/429\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.to_string(), "HTTP 429");
}

#[tokio::test]
async fn status_503_is_transient() {
    let (base, _server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/503\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn status_400_is_permanent_and_keeps_the_body() {
    let (base, _server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/400\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.failure_class(), store::FailureClass::Permanent);
    // The body may quote the message: it is kept with the attempt, not in
    // the reason.
    assert_eq!(err.to_string(), "HTTP 400");
    assert_eq!(
        err.to_store_response(),
        Some(store::Response::Http { status: 400, body_excerpt: "{\"error\":\"PID-3 is required\"}".into() })
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/307\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert!(matches!(err, DeliveryError::HttpStatus { status: 307, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(server.received.lock().unwrap().len(), 1, "only the first request was made");
}

#[tokio::test]
async fn a_slow_receiver_times_out_as_transient() {
    let (base, _server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/slow\"\ntimeout = \"200ms\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = testkit::free_port();
    let dest = build(&format!("type = \"http\"\nurl = \"http://127.0.0.1:{port}/x\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_failing_template_is_permanent_and_sends_nothing() {
    let (base, server) = start().await;
    let dest = build(&format!("type = \"http\"\nurl = \"{base}/ok\"\nbody = \"{{{{ no_such_value }}}}\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert_eq!(err.kind(), "content");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(server.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn validation_reports_every_problem() {
    let config: DestinationConfig = toml::from_str(
        "type = \"http\"\nurl = \"not a url\"\nbody = \"{% if %}\"\nheaders = { \"bad name\" = \"x\" }\n",
    )
    .unwrap();
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("channel \"adt-in\".destination[1]", &mut errors);
    let paths: Vec<_> = errors.0.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "channel \"adt-in\".destination[1].url",
            "channel \"adt-in\".destination[1].headers.bad name",
            "channel \"adt-in\".destination[1].body",
        ]
    );
    assert!(errors.0[0].message.starts_with("not a URL"), "{}", errors.0[0].message);
}

// ---------------------------------------------------------------------------
// HTTPS with a private CA and a client certificate.

/// axum over TLS: accepts TCP, completes the handshake, hands the stream
/// to axum; failed handshakes are dropped (and counted).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    failed_handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.failed_handshakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn start_tls(pki: &Pki) -> (u16, Server, Arc<std::sync::atomic::AtomicUsize>) {
    let server = Server::default();
    let app = axum::Router::new().route("/ok", post(ok)).with_state(server.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(pki.server_config(true, &[b"http/1.1"])),
        failed_handshakes: failed.clone(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, server, failed)
}

async fn build_in(dir: &std::path::Path, toml_text: &str) -> Destination {
    let config: DestinationConfig = toml::from_str(toml_text).unwrap();
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("destination", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    config.build(&BuildContext::new("adt-in", "crm").with_base_dir(dir)).await.unwrap()
}

#[tokio::test]
async fn https_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let (port, server, failed) = start_tls(&pki).await;
    // The certificate names localhost, so the URL does too.
    let url = format!("https://localhost:{port}/ok");

    let with_cert = build_in(
        pki.dir.path(),
        &format!(
            "type = \"http\"\nurl = \"{url}\"\ntls = {{ ca_file = \"ca.pem\", cert_file = \"client.pem\", key_file = \"client.key\" }}\n"
        ),
    )
    .await;
    assert_eq!(with_cert.send(&outbound()).await.unwrap().summary, "HTTP 201");
    assert_eq!(server.received.lock().unwrap().len(), 1);

    // Without the client certificate the server refuses the handshake.
    let without_cert =
        build_in(pki.dir.path(), &format!("type = \"http\"\nurl = \"{url}\"\ntls = {{ ca_file = \"ca.pem\" }}\n"))
            .await;
    let err = without_cert.send(&outbound()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(server.received.lock().unwrap().len(), 1, "nothing delivered without a client certificate");
    assert!(failed.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // A CA that did not sign the server: refused by the client.
    let other = Pki::new();
    let untrusted = build_in(
        other.dir.path(),
        &format!(
            "type = \"http\"\nurl = \"{url}\"\ntls = {{ ca_file = \"ca.pem\", cert_file = \"client.pem\", key_file = \"client.key\" }}\n"
        ),
    )
    .await;
    let err = untrusted.send(&outbound()).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err:?}");
    assert_eq!(server.received.lock().unwrap().len(), 1);
}

/// A one-request HTTP server on raw TCP: reads the request, answers
/// `status_line` with a body announced as 100 bytes of which it sends only
/// `partial`, then keeps the connection open without a byte more (`stall`)
/// or closes it. The URL to send to.
async fn truncating_server(status_line: &'static str, partial: &'static str, stall: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/truncated", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // The whole request: headers, then the Content-Length body.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
            assert!(n > 0, "the request ended early");
        }
        let head = format!("{status_line}\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n{partial}");
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.flush().await.unwrap();
        if stall {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    url
}

/// The status decides the delivery; the body is only an excerpt kept with
/// it. A 2xx whose body cannot be read to its end (the receiver stalls or
/// drops the connection after answering) is delivered: failing it would
/// send the message again to a receiver that already took it. A 4xx stays
/// permanent however its body ends.
#[tokio::test]
async fn a_2xx_whose_body_breaks_off_is_delivered() {
    let url = truncating_server("HTTP/1.1 201 Created", "{\"id\":", true).await;
    let dest = build(&format!("type = \"http\"\nurl = \"{url}\"\ntimeout = \"500ms\"\n")).await;
    let response = dest.send(&outbound()).await.expect("a 201 is a delivery");
    assert_eq!(response.kind, ResponseKind::Http(201));
    assert_eq!(response.body.as_deref(), Some("{\"id\":"));

    let url = truncating_server("HTTP/1.1 200 OK", "accepted", false).await;
    let dest = build(&format!("type = \"http\"\nurl = \"{url}\"\n")).await;
    let response = dest.send(&outbound()).await.expect("a 200 is a delivery");
    assert_eq!(response.kind, ResponseKind::Http(200));

    let url = truncating_server("HTTP/1.1 422 Unprocessable Entity", "{\"error\":", false).await;
    let dest = build(&format!("type = \"http\"\nurl = \"{url}\"\n")).await;
    let err = dest.send(&outbound()).await.unwrap_err();
    assert!(matches!(err, DeliveryError::HttpStatus { status: 422, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

/// A `Content-Type` given in `headers` is the request's content type: sent
/// once, not next to the default one (a receiver meeting two takes the
/// first, joins them or refuses the request). Given twice in the
/// configuration, or an `Authorization` header next to `auth`, is refused
/// when it loads.
#[tokio::test]
async fn a_content_type_in_headers_is_sent_once() {
    let (base, server) = start().await;
    let dest = build(&format!(
        "type = \"http\"\nurl = \"{base}/ok\"\nbody = '{{\"id\": {{{{ message_id|tojson }}}}}}'\n\
         headers = {{ \"Content-Type\" = \"application/json\" }}\n"
    ))
    .await;
    dest.send(&outbound()).await.unwrap();
    let raw =
        build(&format!("type = \"http\"\nurl = \"{base}/ok\"\nheaders = {{ \"content-type\" = \"text/hl7\" }}\n"))
            .await;
    raw.send(&outbound()).await.unwrap();
    let received = server.received.lock().unwrap();
    let types = |r: &Received| -> Vec<String> {
        r.headers.get_all("content-type").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    };
    assert_eq!(types(&received[0]), ["application/json"]);
    assert_eq!(types(&received[1]), ["text/hl7"]);
    drop(received);

    let config: DestinationConfig = toml::from_str(
        "type = \"http\"\nurl = \"https://x.example/\"\ncontent_type = \"application/json\"\n\
         headers = { \"Content-Type\" = \"text/plain\", \"Authorization\" = \"Bearer a\" }\n\
         auth = { type = \"bearer\", token = \"b\" }\n",
    )
    .unwrap();
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("d", &mut errors);
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["d.headers.Authorization", "d.headers.Content-Type"], "{errors}");
}
