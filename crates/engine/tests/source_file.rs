//! The `file` source (a polled drop folder) end to end: a real SQLite store
//! in a temp dir, real folders, the engine's own poll loop and a `file`
//! destination behind it.

mod ops_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use ops_support::{Harness, adt, config, eventually, oru, stored};
use store::{SearchQuery, Store};

/// A channel reading `in/*.hl7` every 50 ms, moving processed files to
/// `done/`, refused ones to `error/`, and archiving each message.
const SOURCE: &str = r#"
[channels.lab.source]
type = "file"
directory = "in"
pattern = "*.hl7"
interval = "50ms"
min_age = "0s"
move_to = "done"
error_directory = "error"
[[channels.lab.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}.hl7"
"#;

/// A temp dir with the source's folders.
fn folders() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["in", "done", "error"] {
        std::fs::create_dir(dir.path().join(f)).unwrap();
    }
    dir
}

async fn start(body: &str) -> Harness {
    let dir = folders();
    let config = config(dir.path(), body);
    Harness::start_in(dir, config).await
}

/// Writes a file under a hidden name and renames it into place, as a
/// well-behaved sender does.
fn drop_file(folder: &Path, name: &str, content: &[u8]) {
    let temp = folder.join(format!(".{name}.part"));
    std::fs::write(&temp, content).unwrap();
    std::fs::rename(&temp, folder.join(name)).unwrap();
}

fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

async fn all_stored(store: &Arc<dyn Store>, channel: &str) -> Vec<store::MessageSummary> {
    let query = SearchQuery { channel: Some(channel.into()), limit: 500, ..SearchQuery::default() };
    store.search(&query).await.unwrap().items
}

fn stats(h: &Harness, channel: &str) -> (u64, u64, u64, u64) {
    let s = h.engine().ingest().channel(channel).unwrap().stats();
    (
        s.accepted.load(Ordering::Relaxed),
        s.duplicates.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
        s.rejected.load(Ordering::Relaxed),
    )
}

fn with_lf(message: &str) -> String {
    message.replace('\r', "\n")
}

#[tokio::test]
async fn every_message_of_a_file_is_stored_whatever_its_line_endings() {
    let h = start(SOURCE).await;
    let cr = format!("{}{}", adt("CR1", "MRN1"), oru("CR2", "MRN1"));
    let lf = format!("{}\n{}", with_lf(&adt("LF1", "MRN2")), with_lf(&oru("LF2", "MRN2")));
    let crlf = adt("CRLF1", "MRN3").replace('\r', "\r\n");
    drop_file(&h.path("in"), "a.hl7", cr.as_bytes());
    drop_file(&h.path("in"), "b.hl7", lf.as_bytes());
    drop_file(&h.path("in"), "c.hl7", crlf.as_bytes());
    drop_file(&h.path("in"), "notes.txt", b"not for this channel");
    eventually("the three files are processed", async || names(&h.path("done")).len() == 3).await;
    assert_eq!(names(&h.path("done")), ["a.hl7", "b.hl7", "c.hl7"]);
    assert_eq!(names(&h.path("in")), ["notes.txt"], "the pattern leaves other files alone");
    for (id, file) in [("CR1", "a.hl7"), ("CR2", "a.hl7"), ("LF1", "b.hl7"), ("LF2", "b.hl7"), ("CRLF1", "c.hl7")] {
        let found = stored(h.store(), id).await;
        assert_eq!(found.len(), 1, "{id} stored once");
        assert_eq!(found[0].peer_addr.as_deref(), Some(format!("file:{file}").as_str()));
        let raw = h.store().get_message(found[0].id).await.unwrap().unwrap().raw.unwrap();
        assert!(!raw.contains(&b'\n'), "{id} is stored with CR segment ends");
        assert!(raw.starts_with(b"MSH|") && raw.ends_with(b"\r"), "{id}");
    }
    // The LF message is the same message as the CR one would be.
    let lf1 = stored(h.store(), "LF1").await;
    let raw = h.store().get_message(lf1[0].id).await.unwrap().unwrap().raw.unwrap();
    assert_eq!(String::from_utf8(raw).unwrap(), adt("LF1", "MRN2"));
    eventually("every message is archived", async || names(&h.path("out")).len() == 5).await;
    assert_eq!(stats(&h, "lab"), (5, 0, 0, 0));
    assert!(names(&h.path("error")).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_batch_file_is_split_into_its_messages() {
    let h = start(SOURCE).await;
    let batch = format!(
        "FHS|^~\\&|LAB|HOSP|EHR|HOSP|20261121||results.hl7||F1\n\
         BHS|^~\\&|LAB|HOSP|EHR|HOSP|20261121||||B1\n{}{}BTS|2\nFTS|1\n",
        with_lf(&oru("BATCH1", "MRN1")),
        with_lf(&oru("BATCH2", "MRN2")),
    );
    drop_file(&h.path("in"), "batch.hl7", batch.as_bytes());
    eventually("the batch file is processed", async || names(&h.path("done")) == ["batch.hl7"]).await;
    for id in ["BATCH1", "BATCH2"] {
        let found = stored(h.store(), id).await;
        assert_eq!(found.len(), 1, "{id}");
        let raw = h.store().get_message(found[0].id).await.unwrap().unwrap().raw.unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("BTS") && !text.contains("FHS") && !text.contains("BHS"), "{text:?}");
    }
    assert_eq!(all_stored(h.store(), "lab").await.len(), 2, "the envelope is not a message");
    h.stop().await;
}

#[tokio::test]
async fn a_file_with_a_refused_message_goes_to_the_error_folder_with_a_report() {
    let h = start(SOURCE).await;
    // The second message has no MSH-9 (message type): the validator refuses it.
    let bad = adt("BAD2", "MRN9").replace("ADT^A08^ADT_A01", "");
    let content = format!("{}{bad}{}", oru("GOOD1", "MRN1"), oru("GOOD3", "MRN1"));
    drop_file(&h.path("in"), "mixed.hl7", content.as_bytes());
    drop_file(&h.path("in"), "junk.hl7", b"this is not HL7\n");
    eventually("both files are refused", async || names(&h.path("error")).len() == 4).await;
    assert_eq!(names(&h.path("error")), ["junk.hl7", "junk.hl7.error.txt", "mixed.hl7", "mixed.hl7.error.txt"]);
    assert!(names(&h.path("done")).is_empty() && names(&h.path("in")).is_empty());
    assert_eq!(std::fs::read(h.path("error/mixed.hl7")).unwrap(), content.as_bytes(), "kept as it was");
    let report = std::fs::read_to_string(h.path("error/mixed.hl7.error.txt")).unwrap();
    assert!(report.contains("1 of 3 message(s) refused"), "{report}");
    assert!(report.contains("message 2 of 3 (control id BAD2): AE"), "{report}");
    assert!(report.contains("MSA|AE|BAD2"), "the ACK is in the report: {report}");
    let junk = std::fs::read_to_string(h.path("error/junk.hl7.error.txt")).unwrap();
    assert!(junk.contains("line 1: a segment outside any message"), "{junk}");
    // The good messages of the mixed file are stored; the bad one is not.
    assert_eq!(stored(h.store(), "GOOD1").await.len(), 1);
    assert_eq!(stored(h.store(), "GOOD3").await.len(), 1);
    assert!(stored(h.store(), "BAD2").await.is_empty());

    // The corrected file dropped again stores only what is new.
    let fixed = format!("{}{}{}", oru("GOOD1", "MRN1"), adt("BAD2", "MRN9"), oru("GOOD3", "MRN1"));
    drop_file(&h.path("in"), "mixed.hl7", fixed.as_bytes());
    eventually("the corrected file is processed", async || names(&h.path("done")) == ["mixed.hl7"]).await;
    assert_eq!(stored(h.store(), "BAD2").await.len(), 1);
    assert_eq!(all_stored(h.store(), "lab").await.len(), 3);
    let (accepted, duplicates, _, _) = stats(&h, "lab");
    assert_eq!((accepted, duplicates), (3, 2));
    h.stop().await;
}

#[tokio::test]
async fn a_file_dropped_again_stores_nothing_new() {
    let h = start(SOURCE).await;
    let content = format!("{}{}", adt("AGAIN1", "MRN1"), adt("AGAIN2", "MRN1"));
    drop_file(&h.path("in"), "again.hl7", content.as_bytes());
    eventually("the file is processed", async || names(&h.path("done")) == ["again.hl7"]).await;
    assert_eq!(all_stored(h.store(), "lab").await.len(), 2);
    // As if a crash had happened after the commits but before the move.
    std::fs::copy(h.path("done/again.hl7"), h.path("in/again.hl7")).unwrap();
    eventually("the copy is processed", async || names(&h.path("done")).len() == 2).await;
    assert_eq!(names(&h.path("done")), ["again-1.hl7", "again.hl7"], "the first is not replaced");
    assert_eq!(all_stored(h.store(), "lab").await.len(), 2, "nothing new stored");
    assert_eq!(stats(&h, "lab"), (2, 2, 0, 0));
    h.stop().await;
}

#[tokio::test]
async fn a_file_claimed_by_a_process_that_died_is_read_at_start() {
    let dir = folders();
    let claimed = dir.path().join("in").join(engine::sources::file::CLAIMED_FOLDER);
    std::fs::create_dir(&claimed).unwrap();
    let tag = engine::sources::file::claim_tag();
    let host = tag.split_once('@').unwrap().1;
    // No process has this id (above Linux's largest pid).
    let content = adt("LEFT1", "MRN1");
    std::fs::write(claimed.join(format!("4194305@{host}~left.hl7")), &content).unwrap();
    // Another host's claim is its own business.
    std::fs::write(claimed.join("4194305@another-host~theirs.hl7"), adt("THEIRS", "MRN1")).unwrap();
    let config = config(dir.path(), SOURCE);
    let h = Harness::start_in(dir, config).await;
    eventually("the leftover is processed", async || names(&h.path("done")) == ["left.hl7"]).await;
    assert_eq!(stored(h.store(), "LEFT1").await.len(), 1);
    assert_eq!(names(&claimed), ["4194305@another-host~theirs.hl7"]);
    assert!(stored(h.store(), "THEIRS").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn young_files_wait_for_min_age() {
    let body = SOURCE.replace("min_age = \"0s\"", "min_age = \"1h\"");
    let h = start(&body).await;
    drop_file(&h.path("in"), "young.hl7", adt("YOUNG", "MRN1").as_bytes());
    drop_file(&h.path("in"), "old.hl7", adt("OLD", "MRN1").as_bytes());
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(h.path("in/old.hl7")).unwrap().set_modified(two_hours_ago).unwrap();
    eventually("the old file is processed", async || names(&h.path("done")) == ["old.hl7"]).await;
    // Several polls later the young one is still there, untouched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(names(&h.path("in")), ["young.hl7"]);
    assert!(stored(h.store(), "YOUNG").await.is_empty());
    std::fs::File::options().write(true).open(h.path("in/young.hl7")).unwrap().set_modified(two_hours_ago).unwrap();
    eventually("the file, now old enough, is processed", async || names(&h.path("done")).len() == 2).await;
    assert_eq!(stored(h.store(), "YOUNG").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn after_delete_removes_the_file_once_stored() {
    let body = SOURCE.replace("move_to = \"done\"", "after = \"delete\"");
    let h = start(&body).await;
    drop_file(&h.path("in"), "gone.hl7", adt("GONE1", "MRN1").as_bytes());
    eventually("the message is stored", async || stored(h.store(), "GONE1").await.len() == 1).await;
    eventually("the file is deleted", async || !h.path("in/gone.hl7").exists()).await;
    assert!(names(&h.path("done")).is_empty() && names(&h.path("error")).is_empty());
    assert!(names(&h.path("in").join(engine::sources::file::CLAIMED_FOLDER)).is_empty());
    // A refused file is never deleted.
    drop_file(&h.path("in"), "bad.hl7", b"MSH|^~\\&|A|B|C|D|20261121||ADT^A08|X1|P|9.9\r");
    eventually("the refused file is kept", async || names(&h.path("error")).len() == 2).await;
    h.stop().await;
}

#[tokio::test]
async fn files_are_taken_in_order_of_modification() {
    let body = SOURCE.replace("interval = \"50ms\"", "interval = \"1h\"");
    let dir = folders();
    let base = SystemTime::now() - Duration::from_secs(600);
    // Named against their age: z is the oldest.
    for (i, name) in ["z.hl7", "m.hl7", "a.hl7"].iter().enumerate() {
        let path = dir.path().join("in").join(name);
        std::fs::write(&path, adt(&format!("ORDER{i}"), "MRN1")).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(base + Duration::from_secs(i as u64)).unwrap();
    }
    let config = config(dir.path(), &body);
    let h = Harness::start_in(dir, config).await;
    // The first poll runs at start; the next only in an hour.
    eventually("the three files are processed", async || names(&h.path("done")).len() == 3).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let found = stored(h.store(), &format!("ORDER{i}")).await;
        let detail = h.store().get_message(found[0].id).await.unwrap().unwrap();
        ids.push((detail.deliveries[0].id.0, format!("ORDER{i}")));
    }
    ids.sort();
    let order: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(order, ["ORDER0", "ORDER1", "ORDER2"], "oldest first, whatever the names");
    h.stop().await;
}

#[tokio::test]
async fn two_engines_on_one_folder_take_each_file_once() {
    let dir = folders();
    let shared = dir.path().to_path_buf();
    let second_dir = tempfile::tempdir().unwrap();
    // Both engines on the same SQLite file and the same folders; the
    // second has its own API port, and archives elsewhere.
    let first = Harness::start_in(dir, config(&shared, SOURCE)).await;
    let second_config = config(&shared, &SOURCE.replace("directory = \"out\"", "directory = \"out2\""));
    let second = Harness::start_in(second_dir, second_config).await;
    let count = 30;
    for i in 0..count {
        drop_file(&shared.join("in"), &format!("f{i:02}.hl7"), adt(&format!("RACE{i}"), "MRN1").as_bytes());
    }
    eventually("every file is processed", async || names(&shared.join("done")).len() == count).await;
    // No file was processed twice: no `-1` copies, no duplicates seen.
    let done = names(&shared.join("done"));
    assert!(done.iter().all(|n| !n.contains('-')), "{done:?}");
    let (a, b) = (stats(&first, "lab"), stats(&second, "lab"));
    assert_eq!(a.0 + b.0, count as u64, "{a:?} {b:?}");
    assert_eq!(a.1 + b.1, 0, "a file read by both engines would show duplicates: {a:?} {b:?}");
    assert_eq!(all_stored(first.store(), "lab").await.len(), count);
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_fhir_channel_reads_one_document_per_file() {
    let body = r#"
[channels.docs]
content = "fhir"
[channels.docs.source]
type = "file"
directory = "in"
pattern = "*.json"
interval = "50ms"
min_age = "0s"
move_to = "done"
error_directory = "error"
[[channels.docs.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${message_id}.json"
"#;
    let h = start(body).await;
    let patient = br#"{"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}]}"#;
    drop_file(&h.path("in"), "p.json", patient);
    drop_file(&h.path("in"), "broken.json", b"{\"resourceType\": ");
    eventually("both files are handled", async || {
        names(&h.path("done")).len() == 1 && names(&h.path("error")).len() == 2
    })
    .await;
    let items = all_stored(h.store(), "docs").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_type.as_deref(), Some("Patient"));
    let report = std::fs::read_to_string(h.path("error/broken.json.error.txt")).unwrap();
    assert!(report.contains("not JSON"), "{report}");
    // The same document again is a duplicate.
    drop_file(&h.path("in"), "p2.json", patient);
    eventually("the copy is processed", async || names(&h.path("done")).len() == 2).await;
    assert_eq!(all_stored(h.store(), "docs").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_missing_folder_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::create_dir(dir.path().join("done")).unwrap();
    let config = config(dir.path(), SOURCE);
    let error = engine::runtime::Engine::start(config).await.expect_err("error_directory is missing");
    let text = error.to_string();
    assert!(text.contains("channel \"lab\" source: error_directory"), "{text}");
    assert!(text.contains("must exist"), "{text}");
}
