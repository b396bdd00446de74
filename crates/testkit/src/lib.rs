//! Test support shared by Plexus's crates (a dev-dependency only).
//!
//! Peer-backed suites run only when their environment variable is set (see
//! docs/testing.md); on a bare machine they return early and say so with
//! [`skip`], which writes straight to the process's stderr so the line shows
//! even though `cargo test` captures the output of passing tests.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Reports a skipped peer-backed suite on stderr, bypassing test capture.
///
/// ```
/// testkit::skip("store::postgres", "PLEXUS_TEST_POSTGRES_URL is not set");
/// ```
pub fn skip(suite: &str, why: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {suite}: {why}");
}

/// The value of environment variable `var`, or `None` after reporting the
/// suite as skipped. An empty value counts as unset.
pub fn env_or_skip(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            skip(suite, &format!("{var} is not set"));
            None
        }
    }
}

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    // testkit lives at <root>/crates/testkit
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("testkit is inside crates/")
}

/// The shared design and data folder: `$PLEXUS_SHARED`, else `../shared`
/// beside the workspace (where CI and developers have it).
pub fn shared_dir() -> PathBuf {
    match std::env::var("PLEXUS_SHARED") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("..").join("shared"),
    }
}

/// Every `.hl7` file of `crates/hl7v2/tests/fixtures` (the HL7 v2 samples
/// every crate tests with), sorted by name. Panics when there are fewer
/// than `at_least`: a test over "every fixture" must not pass over none.
pub fn hl7v2_fixture_files(at_least: usize) -> Vec<PathBuf> {
    let dir = workspace_root().join("crates").join("hl7v2").join("tests").join("fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a fixture folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "{} HL7 v2 fixtures in {}, expected at least {at_least}",
        files.len(),
        dir.display()
    );
    files
}

/// The installed peers folder (`$PLEXUS_PEERS`), or `None` after reporting
/// `suite` as skipped. Also checks that the folder exists.
pub fn peers_or_skip(suite: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env_or_skip("PLEXUS_PEERS", suite)?);
    if dir.is_dir() {
        Some(dir)
    } else {
        skip(suite, &format!("PLEXUS_PEERS={} does not exist", dir.display()));
        None
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for
/// starting a child process that must be told its port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// A child process killed when dropped, so a failing test leaves no peer
/// running.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    /// The port the peer listens on.
    pub port: u16,
}

impl PeerProcess {
    /// Spawns `program args...` with `PLEXUS_PEERS` passed through, then
    /// waits until `port` accepts TCP connections (at most 20 s).
    pub fn spawn(program: &str, args: &[String], port: u16) -> std::io::Result<Self> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut peer = PeerProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(peer);
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(std::io::Error::other(format!("{program} exited early: {status}")));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("{program} did not listen on {port}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh in-memory FHIR R4 server (the Medplum-based peer in
/// `shared/peers/fhir-server.js`), or `None` after reporting `suite` as
/// skipped when the peers are not installed.
#[derive(Debug)]
pub struct FhirPeer {
    /// The running node process.
    pub process: PeerProcess,
    /// Base URL, e.g. `http://127.0.0.1:PORT/fhir/R4`.
    pub base_url: String,
}

impl FhirPeer {
    /// Starts a new, empty server on a free port.
    pub fn start(suite: &str) -> Option<FhirPeer> {
        peers_or_skip(suite)?;
        let script = shared_dir().join("peers").join("fhir-server.js");
        let port = free_port();
        let process = PeerProcess::spawn("node", &[script.display().to_string(), port.to_string()], port)
            .unwrap_or_else(|e| panic!("starting the FHIR peer for {suite}: {e}"));
        Some(FhirPeer { base_url: format!("http://127.0.0.1:{port}/fhir/R4"), process })
    }
}

/// A unique name for a per-test database or schema: `prefix_<pid>_<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
