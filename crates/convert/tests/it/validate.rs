//! Every FHIR output of the converter validated by an external FHIR R4
//! validator (`shared/peers/validate-fhir.py`, fhir.resources models), when
//! the peers are installed (PLEXUS_PEERS).

use std::path::Path;
use std::process::Command;

use crate::support::hl7_fixtures;

/// Runs the validator over `files`; panics with its findings unless every
/// file is reported OK.
pub fn validate_fhir(peers: &Path, files: &[std::path::PathBuf]) {
    let python = peers.join("venv").join("bin").join("python");
    let script = testkit::shared_dir().join("peers").join("validate-fhir.py");
    let out = Command::new(&python).arg(&script).args(files).output().expect("run validate-fhir.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.lines().filter(|l| l.starts_with("OK ")).count();
    assert!(
        out.status.success() && ok == files.len(),
        "validator found problems ({ok}/{} OK):\n{stdout}\n{}",
        files.len(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_fixture_bundle_is_valid_fhir_r4() {
    let Some(peers) = testkit::peers_or_skip("convert::validate") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (stem, text) in hl7_fixtures() {
        let bundle = convert::hl7_to_fhir_text(&text, &Default::default()).unwrap();
        let path = dir.path().join(format!("{stem}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&bundle).unwrap()).unwrap();
        files.push(path);
    }
    validate_fhir(&peers, &files);
}

#[test]
fn the_validator_rejects_what_it_should() {
    // Guards the guard: an unknown element must fail, or the test above
    // proves nothing.
    let Some(peers) = testkit::peers_or_skip("convert::validate") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, r#"{"resourceType":"Patient","gender":"male","bogus":1}"#).unwrap();
    let python = peers.join("venv").join("bin").join("python");
    let script = testkit::shared_dir().join("peers").join("validate-fhir.py");
    let out = Command::new(python).arg(script).arg(&path).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
