//! Set-up shared by the engine's integration tests: an engine started on a
//! SQLite file in a temp dir ([`Harness`]), sample messages, an MLLP client
//! and receiver, polling, HTTP helpers, a Prometheus text reader and the
//! HL7 v2 fixtures, a store a test can watch and make fail
//! ([`WatchedStore`]) and the warnings logged ([`Warnings`]). Each test
//! binary uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    let seen: Received = Arc::default();
    let log = Arc::clone(&seen);
    answer_aa(listener, move |msg, _| log.lock().unwrap().push((field(msg, "PID-3-1"), field(msg, "MSH-10"))));
    seen
}

/// Every message a [`text_receiver`] got, as text, in arrival order.
pub type ReceivedText = Arc<Mutex<Vec<String>>>;

/// An MLLP receiver on a fresh port of 127.0.0.1 that answers AA and keeps
/// each message whole, for tests that check what a destination sent.
pub async fn text_receiver() -> (SocketAddr, ReceivedText) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: ReceivedText = Arc::default();
    let log = Arc::clone(&seen);
    answer_aa(listener, move |_, frame| log.lock().unwrap().push(String::from_utf8(frame.to_vec()).unwrap()));
    (addr, seen)
}

/// Accepts MLLP connections on `listener`, hands every frame (parsed, and
/// as received) to `keep`, and answers it AA.
fn answer_aa(listener: TcpListener, keep: impl Fn(&hl7v2::Message, &[u8]) + Clone + Send + 'static) {
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut codec = MllpCodec::default();
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let msg = hl7v2::Message::parse(frame.to_vec()).unwrap();
                        keep(&msg, &frame);
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

/// A real store seen through by a test: it records what every claim
/// handed out, and fails some calls when asked to (a full disk, a lost
/// database), delegating the rest.
#[derive(Debug)]
pub struct WatchedStore {
    inner: Arc<dyn Store>,
    /// Every accept fails.
    pub fail_accepts: AtomicBool,
    /// Searches, counts and audit writes fail; the search error names a
    /// patient, as a careless backend's might, so a test can check it is
    /// not passed on.
    pub fail_reads: AtomicBool,
    /// Token lookups fail.
    pub fail_tokens: AtomicBool,
    /// The next claim of a worker after one of its own that handed out
    /// deliveries fails (once): with batches of one, the claim made ahead.
    /// The error's text names a patient, as a database's message may.
    pub fail_claim_after_deliveries: AtomicBool,
    /// Per claim, in order: the destination, the worker and how many
    /// deliveries it handed out (`None`: it failed).
    claims: Mutex<Vec<(String, String, Option<usize>)>>,
}

impl WatchedStore {
    pub fn new(inner: Arc<dyn Store>) -> WatchedStore {
        WatchedStore {
            inner,
            fail_accepts: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            fail_tokens: AtomicBool::new(false),
            fail_claim_after_deliveries: AtomicBool::new(false),
            claims: Mutex::new(Vec::new()),
        }
    }

    /// What the claims of `destination` handed out so far, in order.
    pub fn claims(&self, destination: &str) -> Vec<Option<usize>> {
        self.claims.lock().unwrap().iter().filter(|(d, _, _)| d == destination).map(|(_, _, n)| *n).collect()
    }
}

#[async_trait::async_trait]
impl Store for WatchedStore {
    fn backend(&self) -> store::Backend {
        self.inner.backend()
    }
    async fn accept(&self, message: store::NewMessage) -> store::Result<store::Accepted> {
        if self.fail_accepts.load(Ordering::SeqCst) {
            return Err(store::StoreError::Closed);
        }
        self.inner.accept(message).await
    }
    async fn claim(&self, r: &store::ClaimRequest) -> store::Result<store::Claim> {
        // The worker's own last claim: other workers' claims interleave.
        let after_deliveries = matches!(
            self.claims.lock().unwrap().iter().rev().find(|(_, w, _)| *w == r.worker),
            Some((_, _, Some(n))) if *n > 0
        );
        let result = if after_deliveries && self.fail_claim_after_deliveries.swap(false, Ordering::SeqCst) {
            // A database error quoting a value, as MariaDB's messages do:
            // only the error's summary may reach the log.
            Err(store::StoreError::Database(sqlx::Error::Protocol("unexpected row for MRN1 DOE^JANE".into())))
        } else {
            self.inner.claim(r).await
        };
        let handed = result.as_ref().ok().map(|c| c.deliveries.len());
        self.claims.lock().unwrap().push((r.destination.clone(), r.worker.clone(), handed));
        result
    }
    async fn complete(
        &self,
        d: store::DeliveryId,
        l: store::LeaseToken,
        o: store::Outcome,
        p: &store::RetryPolicy,
    ) -> store::Result<store::Completion> {
        self.inner.complete(d, l, o, p).await
    }
    async fn complete_with_retry_after(
        &self,
        d: store::DeliveryId,
        l: store::LeaseToken,
        o: store::Outcome,
        p: &store::RetryPolicy,
        retry_after: Option<Duration>,
    ) -> store::Result<store::Completion> {
        self.inner.complete_with_retry_after(d, l, o, p, retry_after).await
    }
    async fn extend_lease(
        &self,
        d: store::DeliveryId,
        l: store::LeaseToken,
        by: Duration,
    ) -> store::Result<chrono::DateTime<chrono::Utc>> {
        self.inner.extend_lease(d, l, by).await
    }
    async fn replay(&self, r: store::ReplayRequest) -> store::Result<store::ReplayResult> {
        self.inner.replay(r).await
    }
    async fn dead_letter(&self, d: store::DeliveryId, actor: &str, reason: Option<String>) -> store::Result<()> {
        self.inner.dead_letter(d, actor, reason).await
    }
    async fn record_audit(&self, e: store::NewAuditEvent) -> store::Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(store::StoreError::Closed);
        }
        self.inner.record_audit(e).await
    }
    async fn audit_events(&self, q: &store::AuditQuery) -> store::Result<Vec<store::AuditEvent>> {
        self.inner.audit_events(q).await
    }
    async fn get_message(&self, id: store::MessageId) -> store::Result<Option<store::MessageDetail>> {
        self.inner.get_message(id).await
    }
    async fn search(&self, q: &SearchQuery) -> store::Result<store::SearchPage> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(store::StoreError::NotFound("row for patient MRN-999 vanished".into()));
        }
        self.inner.search(q).await
    }
    async fn counts(&self) -> store::Result<Vec<store::StateCount>> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(store::StoreError::Closed);
        }
        self.inner.counts().await
    }
    async fn retention_batch(&self, r: &store::RetentionRequest) -> store::Result<store::RetentionBatch> {
        self.inner.retention_batch(r).await
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }
    fn clock(&self) -> store::Clock {
        self.inner.clock()
    }
    async fn try_lock(&self, name: &str) -> store::Result<Option<store::ClusterLock>> {
        self.inner.try_lock(name).await
    }
    async fn create_sync_job(&self, job: store::NewSyncJob) -> store::Result<store::SyncJob> {
        self.inner.create_sync_job(job).await
    }
    async fn update_sync_job(&self, id: store::SyncJobId, update: store::SyncJobUpdate) -> store::Result<()> {
        self.inner.update_sync_job(id, update).await
    }
    async fn sync_job(&self, id: store::SyncJobId) -> store::Result<Option<store::SyncJob>> {
        self.inner.sync_job(id).await
    }
    async fn sync_jobs(&self, query: &store::SyncJobQuery) -> store::Result<Vec<store::SyncJob>> {
        self.inner.sync_jobs(query).await
    }
    async fn create_api_token(&self, token: store::NewApiToken) -> store::Result<store::ApiToken> {
        self.inner.create_api_token(token).await
    }
    async fn api_tokens(&self) -> store::Result<Vec<store::ApiToken>> {
        self.inner.api_tokens().await
    }
    async fn revoke_api_token(&self, name_or_id: &str) -> store::Result<u64> {
        self.inner.revoke_api_token(name_or_id).await
    }
    async fn api_token(&self, id: &str) -> store::Result<Option<store::ApiToken>> {
        if self.fail_tokens.load(Ordering::SeqCst) {
            return Err(store::StoreError::Closed);
        }
        self.inner.api_token(id).await
    }
    async fn touch_api_token(&self, id: &str, at: chrono::DateTime<chrono::Utc>) -> store::Result<()> {
        self.inner.touch_api_token(id, at).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// The WARN and ERROR events logged on this thread while it is held (the
/// engine's tasks run there under a current-thread test runtime): their
/// message and fields, one line each.
pub struct Warnings {
    lines: Arc<Mutex<Vec<String>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Warnings {
    pub fn collect() -> Warnings {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let _guard = tracing::subscriber::set_default(Collector(Arc::clone(&lines)));
        Warnings { lines, _guard }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

struct Collector(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Collector {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(&mut LineVisitor(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

struct LineVisitor<'a>(&'a mut String);

impl tracing::field::Visit for LineVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}
