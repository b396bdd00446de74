//! Set-up shared by the engine's integration tests: an engine started on a
//! SQLite file in a temp dir ([`Harness`]), sample messages, an MLLP client
//! and receiver, polling, HTTP helpers, a Prometheus text reader and the
//! HL7 v2 fixtures. Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use engine::api::auth::{Scope, issue_token};
use engine::config::Config;
use engine::runtime::Engine;
use hl7v2::mllp::MllpCodec;
use store::{SearchQuery, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

/// A small valid ADT^A08 for patient `mrn`, control id `control_id`.
pub fn adt(control_id: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A08|20261121120000\r\
         PID|1||{mrn}^^^HOSP^MR||DOE^JANE||19800101|F\r\
         PV1|1|I\r"
    )
}

/// A small valid ORU^R01 (one glucose result) for patient `mrn`.
pub fn oru(control_id: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261121120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||{mrn}^^^HOSP^MR||DOE^JANE\r\
         OBR|1||F1|GLU^Glucose\r\
         OBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F\r"
    )
}

/// The value at `path` in `msg`, empty when absent.
pub fn field(msg: &hl7v2::Message, path: &str) -> String {
    msg.get(path).map(|v| v.into_owned()).unwrap_or_default()
}

/// The store and API lines plus `body` (`{dir}` replaced by `dir`): a
/// SQLite file in `dir`, the API on a port of its own.
pub fn config(dir: &Path, body: &str) -> Config {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.display(),
        body.replace("{dir}", &dir.display().to_string())
    );
    let mut config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    config.base_dir = dir.to_path_buf();
    config
}

/// The SQLite store of a temp dir as [`config`] names it, opened with
/// `options` (a manual clock, say) before the engine starts on it.
pub async fn open_store(dir: &Path, options: StoreOptions) -> Arc<dyn Store> {
    store::open(&format!("sqlite://{}/plexus.db", dir.display()), options).await.unwrap()
}

/// A running engine on a SQLite file in its own temp dir.
pub struct Harness {
    engine: Option<Engine>,
    dir: tempfile::TempDir,
}

impl Harness {
    /// Starts an engine whose config is the store and API lines plus `body`
    /// (see [`config`]).
    pub async fn start(body: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), body);
        Harness::start_in(dir, config).await
    }

    /// Starts an engine on `config` (made with [`config`] for `dir`, then
    /// changed by the test).
    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> Harness {
        let engine = Engine::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        Harness { engine: Some(engine), dir }
    }

    /// Starts an engine on `config` and a store the test opened.
    pub async fn start_with_store(dir: tempfile::TempDir, config: Config, store: Arc<dyn Store>) -> Harness {
        let engine = Engine::start_with_store(config, store).await.unwrap_or_else(|e| panic!("start: {e}"));
        Harness { engine: Some(engine), dir }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    /// A channel's source address.
    pub fn addr(&self, channel: &str) -> SocketAddr {
        self.engine().source_addr(channel).unwrap()
    }

    /// The API listener's address.
    pub fn api(&self) -> SocketAddr {
        self.engine().api_addr()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.engine().store()
    }

    /// The temp dir the config and the store live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A bearer token named `name` with `scopes`, issued in the engine's store.
    pub async fn token(&self, name: &str, scopes: &[Scope]) -> String {
        issue_token(self.store().as_ref(), name, scopes, None).await.unwrap().bearer
    }

    /// Stops the engine (5 s grace) and hands back the temp dir, for a
    /// restart on the same store.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.engine.take().unwrap().shutdown(Duration::from_secs(5)).await;
        self.dir
    }
}

/// An MLLP client that writes raw bytes and reads framed answers.
pub struct Client {
    pub stream: TcpStream,
    codec: MllpCodec,
    buf: BytesMut,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), codec: MllpCodec::default(), buf: BytesMut::new() }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Frames every message and writes them in one write.
    pub async fn send(&mut self, messages: &[&str]) {
        let mut out = BytesMut::new();
        for m in messages {
            self.codec.encode(m.as_bytes(), &mut out).unwrap();
        }
        self.write_raw(&out).await;
    }

    /// The next answer, or `None` when the server closed the connection.
    pub async fn read(&mut self) -> Option<hl7v2::Message> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(hl7v2::Message::parse(frame.to_vec()).expect("a well-formed ACK"));
            }
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                .await
                .expect("an answer within 30 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends one frame and returns the ACK's MSA-1.
    pub async fn exchange(&mut self, message: &str) -> String {
        self.send(&[message]).await;
        let ack = self.read().await.expect("the server closed the connection");
        field(&ack, "MSA-1")
    }
}

/// (PID-3-1, MSH-10) of every message a receiver got, in arrival order.
pub type Received = Arc<Mutex<Vec<(String, String)>>>;

/// An MLLP receiver on `listener` that answers AA and records what it got.
pub fn mllp_receiver(listener: TcpListener) -> Received {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut codec = MllpCodec::default();
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let msg = hl7v2::Message::parse(frame.to_vec()).unwrap();
                        log.lock().unwrap().push((field(&msg, "PID-3-1"), field(&msg, "MSH-10")));
                        let ack = hl7v2::ack::Ack::new(hl7v2::ack::AckCode::ApplicationAccept, "R", "20261121")
                            .for_message(&msg);
                        let mut out = BytesMut::new();
                        codec.encode(ack.as_bytes(), &mut out).unwrap();
                        if socket.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    match socket.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    seen
}

/// [`mllp_receiver`] on a fresh port of 127.0.0.1.
pub async fn recording_receiver() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, mllp_receiver(listener))
}

/// Polls `check` until it holds. Not a timing assertion: delivery is
/// asynchronous, and the 30 s only bound a hung test.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The stored messages with control id `control_id`.
pub async fn stored(store: &Arc<dyn Store>, control_id: &str) -> Vec<store::MessageSummary> {
    let query = SearchQuery { control_id: Some(control_id.to_string()), ..SearchQuery::default() };
    store.search(&query).await.unwrap().items
}

/// GETs `path` on `addr`; returns the status and body.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The status and JSON body of an answer.
pub async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// The value of the sample `series` (name and labels exactly as rendered)
/// in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{series}: not a number")))
}

/// Every HL7 v2 fixture of crates/hl7v2/tests/fixtures, parsed, by file
/// name (sorted).
pub fn fixtures() -> Vec<(String, hl7v2::Message)> {
    testkit::hl7v2_fixture_files(60)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let msg = hl7v2::Message::parse(std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, msg)
        })
        .collect()
}
