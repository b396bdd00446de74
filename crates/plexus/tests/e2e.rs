//! End-to-end tests of `plexus serve` as a real process: real sockets, a
//! real SQLite file in a temp dir, real peers written by others (python-hl7's
//! `mllp_send`, the Node MLLP listener), `plexus send` as the load
//! generator, SIGKILL in the middle of a run.
//!
//! Suites that need the peers return early with `SKIPPED ...` when
//! `PLEXUS_PEERS` is unset (see docs/testing.md). Sizes are configurable:
//! `PLEXUS_E2E_CRASH_COUNT` (default 10000) messages in the crash test
//! (the issue asks for 50000; that takes minutes in a debug build on 2 busy
//! cores, so CI uses the smaller default and a release run can ask for more).

mod e2e_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use e2e_support::{
    BIN, Serve, config, counts_of, exchange, field, files_in, frame, free_addr, http_get, mllp_to_archive, plexus_send,
    recording_receiver, wait_for,
};
use hl7v2::ack::Outcome;
use hl7v2::mllp::MllpCodec;
use tokio_util::codec::Decoder;

/// What `mllp_send --loose` sends for a file: line ends become CR, the text
/// is split before each `MSH|^~\&|`, each piece stripped of trailing CR,
/// LF and spaces (python-hl7's `read_loose`, reproduced so the test knows
/// which answer belongs to which message).
fn loose_messages(file: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(file).unwrap();
    let data: Vec<u8> = data.into_iter().filter(|b| ![0x0b, 0x1c, 0x0c].contains(b)).collect();
    let text = String::from_utf8_lossy(&data).replace("\r\n", "\r").replace('\n', "\r");
    let header = "MSH|^~\\&|";
    text.split(header)
        .filter(|m| !m.is_empty())
        .map(|m| format!("{header}{}", m.trim_end_matches(['\r', '\n', ' '])).into_bytes())
        .collect()
}

/// The answers `mllp_send` printed: each is an MLLP frame followed by a
/// newline.
fn answers(stdout: &[u8]) -> Vec<hl7v2::Message> {
    let mut codec = MllpCodec::default();
    let mut buf = bytes::BytesMut::from(stdout);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).unwrap() {
        out.push(hl7v2::Message::parse(frame.to_vec()).expect("a well-formed ACK"));
    }
    out
}

/// Values that identify a patient in a message: names, identifiers, birth
/// date, address, phone (PID-3 .. PID-13 components of at least 4
/// characters), and whole segments (message bodies).
fn patient_data(msg: &hl7v2::Message) -> Vec<String> {
    let mut values = Vec::new();
    for pid in msg.segments_named("PID") {
        for n in [3, 5, 6, 7, 11, 13, 19] {
            if let Some(field) = pid.field(n) {
                for rep in field.repetitions() {
                    for c in rep.components() {
                        let v = c.text().trim().to_string();
                        if v.len() >= 4 && v.chars().any(|c| c.is_alphanumeric()) {
                            values.push(v);
                        }
                    }
                }
            }
        }
        values.push(String::from_utf8_lossy(pid.raw()).into_owned());
    }
    values
}

/// Every fixture through python-hl7's `mllp_send` (a client nobody here
/// wrote): each message gets a well-formed ACK echoing its MSH-10; valid
/// ones are accepted and written by the file destination exactly once,
/// invalid ones get AE/AR with ERR segments naming the problems; the info
/// log holds no patient data.
#[test]
fn every_fixture_through_python_hl7_mllp_send() {
    let Some(peers) = testkit::peers_or_skip("plexus::e2e::mllp_send") else { return };
    let mllp_send = peers.join("venv/bin/mllp_send");
    let dir = tempfile::tempdir().unwrap();
    let (api, mllp) = (free_addr(), free_addr());
    let body = mllp_to_archive("adt-in", mllp, "", Some("${message_id}.hl7"));
    // The fixtures reuse control ids across different messages (MSG00001
    // from the same sender ...), which Plexus rightly treats as resends;
    // a zero duplicate window lets every one of them through here.
    // Duplicates are tested by the crash test and crates/engine/tests.
    let config = config(api, &body).replace("[store]\n", "[store]\nduplicate_window = \"0s\"\n");
    let serve = Serve::start(dir.path(), &config, api, "serve.log");

    // Accepted (sender key, control id) pairs, to count the reused ones.
    let mut accepted: HashSet<(String, String)> = HashSet::new();
    let mut expected_files: Vec<Vec<u8>> = Vec::new();
    let mut patient_values: Vec<String> = Vec::new();
    let (mut aa, mut nak, mut reused) = (0, 0, 0);
    for file in testkit::hl7v2_fixture_files(70) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let out: Output = Command::new(&mllp_send)
            .args(["--loose", "-p", &mllp.port().to_string(), "-f"])
            .arg(&file)
            .arg("127.0.0.1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: mllp_send failed: {}", String::from_utf8_lossy(&out.stderr));
        let sent = loose_messages(&file);
        let got = answers(&out.stdout);
        assert_eq!(got.len(), sent.len(), "{name}: one ACK per message sent");
        for (message, ack) in sent.iter().zip(&got) {
            let code = field(ack, "MSA-1");
            assert_eq!(field(ack, "MSH-9-1"), "ACK", "{name}: an ACK message");
            match hl7v2::Message::parse(message.as_slice()) {
                Err(_) => {
                    assert!(matches!(code.as_str(), "AE" | "AR"), "{name}: unparseable -> {code}");
                    assert!(ack.segment("ERR").is_some(), "{name}: the NAK has an ERR");
                    nak += 1;
                }
                Ok(parsed) => {
                    let control_id = field(&parsed, "MSH-10");
                    assert_eq!(field(ack, "MSA-2"), control_id, "{name}: MSA-2 echoes MSH-10");
                    let issues = hl7v2::validate::validate(&parsed);
                    // Enhanced mode when MSH-15 or MSH-16 holds something
                    // other than blanks (some fixtures end MSH with spaces).
                    let enhanced =
                        !field(&parsed, "MSH-15").trim().is_empty() || !field(&parsed, "MSH-16").trim().is_empty();
                    let key = (format!("{}^{}", field(&parsed, "MSH-3"), field(&parsed, "MSH-4")), control_id);
                    let (want_accept, want_error, want_reject) =
                        if enhanced { ("CA", "CE", "CR") } else { ("AA", "AE", "AR") };
                    match hl7v2::validate::outcome(&issues) {
                        Outcome::Accepted => {
                            assert_eq!(code, want_accept, "{name}: valid -> {want_accept}");
                            if !accepted.insert(key) {
                                reused += 1;
                            }
                            expected_files.push(message.clone());
                            patient_values.extend(patient_data(&parsed));
                            aa += 1;
                        }
                        verdict => {
                            let want = if verdict == Outcome::Rejected { want_reject } else { want_error };
                            assert_eq!(code, want, "{name}: invalid -> {want}: {issues:?}");
                            let text = String::from_utf8_lossy(ack.as_bytes()).into_owned();
                            let first = issues.iter().find(|i| i.severity >= hl7v2::Severity::Error).unwrap();
                            assert!(ack.segment("ERR").is_some(), "{name}: the NAK has ERR segments");
                            assert!(
                                text.contains(&first.message) || text.contains(&first.code.code().to_string()),
                                "{name}: the ERR names the problem ({first}): {text}"
                            );
                            nak += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!("mllp_send: {aa} accepted, {nak} NAKs; {reused} reuse an earlier message's sender and control id");
    assert!(aa > 40, "most fixtures are valid");

    // The file destination writes each accepted message once, as received.
    let out = dir.path().join("out");
    wait_for("the file destination writes every accepted message", Duration::from_secs(60), || {
        files_in(&out).len() >= expected_files.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut written: Vec<Vec<u8>> = files_in(&out).iter().map(|p| std::fs::read(p).unwrap()).collect();
    written.sort();
    expected_files.sort();
    assert_eq!(written.len(), expected_files.len(), "exactly once");
    assert!(written == expected_files, "the files hold the messages as received");

    let log = serve.log_text();
    assert!(serve.stop().success(), "clean exit on SIGTERM");
    assert!(log.contains("engine ready"), "{log}");
    for value in &patient_values {
        assert!(!log.contains(value.as_str()), "patient data {value:?} in the info log:\n{log}");
    }
}

/// `plexus send --count N --connections 8` against `plexus serve`, which is
/// killed with SIGKILL mid-run and restarted; the sender re-sends what was
/// not acknowledged. Afterwards every message is stored once, the file
/// destination holds each exactly once, and a downstream receiver got each
/// patient's messages in order.
#[test]
fn crash_mid_run_loses_nothing_and_keeps_order() {
    let count: u64 = std::env::var("PLEXUS_E2E_CRASH_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    interrupted_run(count, Stop::Kill);
}

/// The same with SIGTERM: the server stops accepting, finishes the
/// messages in flight (each one it acknowledged is stored) and exits 0;
/// after the restart the queued deliveries go out.
#[test]
fn graceful_stop_under_load_loses_nothing() {
    interrupted_run(3_000, Stop::Term);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

fn interrupted_run(count: u64, stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let (api, mllp) = (free_addr(), free_addr());
    let (downstream, seen) = recording_receiver();
    let body = format!(
        r#"
[channels.load]
order_key = "PID-3-1"
[channels.load.source]
type = "mllp"
listen = "{mllp}"
max_connections = 64
[[channels.load.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${{control_id}}.hl7"
workers = 2
lease = "2s"
[[channels.load.destinations]]
name = "downstream"
type = "mllp"
address = "{downstream}"
connections = 4
workers = 4
lease = "2s"
"#
    );
    let config = config(api, &body);
    let serve = Serve::start(dir.path(), &config, api, "serve-1.log");

    let to = mllp.to_string();
    let count_arg = count.to_string();
    let sender = std::thread::spawn(move || {
        plexus_send(&[
            "--to",
            &to,
            "--generate",
            "adt",
            "--count",
            &count_arg,
            "--connections",
            "8",
            "--patients",
            "200",
            "--retry-unacked",
            "--reconnect-timeout",
            "60s",
        ])
    });

    // Kill it once a fifth of the messages are in.
    let out = dir.path().join("out");
    let target = (count / 5) as usize;
    wait_for("a fifth of the messages delivered", Duration::from_secs(300), || files_in(&out).len() >= target);
    match stop {
        Stop::Kill => serve.kill(),
        Stop::Term => assert!(serve.stop().success(), "a clean exit on SIGTERM under load"),
    }
    let serve = Serve::start(dir.path(), &config, api, "serve-2.log");

    let (ok, summary, output) = sender.join().unwrap();
    assert!(ok, "every message acknowledged AA in the end:\n{output}");
    eprintln!("plexus send: {summary}");

    // Every message is in the file destination exactly once (file names are
    // control ids; a re-delivery after the crash rewrote the same file).
    wait_for("every message delivered to the file destination", Duration::from_secs(300), || {
        files_in(&out).len() as u64 >= count
    });
    let names: HashSet<String> =
        files_in(&out).iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len() as u64, count, "each message exactly once");
    wait_for("every message delivered downstream", Duration::from_secs(300), || {
        let seen = seen.lock().unwrap();
        seen.iter().map(|(_, id)| id.as_str()).collect::<HashSet<_>>().len() as u64 >= count
    });
    assert!(serve.stop().success());

    // The store holds each message once (one delivery per message and
    // destination: count one destination).
    let stored: u64 = counts_of(dir.path())
        .iter()
        .filter(|c| c.channel == "load" && c.destination == "archive")
        .map(|c| c.count)
        .sum();
    assert_eq!(stored, count, "each acknowledged message stored once");

    // Per patient, the downstream receiver saw the messages in the order
    // they were sent (control ids end in the send index); a message sent
    // again after the crash may repeat, right after itself.
    let seen = seen.lock().unwrap().clone();
    let mut per_patient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (patient, id) in seen {
        let ids = per_patient.entry(patient).or_default();
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }
    for (patient, ids) in &per_patient {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, &sorted, "patient {patient}: in order, each once after collapsing immediate repeats");
    }
    assert!(per_patient.len() >= 100, "messages of many patients");
}

/// Deliveries sent to `destination` so far, from the public `/metrics` of
/// the server whose API is `api` (0 while it does not answer).
fn sent_to(api: std::net::SocketAddr, destination: &str) -> u64 {
    let Some((200, text)) = http_get(api, "/metrics") else { return 0 };
    let labels = format!("destination=\"{destination}\"");
    text.lines()
        .filter(|l| l.starts_with("plexus_deliveries_total{") && l.contains(&labels))
        .filter(|l| l.contains("outcome=\"sent\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Plexus's mllp destination delivers to the Node MLLP peer and to a
/// second `plexus serve`.
#[test]
fn mllp_destination_delivers_to_the_node_peer_and_a_second_plexus() {
    let Some(peers) = testkit::peers_or_skip("plexus::e2e::mllp_peers") else { return };
    let node_port = testkit::free_port();
    let script = testkit::shared_dir().join("peers/mllp-peer-server.js");
    let _node = testkit::PeerProcess::spawn("node", &[script.display().to_string(), node_port.to_string()], node_port)
        .unwrap_or_else(|e| panic!("starting the node MLLP peer ({}): {e}", peers.display()));

    let second_dir = tempfile::tempdir().unwrap();
    let mllp2 = free_addr();
    let second =
        Serve::start_with(second_dir.path(), &mllp_to_archive("inbound", mllp2, "", Some("${control_id}.hl7")));

    let first_dir = tempfile::tempdir().unwrap();
    let mllp1 = free_addr();
    // Metrics open to read: the test waits on them (lines before the
    // first table go into [api]).
    let body1 = format!(
        r#"metrics_public = true
[channels.adt-in.source]
type = "mllp"
listen = "{mllp1}"
[[channels.adt-in.destinations]]
name = "node-peer"
type = "mllp"
address = "127.0.0.1:{node_port}"
[[channels.adt-in.destinations]]
name = "second-plexus"
type = "mllp"
address = "{mllp2}"
"#
    );
    let first = Serve::start_with(first_dir.path(), &body1);

    let (ok, summary, output) = plexus_send(&[
        "--to",
        &mllp1.to_string(),
        "--generate",
        "oru",
        "--count",
        "200",
        "--connections",
        "2",
        "--run-id",
        "NODEPEER",
    ]);
    assert!(ok, "{output}");
    assert_eq!(summary["codes"]["AA"].as_u64(), Some(200), "{summary}");

    let out = second_dir.path().join("out");
    wait_for("the second plexus stores and writes all 200", Duration::from_secs(120), || files_in(&out).len() >= 200);
    assert_eq!(files_in(&out).len(), 200);
    // The node peer's deliveries run on their own: a stop now could leave
    // some of them queued (they would go out at the next start).
    wait_for("the first plexus delivers all 200 to the node peer", Duration::from_secs(120), || {
        sent_to(first.api, "node-peer") >= 200
    });
    assert!(first.stop().success());
    assert!(second.stop().success());

    let counts = counts_of(first_dir.path());
    let sent: HashMap<String, u64> = counts
        .iter()
        .filter(|c| c.state == store::DeliveryState::Sent)
        .map(|c| (c.destination.clone(), c.count))
        .collect();
    assert_eq!(sent.get("node-peer"), Some(&200), "{counts:?}");
    assert_eq!(sent.get("second-plexus"), Some(&200), "{counts:?}");
}

/// Garbage, a frame over the size limit, a message without MSH, a
/// truncated frame and a slow-loris connection, against the real binary:
/// each is answered or closed, and a well-behaved sender is served
/// throughout.
#[test]
fn bad_input_is_answered_or_closed_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mllp = free_addr();
    let limits = "max_message_size = \"64KiB\"\nframe_timeout = \"2s\"\nidle_timeout = \"10s\"\n";
    let serve = Serve::start_with(dir.path(), &mllp_to_archive("adt-in", mllp, limits, None));
    let good = |id: &str| {
        format!(
            "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A08^ADT_A01|{id}|P|2.5.1\rEVN|A08|20261121120000\r\
             PID|1||MRN77^^^HOSP^MR||ROE^RICHARD||19700101|M\rPV1|1|I\r"
        )
    };

    // The well-behaved sender, on its own connection throughout.
    let mut good_conn = TcpStream::connect(mllp).unwrap();
    let mut check_good = |id: &str| {
        let ack = exchange(&mut good_conn, &frame(good(id).as_bytes())).expect("the good sender is answered");
        assert_eq!((field(&ack, "MSA-1").as_str(), field(&ack, "MSA-2").as_str()), ("AA", id));
    };
    check_good("G1");

    // A slow-loris connection that never completes its frame.
    let mut loris = TcpStream::connect(mllp).unwrap();
    loris.write_all(b"\x0bMSH|^~\\&|").unwrap();

    // Garbage bytes, then a frame: the garbage is skipped.
    let mut c = TcpStream::connect(mllp).unwrap();
    let mut payload = b"\x00\xffGET / HTTP/1.1\r\n\r\n".to_vec();
    payload.extend(frame(good("G2").as_bytes()));
    let ack = exchange(&mut c, &payload).unwrap();
    assert_eq!(field(&ack, "MSA-2"), "G2");
    check_good("G3");

    // No MSH: AE with an ERR.
    let nak = exchange(&mut c, &frame(b"PID|1||MRN77\rPV1|1|I\r")).unwrap();
    assert_eq!(field(&nak, "MSA-1"), "AE");
    assert!(nak.segment("ERR").is_some());

    // Over the size limit: AR naming it, and the same connection goes on.
    let big = format!("{}NTE|1||{}\r", good("BIG"), "x".repeat(100 * 1024));
    let nak = exchange(&mut c, &frame(big.as_bytes())).unwrap();
    assert_eq!((field(&nak, "MSA-1").as_str(), field(&nak, "MSA-2").as_str()), ("AR", "BIG"));
    let ack = exchange(&mut c, &frame(good("G4").as_bytes())).unwrap();
    assert_eq!(field(&ack, "MSA-1"), "AA");
    check_good("G5");

    // A truncated frame: the peer goes away in the middle.
    let mut t = TcpStream::connect(mllp).unwrap();
    t.write_all(&frame(good("TRUNC").as_bytes())[..40]).unwrap();
    drop(t);
    check_good("G6");

    // The slow-loris connection is closed by the server.
    loris.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let closed = loris.read_to_end(&mut rest);
    assert!(closed.is_ok() && rest.is_empty(), "closed without an answer: {closed:?}");
    check_good("G7");

    assert!(serve.stop().success());
}

/// `plexus check` prints every error with its path and exits non-zero; a
/// valid file gets a summary and exit 0.
#[test]
fn check_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"version = 1
[store]
url = "redis://nope"
[channels.adt-in]
filter = ['PID-8 = "F"']
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:2575"
[[channels.adt-in.destinations]]
name = "ok"
type = "file"
directory = "out"
[[channels.adt-in.destinations]]
name = "partner"
type = "http"
url = "not a url"
"#,
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(stderr.contains("\nstore.url: "), "{stderr}");
    assert!(stderr.contains("\nchannel \"adt-in\".filter[0]: column 7"), "{stderr}");
    assert!(stderr.contains("\nchannel \"adt-in\".destination[1].url: not a URL"), "{stderr}");

    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&quickstart).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("adt-in: mllp 127.0.0.1:2575 -> archive (file)"), "{stdout}");
}

/// HTTP ingest through the binary: the body of the answer is the ACK.
#[test]
fn http_ingest_answers_with_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[channels.http-in.source]
type = "http"
[[channels.http-in.destinations]]
name = "archive"
type = "file"
directory = "out"
"#;
    let serve = Serve::start_with(dir.path(), body);
    let api = serve.api;
    let msg = "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A08^ADT_A01|HTTP1|P|2.5.1\rEVN|A08|20261121120000\r\
               PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F\rPV1|1|I\r";
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "POST /channels/http-in/messages HTTP/1.1\r\nHost: x\r\nContent-Type: x-application/hl7-v2+er7\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{msg}",
        msg.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let ack = hl7v2::Message::parse(response.split_once("\r\n\r\n").unwrap().1.as_bytes()).unwrap();
    assert_eq!((field(&ack, "MSA-1").as_str(), field(&ack, "MSA-2").as_str()), ("AA", "HTTP1"));
    let out = dir.path().join("out");
    wait_for("the message is written", Duration::from_secs(30), || files_in(&out).len() == 1);
    assert!(serve.stop().success());
}
