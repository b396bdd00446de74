//! ORU^R01 OBX value types, one OBX each, to the Observation's value[x]
//! (issue 6: NM, ST, TX, FT, CE/CWE, SN, DT/DTM; ED and RP to the report's
//! presentedForm), with units,
//! interpretation, reference range, status and the specimen (SPM). The
//! fixtures cover NM, CE/CWE, TX, ED, RP and one SN; this message adds ST, FT,
//! DTM and the other SN forms. The Bundle also goes through the FHIR R4
//! validator peer when PLEXUS_PEERS is set.

use serde_json::{Value, json};

use crate::validate::validate_fhir;

const ORU: &str = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240501083000+0200||ORU^R01^ORU_R01|VT-1|P|2.5.1\r\
PID|1||4711^^^HOSP&1.2.3.4&ISO^MR||Doe^Jane||19800101|F\r\
OBR|1|PL-1^PLACER|FI-1^FILLER|24331-1^Lipid panel^LN|||20240501080000+0200|||||||||||||||20240501082500+0200||CH|F\r\
OBX|1|NM|2093-3^Cholesterol^LN||5.20|mmol/L^^UCUM|3.0-5.0|H|||F|||20240501082000+0200\r\
OBX|2|ST|8251-1^Service comment^LN||fasting sample||||||F\r\
OBX|3|TX|8251-1^Service comment^LN||line one~line two||||||F\r\
OBX|4|FT|8251-1^Service comment^LN||first\\.br\\second \\T\\ third||||||F\r\
OBX|5|CWE|5778-6^Color of Urine^LN||YEL^Yellow^HL70255||||||F\r\
OBX|6|SN|2345-7^Glucose^LN||>^100|mg/dL^^UCUM||A|||F\r\
OBX|7|SN|2345-7^Glucose^LN||^1^-^5|mg/dL^^UCUM|||||C\r\
OBX|8|SN|5130-0^Titer^LN||^1^:^128||||||P\r\
OBX|9|DT|21112-8^Birth date^LN||20240430||||||F\r\
OBX|10|DTM|8302-2^Time of collection^LN||202405010815+0200||||||F\r\
OBX|11|ED|11502-2^Lab report^LN||^AP^pdf^Base64^JVBERi0xLjQK||||||F\r\
OBX|12|RP|11502-2^Lab report^LN||http://lab.example/r/1^LAB^AP^pdf||||||F\r\
SPM|1|SP-1&PLACER^SF-1&FILLER||BLD^Blood^HL70487|||||||P||||||20240501075500+0200|20240501080500+0200\r";

/// The Observations of the Bundle, by OBX set id order (the Bundle keeps it).
fn observations(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation")
        .collect()
}

fn bundle() -> Value {
    convert::hl7_to_fhir_text(ORU, &Default::default()).expect("convert")
}

#[test]
fn every_obx_value_type_becomes_its_value_x() {
    let bundle = bundle();
    let obs = observations(&bundle);
    // ED and RP are documents: R4's Observation.value[x] has no Attachment,
    // so they become the report's presentedForm (below); every other OBX is
    // an Observation, the repeated codes (OBX 2-4, 6-7) included.
    assert_eq!(obs.len(), 10, "one Observation per OBX but ED and RP");

    // NM: Quantity with UCUM (the unit is flagged UCUM), interpretation,
    // reference range and status. A serde_json::Value holds the decimal as
    // an f64 (5.2); the JSON output keeps its written precision ("5.20",
    // see decimals_keep_their_written_precision_in_the_json_output).
    assert_eq!(
        obs[0]["valueQuantity"],
        json!({"value": 5.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"})
    );
    assert_eq!(obs[0]["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(obs[0]["referenceRange"][0]["low"]["value"], json!(3.0));
    assert_eq!(obs[0]["referenceRange"][0]["high"]["value"], json!(5.0));
    assert_eq!(obs[0]["status"], "final");
    assert_eq!(
        obs[0]["code"]["coding"][0],
        json!({"system": "http://loinc.org", "code": "2093-3", "display": "Cholesterol"})
    );
    assert_eq!(obs[0]["effectiveDateTime"], "2024-05-01T08:20:00+02:00");

    // ST, TX (repetitions are lines), FT (escapes and line breaks decoded).
    assert_eq!(obs[1]["valueString"], "fasting sample");
    assert_eq!(obs[2]["valueString"], "line one\nline two");
    assert_eq!(obs[3]["valueString"], "first\nsecond & third");

    // CWE: a CodeableConcept with the v2 table's system.
    assert_eq!(obs[4]["valueCodeableConcept"]["coding"][0]["code"], "YEL");
    assert_eq!(obs[4]["valueCodeableConcept"]["coding"][0]["display"], "Yellow");
    assert_eq!(obs[4]["valueCodeableConcept"]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/v2-0255");

    // SN: comparator, range, ratio; corrected and preliminary statuses.
    assert_eq!(obs[5]["valueQuantity"]["comparator"], ">");
    assert_eq!(obs[5]["valueQuantity"]["value"], json!(100));
    assert_eq!(obs[5]["interpretation"][0]["coding"][0]["code"], "A");
    assert_eq!(obs[6]["valueRange"]["low"]["value"], json!(1));
    assert_eq!(obs[6]["valueRange"]["high"]["value"], json!(5));
    assert_eq!(obs[6]["valueRange"]["high"]["code"], "mg/dL");
    assert_eq!(obs[6]["status"], "corrected");
    assert_eq!(obs[7]["valueRatio"]["numerator"]["value"], json!(1));
    assert_eq!(obs[7]["valueRatio"]["denominator"]["value"], json!(128));
    assert_eq!(obs[7]["status"], "preliminary");

    // DT keeps the day; DTM keeps minutes and the offset.
    assert_eq!(obs[8]["valueDateTime"], "2024-04-30");
    assert_eq!(obs[9]["valueDateTime"], "2024-05-01T08:15:00+02:00");

    // ED: base64 data as an attachment; RP: a URL as an attachment.
    let report = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "DiagnosticReport")
        .expect("a DiagnosticReport");
    assert_eq!(
        report["presentedForm"],
        json!([
            {"contentType": "application/pdf", "data": "JVBERi0xLjQK"},
            {"contentType": "application/pdf", "url": "http://lab.example/r/1"},
        ])
    );
}

#[test]
fn spm_becomes_a_specimen_that_the_observations_and_report_reference() {
    let bundle = bundle();
    let entries = bundle["entry"].as_array().unwrap();
    let specimens: Vec<&Value> = entries.iter().filter(|e| e["resource"]["resourceType"] == "Specimen").collect();
    assert_eq!(specimens.len(), 1);
    let specimen = &specimens[0]["resource"];
    let url = specimens[0]["fullUrl"].as_str().unwrap();
    assert_eq!(specimen["type"]["coding"][0]["code"], "BLD");
    let ids: Vec<&str> =
        specimen["identifier"].as_array().unwrap().iter().filter_map(|i| i["value"].as_str()).collect();
    assert!(ids.contains(&"SP-1") && ids.contains(&"SF-1"), "placer and filler ids: {ids:?}");
    assert_eq!(specimen["collection"]["collectedDateTime"], "2024-05-01T07:55:00+02:00");
    assert_eq!(specimen["receivedTime"], "2024-05-01T08:05:00+02:00");
    // In ORU^R01 2.5.1 the SPM follows the order's OBX segments; the
    // Observations read before it are linked to it all the same.
    for obs in observations(&bundle) {
        assert_eq!(obs["specimen"]["reference"], url, "{}", obs["code"]);
    }
    let report = entries.iter().map(|e| &e["resource"]).find(|r| r["resourceType"] == "DiagnosticReport").unwrap();
    assert_eq!(report["specimen"][0]["reference"], url);
    let results: Vec<&str> =
        report["result"].as_array().unwrap().iter().map(|r| r["reference"].as_str().unwrap()).collect();
    let distinct: std::collections::BTreeSet<&str> = results.iter().copied().collect();
    assert_eq!((results.len(), distinct.len()), (10, 10), "every Observation once: {results:?}");
}

/// The JSON output (`hl7_to_fhir_json`, what channels send) of `text`.
fn json_output(text: &str) -> String {
    let msg = hl7v2::Message::parse(text.as_bytes()).expect("parse");
    String::from_utf8(convert::hl7_to_fhir_json(&msg, &Default::default()).expect("convert")).expect("UTF-8")
}

#[test]
fn decimals_keep_their_written_precision_in_the_json_output() {
    // FHIR decimals are significant to their last digit: NM "5.20" is 5.20,
    // not 5.2; "3.0-5.0" keeps one decimal on both ends.
    let out = json_output(ORU);
    assert!(out.contains(r#""valueQuantity":{"value":5.20,"unit":"mmol/L""#), "5.20 lost its precision: {out}");
    assert!(out.contains(r#""low":{"value":3.0,"#) && out.contains(r#""high":{"value":5.0,"#), "{out}");
    // Trailing zeros, a leading +, leading zeros and a bare point in NM, SN
    // and the reference range.
    let text = ORU
        .replace("||5.20|mmol/L^^UCUM|3.0-5.0|", "||+0100.50|mmol/L^^UCUM|.50-120.00|")
        .replace("||>^100|", "||>^100.0|")
        .replace("||^1^-^5|", "||^1.10^-^5.000|");
    let out = json_output(&text);
    for expected in [
        r#""valueQuantity":{"value":100.50,"#,
        r#""low":{"value":0.50,"#,
        r#""high":{"value":120.00,"#,
        r#""valueQuantity":{"value":100.0,"unit":"mg/dL""#,
        r#""valueRange":{"low":{"value":1.10,"#,
        r#""high":{"value":5.000,"#,
    ] {
        assert!(out.contains(expected), "{expected} missing in {out}");
    }
    // The same numbers as the Value path, where serde_json holds f64s.
    let written: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(written, convert::hl7_to_fhir_text(&text, &Default::default()).unwrap());
}

#[test]
fn the_value_type_bundle_is_valid_fhir_r4() {
    let Some(peers) = testkit::peers_or_skip("convert::value_types") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("value-types.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&bundle()).unwrap()).unwrap();
    // The JSON output too: its decimals are written as given (5.20).
    let written = dir.path().join("value-types-json-output.json");
    std::fs::write(&written, json_output(ORU)).unwrap();
    validate_fhir(&peers, &[path, written]);
}
