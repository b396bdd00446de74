//! The direct JSON writer (`hl7_to_fhir_json`, `hl7_to_fhir_json_pretty`)
//! and the `serde_json::Value` path (`hl7_to_fhir`) come from one tree; these
//! tests keep them from drifting: the same bytes for every fixture, for
//! mangled input (escapes, odd characters, truncation), and the same errors.

use crate::support::{fixtures, golden_dir, hl7_fixtures};

/// What both paths wrote: compact from the Value, compact direct, pretty
/// direct.
type Outputs = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Both paths' output for `text`, or both errors' texts.
fn both(text: &str) -> Result<Outputs, (String, String)> {
    let opts = Default::default();
    let Ok(msg) = hl7v2::Message::parse(text.as_bytes()) else { return Err((String::new(), String::new())) };
    let value = convert::hl7_to_fhir(&msg, &opts);
    let direct = convert::hl7_to_fhir_json(&msg, &opts);
    let pretty = convert::hl7_to_fhir_json_pretty(&msg, &opts);
    match (value, direct, pretty) {
        (Ok(v), Ok(d), Ok(p)) => {
            let pretty_value = serde_json::to_vec_pretty(&v).unwrap();
            assert_eq!(String::from_utf8_lossy(&p), String::from_utf8_lossy(&pretty_value), "pretty output");
            Ok((serde_json::to_vec(&v).unwrap(), d, p))
        }
        (Err(a), Err(b), Err(c)) => {
            assert_eq!(b.to_string(), c.to_string());
            Err((a.to_string(), b.to_string()))
        }
        (a, b, c) => panic!("the paths disagree: {:?} / {:?} / {:?}", a.is_ok(), b.is_ok(), c.is_ok()),
    }
}

#[test]
fn direct_json_matches_the_value_path_and_the_golden_files_byte_for_byte() {
    let fixtures = hl7_fixtures();
    assert!(fixtures.len() >= 30, "fixtures missing: {}", fixtures.len());
    for (stem, text) in &fixtures {
        let (from_value, direct, pretty) = both(text).unwrap_or_else(|e| panic!("{stem}: {e:?}"));
        assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&from_value), "{stem}");
        // The golden files are written pretty (UPDATE_GOLDEN=1) and read as
        // JSON by the golden test; byte equality also pins the member order.
        let golden = std::fs::read_to_string(golden_dir().join(format!("{stem}.json"))).unwrap();
        assert_eq!(String::from_utf8_lossy(&pretty) + "\n", golden, "{stem}: pretty output vs golden file");
    }
}

#[test]
fn mangled_messages_give_the_same_json_or_the_same_error_on_both_paths() {
    let noise: &[&str] = &["\\", "\\X0\\", "\\Xc3a9\\", "\\.br\\", "\\E\\", "\"", "\u{1}", "é", "\t", "\u{0}"];
    let mut compared = 0;
    for (stem, text) in hl7_fixtures() {
        let len = text.len();
        for cut in (0..len).step_by((len / 8).max(1)) {
            let Some(head) = text.get(..cut) else { continue };
            for n in noise {
                let mangled = format!("{head}{n}{}", text.get(cut..).unwrap_or(""));
                match both(&mangled) {
                    Ok((from_value, direct, _)) => {
                        assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&from_value), "{stem}");
                        compared += 1;
                    }
                    Err((a, b)) => assert_eq!(a, b, "{stem}"),
                }
            }
        }
    }
    assert!(compared > 1_000, "compared {compared} conversions");
}

#[test]
fn unsupported_types_are_the_same_error() {
    let text = std::fs::read_to_string(fixtures().join("unsupported").join("BAR-P01-01.hl7")).unwrap();
    let msg = hl7v2::Message::parse(text.as_bytes()).unwrap();
    let err = convert::hl7_to_fhir_json(&msg, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, convert::ConvertError::UnsupportedMessage { message_type, .. } if message_type == "BAR^P01")
    );
}
