//! The dashboard in a real browser: `plexus serve` as a process with a temp
//! SQLite store, API tokens made with `plexus token create`, messages sent
//! with `plexus send`, and Debian's headless Chromium driven by
//! playwright-core (crates/plexus/tests/browser/dashboard.mjs). The script
//! logs in, watches the channel counts grow while `plexus send` runs, finds a
//! message by its control id, opens it (and one whose content is markup,
//! which must show as text), replays it, checks that a `messages:read` token
//! is told it lacks `messages:replay`, and saves a screenshot of each page
//! in `target/browser-artifacts/`.
//!
//! With the FHIR peers installed (`PLEXUS_PEERS`), the patient sync page is
//! driven end to end too: two fresh FHIR servers, the Synthea patient loaded
//! into one, found by name and birth date, synced to the other, the job
//! followed to its report.
//!
//! Skips with the reason when Chromium, node or the script's node_modules
//! are missing (`.ci/run` installs them; see docs/dashboard.md).

mod e2e_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_support::{BIN, Serve, config, free_addr, mllp_to_archive, synthea_bundle};
use testkit::FhirPeer;

const SUITE: &str = "plexus::dashboard_browser";
const SYNC_SUITE: &str = "plexus::dashboard_browser (patient sync flow)";
const CHANNEL: &str = "adt-in";

/// Every screenshot the script must leave behind.
const SCREENSHOTS: [&str; 7] =
    ["01-login", "02-channels", "03-messages", "04-message", "05-replayed", "06-sync", "07-forbidden"];

const HOSTILE_CONTROL_ID: &str = "DASHXSS1";

/// An ADT^A01 whose patient name is an `<img onerror>` and a `<script>`.
const HOSTILE_MESSAGE: &str = "MSH|^~\\&|EVIL|HOSP|PLEXUS|HOSP|20260101120000||ADT^A01|DASHXSS1|P|2.5\r\
EVN|A01|20260101120000\r\
PID|1||666^^^HOSP^MR||<img src=x onerror=window.__plexusXss=true>^<script>window.__plexusXss=true</script>||19700101|F\r\
PV1|1|I\r";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where screenshots go: `<target>/browser-artifacts` (CI keeps the folder).
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("browser-artifacts")
}

/// The browser, node and playwright-core, or `None` after saying which is
/// missing.
fn browser_or_skip() -> Option<PathBuf> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !chromium.is_file() {
        testkit::skip(
            SUITE,
            &format!("{} is not installed (apt-get install chromium chromium-driver)", chromium.display()),
        );
        return None;
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        testkit::skip(SUITE, "node is not installed");
        return None;
    }
    if !browser_dir().join("node_modules/playwright-core/package.json").is_file() {
        testkit::skip(SUITE, "playwright-core is not installed (npm ci --prefix crates/plexus/tests/browser)");
        return None;
    }
    Some(chromium)
}

/// `plexus token create`; returns the token it prints (once).
fn create_token(config: &Path, name: &str, scopes: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "create", "--config"])
        .arg(config)
        .args(["--name", name, "--scopes", scopes])
        .output()
        .expect("run plexus token create");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "plexus token create failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("plx_"))
        .unwrap_or_else(|| panic!("no plx_ token in the output of plexus token create: {stdout}"))
        .to_string()
}

/// `plexus send` of `count` generated ADT messages with control ids
/// `<run_id>0000000000`, `<run_id>0000000001` ...
fn send_command(mllp: SocketAddr, run_id: &str, count: u32) -> Vec<String> {
    [BIN, "send", "--to", &mllp.to_string(), "--generate", "adt", "--count", &count.to_string(), "--run-id", run_id]
        .map(String::from)
        .to_vec()
}

#[test]
fn dashboard_in_headless_chromium() {
    let Some(chromium) = browser_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (api, mllp) = (free_addr(), free_addr());
    // Two fresh FHIR servers for the patient sync page, when the peers are installed.
    let fhir = FhirPeer::start(SYNC_SUITE).and_then(|ehr| Some((ehr, FhirPeer::start(SYNC_SUITE)?)));
    let fhir_servers = fhir.as_ref().map_or(String::new(), |(ehr, hub)| {
        format!(
            "[fhir_servers.ehr]\nbase_url = \"{}\"\n[fhir_servers.hub]\nbase_url = \"{}\"\n",
            ehr.base_url, hub.base_url
        )
    });
    let text = config(api, &format!("{}{fhir_servers}", mllp_to_archive(CHANNEL, mllp, "", Some("${message_id}.hl7"))));
    // Written now for the tokens, made in the store before the server starts
    // (which writes the same file again).
    let config = dir.path().join("plexus.toml");
    std::fs::write(&config, &text).unwrap();
    let admin = create_token(&config, "dashboard-test", "all");
    let reader = create_token(&config, "dashboard-reader", "messages:read");
    let serve = Serve::start(dir.path(), &text, api, "serve.log");

    // Something to see before the browser arrives.
    let first = send_command(mllp, "DASHA", 2);
    let first = Command::new(&first[0]).args(&first[1..]).output().unwrap();
    assert!(first.status.success(), "plexus send: {}", String::from_utf8_lossy(&first.stderr));
    // A message whose patient name is markup: the pages must show it as text.
    let hostile = dir.path().join("hostile.hl7");
    std::fs::write(&hostile, HOSTILE_MESSAGE).unwrap();
    let sent = Command::new(BIN).args(["send", "--to", &mllp.to_string()]).arg(&hostile).output().unwrap();
    assert!(sent.status.success(), "plexus send: {}", String::from_utf8_lossy(&sent.stdout));

    let artifacts = artifacts_dir();
    for name in SCREENSHOTS {
        let _ = std::fs::remove_file(artifacts.join(format!("{name}.png")));
    }
    let sent_by_browser = 3;
    let mut node = Command::new("node");
    if let Some((ehr, _)) = &fhir {
        node.env("PLEXUS_SYNC_EHR", &ehr.base_url).env("PLEXUS_SYNC_BUNDLE", synthea_bundle());
    }
    let out = node
        .arg(browser_dir().join("dashboard.mjs"))
        .current_dir(browser_dir())
        .env("PLEXUS_URL", format!("http://{api}"))
        .env("PLEXUS_TOKEN", &admin)
        .env("PLEXUS_READ_TOKEN", &reader)
        .env("PLEXUS_CHANNEL", CHANNEL)
        .env("PLEXUS_SEND", serde_json::to_string(&send_command(mllp, "DASHB", sent_by_browser)).unwrap())
        .env("PLEXUS_SEND_COUNT", sent_by_browser.to_string())
        .env("PLEXUS_CONTROL_ID", "DASHB0000000001")
        .env("PLEXUS_HOSTILE_ID", HOSTILE_CONTROL_ID)
        .env("PLEXUS_BULK_ID", "DASHA0000000000")
        .env("PLEXUS_ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result_line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!(
            "the browser script printed no RESULT line\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
            serve.log_text()
        )
    });
    let result: serde_json::Value = serde_json::from_str(result_line).unwrap();
    let failed: Vec<&serde_json::Value> =
        result["checks"].as_array().unwrap().iter().filter(|c| c["ok"] != true).collect();
    assert!(
        failed.is_empty() && result["ok"] == true && out.status.success(),
        "browser checks failed: {failed:#?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
        serve.log_text()
    );
    // Every step the issue names was checked, not skipped.
    let names: Vec<&str> = result["checks"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for step in [
        "the token logs in and the channel list shows",
        "received count went up by the messages sent",
        "the navigation is hidden until logged in",
        "Stop stops the channel",
        "Start starts it again",
        "search by control id finds exactly that message",
        "search by MRN finds that patient's message",
        "a time range without messages finds none",
        "replay every match replays the one match",
        "the HL7 tree shows MSH-10 with its path",
        "message markup is shown as text and not run",
        "the replayed delivery was sent again (one more attempt)",
        "a 403 names the missing scope",
        "no script errors in the page",
    ] {
        assert!(names.contains(&step), "the script did not check: {step}\n{stdout}");
    }
    if fhir.is_some() {
        for step in [
            "the search shows the patient card",
            "the sync job succeeded",
            "the report counts resources created on the target",
        ] {
            assert!(names.contains(&step), "the script did not check: {step}\n{stdout}");
        }
    }
    for name in SCREENSHOTS {
        let path = artifacts.join(format!("{name}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{} is not a screenshot", path.display());
    }
    // 3 messages before the browser, 3 while it watched: one file each (the
    // replayed message rewrote its own file).
    let written = std::fs::read_dir(dir.path().join("out")).unwrap().count();
    assert_eq!(written, 6, "files written by the archive destination");
}
