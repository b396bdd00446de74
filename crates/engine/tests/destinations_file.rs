//! The file destination on a real folder: names from the template, safe
//! names from hostile content, overwrite or fail, and atomicity seen from a
//! concurrent reader.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::TimeZone;
use engine::destinations::{BuildContext, DeliveryError, Destination, DestinationConfig, ErrorClass, Outbound};

fn outbound<'a>(content: &'a [u8], control_id: Option<&'a str>) -> Outbound<'a> {
    Outbound {
        content,
        content_type: "x-application/hl7-v2+er7",
        message_id: "0190f0a1-0000-7000-8000-0000000000f1",
        channel: "adt-in",
        control_id,
        received_at: chrono::Utc.with_ymd_and_hms(2026, 11, 21, 23, 59, 58).unwrap(),
    }
}

async fn build(base: &Path, toml_text: &str) -> Destination {
    let config: DestinationConfig = toml::from_str(toml_text).unwrap();
    let mut errors = engine::config::ConfigErrors::default();
    config.validate("destination", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    config.build(&BuildContext::new("adt-in", "archive").with_base_dir(base)).await.unwrap()
}

/// Every entry under `dir`, relative, sorted (temp files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    fn walk(root: &Path, dir: &Path, names: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, names);
            } else {
                names.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut names);
    names.sort();
    names
}

#[tokio::test]
async fn writes_the_content_under_the_templated_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${channel}/${date:%Y%m%d}/${control_id}.hl7\"\n",
    )
    .await;
    let content = b"MSH|^~\\&|A|B|C|D|20261121||ADT^A01|CTRL-7|P|2.5\rPID|1\r";
    let response = dest.send(&outbound(content, Some("CTRL-7"))).await.unwrap();
    assert_eq!(response.summary, "wrote adt-in/20261121/CTRL-7.hl7");
    let out = tmp.path().join("out");
    assert_eq!(std::fs::read(out.join("adt-in/20261121/CTRL-7.hl7")).unwrap(), content);
    assert_eq!(listing(&out), ["adt-in/20261121/CTRL-7.hl7"], "no temp file left behind");
}

#[tokio::test]
async fn the_default_name_is_the_message_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(tmp.path(), "type = \"file\"\ndirectory = \"out\"\n").await;
    dest.send(&outbound(b"MSH|^~\\&|x\r", None)).await.unwrap();
    assert_eq!(listing(&tmp.path().join("out")), ["0190f0a1-0000-7000-8000-0000000000f1.hl7"]);
}

#[tokio::test]
async fn hostile_control_ids_stay_inside_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(tmp.path(), "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\n").await;
    for hostile in ["../../escaped", "/etc/passwd", "..", "a/../../b", "C:\\win", "x\u{0}y", "é/ü"] {
        dest.send(&outbound(b"MSH|^~\\&|x\r", Some(hostile))).await.unwrap();
    }
    // Nothing was written outside "out".
    let mut outside = listing(tmp.path());
    outside.retain(|n| !n.starts_with("out/"));
    assert!(outside.is_empty(), "{outside:?}");
    let names = listing(&tmp.path().join("out"));
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.iter().all(|n| !n.contains('/')), "all directly in the folder: {names:?}");
    assert!(names.contains(&"__.hl7".to_owned()), "{names:?}");
    assert!(names.contains(&"_._.._escaped.hl7".to_owned()), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "no hidden names: {names:?}");
}

#[tokio::test]
async fn if_exists_overwrite_replaces_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\nif_exists = \"overwrite\"\n",
    )
    .await;
    dest.send(&outbound(b"first", Some("C1"))).await.unwrap();
    dest.send(&outbound(b"second", Some("C1"))).await.unwrap();
    let out = tmp.path().join("out");
    assert_eq!(std::fs::read(out.join("C1.hl7")).unwrap(), b"second");
    assert_eq!(listing(&out), ["C1.hl7"]);
}

/// Regression: the default was `overwrite`, so with a name such as
/// `${control_id}.hl7` a second message reusing MSH-10 (another sender, a
/// counter reset) replaced the first one's file without a word. The
/// default keeps it and fails the second delivery permanently, naming the
/// file; the same delivery sent again (a retry, a replay) still succeeds.
/// Fails before the fix (the second send succeeded, the file held
/// "second").
#[tokio::test]
async fn by_default_another_messages_file_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(tmp.path(), "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\n").await;
    dest.send(&outbound(b"first", Some("C1"))).await.unwrap();
    let again = dest.send(&outbound(b"first", Some("C1"))).await.unwrap();
    assert_eq!(again.summary, "wrote C1.hl7", "a retry or replay of the same content is delivered");
    let err = dest.send(&outbound(b"second", Some("C1"))).await.unwrap_err();
    assert!(matches!(err, DeliveryError::FileExists { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("C1.hl7 exists with other content"), "{err}");
    let out = tmp.path().join("out");
    assert_eq!(std::fs::read(out.join("C1.hl7")).unwrap(), b"first");
    assert_eq!(listing(&out), ["C1.hl7"], "the temp file is removed");
}

#[tokio::test]
async fn if_exists_fail_keeps_the_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\nif_exists = \"fail\"\n",
    )
    .await;
    dest.send(&outbound(b"first", Some("C1"))).await.unwrap();
    let err = dest.send(&outbound(b"second", Some("C1"))).await.unwrap_err();
    assert!(matches!(err, DeliveryError::FileExists { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let out = tmp.path().join("out");
    assert_eq!(std::fs::read(out.join("C1.hl7")).unwrap(), b"first");
    assert_eq!(listing(&out), ["C1.hl7"], "the temp file is removed");
}

/// A delivery whose earlier attempt linked its file and then stopped
/// before it was answered (a failed folder fsync, a crash) is retried: the
/// file already holding exactly its content is taken as delivered, not as
/// another message's file, so it is not dead-lettered.
#[tokio::test]
async fn if_exists_fail_takes_its_own_earlier_file_as_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\nif_exists = \"fail\"\n",
    )
    .await;
    let out = tmp.path().join("out");
    // What the first attempt left before it could be answered.
    std::fs::write(out.join("C1.hl7"), b"same").unwrap();
    let answer = dest.send(&outbound(b"same", Some("C1"))).await.unwrap();
    assert_eq!(answer.summary, "wrote C1.hl7");
    assert_eq!(std::fs::read(out.join("C1.hl7")).unwrap(), b"same");
    assert_eq!(listing(&out), ["C1.hl7"], "the temp file is removed");
    // A longer or shorter content is another message's file.
    for other in [&b"same!"[..], b"sam"] {
        let err = dest.send(&outbound(other, Some("C1"))).await.unwrap_err();
        assert!(matches!(err, DeliveryError::FileExists { .. }), "{err:?}");
    }
    assert_eq!(listing(&out), ["C1.hl7"]);
}

#[tokio::test]
async fn a_missing_folder_is_created_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), "type = \"file\"\ndirectory = \"a/b/c\"\n").await;
    assert!(tmp.path().join("a/b/c").is_dir());

    let config: DestinationConfig =
        toml::from_str("type = \"file\"\ndirectory = \"missing\"\ncreate_directory = false\n").unwrap();
    let err = config.build(&BuildContext::new("c", "d").with_base_dir(tmp.path())).await.unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    std::fs::write(tmp.path().join("plain"), b"").unwrap();
    let config: DestinationConfig = toml::from_str("type = \"file\"\ndirectory = \"plain\"\n").unwrap();
    assert!(config.build(&BuildContext::new("c", "d").with_base_dir(tmp.path())).await.is_err());
}

#[tokio::test]
async fn a_folder_removed_at_run_time_is_a_transient_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(tmp.path(), "type = \"file\"\ndirectory = \"out\"\n").await;
    // Replace the folder by a file: writing into it cannot work until an
    // operator repairs it, so the delivery is retried, not dead-lettered.
    std::fs::remove_dir(tmp.path().join("out")).unwrap();
    std::fs::write(tmp.path().join("out"), b"").unwrap();
    let err = dest.send(&outbound(b"x", None)).await.unwrap_err();
    assert_eq!(err.kind(), "file", "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

/// A reader polling the folder while large files are written never sees a
/// file shorter than what was written: the name appears only once the
/// content is complete. Writing in place would show partial files here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_reader_never_sees_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(tmp.path(), "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}.hl7\"\n").await;
    let out = tmp.path().join("out");
    const SIZE: usize = 4 * 1024 * 1024;
    let content: Vec<u8> = (0..SIZE).map(|i| b'A' + (i % 26) as u8).collect();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (out, done) = (out.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut checked, mut bad) = (0usize, Vec::new());
            while !done.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir(&out).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue; // temp files, by the documented convention
                    }
                    if let Ok(bytes) = std::fs::read(entry.path()) {
                        checked += 1;
                        if bytes.len() != SIZE {
                            bad.push((name, bytes.len()));
                        }
                    }
                }
            }
            (checked, bad)
        })
    };
    for n in 0..20 {
        let id = format!("BIG{n}");
        dest.send(&outbound(&content, Some(&id))).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (checked, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "partial files seen: {bad:?}");
    assert!(checked > 0, "the reader saw no file at all");
    assert_eq!(listing(&out).len(), 20);
}

/// A worker hands the deliveries it claimed over together: each file lands
/// under its own name (in more than one folder), and a delivery that cannot
/// be written (its name exists under `if_exists = "fail"`, no control id for
/// the name) fails alone, in its place, leaving no temporary file.
#[tokio::test]
async fn a_batch_is_written_together_and_fails_file_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${control_id}/x.hl7\"\nif_exists = \"fail\"\n",
    )
    .await;
    let Destination::File(file) = &dest else { panic!("not a file destination") };
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("TAKEN")).unwrap();
    std::fs::write(out.join("TAKEN/x.hl7"), b"old").unwrap();
    let batch = [
        outbound(b"first", Some("C1")),
        outbound(b"second", Some("TAKEN")),
        outbound(b"third", None),
        outbound(b"fourth", Some("C4")),
    ];
    let answers = file.send_many(&batch).await;
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0].as_ref().unwrap().summary, "wrote C1/x.hl7");
    assert!(matches!(answers[1], Err(DeliveryError::FileExists { .. })), "{:?}", answers[1]);
    assert!(matches!(answers[2], Err(DeliveryError::Content { .. })), "{:?}", answers[2]);
    assert_eq!(answers[3].as_ref().unwrap().summary, "wrote C4/x.hl7");
    assert_eq!(std::fs::read(out.join("C1/x.hl7")).unwrap(), b"first");
    assert_eq!(std::fs::read(out.join("C4/x.hl7")).unwrap(), b"fourth");
    assert_eq!(std::fs::read(out.join("TAKEN/x.hl7")).unwrap(), b"old");
    assert_eq!(listing(&out), ["C1/x.hl7", "C4/x.hl7", "TAKEN/x.hl7"], "no temp file left behind");
}

/// Two deliveries of one batch that name the same file under
/// `if_exists = "fail"`: the first is written, the second fails for good
/// with a reason naming the file, nothing is overwritten and its temporary
/// file is gone. In a new date folder, which the batch creates.
#[tokio::test]
async fn if_exists_fail_within_one_batch_keeps_the_first_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = build(
        tmp.path(),
        "type = \"file\"\ndirectory = \"out\"\nfile_name = \"${date:%Y/%m/%d}/${control_id}.hl7\"\nif_exists = \"fail\"\n",
    )
    .await;
    let Destination::File(file) = &dest else { panic!("not a file destination") };
    let answers = file.send_many(&[outbound(b"first", Some("SAME")), outbound(b"second", Some("SAME"))]).await;
    assert_eq!(answers[0].as_ref().unwrap().summary, "wrote 2026/11/21/SAME.hl7");
    let err = answers[1].as_ref().unwrap_err();
    assert!(matches!(err, DeliveryError::FileExists { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let reason = err.to_string();
    assert!(reason.contains("2026/11/21/SAME.hl7") && reason.contains("exists"), "{reason}");
    let out = tmp.path().join("out");
    assert_eq!(std::fs::read(out.join("2026/11/21/SAME.hl7")).unwrap(), b"first");
    assert_eq!(listing(&out), ["2026/11/21/SAME.hl7"], "no temp file left behind");
}
