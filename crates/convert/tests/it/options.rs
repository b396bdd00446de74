//! Channels override the HL7-to-FHIR defaults by configuration: identifier
//! systems, code systems, code tables, the assumed UTC offset.

use convert::{ErrorClass, Hl7ToFhirOptions, hl7_to_fhir_text};
use serde_json::Value;

const MSG: &str = "MSH|^~\\&|LAB|HOSP|||20240101120000||ORU^R01^ORU_R01|77|P|2.5.1\r\
PID|1||4711^^^HOSP^MR||Doe^Jane||19800101|Z\r\
OBR|1||F-1^LAB|GLU^Glucose^LOCAL|||20240101113000\r\
OBX|1|NM|GLU^Glucose^LOCAL||182|mg/dL^^UCUM|70-99|HX|||F\r";

fn resource<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
    &bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == kind).unwrap()["resource"]
}

#[test]
fn defaults_keep_what_the_message_says_and_nothing_more() {
    let bundle = hl7_to_fhir_text(MSG, &Hl7ToFhirOptions::default()).unwrap();
    let patient = resource(&bundle, "Patient");
    assert_eq!(patient["identifier"][0]["system"], "urn:plexus:authority:HOSP");
    assert!(patient.get("gender").is_none(), "Z is not in the built-in table 0001");
    let obs = resource(&bundle, "Observation");
    assert!(obs["code"]["coding"][0].get("system").is_none(), "LOCAL is unknown");
    assert_eq!(obs["effectiveDateTime"], "2024-01-01", "no offset given or configured: the date only");
    assert_eq!(obs["interpretation"][0]["coding"][0]["code"], "HX");
    assert!(bundle.get("timestamp").is_none(), "MSH-7 has no offset: no instant");
}

#[test]
fn configured_systems_tables_and_offset_apply() {
    let opts = Hl7ToFhirOptions::from_toml(
        r#"
        default_offset = "+01:00"
        [identifier_systems]
        HOSP = "https://hospital.example/mrn"
        [code_systems]
        LOCAL = "https://hospital.example/lab-codes"
        [code_tables.0001]
        Z = "other"
        [code_tables.0078]
        HX = "HH"
        "#,
    )
    .unwrap();
    let bundle = hl7_to_fhir_text(MSG, &opts).unwrap();
    let patient = resource(&bundle, "Patient");
    assert_eq!(patient["identifier"][0]["system"], "https://hospital.example/mrn");
    assert_eq!(patient["gender"], "other");
    let entry =
        bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
    assert_eq!(entry["request"]["url"], "Patient?identifier=https://hospital.example/mrn|4711");
    let obs = resource(&bundle, "Observation");
    assert_eq!(obs["code"]["coding"][0]["system"], "https://hospital.example/lab-codes");
    assert_eq!(obs["effectiveDateTime"], "2024-01-01T11:30:00+01:00");
    assert_eq!(obs["interpretation"][0]["coding"][0]["code"], "HH");
    assert_eq!(bundle["timestamp"], "2024-01-01T12:00:00+01:00");
}

#[test]
fn invalid_options_are_config_errors() {
    let err = Hl7ToFhirOptions::from_toml("default_offset = \"CET\"").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config);
    assert!(err.to_string().contains("default_offset 'CET'"), "{err}");
    let err = Hl7ToFhirOptions::from_toml("[identifier_systems]\nHOSP = \"not a uri\"").unwrap_err();
    assert!(err.to_string().contains("HOSP"), "{err}");
    assert!(Hl7ToFhirOptions::from_toml("unknown_key = 1").is_err(), "unknown keys are refused");
}
