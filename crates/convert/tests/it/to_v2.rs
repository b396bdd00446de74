//! FHIR R4 to HL7 v2: the messages validate with the hl7v2 crate's structure
//! and datatype validation, carry what they should, and a peer MLLP
//! listener (shared/peers/mllp-peer-server.js) accepts them with AA.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use convert::{FhirToHl7Options, TargetMessage, fhir_to_hl7};
use hl7v2::validate::validate;
use hl7v2::{Message, Severity};
use serde_json::{Value, json};

use crate::support::fixtures;

pub fn synthea() -> Value {
    let text = std::fs::read_to_string(fixtures().join("fhir").join("synthea-patient-bundle.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Fails on any validation issue of severity error or worse.
pub fn assert_valid(msg: &Message, what: &str) {
    let errors: Vec<String> =
        validate(msg).into_iter().filter(|i| i.severity >= Severity::Error).map(|i| i.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{}", String::from_utf8_lossy(msg.as_bytes()).replace('\r', "\n"));
}

/// Sends one framed message and returns the ACK's text.
fn mllp_exchange(port: u16, msg: &Message) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).unwrap();
    let mut ack = Vec::new();
    let mut buf = [0u8; 4096];
    while !ack.windows(2).any(|w| w == [0x1c, 0x0d]) {
        let n = stream.read(&mut buf).expect("read the ACK");
        assert!(n > 0, "peer closed without an ACK");
        ack.extend_from_slice(&buf[..n]);
    }
    let start = ack.iter().position(|b| *b == 0x0b).map_or(0, |p| p + 1);
    let end = ack.iter().position(|b| *b == 0x1c).unwrap_or(ack.len());
    String::from_utf8_lossy(&ack[start..end]).into_owned()
}

fn ack_code(ack: &str) -> String {
    let msg = Message::parse(ack.as_bytes()).unwrap_or_else(|e| panic!("malformed ACK {ack:?}: {e}"));
    msg.get("MSA-1").map(|c| c.into_owned()).unwrap_or_default()
}

fn glucose_bundle() -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "timestamp": "2024-05-01T09:00:00+02:00", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {
            "resourceType": "Patient", "id": "p1",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                            "system": "urn:oid:1.2.840.114350", "value": "MRN-0042"}],
            "name": [{"use": "official", "family": "Müller", "given": ["Zoë", "Anne"]}],
            "gender": "female", "birthDate": "1971-02-03"}},
        {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222", "resource": {
            "resourceType": "Device", "id": "meter",
            "udiCarrier": [{"deviceIdentifier": "00643169001763"}], "lotNumber": "L7", "serialNumber": "SN-9"}},
        {"resource": {"resourceType": "Observation", "id": "glu", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}]},
            "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
            "effectiveDateTime": "2024-05-01T08:30:00+02:00",
            "valueQuantity": {"value": 182, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
            "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}],
            "referenceRange": [{"low": {"value": 70, "unit": "mg/dL"}, "high": {"value": 99, "unit": "mg/dL"}}],
            "device": {"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"},
            "note": [{"text": "fasting | before breakfast"}]}},
        {"resource": {"resourceType": "Observation", "id": "kcal", "status": "preliminary",
            "code": {"coding": [{"system": "http://loinc.org", "code": "9052-2", "display": "Calorie intake total"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01T08:30:00+02:00",
            "valueQuantity": {"value": 1850.5, "unit": "kcal", "system": "http://unitsofmeasure.org", "code": "kcal"}}},
        {"resource": {"resourceType": "Observation", "id": "meal", "status": "final",
            "code": {"text": "Meal description"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01T07:00:00+02:00",
            "valueString": "Oatmeal with berries\nCoffee, no sugar"}}
    ]})
}

#[test]
fn glucose_and_nutrition_observations_become_an_oru_with_obr_groups() {
    let msg = fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &FhirToHl7Options::default()).unwrap();
    assert_valid(&msg, "glucose ORU");
    assert_eq!(msg.get("MSH-9").as_deref(), Some("ORU"));
    assert_eq!(msg.get("MSH-9-2").as_deref(), Some("R01"));
    assert_eq!(msg.get("MSH-12").as_deref(), Some("2.5.1"));
    assert_eq!(msg.get("MSH-7").as_deref(), Some("20240501090000+0200"), "MSH-7 from Bundle.timestamp");
    assert_eq!(msg.get("MSH-18").as_deref(), Some("UNICODE UTF-8"), "non-ASCII names declare UTF-8");
    assert_eq!(msg.get("PID-5-1").as_deref(), Some("Müller"));
    assert_eq!(msg.get("PID-5-2").as_deref(), Some("Zoë"));
    assert_eq!(msg.get("PID-3-5").as_deref(), Some("MR"));
    assert_eq!(msg.get("PID-7").as_deref(), Some("19710203"));
    assert_eq!(msg.get("PID-8").as_deref(), Some("F"));
    // Two OBR groups: the 08:30 results (glucose and calories), the 07:00 meal.
    assert_eq!(msg.segments_named("OBR").count(), 2);
    assert_eq!(msg.get("OBR(1)-4-1").as_deref(), Some("laboratory"));
    assert_eq!(msg.get("OBR(1)-7").as_deref(), Some("20240501083000+0200"));
    assert_eq!(msg.get("OBR(1)-25").as_deref(), Some("P"), "a preliminary member makes the group preliminary");
    assert_eq!(msg.get("OBR(2)-4-2").as_deref(), Some("Meal description"));
    // Glucose: NM, UCUM units, range, flag, status, device.
    assert_eq!(msg.get("OBX(1)-2").as_deref(), Some("NM"));
    assert_eq!(msg.get("OBX(1)-3-1").as_deref(), Some("2339-0"));
    assert_eq!(msg.get("OBX(1)-3-3").as_deref(), Some("LN"));
    assert_eq!(msg.get("OBX(1)-5").as_deref(), Some("182"));
    assert_eq!(msg.get("OBX(1)-6-1").as_deref(), Some("mg/dL"));
    assert_eq!(msg.get("OBX(1)-6-3").as_deref(), Some("UCUM"));
    assert_eq!(msg.get("OBX(1)-7").as_deref(), Some("70-99"));
    assert_eq!(msg.get("OBX(1)-8").as_deref(), Some("H"));
    assert_eq!(msg.get("OBX(1)-11").as_deref(), Some("F"));
    assert_eq!(msg.get("OBX(1)-14").as_deref(), Some("20240501083000+0200"));
    assert_eq!(msg.get("OBX(1)-18").as_deref(), Some("00643169001763"));
    assert_eq!(msg.get("NTE(1)-3").as_deref(), Some("fasting | before breakfast"), "escaped and read back");
    // Nutrition intake.
    assert_eq!(msg.get("OBX(2)-3-1").as_deref(), Some("9052-2"));
    assert_eq!(msg.get("OBX(2)-5").as_deref(), Some("1850.5"));
    assert_eq!(msg.get("OBX(2)-6-1").as_deref(), Some("kcal"));
    assert_eq!(msg.get("OBX(2)-11").as_deref(), Some("P"));
    // Free text with two lines: TX, one repetition per line.
    assert_eq!(msg.get("OBX(3)-2").as_deref(), Some("TX"));
    assert_eq!(msg.get("OBX(3)-5(2)").as_deref(), Some("Coffee, no sugar"));
}

#[test]
fn devices_get_a_prt_segment_from_version_2_7() {
    let opts = FhirToHl7Options { version: "2.8".into(), ..Default::default() };
    let msg = fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &opts).unwrap();
    assert_valid(&msg, "glucose ORU 2.8");
    let prt = msg.segment("PRT").expect("PRT for the device");
    assert_eq!(prt.get(4).as_deref(), Some("EQUIP"));
    assert_eq!(prt.get(16).as_deref(), Some("00643169001763"));
    assert_eq!(prt.get(20).as_deref(), Some("SN-9"));
    let v251 = fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &Default::default()).unwrap();
    assert!(v251.segment("PRT").is_none(), "2.5.1 has no PRT segment");
}

#[test]
fn the_same_input_gives_the_same_message() {
    let a = fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &Default::default()).unwrap();
    let b = fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &Default::default()).unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
    assert_eq!(a.get("MSH-10").map(|c| c.len()), Some(20));
}

#[test]
fn synthea_observations_become_a_valid_oru() {
    let bundle = synthea();
    let msg = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_valid(&msg, "Synthea ORU");
    let observations = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| &e["resource"])
        .collect::<Vec<_>>();
    let with_value =
        observations.iter().filter(|o| o.as_object().unwrap().keys().any(|k| k.starts_with("value"))).count();
    let components: usize = observations.iter().filter_map(|o| o["component"].as_array()).map(Vec::len).sum();
    assert_eq!(msg.segments_named("OBX").count(), with_value + components, "one OBX per value and per component");
    // Blood pressure components share the sub-id of their observation.
    let bp = msg.segments_named("OBX").find(|s| s.get(3).as_deref() == Some("8480-6")).expect("systolic");
    assert!(bp.get(4).is_some_and(|s| !s.is_empty()));
    assert_eq!(msg.get("PID-8").as_deref(), Some("M"));
}

#[test]
fn a_document_with_a_binary_becomes_mdm_t02_and_an_oru_with_an_ed_obx() {
    let pdf = base64_of(b"%PDF-1.4 tiny test document");
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "resource": {
            "resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "77"}],
            "name": [{"family": "Doe", "given": ["Jane"]}], "gender": "female", "birthDate": "1980-01-01"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002", "resource": {
            "resourceType": "Binary", "contentType": "application/pdf", "data": pdf}},
        {"resource": {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
            "masterIdentifier": {"system": "urn:oid:1.2.3.9", "value": "DOC-1"},
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
            "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
            "date": "2024-05-02T10:00:00Z",
            "content": [{"attachment": {"contentType": "application/pdf",
                                        "url": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}}]}}
    ]});
    let mdm = fhir_to_hl7(&bundle, TargetMessage::MdmT02, &Default::default()).unwrap();
    assert_valid(&mdm, "MDM^T02");
    assert_eq!(mdm.get("TXA-2").as_deref(), Some("11506-3"));
    assert_eq!(mdm.get("TXA-12").as_deref(), Some("DOC-1"));
    assert_eq!(mdm.get("TXA-17").as_deref(), Some("AU"));
    assert_eq!(mdm.get("OBX-2").as_deref(), Some("ED"));
    assert_eq!(mdm.get("OBX-5-2").as_deref(), Some("AP"));
    assert_eq!(mdm.get("OBX-5-3").as_deref(), Some("pdf"));
    assert_eq!(mdm.get("OBX-5-4").as_deref(), Some("Base64"));
    assert_eq!(mdm.get("OBX-5-5").as_deref(), Some(pdf.as_str()));

    let oru = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_valid(&oru, "ORU with ED");
    assert_eq!(oru.get("OBR-4").as_deref(), Some("11506-3"));
    assert_eq!(oru.get("OBX-2").as_deref(), Some("ED"));
    assert_eq!(oru.get("OBX-5-5").as_deref(), Some(pdf.as_str()));

    // And back: the document survives HL7 v2 -> FHIR.
    let back = convert::hl7_to_fhir(&mdm, &Default::default()).unwrap();
    let doc = back["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "DocumentReference")
        .unwrap();
    assert_eq!(doc["resource"]["content"][0]["attachment"]["data"], pdf.as_str());
    assert_eq!(doc["resource"]["content"][0]["attachment"]["contentType"], "application/pdf");
}

#[test]
fn an_attachment_url_outside_the_input_becomes_a_reference_pointer() {
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "identifier": [{"value": "1"}], "name": [{"family": "X"}]}},
        {"resource": {"resourceType": "DocumentReference", "id": "d1", "status": "current", "date": "2024-05-02T10:00:00Z",
            "subject": {"reference": "urn:uuid:p"},
            "content": [{"attachment": {"contentType": "application/pdf", "url": "https://elsewhere.example/doc.pdf"}}]}}]});
    let msg = fhir_to_hl7(&bundle, TargetMessage::MdmT02, &Default::default()).unwrap();
    assert_valid(&msg, "MDM with RP");
    assert_eq!(msg.get("OBX-2").as_deref(), Some("RP"));
    assert_eq!(msg.get("OBX-5-1").as_deref(), Some("https://elsewhere.example/doc.pdf"));
    assert_eq!(msg.get("OBX-5-4").as_deref(), Some("pdf"));
}

#[test]
fn a_patient_without_a_name_is_an_error_naming_the_field() {
    let bundle = json!({"resourceType": "Patient", "identifier": [{"value": "1"}], "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}});
    let err = fhir_to_hl7(&bundle, TargetMessage::AdtA08, &Default::default()).unwrap_err().to_string();
    assert_eq!(err, "required Patient.name (PID-5 is required) is missing");
}

#[test]
fn attachment_data_that_is_not_base64_is_an_error_naming_the_path() {
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "identifier": [{"value": "1"}], "name": [{"family": "X"}]}},
        {"resource": {"resourceType": "DocumentReference", "id": "d1", "status": "current", "date": "2024-05-02T10:00:00Z",
            "subject": {"reference": "urn:uuid:p"},
            "content": [{"attachment": {"contentType": "text/plain", "data": "not base64!"}}]}}]});
    let err = fhir_to_hl7(&bundle, TargetMessage::MdmT02, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("DocumentReference.content[0].attachment.data"), "{err}");
}

/// `glucose_bundle` with one element of one resource replaced.
fn glucose_with(entry: usize, pointer: &str, value: Value) -> Value {
    let mut bundle = glucose_bundle();
    *bundle.pointer_mut(&format!("/entry/{entry}/resource{pointer}")).unwrap() = value;
    bundle
}

#[test]
fn issue6_impossible_fhir_dates_are_errors_naming_the_element_not_a_wrong_dtm() {
    // Entry 2 is the glucose Observation, entry 0 the Patient.
    for (entry, pointer, value, path, why) in [
        (2, "/effectiveDateTime", "2024-13-45", "Observation.effectiveDateTime at Bundle.entry[2]", "month 13"),
        (
            2,
            "/effectiveDateTime",
            "2023-02-29T08:30:00+02:00",
            "Observation.effectiveDateTime at Bundle.entry[2]",
            "not a leap year",
        ),
        (
            2,
            "/effectiveDateTime",
            "2024-05-01T25:30:00+02:00",
            "Observation.effectiveDateTime at Bundle.entry[2]",
            "out of range",
        ),
        (
            2,
            "/effectiveDateTime",
            "2024-05-01T08:30:00",
            "Observation.effectiveDateTime at Bundle.entry[2]",
            "time zone",
        ),
        (0, "/birthDate", "1971-02-30", "Patient.birthDate at Bundle.entry[0]", "day 30 does not exist in month 02"),
        (0, "/birthDate", "1971-02-03T10:00:00Z", "Patient.birthDate at Bundle.entry[0]", "a date has no time"),
    ] {
        let bundle = glucose_with(entry, pointer, json!(value));
        let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default())
            .map(|m| String::from_utf8_lossy(m.as_bytes()).replace('\r', "\n"))
            .expect_err(value);
        assert!(matches!(err, convert::ConvertError::Invalid { .. }), "{value}: {err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("invalid {path}: ")), "{value}: {text}");
        assert!(text.contains(why), "{value}: {text}");
    }
    // Elsewhere: an issued instant without a time, a component's value, a period's end.
    let mut bundle = glucose_bundle();
    bundle["entry"][2]["resource"]["issued"] = json!("2024-05-01");
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.issued at Bundle.entry[2]: an instant needs"), "{err}");
    let mut bundle = glucose_bundle();
    bundle["entry"][4]["resource"]["component"] =
        json!([{"code": {"text": "served"}, "valueDateTime": "2024-04-31T07:00:00Z"}]);
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.component[0].valueDateTime at Bundle.entry[4]: day 31"), "{err}");
    let mut bundle = patient_bundle();
    let appointment =
        bundle["entry"].as_array_mut().unwrap().iter_mut().find(|e| e["resource"]["resourceType"] == "Appointment");
    appointment.unwrap()["resource"]["end"] = json!("2024-06-10T09:30:00+15:00");
    let err = fhir_to_hl7(&bundle, TargetMessage::SiuS12, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("Appointment.end at Bundle.entry[") && err.contains("time zone is out of range"), "{err}");
    // Valid edge cases still convert, precision and offset kept.
    let msg =
        fhir_to_hl7(&glucose_with(0, "/birthDate", json!("2024-02-29")), TargetMessage::OruR01, &Default::default())
            .unwrap();
    assert_eq!(msg.get("PID-7").as_deref(), Some("20240229"));
    let bundle = glucose_with(2, "/effectiveDateTime", json!("2024-05-01T08:30:00.5-14:00"));
    let msg = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_eq!(msg.get("OBX(1)-14").as_deref(), Some("20240501083000.5-1400"));
}

#[test]
fn issue6_an_observation_value_type_with_no_v2_mapping_is_an_error_not_an_empty_obx() {
    // Before, OBX-2 and OBX-5 were left empty: the result was lost silently.
    let sampled = json!({"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2 3"});
    let mut bundle = glucose_bundle();
    bundle["entry"][4]["resource"].as_object_mut().unwrap().remove("valueString");
    bundle["entry"][4]["resource"]["valueSampledData"] = sampled.clone();
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err();
    assert!(matches!(err, convert::ConvertError::Invalid { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("invalid Observation.valueSampledData at Bundle.entry[4]: "), "{text}");
    assert!(text.contains("SampledData has no HL7 v2 mapping"), "{text}");
    let mut bundle = glucose_bundle();
    bundle["entry"][2]["resource"]["component"] = json!([{"code": {"text": "trace"}, "valueSampledData": sampled}]);
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.component[0].valueSampledData at Bundle.entry[2]: "), "{err}");
    // A mapped type whose JSON is not that type's form: named too.
    let bundle = glucose_with(4, "/valueString", json!(42));
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.valueString at Bundle.entry[4]: not a valid FHIR string"), "{err}");
    // A component without a value (dataAbsentReason) is still an OBX without one.
    let mut bundle = glucose_bundle();
    bundle["entry"][2]["resource"]["component"] =
        json!([{"code": {"text": "trace"}, "dataAbsentReason": {"text": "lost"}}]);
    let msg = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_valid(&msg, "component without a value");
}

#[test]
fn issue6_an_impossible_value_time_is_an_error_not_a_tm() {
    let mut bundle = glucose_bundle();
    bundle["entry"][4]["resource"].as_object_mut().unwrap().remove("valueString");
    bundle["entry"][4]["resource"]["valueTime"] = json!("25:99");
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.valueTime at Bundle.entry[4]: the time must be hh:mm:ss"), "{err}");
    bundle["entry"][4]["resource"]["valueTime"] = json!("07:15:30.25");
    let msg = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_eq!(msg.get("OBX(3)-2").as_deref(), Some("TM"));
    assert_eq!(msg.get("OBX(3)-5").as_deref(), Some("071530.25"));
}

#[test]
fn issue6_a_quantity_value_that_is_not_a_number_is_an_error_not_an_nm_the_receiver_rejects() {
    let bundle = glucose_with(3, "/valueQuantity/value", json!("about 1850"));
    let err = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap_err().to_string();
    assert!(err.starts_with("invalid Observation.valueQuantity.value at Bundle.entry[3]: not a number"), "{err}");
    // Number text is still taken as written (precision kept).
    let msg = fhir_to_hl7(
        &glucose_with(3, "/valueQuantity/value", json!("1850.50")),
        TargetMessage::OruR01,
        &Default::default(),
    )
    .unwrap();
    assert_valid(&msg, "number text");
    assert_eq!(msg.get("OBX(2)-5").as_deref(), Some("1850.50"));
}

#[test]
fn issue6_crlf_and_cr_line_ends_in_a_string_value_become_tx_lines_not_escaped_crs() {
    let bundle = glucose_with(4, "/valueString", json!("a|b^c~d\\e&f\r\nsecond\rthird"));
    let msg = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_valid(&msg, "CRLF text");
    let text = String::from_utf8_lossy(msg.as_bytes()).into_owned();
    assert!(!text.contains("\\X0D\\"), "{text}");
    assert_eq!(msg.get("OBX(3)-2").as_deref(), Some("TX"));
    assert_eq!(msg.get("OBX(3)-5(1)").as_deref(), Some("a|b^c~d\\e&f"), "delimiters escaped and read back");
    assert_eq!(msg.get("OBX(3)-5(2)").as_deref(), Some("second"));
    assert_eq!(msg.get("OBX(3)-5(3)").as_deref(), Some("third"));
    assert_eq!(msg.segments_named("OBX").count(), 3, "no segment split");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn patient_bundle() -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p",
            "meta": {"lastUpdated": "2024-06-01T12:00:00Z"},
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:oid:1.2.3", "value": "9"}],
            "name": [{"family": "O'Hara", "given": ["Seán"]}], "gender": "male", "birthDate": "1960-12-24",
            "telecom": [{"system": "phone", "value": "555-0100", "use": "home"},
                        {"system": "email", "value": "sean@example.org"}],
            "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
            "contact": [{"name": {"family": "O'Hara", "given": ["Mary"]},
                         "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}]}]}},
        {"fullUrl": "urn:uuid:pr", "resource": {"resourceType": "Practitioner", "id": "pr",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}],
            "name": [{"family": "House", "given": ["Greg"]}]}},
        {"resource": {"resourceType": "Appointment", "status": "booked",
            "identifier": [{"system": "urn:oid:1.2.3.4", "value": "A-1"}],
            "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "ROUTINE"}]},
            "start": "2024-06-10T09:00:00+02:00", "end": "2024-06-10T09:30:00+02:00", "minutesDuration": 30,
            "participant": [{"actor": {"reference": "urn:uuid:p"}, "status": "accepted"},
                            {"actor": {"reference": "urn:uuid:pr"}, "status": "accepted"}]}},
        {"resource": {"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313782", "display": "Acetaminophen 325 MG"}]},
            "subject": {"reference": "urn:uuid:p"}, "effectiveDateTime": "2024-06-10T10:00:00+02:00",
            "performer": [{"actor": {"reference": "urn:uuid:pr"}}],
            "dosage": {"route": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0162", "code": "PO"}]},
                       "dose": {"value": 650, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}}}
    ]})
}

#[test]
fn a_patient_becomes_adt_a04_and_a08() {
    for (target, event) in [(TargetMessage::AdtA04, "A04"), (TargetMessage::AdtA08, "A08")] {
        let msg = fhir_to_hl7(&patient_bundle(), target, &Default::default()).unwrap();
        assert_valid(&msg, event);
        assert_eq!(msg.get("MSH-9-2").as_deref(), Some(event));
        assert_eq!(msg.get("EVN-1").as_deref(), Some(event));
        assert_eq!(msg.get("PID-5-1").as_deref(), Some("O'Hara"));
        assert_eq!(msg.get("PID-13-1").as_deref(), Some("555-0100"));
        assert_eq!(msg.get("PID-13(2)-4").as_deref(), Some("sean@example.org"));
        assert_eq!(msg.get("PID-11-3").as_deref(), Some("Springfield"));
        assert_eq!(msg.get("NK1-2-2").as_deref(), Some("Mary"));
        assert_eq!(msg.get("PV1-2").as_deref(), Some("U"), "no Encounter: class unknown");
    }
}

#[test]
fn an_appointment_becomes_siu_s12() {
    let msg = fhir_to_hl7(&patient_bundle(), TargetMessage::SiuS12, &Default::default()).unwrap();
    assert_valid(&msg, "SIU^S12");
    assert_eq!(msg.get("SCH-2").as_deref(), Some("A-1"));
    assert_eq!(msg.get("SCH-25").as_deref(), Some("Booked"));
    assert_eq!(msg.get("TQ1-7").as_deref(), Some("20240610090000+0200"));
    assert_eq!(msg.get("AIP-3-2").as_deref(), Some("House"));
    assert_eq!(msg.get("AIP-3-1").as_deref(), Some("1234567890"));
}

#[test]
fn a_medication_administration_becomes_ras_o17() {
    let msg = fhir_to_hl7(&patient_bundle(), TargetMessage::RasO17, &Default::default()).unwrap();
    assert_valid(&msg, "RAS^O17");
    assert_eq!(msg.get("RXA-3").as_deref(), Some("20240610100000+0200"));
    assert_eq!(msg.get("RXA-5-1").as_deref(), Some("313782"));
    assert_eq!(msg.get("RXA-5-3").as_deref(), Some("RXNORM"));
    assert_eq!(msg.get("RXA-6").as_deref(), Some("650"));
    assert_eq!(msg.get("RXA-7").as_deref(), Some("mg"));
    assert_eq!(msg.get("RXA-10-2").as_deref(), Some("House"));
    assert_eq!(msg.get("RXA-20").as_deref(), Some("CP"));
    assert_eq!(msg.get("RXR-1").as_deref(), Some("PO"));
}

#[test]
fn a_peer_mllp_listener_accepts_every_generated_message() {
    let Some(peers) = testkit::peers_or_skip("convert::mllp_peer") else { return };
    let _ = peers;
    let port = testkit::free_port();
    let script = testkit::shared_dir().join("peers").join("mllp-peer-server.js");
    let _peer = testkit::PeerProcess::spawn("node", &[script.display().to_string(), port.to_string()], port)
        .expect("start the MLLP peer");
    let mut messages = vec![
        ("Synthea ORU", fhir_to_hl7(&synthea(), TargetMessage::OruR01, &Default::default()).unwrap()),
        ("glucose ORU", fhir_to_hl7(&glucose_bundle(), TargetMessage::OruR01, &Default::default()).unwrap()),
    ];
    for (what, target) in [
        ("ADT^A04", TargetMessage::AdtA04),
        ("ADT^A08", TargetMessage::AdtA08),
        ("SIU^S12", TargetMessage::SiuS12),
        ("RAS^O17", TargetMessage::RasO17),
    ] {
        messages.push((what, fhir_to_hl7(&patient_bundle(), target, &Default::default()).unwrap()));
    }
    for (what, msg) in &messages {
        let ack = mllp_exchange(port, msg);
        assert_eq!(ack_code(&ack), "AA", "{what}: {ack}");
        let control = msg.control_id().map(|c| c.into_owned());
        let acked = Message::parse(ack.as_bytes()).unwrap().get("MSA-2").map(|c| c.into_owned());
        assert_eq!(acked, control, "{what}: the ACK answers this message");
    }
}
