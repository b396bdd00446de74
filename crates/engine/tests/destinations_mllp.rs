//! The MLLP destination against real sockets: an MLLP listener written
//! here (plain and TLS, with and without client certificates), and the
//! `@medplum/hl7` peer from `shared/peers` when `PLEXUS_PEERS` is set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use engine::config::Duration;
use engine::destinations::{
    BuildContext, DeliveryError, Destination, DestinationConfig, ErrorClass, MllpConfig, OnNak, Outbound, ResponseKind,
    TlsClientConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

mod destinations_pki;
use destinations_pki::Pki;

// ---------------------------------------------------------------------------
// A small MLLP listener, written independently of the hl7v2 codec.

/// What the listener does with message number `n` (0-based, across
/// connections) whose MSH-10 is `control_id`.
#[derive(Debug, Clone)]
enum Reply {
    /// Answer with this MSA-1 code, echoing the control id.
    Ack(&'static str),
    /// Answer AA but for another control id.
    WrongId,
    /// Say nothing (the sender's ACK timeout fires).
    Silent,
    /// Close the connection without answering.
    Close,
    /// Answer AA and close the connection afterwards.
    AckThenClose,
    /// Answer CA then AA in one write (enhanced mode: commit, then
    /// application acknowledgment).
    CommitThenAccept,
    /// Answer AA with an MSA-3 of this many bytes.
    Oversized(usize),
}

type Behaviour = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Clone, Default)]
struct Seen {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    open_now: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
}

impl Seen {
    fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

/// Reads one MLLP frame: bytes between 0x0B and 0x1C 0x0D. `None` at EOF.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(start) = buf.iter().position(|&b| b == 0x0B)
            && let Some(end) = buf[start..].windows(2).position(|w| w == [0x1C, 0x0D])
        {
            let frame = buf[start + 1..start + end].to_vec();
            buf.drain(..start + end + 2);
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// MSH-10 by splitting on `|` (segments on CR).
fn control_id(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let msh = text.split('\r').next().unwrap_or("");
    msh.split('|').nth(9).unwrap_or("").to_owned()
}

fn ack(code: &str, control_id: &str) -> Vec<u8> {
    let mut frame = vec![0x0B];
    frame.extend_from_slice(
        format!(
            "MSH|^~\\&|TESTRECV|TEST|PLEXUS|PLEXUS|20261121093000||ACK^A01^ACK|ACK{control_id}|P|2.5.1\r\
             MSA|{code}|{control_id}|{}\r",
            if code == "AA" { "" } else { "rejected by the test listener" }
        )
        .as_bytes(),
    );
    frame.extend_from_slice(&[0x1C, 0x0D]);
    frame
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: Seen,
    behaviour: Behaviour,
    counter: Arc<AtomicUsize>,
) {
    let open = seen.open_now.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_open.fetch_max(open, Ordering::SeqCst);
    let mut buf = Vec::new();
    while let Some(message) = read_frame(&mut stream, &mut buf).await {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let id = control_id(&message);
        seen.messages.lock().unwrap().push(message);
        let reply = behaviour(n);
        let answer = match reply {
            Reply::Ack(code) => ack(code, &id),
            Reply::WrongId => ack("AA", "SOMETHING-ELSE"),
            Reply::AckThenClose => ack("AA", &id),
            Reply::CommitThenAccept => [ack("CA", &id), ack("AA", &id)].concat(),
            Reply::Oversized(n) => {
                let mut frame = ack("AA", &id);
                let at = frame.len() - 3; // before the last CR and the end block
                frame.splice(at..at, std::iter::repeat_n(b'X', n));
                frame
            }
            Reply::Silent => {
                // Hold the connection open without answering.
                tokio::time::sleep(StdDuration::from_secs(3600)).await;
                break;
            }
            Reply::Close => break,
        };
        if stream.write_all(&answer).await.is_err() {
            break;
        }
        if matches!(reply, Reply::AckThenClose) {
            let _ = stream.shutdown().await;
            break;
        }
    }
    seen.open_now.fetch_sub(1, Ordering::SeqCst);
}

/// Starts a plain listener on 127.0.0.1:0.
async fn listener(behaviour: impl Fn(usize) -> Reply + Send + Sync + 'static) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let behaviour: Behaviour = Arc::new(behaviour);
    let counter = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(stream, s.clone(), behaviour.clone(), counter.clone()));
        }
    });
    (address, seen)
}

// ---------------------------------------------------------------------------

fn message(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|PLEXUS|HOSP|LAB|HOSP|20261121093000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||PX0000001^^^HOSP^MR||Testpatient^Synthetic||19800101|F\r"
    )
    .into_bytes()
}

fn outbound<'a>(content: &'a [u8]) -> Outbound<'a> {
    Outbound {
        content,
        content_type: "x-application/hl7-v2+er7",
        message_id: "0190f0a1-0000-7000-8000-000000000001",
        channel: "adt-in",
        control_id: None,
        received_at: chrono::Utc::now(),
    }
}

async fn build(config: MllpConfig) -> Destination {
    let config = DestinationConfig::Mllp(config);
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("destination", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    config.build(&BuildContext::new("adt-in", "lab")).await.unwrap()
}

fn quick(address: &str) -> MllpConfig {
    let mut config = MllpConfig::new(address);
    config.ack_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_secs(5);
    config.reconnect_backoff = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(50);
    config
}

#[tokio::test]
async fn aa_is_success_and_the_connection_is_reused() {
    let (address, seen) = listener(|_| Reply::Ack("AA")).await;
    let dest = build(quick(&address)).await;
    for n in 0..3 {
        let content = message(&format!("C{n}"));
        let response = dest.send(&outbound(&content)).await.unwrap();
        assert_eq!(response.kind, ResponseKind::Ack);
        assert_eq!(response.summary, "AA");
        assert!(response.body.as_deref().unwrap().contains(&format!("MSA|AA|C{n}")));
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "one connection for three messages");
    let received = seen.messages();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0], message("C0"), "sent byte for byte");
}

#[tokio::test]
async fn content_with_lf_segments_goes_out_with_cr() {
    let (address, seen) = listener(|_| Reply::Ack("AA")).await;
    let dest = build(quick(&address)).await;
    let lf = String::from_utf8(message("LF1")).unwrap().replace('\r', "\n");
    dest.send(&outbound(lf.as_bytes())).await.unwrap();
    assert_eq!(seen.messages()[0], message("LF1"));
}

#[tokio::test]
async fn nak_class_follows_on_nak() {
    let (address, _seen) = listener(|_| Reply::Ack("AE")).await;
    let dest = build(quick(&address)).await;
    let content = message("N1");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "on_nak defaults to retry");
    assert_eq!(err.kind(), "nak");
    // The receiver's text is kept with the attempt, not in the reason.
    assert_eq!(err.to_string(), "receiver answered AE");
    match err.to_store_response() {
        Some(store::Response::Ack { text }) => assert!(text.contains("rejected by the test listener"), "{text}"),
        other => panic!("{other:?}"),
    }

    let (address, _seen) = listener(|_| Reply::Ack("AR")).await;
    let mut config = quick(&address);
    config.on_nak = OnNak::DeadLetter;
    let dest = build(config).await;
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Nak { code, .. } if code == "AR"), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.failure_class(), store::FailureClass::Permanent);
}

#[tokio::test]
async fn on_nak_is_read_from_the_config_file() {
    let config: DestinationConfig = toml::from_str(
        "type = \"mllp\"\naddress = \"127.0.0.1:2575\"\non_nak = \"dead_letter\"\nack_timeout = \"5s\"\n",
    )
    .unwrap();
    let DestinationConfig::Mllp(mllp) = config else { panic!("not mllp") };
    assert_eq!(mllp.on_nak, OnNak::DeadLetter);
    assert_eq!(mllp.ack_timeout, Duration::from_secs(5));
    assert!(toml::from_str::<DestinationConfig>("type = \"mllp\"\naddress = \"x:1\"\non_nak = \"maybe\"\n").is_err());
}

#[tokio::test]
async fn an_ack_for_another_control_id_is_an_error_and_drops_the_connection() {
    let (address, seen) = listener(|n| if n == 0 { Reply::WrongId } else { Reply::Ack("AA") }).await;
    let dest = build(quick(&address)).await;
    let content = message("M1");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    match &err {
        DeliveryError::AckMismatch { sent, received } => {
            assert_eq!(sent, "M1");
            assert_eq!(received, "SOMETHING-ELSE");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Transient);
    dest.send(&outbound(&content)).await.unwrap();
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2, "a fresh connection after a mismatch");
}

#[tokio::test]
async fn no_ack_within_the_timeout_is_transient_and_the_next_send_reconnects() {
    let (address, seen) = listener(|n| if n == 0 { Reply::Silent } else { Reply::Ack("AA") }).await;
    let dest = build(quick(&address)).await;
    let content = message("T1");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Timeout { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
    // A late ACK on the old connection must not be taken for the next
    // message's: the next send uses a new connection.
    dest.send(&outbound(&content)).await.unwrap();
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_receiver_is_replaced_transparently() {
    let (address, seen) = listener(|_| Reply::AckThenClose).await;
    let dest = build(quick(&address)).await;
    for n in 0..3 {
        let content = message(&format!("R{n}"));
        dest.send(&outbound(&content)).await.unwrap();
    }
    assert_eq!(seen.messages().len(), 3, "each message delivered once");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_second_ack_for_the_previous_message_is_not_taken_for_the_next() {
    let (address, seen) = listener(|_| Reply::CommitThenAccept).await;
    let dest = build(quick(&address)).await;
    for n in 0..3 {
        let content = message(&format!("E{n}"));
        let response = dest.send(&outbound(&content)).await.unwrap();
        assert_eq!(response.summary, "CA", "message {n}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "the stale AA did not cost a reconnect");
}

#[tokio::test]
async fn an_ack_over_max_ack_size_is_refused_and_the_connection_dropped() {
    let (address, seen) = listener(|n| if n == 0 { Reply::Oversized(100_000) } else { Reply::Ack("AA") }).await;
    let mut config = quick(&address);
    config.max_ack_size = engine::config::ByteSize(64 * 1024);
    let dest = build(config).await;
    let content = message("BIG1");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.kind(), "bad_ack", "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(dest.send(&outbound(&content)).await.unwrap().summary, "AA");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2, "a fresh connection after the oversized answer");
}

#[tokio::test]
async fn closing_before_the_ack_on_a_fresh_connection_fails_the_attempt() {
    let (address, seen) = listener(|_| Reply::Close).await;
    let dest = build(quick(&address)).await;
    let content = message("X1");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.kind(), "connection");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(seen.messages().len(), 1, "not resent within the attempt: the connection was new");
}

#[tokio::test]
async fn the_pool_never_opens_more_than_connections() {
    let (address, seen) = listener(|_| Reply::Ack("AA")).await;
    let mut config = quick(&address);
    config.connections = 2;
    let dest = Arc::new(build(config).await);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let dest = dest.clone();
        tasks.push(tokio::spawn(async move {
            let content = message(&format!("P{n}"));
            dest.send(&outbound(&content)).await.map(|r| r.summary)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "AA");
    }
    assert_eq!(seen.messages().len(), 20);
    assert!(seen.max_open.load(Ordering::SeqCst) <= 2, "{} open at once", seen.max_open.load(Ordering::SeqCst));
    assert!(seen.connections.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn content_that_is_not_hl7_is_a_permanent_error() {
    let (address, seen) = listener(|_| Reply::Ack("AA")).await;
    let dest = build(quick(&address)).await;
    let err = dest.send(&outbound(b"{\"resourceType\": \"Patient\"}")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), "content");
    assert!(seen.messages().is_empty());
}

/// Reconnect attempts back off, shared by every send of the destination,
/// and a success resets the backoff. Paused time makes the waits exact.
#[tokio::test(start_paused = true)]
async fn reconnects_back_off_and_reset_after_success() {
    // A port with nothing listening: connections are refused at once.
    let port = testkit::free_port();
    let address = format!("127.0.0.1:{port}");
    let mut config = MllpConfig::new(&address);
    config.reconnect_backoff = Duration::from_secs(1);
    config.reconnect_backoff_max = Duration::from_secs(8);
    let dest = build(config).await;
    let content = message("B1");

    let start = tokio::time::Instant::now();
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(start.elapsed(), StdDuration::ZERO, "the first attempt does not wait");

    // Delays are jittered within [ceiling/2, ceiling]: 1s, 2s, 4s, 8s, 8s.
    let mut previous = tokio::time::Instant::now();
    for ceiling in [1u64, 2, 4, 8, 8] {
        dest.send(&outbound(&content)).await.unwrap_err();
        let waited = previous.elapsed();
        assert!(
            waited >= StdDuration::from_millis(ceiling * 500) && waited <= StdDuration::from_secs(ceiling),
            "waited {waited:?} for ceiling {ceiling}s"
        );
        previous = tokio::time::Instant::now();
    }

    // The receiver comes up (answering, then closing each connection): the
    // next send waits out the backoff once and succeeds.
    let listener = TcpListener::bind(&address).await.unwrap();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply: Behaviour = Arc::new(|_| Reply::AckThenClose);
            tokio::spawn(serve_connection(stream, Seen::default(), reply, Arc::new(AtomicUsize::new(0))));
        }
    });
    dest.send(&outbound(&content)).await.unwrap();

    // It goes down again: the first failure does not wait (the success
    // reset the backoff) and the next wait starts from the first delay.
    accept.abort();
    let _ = accept.await;
    let before = tokio::time::Instant::now();
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert_eq!(before.elapsed(), StdDuration::ZERO, "no wait right after a success");
    let before = tokio::time::Instant::now();
    dest.send(&outbound(&content)).await.unwrap_err();
    let waited = before.elapsed();
    assert!(
        waited >= StdDuration::from_millis(500) && waited <= StdDuration::from_secs(1),
        "backoff restarted from the first delay, waited {waited:?}"
    );
}

// ---------------------------------------------------------------------------
// TLS

/// A TLS listener answering AA; requires a client certificate when asked.
async fn tls_listener(pki: &Pki, require_client_cert: bool) -> (String, Seen) {
    let config = pki.server_config(require_client_cert, &[]);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let counter = Arc::new(AtomicUsize::new(0));
        while let Ok((stream, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let (s, counter) = (s.clone(), counter.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_connection(tls, s, Arc::new(|_| Reply::Ack("AA")), counter).await;
                }
            });
        }
    });
    (address, seen)
}

fn tls_config(client_cert: bool) -> TlsClientConfig {
    TlsClientConfig {
        ca_file: Some("ca.pem".into()),
        cert_file: client_cert.then(|| "client.pem".into()),
        key_file: client_cert.then(|| "client.key".into()),
        // The certificate names localhost; we connect to 127.0.0.1.
        server_name: Some("localhost".to_owned()),
    }
}

async fn build_tls(
    pki: &Pki,
    address: &str,
    client_cert: bool,
) -> Result<Destination, engine::destinations::DestinationError> {
    let mut config = quick(address);
    config.tls = Some(tls_config(client_cert));
    let config = DestinationConfig::Mllp(config);
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("destination", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    // Relative TLS paths resolve against the base folder.
    config.build(&BuildContext::new("adt-in", "lab").with_base_dir(pki.dir.path())).await
}

#[tokio::test]
async fn tls_with_a_ca_file() {
    let pki = Pki::new();
    let (address, seen) = tls_listener(&pki, false).await;
    let dest = build_tls(&pki, &address, false).await.unwrap();
    let content = message("TLS1");
    assert_eq!(dest.send(&outbound(&content)).await.unwrap().summary, "AA");
    assert_eq!(seen.messages(), [content]);
}

#[tokio::test]
async fn mutual_tls_sends_the_client_certificate() {
    let pki = Pki::new();
    let (address, seen) = tls_listener(&pki, true).await;

    let without = build_tls(&pki, &address, false).await.unwrap();
    let content = message("MTLS1");
    let err = without.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(seen.messages().is_empty(), "nothing delivered without a client certificate");

    let with = build_tls(&pki, &address, true).await.unwrap();
    assert_eq!(with.send(&outbound(&content)).await.unwrap().summary, "AA");
    assert_eq!(seen.messages(), [content]);
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let (address, seen) = tls_listener(&other, false).await;
    let dest = build_tls(&pki, &address, false).await.unwrap();
    let content = message("TLS2");
    let err = dest.send(&outbound(&content)).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    assert!(seen.messages().is_empty());
}

#[tokio::test]
async fn missing_tls_files_fail_the_build_with_the_field() {
    let pki = Pki::new();
    let mut config = quick("127.0.0.1:2575");
    config.tls = Some(TlsClientConfig { ca_file: Some("nope.pem".into()), ..Default::default() });
    let err = DestinationConfig::Mllp(config)
        .build(&BuildContext::new("c", "d").with_base_dir(pki.dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config);
    assert!(err.to_string().starts_with("tls.ca_file: reading"), "{err}");
}

// ---------------------------------------------------------------------------
// The @medplum/hl7 peer.

/// The HL7 v2 samples kept by the hl7v2 crate (see its PROVENANCE.md).
fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures")
}

#[tokio::test]
async fn delivers_to_the_medplum_peer() {
    let Some(_peers) = testkit::peers_or_skip("engine::destinations_mllp::peer") else { return };
    let port = testkit::free_port();
    let script = testkit::shared_dir().join("peers").join("mllp-peer-server.js");
    let _peer = testkit::PeerProcess::spawn("node", &[script.display().to_string(), port.to_string()], port).unwrap();
    let mut config = MllpConfig::new(format!("127.0.0.1:{port}"));
    config.ack_timeout = Duration::from_secs(10);
    let dest = build(config).await;
    for name in ["ADT-A01-01.hl7", "ORU-R01-01.hl7", "SIU-S12-01.hl7"] {
        let path = fixtures().join(name);
        let content = std::fs::read(&path).unwrap();
        let response = dest.send(&outbound(&content)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(response.summary, "AA", "{name}");
        let sent = hl7v2::Message::parse(content.clone()).unwrap();
        let ack = hl7v2::Message::parse(response.body.unwrap().into_bytes()).unwrap();
        assert_eq!(ack.get("MSA-2"), sent.control_id(), "{name}: MSA-2 echoes MSH-10");
    }
}
