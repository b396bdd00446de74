//! The engine end to end inside one process: real sockets on 127.0.0.1:0,
//! a real SQLite file in a temp dir, real destinations.
//!
//! The binary's own end-to-end tests (crates/plexus/tests) cover the same
//! promises through `plexus serve` and peers written by others; these are
//! the quick, precise ones.

mod ops_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use hl7v2::mllp::MllpCodec;
use ops_support::{Client, Harness, WatchedStore, adt, config, eventually, field, oru, recording_receiver, stored};
use store::{DeliveryState, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

const ARCHIVE: &str = r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
frame_timeout = "1s"
idle_timeout = "3s"
max_message_size = "4KiB"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}.hl7"
"#;

#[tokio::test]
async fn pipelined_frames_each_get_their_ack_in_order() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let messages: Vec<String> = (1..=5).map(|i| adt(&format!("PIPE{i}"), &format!("MRN{}", i % 2))).collect();
    let refs: Vec<&str> = messages.iter().map(String::as_str).collect();
    c.send(&refs).await; // one write: five frames
    for i in 1..=5 {
        let ack = c.read().await.expect("ack");
        assert_eq!(field(&ack, "MSA-1"), "AA");
        assert_eq!(field(&ack, "MSA-2"), format!("PIPE{i}"));
        assert_eq!(field(&ack, "MSH-9-1"), "ACK");
        // Stored before its ACK was written.
        assert_eq!(stored(h.store(), &format!("PIPE{i}")).await.len(), 1);
    }
    h.stop().await;
}

/// A sender's window: one write holding good frames, a frame that is not
/// HL7, a frame over the size limit and a resend. They are stored together
/// (one ordered batch) and answered one for one, in order; the stored ones
/// queue in arrival order.
#[tokio::test]
async fn one_write_of_mixed_frames_is_answered_in_order() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let first = adt("MIX1", "MRN7");
    let second = adt("MIX2", "MRN7");
    let third = adt("MIX3", "MRN7");
    let huge = adt("MIXBIG", &"9".repeat(5000));
    c.send(&[&first, "not an HL7 message", &second, &huge, &first, &third]).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(c.read().await.expect("an answer per frame"));
    }
    let codes: Vec<(String, String)> = answers.iter().map(|a| (field(a, "MSA-1"), field(a, "MSA-2"))).collect();
    assert_eq!(codes[0], ("AA".to_string(), "MIX1".to_string()));
    assert!(["AE", "AR"].contains(&codes[1].0.as_str()) && codes[1].1.is_empty(), "{:?}", codes[1]);
    assert_eq!(codes[2], ("AA".to_string(), "MIX2".to_string()));
    assert_eq!(codes[3], ("AR".to_string(), "MIXBIG".to_string()));
    // The resend gets the original ACK back, the very same message.
    assert_eq!(codes[4], ("AA".to_string(), "MIX1".to_string()));
    assert_eq!(field(&answers[4], "MSH-10"), field(&answers[0], "MSH-10"));
    assert_eq!(codes[5], ("AA".to_string(), "MIX3".to_string()));

    let mut deliveries = Vec::new();
    for id in ["MIX1", "MIX2", "MIX3"] {
        let found = stored(h.store(), id).await;
        assert_eq!(found.len(), 1, "{id} stored once");
        let detail = h.store().get_message(found[0].id).await.unwrap().unwrap();
        deliveries.push(detail.deliveries[0].id.0);
    }
    assert!(deliveries.windows(2).all(|w| w[0] < w[1]), "queued in arrival order: {deliveries:?}");
    assert!(stored(h.store(), "MIXBIG").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn accepted_messages_reach_the_file_destination() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let m = adt("FILE1", "MRN1");
    c.send(&[&m]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    let file = h.path("out/FILE1.hl7");
    eventually("the file destination writes FILE1.hl7", async || file.exists()).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), m);
    let summary = &stored(h.store(), "FILE1").await[0];
    let id = summary.id;
    eventually("the delivery is recorded as sent", async || {
        h.store().get_message(id).await.unwrap().unwrap().deliveries[0].state == DeliveryState::Sent
    })
    .await;
    assert_eq!(summary.order_key.as_deref(), Some("MRN1"));
    assert_eq!(summary.sender_key, "REG^HOSP");
    assert_eq!((summary.message_type.as_deref(), summary.event.as_deref()), (Some("ADT"), Some("A08")));
    h.stop().await;
}

#[tokio::test]
async fn a_duplicate_gets_the_original_ack_and_is_stored_once() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let m = adt("DUP1", "MRN1");
    c.send(&[&m]).await;
    let first = c.read().await.unwrap();
    c.send(&[&m]).await;
    let second = c.read().await.unwrap();
    assert_eq!(first.as_bytes(), second.as_bytes(), "the original ACK, byte for byte");
    assert_eq!(stored(h.store(), "DUP1").await.len(), 1);
    let stats = h.engine().ingest().channel("adt-in").unwrap().stats();
    assert_eq!(stats.duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn bad_frames_get_a_nak_and_the_connection_keeps_serving() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;

    // No MSH at all: AE with an ERR, MSA-2 empty (nothing to echo).
    c.send(&["PID|1||123\rPV1|1|I\r"]).await;
    let nak = c.read().await.unwrap();
    assert_eq!(field(&nak, "MSA-1"), "AE");
    assert_eq!(field(&nak, "MSA-2"), "");
    assert!(nak.segment("ERR").is_some(), "the NAK says what is wrong");

    // A readable MSH with a broken segment further down: MSA-2 echoes it.
    c.send(&["MSH|^~\\&|A|B|C|D|20261121||ADT^A08|BROKEN1|P|2.5.1\rP!D|1\r"]).await;
    let nak = c.read().await.unwrap();
    assert_eq!((field(&nak, "MSA-1").as_str(), field(&nak, "MSA-2").as_str()), ("AE", "BROKEN1"));

    // Garbage between frames is skipped and counted.
    c.write_raw(b"\r\n garbage \x00\xff").await;
    let ok = adt("AFTER1", "MRN1");
    c.send(&[&ok]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-2"), "AFTER1");

    // Over max_message_size (4 KiB): AR naming its control id, and the
    // connection goes on.
    let big = format!("{}NTE|1||{}\r", adt("BIG1", "MRN1"), "x".repeat(6000));
    c.send(&[&big]).await;
    let nak = c.read().await.unwrap();
    assert_eq!((field(&nak, "MSA-1").as_str(), field(&nak, "MSA-2").as_str()), ("AR", "BIG1"));
    let ok = adt("AFTER2", "MRN1");
    c.send(&[&ok]).await;
    let ack = c.read().await.unwrap();
    assert_eq!((field(&ack, "MSA-1").as_str(), field(&ack, "MSA-2").as_str()), ("AA", "AFTER2"));

    assert!(stored(h.store(), "BROKEN1").await.is_empty(), "a NAKed message is not stored");
    assert!(stored(h.store(), "BIG1").await.is_empty());
    let stats = h.engine().mllp_stats("adt-in").unwrap();
    assert!(stats.skipped_bytes.load(std::sync::atomic::Ordering::Relaxed) >= 12);
    assert_eq!(stats.oversized.load(std::sync::atomic::Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_loris_is_closed_while_others_are_served() {
    let h = Harness::start(ARCHIVE).await;
    let addr = h.addr("adt-in");
    let mut slow = Client::connect(addr).await;
    slow.write_raw(b"\x0bMSH|^~\\&|").await;
    let trickle = tokio::spawn(async move {
        // One byte every 200 ms: never idle, but the frame never completes
        // within frame_timeout (1 s).
        for _ in 0..100 {
            if slow.stream.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow.read().await
    });
    let mut other = Client::connect(addr).await;
    let m = adt("OTHER1", "MRN1");
    other.send(&[&m]).await;
    assert_eq!(field(&other.read().await.unwrap(), "MSA-1"), "AA");
    assert!(trickle.await.unwrap().is_none(), "the slow connection is closed without an answer");
    let stats = h.engine().mllp_stats("adt-in").unwrap();
    assert_eq!(stats.timeouts.load(std::sync::atomic::Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_once_idle_and_not_while_messages_flow() {
    let h = Harness::start(ARCHIVE).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let started = std::time::Instant::now();
    // A message every 1.2 s for 4.8 s, longer than idle_timeout (3 s): each
    // read moves the connection's one timer later, so it stays open.
    for i in 0..5 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let m = adt(&format!("IDLE{i}"), "MRN-IDLE");
        assert_eq!(c.exchange(&m).await, "AA", "message {i} at {:?}", started.elapsed());
    }
    let last = std::time::Instant::now();
    // Then silence: closed after idle_timeout, counted as a timeout.
    assert!(c.read().await.is_none(), "an idle connection is closed");
    let silent = last.elapsed();
    assert!(silent >= Duration::from_millis(2900) && silent < Duration::from_secs(10), "closed after {silent:?}");
    let stats = h.engine().mllp_stats("adt-in").unwrap();
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_peer_closing_inside_a_frame_is_counted_and_others_go_on() {
    let h = Harness::start(ARCHIVE).await;
    let addr = h.addr("adt-in");
    let mut c = Client::connect(addr).await;
    c.write_raw(b"\x0bMSH|^~\\&|A|B|C|D|20261121||ADT^A08|TRUNC1|P|2.5.1\rPID|1").await;
    drop(c);
    let mut other = Client::connect(addr).await;
    let m = adt("OTHER2", "MRN2");
    other.send(&[&m]).await;
    assert_eq!(field(&other.read().await.unwrap(), "MSA-1"), "AA");
    let stats = Arc::clone(h.engine().mllp_stats("adt-in").unwrap());
    eventually("the truncated frame is counted", async || {
        stats.truncated.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(stored(h.store(), "TRUNC1").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_failed_commit_answers_ae_never_aa() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), ARCHIVE);
    let real = ops_support::open_store(dir.path(), store::StoreOptions::default()).await;
    let failing = WatchedStore::new(real);
    failing.fail_accepts.store(true, Ordering::SeqCst);
    let h = Harness::start_with_store(dir, config, Arc::new(failing)).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let m = adt("NOSTORE1", "MRN1");
    c.send(&[&m]).await;
    let nak = c.read().await.unwrap();
    assert_eq!((field(&nak, "MSA-1").as_str(), field(&nak, "MSA-2").as_str()), ("AE", "NOSTORE1"));
    assert_eq!(field(&nak, "ERR-3-1"), "207");
    h.stop().await;
}

#[tokio::test]
async fn filters_and_transforms_run_at_delivery_time() {
    let body = r#"
[channels.adt-in]
filter = ['MSH-9-1 == "ADT"']
[[channels.adt-in.transform]]
type = "set"
path = "MSH-5"
value = "ARCHIVE"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}.hl7"
[[channels.adt-in.destinations]]
name = "females"
type = "file"
directory = "out-f"
file_name = "${control_id}.hl7"
filter = ['PID-8 == "F"']
"#;
    let h = Harness::start(body).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let a = adt("T1", "MRN1");
    let male = adt("T2", "MRN2").replace("|F\r", "|M\r");
    let lab = oru("T3", "MRN3");
    c.send(&[&a, &male, &lab]).await;
    for _ in 0..3 {
        assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA", "filters never change the ACK");
    }
    let (t1, t2, t1f) = (h.path("out/T1.hl7"), h.path("out/T2.hl7"), h.path("out-f/T1.hl7"));
    eventually("deliveries", async || t1.exists() && t2.exists() && t1f.exists()).await;
    let written = hl7v2::Message::parse(std::fs::read(&t1).unwrap()).unwrap();
    assert_eq!(field(&written, "MSH-5"), "ARCHIVE", "the channel transform ran");
    assert!(!h.path("out-f/T2.hl7").exists());

    // The ORU was filtered by the channel rule, for both destinations,
    // with the rule recorded.
    let store = Arc::clone(h.store());
    let id = stored(&store, "T3").await[0].id;
    eventually("both deliveries of T3 filtered", async || {
        let detail = store.get_message(id).await.unwrap().unwrap();
        detail.deliveries.iter().all(|d| d.state == DeliveryState::Filtered)
    })
    .await;
    let detail = store.get_message(id).await.unwrap().unwrap();
    assert_eq!(detail.deliveries.len(), 2, "one delivery per destination");
    for d in &detail.deliveries {
        assert_eq!(d.state, DeliveryState::Filtered);
        assert_eq!(d.filter_rule.as_deref(), Some("channel filter: MSH-9-1 == \"ADT\""));
    }
    // The male patient reached the archive but was filtered by the
    // destination rule of "females".
    let id = stored(&store, "T2").await[0].id;
    eventually("both deliveries of T2 ended", async || {
        let detail = store.get_message(id).await.unwrap().unwrap();
        detail.deliveries.iter().all(|d| d.state != DeliveryState::Queued && d.state != DeliveryState::InFlight)
    })
    .await;
    let detail = store.get_message(id).await.unwrap().unwrap();
    let mut states: Vec<_> =
        detail.deliveries.iter().map(|d| (d.destination.clone(), d.state, d.filter_rule.clone())).collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("archive".to_string(), DeliveryState::Sent, None),
            ("females".to_string(), DeliveryState::Filtered, Some("destination filter: PID-8 == \"F\"".to_string())),
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_channel_destination_injects_into_another_channel() {
    let body = r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "fan-out"
type = "channel"
channel = "copies"
[channels.copies.source]
type = "http"
[[channels.copies.destinations]]
name = "archive"
type = "file"
directory = "copies"
file_name = "${control_id}.hl7"
"#;
    let h = Harness::start(body).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let m = adt("INJ1", "MRN1");
    c.send(&[&m]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    let file = h.path("copies/INJ1.hl7");
    eventually("the injected copy is delivered", async || file.exists()).await;
    let found = stored(h.store(), "INJ1").await;
    let mut channels: Vec<&str> = found.iter().map(|m| m.channel.as_str()).collect();
    channels.sort();
    assert_eq!(channels, ["adt-in", "copies"]);
    h.stop().await;
}

/// A channel `adt-in` from MLLP to an MLLP destination `downstream` at
/// `receiver`, its settings plus `extra`.
fn to_downstream(receiver: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "downstream"
type = "mllp"
address = "{receiver}"
{extra}
"#
    )
}

#[tokio::test]
async fn each_patients_messages_arrive_in_order_with_several_workers() {
    let (receiver, seen) = recording_receiver().await;
    let h = Harness::start(&to_downstream(receiver, "workers = 4")).await;
    let addr = h.addr("adt-in");
    // Three senders, interleaving five patients.
    let mut senders = Vec::new();
    for s in 0..3 {
        senders.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in 0..20 {
                let m = adt(&format!("S{s}-{i:02}"), &format!("P{}", (i + s) % 5));
                c.send(&[&m]).await;
                assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    eventually("all 60 delivered", async || seen.lock().unwrap().len() >= 60).await;
    // Per patient, the receiver saw each sender's messages in the order
    // that sender sent them (the order they were acknowledged).
    let seen = seen.lock().unwrap().clone();
    for p in 0..5 {
        let ids: Vec<&str> =
            seen.iter().filter(|(mrn, _)| *mrn == format!("P{p}")).map(|(_, id)| id.as_str()).collect();
        for s in 0..3 {
            let mine: Vec<&str> = ids.iter().copied().filter(|id| id.starts_with(&format!("S{s}-"))).collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "patient P{p}, sender S{s}");
        }
    }
    h.stop().await;
}

/// A worker whose queue runs empty claims once after its last batch, not
/// twice (a claim made ahead while completing, then the same claim again):
/// a batch smaller than asked for is completed before the next claim.
#[tokio::test]
async fn a_worker_claims_once_when_its_queue_runs_empty() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), ARCHIVE);
    let real = ops_support::open_store(dir.path(), store::StoreOptions::default()).await;
    let watched = Arc::new(WatchedStore::new(real));
    let h = Harness::start_with_store(dir, config, Arc::clone(&watched) as Arc<dyn Store>).await;
    eventually("the worker's first claim", async || !watched.claims("archive").is_empty()).await;
    // Idle now: it sleeps until a message comes (or IDLE_POLL, 5 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watched.claims("archive"), [Some(0)]);

    let mut c = Client::connect(h.addr("adt-in")).await;
    c.send(&[&adt("ONCE1", "MRN1")]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    let id = stored(h.store(), "ONCE1").await[0].id;
    eventually("the delivery is recorded as sent", async || {
        h.store().get_message(id).await.unwrap().unwrap().deliveries[0].state == DeliveryState::Sent
    })
    .await;
    // Well below IDLE_POLL: only the claims the delivery caused are in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watched.claims("archive"), [Some(0), Some(1), Some(0)]);
    h.stop().await;
}

/// A claim made ahead while a full batch completes that fails is logged at
/// warn (the store's error, no message content) and claimed again: nothing
/// is lost, and one patient's messages still go out in order.
#[tokio::test]
async fn a_failed_claim_ahead_is_logged_and_claimed_again() {
    let warnings = ops_support::Warnings::collect();
    let (receiver, seen) = recording_receiver().await;
    // Four workers sharing four connections: batches of one, so every
    // batch is full and each worker claims its next one ahead while it
    // completes, and two patients' messages go out side by side, so the
    // per-patient order below is the store's and the workers' doing.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &to_downstream(receiver, "connections = 4\nworkers = 4"));
    let real = ops_support::open_store(dir.path(), store::StoreOptions::default()).await;
    let watched = Arc::new(WatchedStore::new(real));
    watched.fail_claim_after_deliveries.store(true, Ordering::SeqCst);
    let h = Harness::start_with_store(dir, config, Arc::clone(&watched) as Arc<dyn Store>).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    // All at once, then the acks: the queue fills while the workers run.
    let messages: Vec<String> =
        (0..12).map(|i| adt(&format!("AHEAD{i:02}"), if i % 2 == 0 { "MRN1" } else { "MRN2" })).collect();
    c.send(&messages.iter().map(String::as_str).collect::<Vec<_>>()).await;
    for _ in &messages {
        assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    }
    eventually("all 12 delivered", async || seen.lock().unwrap().len() >= 12).await;
    assert!(watched.claims("downstream").contains(&None), "no claim failed: {:?}", watched.claims("downstream"));
    let seen = seen.lock().unwrap().clone();
    for mrn in ["MRN1", "MRN2"] {
        let ids: Vec<&str> = seen.iter().filter(|(m, _)| m == mrn).map(|(_, id)| id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{mrn}");
        assert_eq!(ids.len(), 6, "{mrn}: {ids:?}");
    }
    let lines = warnings.lines();
    let logged: Vec<&String> =
        lines.iter().filter(|l| l.contains("claiming the next deliveries ahead failed")).collect();
    assert_eq!(logged.len(), 1, "{lines:?}");
    assert!(logged[0].contains("destination=downstream"), "{}", logged[0]);
    assert!(!logged[0].contains("MRN") && !logged[0].contains("DOE"), "patient data logged: {}", logged[0]);
    h.stop().await;
}

#[tokio::test]
async fn the_http_source_answers_with_the_ack_and_status() {
    let body = r#"
[channels.http-in.source]
type = "http"
[[channels.http-in.destinations]]
name = "archive"
type = "file"
directory = "out"
[channels.json-in]
content = "fhir"
[channels.json-in.source]
type = "http"
[[channels.json-in.destinations]]
name = "archive"
type = "file"
directory = "json"
file_name = "${message_id}.json"
"#;
    let h = Harness::start(body).await;
    let base = format!("http://{}", h.engine().api_addr());
    let client = reqwest::Client::new();
    let post = |path: &str, ct: &str, body: String| {
        client.post(format!("{base}{path}")).header("content-type", ct).body(body).send()
    };

    let r = post("/channels/http-in/messages", "x-application/hl7-v2+er7", adt("H1", "MRN1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ack = hl7v2::Message::parse(r.bytes().await.unwrap().to_vec()).unwrap();
    assert_eq!((field(&ack, "MSA-1").as_str(), field(&ack, "MSA-2").as_str()), ("AA", "H1"));

    let r = post("/channels/http-in/messages", "text/plain", "PID|1\r".into()).await.unwrap();
    assert_eq!(r.status(), 500, "AE maps to 500");
    let r = post("/channels/http-in/messages", "application/json", "{}".into()).await.unwrap();
    assert_eq!(r.status(), 415);
    let r = post("/channels/nope/messages", "text/plain", adt("H2", "MRN1")).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client.get(format!("{base}/channels/http-in/messages")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = post("/channels/json-in/messages", "application/fhir+json", r#"{"resourceType":"Patient"}"#.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["duplicate"], false);
    let r = post("/channels/json-in/messages", "application/fhir+json", r#"{"no":"type"}"#.into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome");

    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn queued_deliveries_survive_a_restart() {
    // A destination that cannot deliver yet (nothing listens on its port),
    // then a restart with a working one: the queued message goes out.
    let blocked = r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "archive"
type = "mllp"
address = "127.0.0.1:9"
retry = { initial_backoff = "100ms", max_backoff = "200ms" }
"#;
    let h = Harness::start(blocked).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    let m = adt("KEEP1", "MRN1");
    c.send(&[&m]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    let dir = h.stop().await;

    let (receiver, seen) = recording_receiver().await;
    let working = blocked.replace("127.0.0.1:9", &receiver.to_string());
    let config = config(dir.path(), &working);
    let h = Harness::start_in(dir, config).await;
    eventually("the queued message is delivered after the restart", async || {
        seen.lock().unwrap().iter().any(|(_, id)| id == "KEEP1")
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn the_validation_policy_decides_between_ae_ar_and_accepting() {
    // PID-8 "X" is not in table 0001 and PID-7 has month 13: content errors.
    let invalid = |id: &str| adt(id, "MRN9").replace("19800101|F", "19801301|X");
    let body = |policy: &str| format!("[channels.adt-in]\nvalidation = \"{policy}\"\n{ARCHIVE}");
    for (policy, code, stored_count) in [("error", "AE", 0), ("reject", "AR", 0), ("accept", "AA", 1)] {
        let h = Harness::start(&body(policy)).await;
        let mut c = Client::connect(h.addr("adt-in")).await;
        let id = format!("V-{policy}");
        c.send(&[&invalid(&id)]).await;
        let ack = c.read().await.unwrap();
        assert_eq!(field(&ack, "MSA-1"), code, "validation = {policy}");
        assert_eq!(field(&ack, "MSA-2"), id);
        let errs: Vec<String> =
            ack.segments_named("ERR").map(|s| String::from_utf8_lossy(s.raw()).into_owned()).collect();
        assert!(errs.iter().any(|e| e.contains("PID^1^7") && e.contains("102")), "{policy}: {errs:?}");
        assert!(errs.iter().any(|e| e.contains("PID^1^8") && e.contains("103")), "{policy}: {errs:?}");
        if policy == "accept" {
            assert!(errs.iter().all(|e| e.contains("|W|")), "warnings under accept: {errs:?}");
        }
        assert_eq!(stored(h.store(), &id).await.len(), stored_count, "{policy}");
        h.stop().await;
    }
    // An unsupported version is a reject even under `error`.
    let h = Harness::start(&body("error")).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    c.send(&[&adt("V-VER", "MRN9").replace("|P|2.5.1\r", "|P|9.9\r")]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AR");
    h.stop().await;
}

/// A throw-away PKI written to `dir`: `ca.pem`, `server.pem`/`server.key`
/// (for `localhost`), `client.pem`/`client.key` signed by the CA, and
/// `rogue.pem`/`rogue.key`, a client certificate from another CA.
fn write_pki(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let (ca, rogue_ca) = (ca("Plexus test CA"), ca("Someone else"));
    let leaf = |names: Vec<String>, usage, issuer: &CertifiedIssuer<'_, KeyPair>, file: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf(vec!["localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, &ca, "server");
    leaf(vec!["sender".into()], ExtendedKeyUsagePurpose::ClientAuth, &ca, "client");
    leaf(vec!["rogue".into()], ExtendedKeyUsagePurpose::ClientAuth, &rogue_ca, "rogue");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ca.der().clone()
}

/// Sends one framed message over TLS and reads the answer; `None` when the
/// handshake or the exchange fails (the server refused us).
async fn tls_exchange(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    client: Option<(&Path, &str)>,
    message: &str,
) -> Option<hl7v2::Message> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((dir, name)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let mut out = BytesMut::new();
    MllpCodec::default().encode(message.as_bytes(), &mut out).unwrap();
    tls.write_all(&out).await.ok()?;
    let mut codec = MllpCodec::default();
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = codec.decode(&mut buf).ok()? {
            return hl7v2::Message::parse(frame.to_vec()).ok();
        }
        let n = tokio::time::timeout(Duration::from_secs(30), tls.read_buf(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
    }
}

#[tokio::test]
async fn mllp_over_tls_verifies_client_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let ca = write_pki(pki.path());
    let p = pki.path().display();
    let body = format!(
        r#"
[channels.mtls.source]
type = "mllp"
listen = "127.0.0.1:0"
tls = {{ cert_file = "{p}/server.pem", key_file = "{p}/server.key", client_ca_file = "{p}/ca.pem" }}
[[channels.mtls.destinations]]
name = "archive"
type = "file"
directory = "out-mtls"
[channels.optional.source]
type = "mllp"
listen = "127.0.0.1:0"
tls = {{ cert_file = "{p}/server.pem", key_file = "{p}/server.key", client_ca_file = "{p}/ca.pem", client_cert = "optional" }}
[[channels.optional.destinations]]
name = "archive"
type = "file"
directory = "out-optional"
[channels.tls-only.source]
type = "mllp"
listen = "127.0.0.1:0"
tls = {{ cert_file = "{p}/server.pem", key_file = "{p}/server.key" }}
[[channels.tls-only.destinations]]
name = "archive"
type = "file"
directory = "out-tls"
"#
    );
    let h = Harness::start(&body).await;
    let (mtls, optional, tls_only) = (h.addr("mtls"), h.addr("optional"), h.addr("tls-only"));
    let dir = pki.path();

    // Required client certificates: ours passes, none or another CA's fail.
    let ack = tls_exchange(mtls, &ca, Some((dir, "client")), &adt("TLS1", "MRN1")).await.expect("answered");
    assert_eq!((field(&ack, "MSA-1").as_str(), field(&ack, "MSA-2").as_str()), ("AA", "TLS1"));
    assert!(tls_exchange(mtls, &ca, None, &adt("TLS2", "MRN1")).await.is_none(), "no certificate: refused");
    assert!(tls_exchange(mtls, &ca, Some((dir, "rogue")), &adt("TLS3", "MRN1")).await.is_none(), "other CA: refused");
    assert!(stored(h.store(), "TLS2").await.is_empty() && stored(h.store(), "TLS3").await.is_empty());
    let failures = h.engine().mllp_stats("mtls").unwrap().tls_failures.load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures >= 1, "refused handshakes are counted");

    // Optional: no certificate is fine, a bad one is not.
    let ack = tls_exchange(optional, &ca, None, &adt("TLS4", "MRN1")).await.expect("answered");
    assert_eq!(field(&ack, "MSA-1"), "AA");
    assert!(tls_exchange(optional, &ca, Some((dir, "rogue")), &adt("TLS5", "MRN1")).await.is_none());

    // TLS without client authentication.
    let ack = tls_exchange(tls_only, &ca, None, &adt("TLS6", "MRN1")).await.expect("answered");
    assert_eq!(field(&ack, "MSA-1"), "AA");

    // Plain TCP to a TLS listener gets no ACK.
    let mut plain = Client::connect(mtls).await;
    let m = adt("PLAIN1", "MRN1");
    plain.send(&[&m]).await;
    assert!(plain.read().await.is_none());
    h.stop().await;
}

/// A receiver answering 429 with `Retry-After: 600` is not tried again
/// before ten minutes, although the destination's own backoff would retry
/// within seconds.
#[tokio::test]
async fn retry_after_of_the_receiver_holds_the_retry_back() {
    let app = axum::Router::new().route(
        "/busy",
        axum::routing::post(|| async {
            (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "600")], "later")
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/busy", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body = format!(
        r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "crm"
type = "http"
url = "{url}"
retry = {{ max_attempts = 5, initial_backoff = "1s", max_backoff = "4s" }}
"#
    );
    let h = Harness::start(&body).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    c.send(&[&adt("BUSY1", "MRN1")]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    // Stored before its AA.
    let id = stored(h.store(), "BUSY1").await[0].id;
    let mut delivery = None;
    eventually("the first attempt is recorded", async || {
        let d = h.store().get_message(id).await.unwrap().unwrap().deliveries.remove(0);
        let retrying = d.attempts >= 1 && d.state == DeliveryState::Queued;
        delivery = retrying.then_some(d);
        retrying
    })
    .await;
    let d = delivery.expect("the first attempt is recorded");
    let next = d.next_attempt_at.expect("a retry is planned");
    assert!(next >= d.updated_at + chrono::TimeDelta::seconds(600), "retry at {next}, attempt at {}", d.updated_at);
    h.stop().await;
}

/// A FHIR server with one Patient (`p1`): the patient source of a
/// `send_to_ehr` channel. Its base URL.
async fn patient_source() -> String {
    let app = axum::Router::new().route(
        "/fhir/Patient/p1",
        axum::routing::get(|| async {
            let patient = serde_json::json!({"resourceType": "Patient", "id": "p1",
                "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
                "name": [{"family": "Durand", "given": ["Léa"]}], "birthDate": "1975-06-30"});
            ([("content-type", "application/fhir+json")], patient.to_string())
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Stops (`"stop"`) or starts (`"start"`) `channel` through the API.
async fn switch_channel(h: &Harness, token: &str, channel: &str, action: &str) {
    let url = format!("http://{}/api/channels/{channel}/{action}", h.api());
    let r = reqwest::Client::new().post(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{action} {channel}: {}", r.text().await.unwrap());
}

/// The messages stored for `channel`.
async fn stored_in(store: &Arc<dyn Store>, channel: &str) -> usize {
    let query = store::SearchQuery { channel: Some(channel.into()), ..Default::default() };
    store.search(&query).await.unwrap().items.len()
}

/// A stopped `send_to_ehr` channel refuses submissions with 503, a
/// `Retry-After` and an OperationOutcome saying so, and stores nothing; it
/// used to keep accepting and storing them. Started again, it accepts.
#[tokio::test]
async fn a_stopped_send_to_ehr_channel_refuses_submissions_until_it_is_started() {
    use base64::Engine as _;
    use engine::api::auth::Scope;
    let base = patient_source().await;
    let h = Harness::start(&format!(
        r#"
[fhir_servers.ehr]
base_url = "{base}"
[channels.documents.source]
type = "send_to_ehr"
patient_source = "ehr"
[[channels.documents.destinations]]
name = "archive"
type = "file"
directory = "out"
"#
    ))
    .await;
    let admin = h.token("ops", &[Scope::ChannelsAdmin]).await;
    let clinic = h.token("clinic-app", &[Scope::SendToEhr]).await;
    let pdf = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n");
    let parameters = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
        {"name": "payload", "valueString": pdf},
    ]});
    let submit = async |token: Option<&str>| {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/fhir/CommunicationRequest/$send-to-ehr", h.api()))
            .header("content-type", "application/fhir+json")
            .body(parameters.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let status = r.status().as_u16();
        (status, retry_after, r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, _, answer) = submit(Some(&clinic)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stored_in(h.store(), "documents").await, 1);

    switch_channel(&h, &admin, "documents", "stop").await;
    let (status, retry_after, outcome) = submit(Some(&clinic)).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("30")), "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
    assert_eq!(outcome["issue"][0]["diagnostics"], "the channel is stopped; retry later");
    // Only a caller allowed to submit learns the channel's state.
    let (status, _, _) = submit(None).await;
    assert_eq!(status, 401);
    assert_eq!(stored_in(h.store(), "documents").await, 1, "a stopped channel stored a submission");

    switch_channel(&h, &admin, "documents", "start").await;
    let (status, retry_after, answer) = submit(Some(&clinic)).await;
    assert_eq!((status, retry_after), (200, None), "{answer}");
    assert_eq!(stored_in(h.store(), "documents").await, 2);
    h.stop().await;
}

/// A stopped notification channel refuses notifications with 503, a
/// `Retry-After` and a JSON problem saying so, and stores nothing; it used
/// to keep accepting and storing them. Started again, it accepts.
#[tokio::test]
async fn a_stopped_notification_channel_refuses_notifications_until_it_is_started() {
    use engine::api::auth::Scope;
    let h = Harness::start(
        r#"
[channels.glucose]
content = "json"
[channels.glucose.source]
type = "notification"
[channels.glucose.source.fields]
notification_id = "id"
file_id = "file.id"
presigned_url = "file.url"
[channels.glucose.source.auth.bearer]
token = "partner-secret"
[channels.glucose.source.fetch]
allowed_hosts = ["*.partner.example"]
[channels.glucose.source.acknowledgement]
url = "https://api.partner.example/ack/{notification_id}"
[[channels.glucose.destinations]]
name = "archive"
type = "file"
directory = "out"
"#,
    )
    .await;
    let admin = h.token("ops", &[Scope::ChannelsAdmin]).await;
    let notify = async |id: &str, bearer: &str| {
        let body = serde_json::json!({"id": id, "file": {"id": format!("file-{id}"),
            "url": format!("https://files.partner.example/{id}.json?X-Sig=abc")}});
        let r = reqwest::Client::new()
            .post(format!("http://{}/channels/glucose/notifications", h.api()))
            .header("content-type", "application/json")
            .bearer_auth(bearer)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let media = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let status = r.status().as_u16();
        (status, retry_after, media, r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, _, _, answer) = notify("n1", "partner-secret").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(stored_in(h.store(), "glucose").await, 1);

    switch_channel(&h, &admin, "glucose", "stop").await;
    let (status, retry_after, media, problem) = notify("n2", "partner-secret").await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("30")), "{problem}");
    assert_eq!(media.as_deref(), Some("application/problem+json"));
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["detail"], "the channel is stopped; send the notification again later");
    // Only the partner learns the channel's state.
    let (status, _, _, _) = notify("n2", "wrong").await;
    assert_eq!(status, 401);
    assert_eq!(stored_in(h.store(), "glucose").await, 1, "a stopped channel stored a notification");

    switch_channel(&h, &admin, "glucose", "start").await;
    let (status, retry_after, _, answer) = notify("n2", "partner-secret").await;
    assert_eq!((status, retry_after), (202, None), "{answer}");
    assert_eq!(stored_in(h.store(), "glucose").await, 2);
    h.stop().await;
}
