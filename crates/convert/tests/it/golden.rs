//! Golden files: tests/fixtures/hl7v2/*.hl7 in, tests/golden/*.json out,
//! compared as JSON values. `UPDATE_GOLDEN=1` rewrites them (then read the
//! diff).

use serde_json::Value;

use crate::support::{fixtures, golden_dir, hl7_fixtures};

#[test]
fn every_supported_fixture_matches_its_golden_bundle() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let fixtures = hl7_fixtures();
    assert!(fixtures.len() >= 30, "fixtures missing: {}", fixtures.len());
    let mut mismatches = Vec::new();
    for (stem, text) in &fixtures {
        let bundle = convert::hl7_to_fhir_text(text, &Default::default()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let path = golden_dir().join(format!("{stem}.json"));
        if update {
            let pretty = serde_json::to_string_pretty(&bundle).unwrap() + "\n";
            std::fs::write(&path, pretty).unwrap();
            continue;
        }
        let golden: Value = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            Err(e) => panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()),
        };
        if golden != bundle {
            mismatches.push(stem.clone());
        }
    }
    assert!(mismatches.is_empty(), "output differs from golden for {mismatches:?} (UPDATE_GOLDEN=1 rewrites)");
}

#[test]
fn conversion_is_deterministic() {
    for (stem, text) in hl7_fixtures() {
        let a = convert::hl7_to_fhir_text(&text, &Default::default()).unwrap();
        let b = convert::hl7_to_fhir_text(&text.replace('\n', "\r"), &Default::default()).unwrap();
        assert_eq!(a, b, "{stem}: CR and LF segment endings give the same Bundle");
    }
}

#[test]
fn unsupported_types_are_errors_naming_the_type() {
    for (file, named) in [("BAR-P01-01.hl7", "BAR^P01"), ("MDM-T01-01.hl7", "MDM^T01")] {
        let text = std::fs::read_to_string(fixtures().join("unsupported").join(file)).unwrap();
        let err = convert::hl7_to_fhir_text(&text, &Default::default()).unwrap_err();
        assert!(
            matches!(&err, convert::ConvertError::UnsupportedMessage { message_type, .. } if message_type == named),
            "{file}: {err}"
        );
        assert!(err.to_string().contains(named), "{err}");
    }
}
