//! `plexus hl7 inspect | validate | get | ack`, run as the real binary on the
//! HL7 v2 fixtures of crates/hl7v2/tests/fixtures (synthetic messages from
//! Microsoft's FHIR-Converter sample data; see the PROVENANCE.md there) and
//! on small messages written to temp files. Also how the offline commands
//! (`check`, `hl7`, `convert`) end when stdout's reader has gone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures").join(name)
}

fn plexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plexus")).args(args).output().expect("run plexus")
}

fn plexus_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plexus");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A temp file holding `content`.
fn temp_file(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

const SMALL: &str = "MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20261121120000||ORU^R01^ORU_R01|MSG42|P|2.5.1\r\
    PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\r\
    OBR|1|||718-7^Hemoglobin^LN\r\
    OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL|||||F\r\
    OBX|2|ST|NOTE^Note^L||A \\T\\ B||||||F\r";

/// ORU with a bad birth date and an unknown sex code.
const INVALID: &str = "MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20261121120000||ADT^A01^ADT_A01|BAD7|P|2.5\r\
    EVN||20261121\r\
    PID|1||42^^^H^MR||Doe^J||19801301|X\r\
    PV1|1|I\r";

// --- get ------------------------------------------------------------------

#[test]
fn get_prints_the_decoded_value() {
    let file = fixture("ADT-A01-01.hl7");
    let o = plexus(&["hl7", "get", path_str(&file), "MSH-10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "MSG00001\n");

    // \T\ is decoded to &.
    let o = plexus(&["hl7", "get", path_str(&file), "PV1-14"]);
    assert_eq!(stdout(&o), "NHS Provider-General (inc.A&E-this Hosp)\n");
    let o = plexus(&["hl7", "get", "--raw", path_str(&file), "PV1-14"]);
    assert_eq!(stdout(&o), "NHS Provider-General (inc.A\\T\\E-this Hosp)\n");

    // Repetitions and sub-components.
    let o = plexus(&["hl7", "get", path_str(&file), "PID-3(2)-4"]);
    assert_eq!(stdout(&o), "USSSA\n");
    let o = plexus(&["hl7", "get", path_str(&file), "PID-3-4-2"]);
    assert_eq!(stdout(&o), "2.16.1\n");
    let o = plexus(&["hl7", "get", path_str(&file), "PID-5-1-5"]);
    assert_eq!(stdout(&o), "Aniston\n");
}

#[test]
fn get_of_an_absent_path_exits_1_and_says_so() {
    let o = plexus(&["hl7", "get", path_str(&fixture("ADT-A01-01.hl7")), "ZZZ-1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("ZZZ-1 is not in the message"), "{}", stderr(&o));
}

#[test]
fn get_refuses_an_invalid_path_with_its_position() {
    let o = plexus(&["hl7", "get", path_str(&fixture("ADT-A01-01.hl7")), "PID-0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid path \"PID-0\""), "{}", stderr(&o));
}

#[test]
fn get_reads_standard_input_with_cr_separators() {
    let o = plexus_stdin(&["hl7", "get", "-", "OBX(2)-5"], SMALL.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "A & B\n");
}

// --- inspect --------------------------------------------------------------

#[test]
fn inspect_prints_a_tree_whose_paths_read_back_with_get() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "small.hl7", SMALL.as_bytes());
    let o = plexus(&["hl7", "inspect", path_str(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0]
            .ends_with("small.hl7: ORU^R01^ORU_R01, control id MSG42, version 2.5.1, character set ASCII, 5 segments"),
        "{}",
        lines[0]
    );
    // Segments at the margin, repeated ones with their occurrence.
    for seg in ["MSH", "PID", "OBR", "OBX(1)", "OBX(2)"] {
        assert!(lines.contains(&seg), "no line {seg:?} in\n{text}");
    }
    let row = |path: &str| -> Option<String> {
        lines.iter().find_map(|l| {
            let mut parts = l.trim_start().splitn(2, ' ');
            (parts.next() == Some(path)).then(|| parts.next().unwrap_or("").trim().to_owned())
        })
    };
    assert_eq!(row("MSH-9").as_deref(), Some("ORU^R01^ORU_R01"), "composites as written");
    assert_eq!(row("MSH-9-2").as_deref(), Some("R01"));
    assert_eq!(row("PID-5-2").as_deref(), Some("Jane"));
    assert_eq!(row("OBX(2)-5").as_deref(), Some("A & B"), "leaves decoded");
    assert_eq!(row("OBX(1)-3-3").as_deref(), Some("LN"));
    assert_eq!(row("PID-2"), None, "empty fields are left out");
    // Nesting is shown by indentation.
    let indent = |path: &str| {
        lines.iter().find(|l| l.trim_start().starts_with(&format!("{path} "))).map(|l| l.len() - l.trim_start().len())
    };
    assert_eq!(indent("PID-5"), Some(2));
    assert_eq!(indent("PID-5-1"), Some(4));

    // Each shown path reads its value back through `get`.
    for path in ["PID-3-1", "PID-3-4", "OBX(1)-5", "OBX(2)-5", "MSH-7"] {
        let got = plexus(&["hl7", "get", path_str(&file), path]);
        assert_eq!(stdout(&got).trim_end_matches('\n'), row(path).unwrap(), "{path}");
    }
}

#[test]
fn inspect_works_on_every_fixture() {
    let dir = fixture("");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(files.len() >= 60, "fixtures missing in {}", dir.display());
    for file in files {
        let o = plexus(&["hl7", "inspect", path_str(&file)]);
        assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
        let text = stdout(&o);
        assert!(text.lines().any(|l| l == "MSH"), "{}", file.display());
        assert!(text.contains("MSH-10"), "{}", file.display());
    }
}

#[test]
fn inspect_of_garbage_says_where_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "garbage.hl7", b"this is not HL7\r");
    let o = plexus(&["hl7", "inspect", path_str(&file)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("garbage.hl7: does not parse:"), "{}", stdout(&o));
}

#[test]
fn a_file_with_several_messages_is_split_before_each_msh() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!("{SMALL}{}", SMALL.replace("MSG42", "MSG43"));
    let file = temp_file(&dir, "two.hl7", two.as_bytes());
    let o = plexus(&["hl7", "get", path_str(&file), "MSH-10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{0} #1: MSG42\n{0} #2: MSG43\n", file.display()));
}

// --- validate -------------------------------------------------------------

#[test]
fn validate_reports_issues_with_locations_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = temp_file(&dir, "bad.hl7", INVALID.as_bytes());
    let o = plexus(&["hl7", "validate", path_str(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("bad.hl7: invalid: 2 errors"), "{text}");
    assert!(text.contains("  PID(1)-7: 102 Data type error"), "{text}");
    assert!(text.contains("  PID(1)-8: 103 Table value not found"), "{text}");
}

#[test]
fn validate_passes_a_valid_message_and_fails_the_set_if_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let good = temp_file(&dir, "good.hl7", SMALL.as_bytes());
    let o = plexus(&["hl7", "validate", path_str(&good)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(stdout(&o), format!("{}: valid\n", good.display()));

    let bad = temp_file(&dir, "bad.hl7", INVALID.as_bytes());
    let garbage = temp_file(&dir, "garbage.hl7", b"\x0b\x00\x01 nothing");
    let missing = dir.path().join("missing.hl7");
    let o = plexus(&["hl7", "validate", path_str(&good), path_str(&bad), path_str(&garbage), path_str(&missing)]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("good.hl7: valid\n"), "{text}");
    assert!(text.contains("bad.hl7: invalid"), "{text}");
    assert!(text.contains("garbage.hl7: invalid: does not parse:"), "{text}");
    assert!(text.contains("missing.hl7: cannot be read"), "{text}");
    assert!(text.ends_with("1 of 4 messages valid\n"), "{text}");

    // --quiet prints only the files with issues.
    let o = plexus(&["hl7", "validate", "--quiet", path_str(&good), path_str(&bad)]);
    assert!(!stdout(&o).contains("good.hl7"), "{}", stdout(&o));
}

#[test]
fn validate_runs_over_every_fixture() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    let args: Vec<&str> = ["hl7", "validate"].into_iter().chain(files.iter().map(|p| path_str(p))).collect();
    let o = plexus(&args);
    let text = stdout(&o);
    // Every file gets a verdict line, and the summary adds up.
    for f in &files {
        let name = f.display().to_string();
        assert!(text.lines().any(|l| l.starts_with(&format!("{name}: "))), "no verdict for {name}");
    }
    let invalid = text.lines().filter(|l| !l.starts_with(' ') && l.contains(": invalid")).count();
    let summary = format!("{} of {} messages valid", files.len() - invalid, files.len());
    assert!(text.ends_with(&format!("{summary}\n")), "{summary}\n{text}");
    assert_eq!(o.status.code(), Some(if invalid > 0 { 1 } else { 0 }));
}

#[test]
fn validate_checks_the_counts_of_a_batch_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let batch = format!("FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r{SMALL}{}BTS|3\rFTS|1\r", SMALL.replace("MSG42", "MSG43"));
    let file = temp_file(&dir, "batch.hl7", batch.as_bytes());
    let o = plexus(&["hl7", "validate", path_str(&file)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("batch.hl7 (batch envelope): invalid: 1 error"), "{text}");
    assert!(
        text.contains("  BTS(1)-1: 102 Data type error: BTS-1 does not match the 2 messages of batch 1 (E)"),
        "{text}"
    );
    assert!(text.contains("batch.hl7 #1: valid\n") && text.contains("batch.hl7 #2: valid\n"), "{text}");
    assert!(text.ends_with("2 of 3 messages valid\n"), "{text}");

    // With the right count, the batch is valid.
    let file = temp_file(&dir, "good-batch.hl7", batch.replace("BTS|3", "BTS|2").as_bytes());
    let o = plexus(&["hl7", "validate", path_str(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

// --- ack ------------------------------------------------------------------

#[test]
fn ack_prints_the_acknowledgement_one_segment_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = temp_file(&dir, "good.hl7", SMALL.as_bytes());
    let o = plexus(&["hl7", "ack", path_str(&good), "--control-id", "A1", "--timestamp", "20261121130000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "MSH|^~\\&|EHR|CLINIC|LAB|HOSP|20261121130000||ACK^R01^ACK|A1|P|2.5.1\nMSA|AA|MSG42\n");
    // --raw: the exact bytes, CR separated.
    let o = plexus(&["hl7", "ack", "--raw", path_str(&good), "--control-id", "A1", "--timestamp", "20261121130000"]);
    assert_eq!(o.stdout, b"MSH|^~\\&|EHR|CLINIC|LAB|HOSP|20261121130000||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|MSG42\r");
}

#[test]
fn ack_of_an_invalid_message_is_ae_with_err_segments() {
    let dir = tempfile::tempdir().unwrap();
    let bad = temp_file(&dir, "bad.hl7", INVALID.as_bytes());
    let o = plexus(&["hl7", "ack", path_str(&bad)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ack = hl7v2::Message::parse(o.stdout.clone()).expect("the ACK parses");
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AE"));
    assert_eq!(ack.get("MSA-2").as_deref(), Some("BAD7"));
    let errs: Vec<_> = ack.segments_named("ERR").collect();
    assert_eq!(errs.len(), 2, "{}", stdout(&o));
    assert_eq!(ack.get("ERR(1)-2").as_deref(), Some("PID"));
    assert_eq!(ack.get("ERR(1)-2-3").as_deref(), Some("7"));
    assert_eq!(ack.get("ERR(1)-3-1").as_deref(), Some("102"));
    // A generated control id and a current timestamp.
    assert!(ack.get("MSH-10").unwrap().starts_with("ACK"));
    assert!(ack.get("MSH-7").unwrap().ends_with("+0000"));
}

#[test]
fn ack_code_can_be_forced() {
    let o = plexus(&["hl7", "ack", path_str(&fixture("ADT-A01-01.hl7")), "--code", "ar", "--text", "not here"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ack = hl7v2::Message::parse(o.stdout.clone()).unwrap();
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AR"));
    assert_eq!(ack.get("MSA-2").as_deref(), Some("MSG00001"));
    let o = plexus(&["hl7", "ack", path_str(&fixture("ADT-A01-01.hl7")), "--code", "XX"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses an unknown code");
}

#[test]
fn ack_of_unparsable_input_still_echoes_the_control_id() {
    let dir = tempfile::tempdir().unwrap();
    // MSH is readable, a later segment is not.
    let file = temp_file(&dir, "broken.hl7", b"MSH|^~\\&|A|B|C|D|20261121||ADT^A01|77|P|2.4\rPID|1\r???|x\r");
    let o = plexus(&["hl7", "ack", path_str(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ack = hl7v2::Message::parse(o.stdout.clone()).unwrap();
    assert_eq!(ack.get("MSA-1").as_deref(), Some("AE"));
    assert_eq!(ack.get("MSA-2").as_deref(), Some("77"));
    assert!(ack.segment("ERR").is_some());
}

/// `plexus check --config FILE | head -1`: the reader goes away and the next
/// write fails with EPIPE. A filter ends quietly there, as `cat` does, instead
/// of panicking with "failed printing to stdout" and a backtrace (`check`
/// prints with `println!`).
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;

    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader); // nobody will read: every write to `writer` is EPIPE
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["check", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml"))
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run plexus");
    assert_eq!(stderr(&out), "", "nothing on stderr");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "ended by SIGPIPE: {:?}", out.status);
}
