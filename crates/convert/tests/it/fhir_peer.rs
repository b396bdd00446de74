//! Re-sending a message updates rather than duplicates: the Bundles are
//! posted twice to a real FHIR server (the Medplum-based peer in
//! shared/peers/fhir-server.js) and the second time nothing new is created.
//!
//! Medplum refuses a transaction with conditional entries and more than 8
//! entries ("requires strict isolation"), a limit of that server, not of
//! FHIR; the messages here are the fixtures that fit it, covering
//! conditional updates by identifier and updates by derived id.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::support::fixtures;

/// A minimal HTTP/1.1 exchange (the crate has no HTTP client; the peer is on
/// 127.0.0.1 and closes the connection after each answer).
fn http(base: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let rest = base.strip_prefix("http://").expect("http base");
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let payload = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let head = format!(
        "{method} /{prefix}{path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/fhir+json\r\n\
         Content-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&payload).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .map(|e| e.iter().map(|x| x["response"]["status"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

fn count(base: &str, query: &str) -> usize {
    let (status, bundle) = http(base, "GET", query, None);
    assert_eq!(status, 200, "GET {query}: {bundle}");
    bundle["entry"].as_array().map_or(0, Vec::len)
}

#[test]
fn sending_the_same_message_twice_creates_nothing_new() {
    if testkit::peers_or_skip("convert::fhir_peer").is_none() {
        return;
    }
    for file in [
        "ADT-A40-01.hl7",
        "ADT04-251.hl7",
        "ADT04-23.hl7",
        "SIU-S13-01.hl7",
        "LAB-ORM-1.hl7",
        "MDM_01.hl7",
        "MDM-T02-01.hl7",
        "ORU-R01-RMGEAD.hl7",
    ] {
        // A fresh server per message, so the counts below are this message's.
        let Some(peer) = testkit::FhirPeer::start("convert::fhir_peer") else { return };
        let base = peer.base_url.as_str();
        let text = std::fs::read_to_string(fixtures().join("hl7v2").join(file)).unwrap();
        let bundle = convert::hl7_to_fhir_text(&text, &Default::default()).unwrap();
        let entries = bundle["entry"].as_array().unwrap();
        for send in ["first", "second"] {
            let (status, response) = http(base, "POST", "", Some(&bundle));
            assert_eq!(status, 200, "{file}: {send} send: {response}");
            let ok = statuses(&response);
            assert_eq!(ok.len(), entries.len(), "{file}: {send} send: {response}");
            assert!(ok.iter().all(|s| s.starts_with("20")), "{file}: {send} send: {ok:?}");
        }
        // The server holds exactly the Bundle's resources, once each.
        let mut kinds: Vec<&str> = entries.iter().filter_map(|e| e["resource"]["resourceType"].as_str()).collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            let expected = entries.iter().filter(|e| e["resource"]["resourceType"] == kind).count();
            assert_eq!(count(base, &format!("/{kind}?_count=1000")), expected, "{file}: {kind} after two sends");
        }
    }
}
