//! Set-up of the end-to-end tests of the binary: `plexus serve` as a child
//! process on a config in a temp dir, `plexus send`, an MLLP exchange over
//! a plain socket, a recording MLLP receiver, waiting, and reading the
//! store a stopped server left. Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hl7v2::mllp::MllpCodec;
use tokio_util::codec::{Decoder, Encoder};

pub const BIN: &str = env!("CARGO_BIN_EXE_plexus");

/// A `plexus serve` child process, killed when dropped.
pub struct Serve {
    child: Option<Child>,
    log: PathBuf,
    /// Where its API (and HTTP ingest) listens.
    pub api: SocketAddr,
}

impl Serve {
    /// Writes `config` to `dir/plexus.toml` and starts `plexus serve` on it,
    /// logging at info level to `dir/<log_name>`. Returns once `/readyz` on
    /// `api` answers 200.
    pub fn start(dir: &Path, config: &str, api: SocketAddr, log_name: &str) -> Serve {
        let path = dir.join("plexus.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(log_name);
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--log", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn plexus serve");
        let mut serve = Serve { child: Some(child), log, api };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(api, "/readyz").is_some_and(|(status, _)| status == 200) {
                return serve;
            }
            if let Some(status) = serve.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("plexus serve exited early ({status}):\n{}", serve.log_text());
            }
            assert!(Instant::now() < deadline, "plexus serve not ready:\n{}", serve.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `plexus serve` in `dir` on the store and API lines plus `body` (see
    /// [`config`]), its API on a free port, logging to `serve.log`.
    pub fn start_with(dir: &Path, body: &str) -> Serve {
        let api = free_addr();
        Serve::start(dir, &config(api, body), api, "serve.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "plexus serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET: (status, body), or `None` when nothing listens.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// 127.0.0.1 with a free port, for a child process to listen on.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], testkit::free_port()))
}

/// The store and API lines of a config, plus `body`: the store is
/// `data/plexus.db` beside the config file.
pub fn config(api: SocketAddr, body: &str) -> String {
    format!("version = 1\n[store]\nurl = \"sqlite://data/plexus.db\"\n[api]\nlisten = \"{api}\"\n{body}")
}

/// A channel `name` from an MLLP source on `listen` (plus the lines of
/// `source_extra`) to a file destination `archive` writing to `out/`,
/// named `file_name` when given.
pub fn mllp_to_archive(name: &str, listen: SocketAddr, source_extra: &str, file_name: Option<&str>) -> String {
    let file_name = file_name.map(|f| format!("file_name = \"{f}\"\n")).unwrap_or_default();
    format!(
        "\n[channels.{name}.source]\ntype = \"mllp\"\nlisten = \"{listen}\"\n{source_extra}\
         [[channels.{name}.destinations]]\nname = \"archive\"\ntype = \"file\"\ndirectory = \"out\"\n{file_name}"
    )
}

/// The Synthea patient (319 resources) as a transaction Bundle.
pub fn synthea_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/tests/fixtures/synthea-patient-bundle.json")
}

/// The value at `path` in `msg`, empty when absent.
pub fn field(msg: &hl7v2::Message, path: &str) -> String {
    msg.get(path).map(|v| v.into_owned()).unwrap_or_default()
}

/// Polls `check` every 50 ms until it holds; fails after `timeout` (which
/// only bounds a hung test).
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The files (not hidden ones) in `dir`; none when it does not exist yet.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_file() && !name.starts_with('.') {
                out.push(p);
            }
        }
    }
    out
}

/// `message` in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    MllpCodec::default().encode(message, &mut out).unwrap();
    out.to_vec()
}

/// The next framed answer on `stream` (30 s at most), or `None` when the
/// server closed the connection or the answer does not parse.
pub fn read_frame(stream: &mut TcpStream) -> Option<hl7v2::Message> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut codec = MllpCodec::default();
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(frame) = codec.decode(&mut buf).ok()? {
            return hl7v2::Message::parse(frame.to_vec()).ok();
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `payload` and reads the answer ([`read_frame`]).
pub fn exchange(stream: &mut TcpStream, payload: &[u8]) -> Option<hl7v2::Message> {
    stream.write_all(payload).ok()?;
    read_frame(stream)
}

/// A fresh `plexus send` run: success, the summary as JSON, and all it
/// printed.
pub fn plexus_send(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(BIN).arg("send").args(args).arg("--json").output().expect("run plexus send");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("{}");
    let summary = serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
    (out.status.success(), summary, format!("{stdout}\n{stderr}"))
}

/// (order key, control id) of every message a receiver got, in order.
pub type Received = Arc<Mutex<Vec<(String, String)>>>;

/// An MLLP receiver in the test process that records (order key, control
/// id) of every message, in arrival order, and answers AA.
pub fn recording_receiver() -> (SocketAddr, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut codec = MllpCodec::default();
                let mut buf = bytes::BytesMut::new();
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let Ok(msg) = hl7v2::Message::parse(frame.to_vec()) else { return };
                        log.lock().unwrap().push((field(&msg, "PID-3-1"), field(&msg, "MSH-10")));
                        let ack = hl7v2::ack::Ack::new(hl7v2::ack::AckCode::ApplicationAccept, "R1", "20261121")
                            .for_message(&msg);
                        let mut out = bytes::BytesMut::new();
                        codec.encode(ack.as_bytes(), &mut out).unwrap();
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Runs `f` on a runtime of its own (the tests themselves are blocking).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The delivery counts of the store a server in `dir` used (after it
/// stopped).
pub fn counts_of(dir: &Path) -> Vec<store::StateCount> {
    let url = format!("sqlite://{}/data/plexus.db", dir.display());
    block_on(async {
        let store = store::open(&url, store::StoreOptions::default()).await.unwrap();
        let counts = store.counts().await.unwrap();
        store.close().await;
        counts
    })
}
