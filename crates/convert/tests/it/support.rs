//! Paths and helpers shared by the test modules.

use std::path::PathBuf;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    crate_dir().join("tests").join("fixtures")
}

pub fn golden_dir() -> PathBuf {
    crate_dir().join("tests").join("golden")
}

/// Every supported HL7 v2 fixture, sorted, as (stem, text).
pub fn hl7_fixtures() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(fixtures().join("hl7v2"))
        .expect("fixtures/hl7v2")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, std::fs::read_to_string(&p).expect("read fixture"))
        })
        .collect();
    out.sort();
    out
}
