//! Untrusted input never panics: every fixture truncated at many points and
//! with separators and escapes injected converts or fails with an error.

use crate::support::hl7_fixtures;

#[test]
fn mangled_messages_give_errors_not_panics() {
    let noise: &[&str] = &["|", "^", "~", "&", "\\", "\\X0\\", "\\Xzz\\", "\"\"", "\r", "MSH|", "é", "\u{0}"];
    let mut runs = 0;
    for (stem, text) in hl7_fixtures() {
        let len = text.len();
        for cut in (0..len).step_by((len / 16).max(1)) {
            let Some(head) = text.get(..cut) else { continue };
            let _ = convert::hl7_to_fhir_text(head, &Default::default());
            for n in noise {
                let mangled = format!("{head}{n}{}", text.get(cut..).unwrap_or(""));
                let _ = convert::hl7_to_fhir_text(&mangled, &Default::default());
                runs += 1;
            }
        }
        assert!(runs > 0, "{stem}");
    }
    assert!(runs > 5_000, "ran {runs} mangled conversions");
}

#[test]
fn mangled_fhir_gives_errors_not_panics() {
    use serde_json::{Value, json};
    let bundle = crate::to_v2::synthea();
    let entries = bundle["entry"].as_array().unwrap();
    let odd = [json!(null), json!(1), json!("x"), json!([]), json!({}), json!([{"reference": 5}])];
    let targets = [
        convert::TargetMessage::OruR01,
        convert::TargetMessage::MdmT02,
        convert::TargetMessage::AdtA08,
        convert::TargetMessage::SiuS12,
        convert::TargetMessage::RasO17,
    ];
    // Every member of the first entries replaced with values of the wrong type.
    for entry in entries.iter().take(12) {
        let Some(resource) = entry["resource"].as_object() else { continue };
        for key in resource.keys() {
            for v in &odd {
                let mut r = resource.clone();
                r.insert(key.clone(), v.clone());
                let b = json!({"resourceType": "Bundle", "type": "collection", "entry": Value::Array(vec![
                    json!({"fullUrl": entry["fullUrl"], "resource": r}),
                    entries[0].clone(),
                ])});
                for t in targets {
                    let _ = convert::fhir_to_hl7(&b, t, &Default::default());
                }
            }
        }
    }
    for v in &odd {
        for t in targets {
            assert!(convert::fhir_to_hl7(v, t, &Default::default()).is_err());
        }
    }
}

#[test]
fn a40_errors_name_pid_first_then_mrg() {
    // MRG is read before the surviving Patient is written (it links the
    // replaced one); its errors still come after PID's, as the segments
    // are mapped.
    let msh = "MSH|^~\\&|ADT|HOSP|||20240101120000+0100||ADT^A40^ADT_A39|M1|P|2.5.1\r";
    let missing = |text: &str| match convert::hl7_to_fhir_json(
        &hl7v2::Message::parse(text.as_bytes()).unwrap(),
        &Default::default(),
    ) {
        Err(convert::ConvertError::Missing { path }) => path,
        other => panic!("{text:?}: {other:?}"),
    };
    assert!(missing(&format!("{msh}PID|1\r")).starts_with("PID-3"));
    assert!(missing(&format!("{msh}PID|1\rMRG|\r")).starts_with("PID-3"));
    assert_eq!(missing(&format!("{msh}PID|1||7^^^HOSP^MR\r")), "MRG segment");
    assert!(missing(&format!("{msh}PID|1||7^^^HOSP^MR\rMRG|^^^HOSP^MR\r")).starts_with("MRG-1"));
    let ok = convert::hl7_to_fhir(
        &hl7v2::Message::parse(format!("{msh}PID|1||7^^^HOSP^MR\rMRG|6^^^HOSP^MR\r").as_bytes()).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let entries = ok["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["resource"]["link"][0]["other"]["reference"], entries[1]["fullUrl"]);
    assert_eq!(entries[1]["resource"]["link"][0]["other"]["reference"], entries[0]["fullUrl"]);
}

#[test]
fn ed_data_that_does_not_decode_is_an_error_naming_the_obx() {
    // The path is made only when there is an error; it still names the
    // OBX by its position in the message (ORU) or among the OBXs (MDM).
    let invalid = |text: &str| match convert::hl7_to_fhir_json(
        &hl7v2::Message::parse(text.as_bytes()).unwrap(),
        &Default::default(),
    ) {
        Err(convert::ConvertError::Invalid { path, reason }) => (path, reason),
        other => panic!("{text:?}: {other:?}"),
    };
    let msh = "MSH|^~\\&|LAB|HOSP|||20240101120000+0100||";
    let pid = "PID|1||7^^^HOSP^MR||Doe^Jane\r";
    let oru = format!(
        "{msh}ORU^R01^ORU_R01|1|P|2.5.1\r{pid}OBR|1||F1^LAB|1^Panel\rOBX|1|NM|2^A^LN||5\rOBX|2|ED|3^B^LN||^AP^pdf^Base64^not*base64\r"
    );
    let (path, reason) = invalid(&oru);
    assert_eq!(path, "OBX(2)-5");
    assert!(reason.contains("base64"), "{reason}");
    let mdm = format!(
        "{msh}MDM^T02^MDM_T02|2|P|2.5.1\r{pid}TXA|1|CN|TX|||||||||D1^LAB\rOBX|1|TX|1^Note||text\rOBX|2|ED|2^Doc||^AP^pdf^HEX^xyz\r"
    );
    let (path, reason) = invalid(&mdm);
    assert_eq!(path, "OBX(2)-5");
    assert!(reason.contains("hex"), "{reason}");
}
