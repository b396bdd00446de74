//! `plexus convert hl7-to-fhir | fhir-to-hl7 | map`, run as the real binary
//! on the converter's fixtures (crates/convert/tests/fixtures: synthetic
//! messages from Microsoft's FHIR-Converter sample data and a Synthea
//! patient; see the PROVENANCE.md there) and on small files written to temp
//! directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../convert/tests/fixtures").join(path)
}

fn plexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plexus")).args(args).output().expect("run plexus")
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

#[test]
fn hl7_to_fhir_prints_the_transaction_bundle() {
    let out = plexus(&["convert", "hl7-to-fhir", path_str(&fixture("hl7v2/ADT-A01-01.hl7"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    let first = &bundle["entry"][0];
    assert_eq!(first["resource"]["resourceType"], "Patient");
    assert_eq!(first["request"]["method"], "PUT");
    assert!(first["request"]["url"].as_str().unwrap().starts_with("Patient?identifier="), "{first}");
    // The same output as the library's golden file for this fixture.
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("../golden/ADT-A01-01.json")).unwrap()).unwrap();
    assert_eq!(bundle, golden);
}

#[test]
fn hl7_to_fhir_names_an_unsupported_message_type() {
    let out = plexus(&["convert", "hl7-to-fhir", path_str(&fixture("unsupported/BAR-P01-01.hl7"))]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("BAR^P01"), "{err}");
    assert!(stdout(&out).is_empty(), "nothing printed on failure: {}", stdout(&out));
}

#[test]
fn fhir_to_hl7_makes_every_message_type_from_its_input() {
    let synthea = fixture("fhir/synthea-patient-bundle.json");
    let out = plexus(&["convert", "fhir-to-hl7", path_str(&synthea), "--message", "ORU_R01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let msg = hl7v2::Message::parse(text.as_bytes()).expect("an HL7 v2 message");
    assert_eq!(msg.get("MSH-9-1").as_deref(), Some("ORU"));
    assert_eq!(msg.get("MSH-9-2").as_deref(), Some("R01"));
    assert_eq!(msg.get("MSH-12").as_deref(), Some("2.5.1"));
    assert!(text.lines().filter(|l| l.starts_with("OBX|")).count() > 1, "{text}");
    for kind in ["ADT_A04", "ADT_A08"] {
        let out = plexus(&["convert", "fhir-to-hl7", path_str(&synthea), "--message", kind, "--hl7-version", "2.6"]);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let msg = hl7v2::Message::parse(stdout(&out).as_bytes()).unwrap();
        assert_eq!(msg.get("MSH-9-2").as_deref(), Some(&kind[4..]), "{kind}");
        assert_eq!(msg.get("MSH-12").as_deref(), Some("2.6"), "{kind}");
    }
    let out = plexus(&["convert", "fhir-to-hl7", path_str(&synthea), "--message", "ORU_R99"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ORU_R99"), "{}", stderr(&out));
}

#[test]
fn fhir_to_hl7_raw_keeps_carriage_returns() {
    let out = plexus(&[
        "convert",
        "fhir-to-hl7",
        path_str(&fixture("fhir/synthea-patient-bundle.json")),
        "--message",
        "ADT_A08",
        "--raw",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.contains(&b'\r') && !out.stdout.contains(&b'\n'), "{}", stdout(&out));
}

const RULES: &str = "version: 1
resource_type: Patient
rules:
  - name: mrn
    source: mrn
    target: identifier[0].value
    required: true
    validate: { regex: \"^[0-9]{4,10}$\" }
  - name: sex
    source: sex
    target: gender
    transforms:
      - map: { table: { M: male, F: female }, default: unknown, reverse: { male: M, female: F }, reverse_default: U }
  - name: phone
    source: phone
    target: telecom[system=phone].value
    transforms: [trim]
  - name: birth date
    source: dob
    target: birthDate
    transforms:
      - date: { from: \"%m/%d/%Y\", to: \"%Y-%m-%d\" }
";

#[test]
fn map_applies_rules_forward_and_reverse_and_lists_violations() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"mrn": "004711", "sex": "F", "phone": " 555-0100 ", "dob": "08/15/1963"}"#).unwrap();

    let out = plexus(&["convert", "map", "--rules", path_str(&rules), path_str(&input)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let patient: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        patient,
        serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{"value": "004711"}],
            "gender": "female",
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "birthDate": "1963-08-15",
        })
    );

    let fhir = dir.path().join("patient.json");
    std::fs::write(&fhir, stdout(&out)).unwrap();
    let back = plexus(&["convert", "map", "--rules", path_str(&rules), path_str(&fhir), "--reverse"]);
    assert!(back.status.success(), "{}", stderr(&back));
    let back: Value = serde_json::from_str(&stdout(&back)).unwrap();
    assert_eq!(back, serde_json::json!({"mrn": "004711", "sex": "F", "phone": "555-0100", "dob": "08/15/1963"}));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"mrn": "12", "dob": "1963-08-15"}"#).unwrap();
    let out = plexus(&["convert", "map", "--rules", path_str(&rules), path_str(&bad)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("rule 'mrn' at input path 'mrn'"), "{err}");
    assert!(err.contains("rule 'birth date' at input path 'dob'"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}
