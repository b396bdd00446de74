//! Checks by software nobody here wrote: python-hl7 (from PLEXUS_PEERS)
//! parses every ACK this crate builds for the fixtures and reads the same
//! MSA-1, MSA-2 and ERR count. Skipped when PLEXUS_PEERS is not set.

use std::io::Write;
use std::process::{Command, Stdio};

use hl7v2::Message;
use hl7v2::ack::{Ack, AckCode};

/// Reads messages separated by 0x1C on stdin; prints `MSA-1|MSA-2|ERR count`.
const SCRIPT: &str = r#"
import sys, hl7
data = sys.stdin.buffer.read().decode("utf-8")
for raw in data.split("\x1c"):
    if not raw:
        continue
    m = hl7.parse(raw)
    msa = m.segment("MSA")
    errs = len([s for s in m if str(s[0]) == "ERR"])
    print("%s|%s|%d" % (msa[1], msa[2], errs))
"#;

#[test]
fn python_hl7_reads_every_ack_we_build() {
    let Some(peers) = testkit::peers_or_skip("hl7v2::python-hl7") else {
        return;
    };
    let python = peers.join("venv/bin/python");
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for (_, bytes) in crate::fixtures::fixtures() {
        let msg = Message::parse(bytes).unwrap();
        let issues = hl7v2::validate::validate(&msg);
        let code = if issues.is_empty() { AckCode::ApplicationAccept } else { AckCode::ApplicationError };
        let ack = Ack::new(code, "ACK1", "20261121120000").issues(&issues).for_message(&msg);
        input.extend_from_slice(&ack.encode());
        input.push(0x1c);
        let msa2 = ack.get("MSA-2").unwrap_or_default().into_owned();
        expected.push(format!("{}|{}|{}", code.as_str(), msa2, issues.len()));
    }
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the peers' python");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 71);
    assert_eq!(lines, expected);
}
