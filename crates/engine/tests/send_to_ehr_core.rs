//! The pure core of `$send-to-ehr`: request validation (every invalid case
//! with its status and diagnostics), the created resources, the message for
//! the EHR (decoded OBX-5 equals the submitted bytes, hl7v2 validation), and
//! the tracking model.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use engine::flows::send_to_ehr::build::{self, EhrMessage};
use engine::flows::send_to_ehr::config::{EncounterRule, OutputFormat, SendToEhrConfig};
use engine::flows::send_to_ehr::request::{Sender, content_matches, sniff};
use engine::flows::send_to_ehr::tracking::{self, TrackingRecord, TrackingStatus};
use engine::flows::send_to_ehr::{Rejection, Resolved, SendToEhrRequest, validate_request};
use serde_json::{Value, json};

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0];
const TX: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 10, 30, 0).single().expect("valid time")
}

fn params(list: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": list})
}

fn valid() -> Vec<Value> {
    vec![
        json!({"name": "subject", "valueReference": {"reference": "Patient/p1"}}),
        json!({"name": "payload", "valueString": b64(PDF)}),
    ]
}

fn with(extra: Value) -> Value {
    let mut list = valid();
    let name = extra["name"].clone();
    list.retain(|p| p["name"] != name);
    list.push(extra);
    params(Value::Array(list))
}

fn without(name: &str) -> Value {
    let mut list = valid();
    list.retain(|p| p["name"] != name);
    params(Value::Array(list))
}

fn refuse(body: &Value) -> Rejection {
    validate_request(body, &SendToEhrConfig::default(), Some("doc-platform")).expect_err("must be refused")
}

#[track_caller]
fn assert_refused(body: Value, status: u16, diagnostics: &str) {
    let r = refuse(&body);
    assert_eq!(r.status, status, "{:?}", r.diagnostics());
    assert_eq!(r.diagnostics(), [diagnostics]);
    let outcome = r.to_operation_outcome();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["diagnostics"], diagnostics);
    assert_eq!(outcome["issue"][0]["severity"], "error");
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p1",
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1800175123456"},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": "urn:oid:1.2.3.4", "value": "MRN77"}
        ],
        "name": [{"use": "usual", "family": "Martin", "given": ["Zoé"]}, {"use": "official", "family": "Van der Berg", "given": ["Anne_Marie"]}],
        "gender": "female", "birthDate": "1980-04-02"
    })
}

fn encounter() -> Value {
    json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": "Patient/p1"}})
}

#[test]
fn a_minimal_request_gets_every_default() {
    let request = validate_request(&params(Value::Array(valid())), &SendToEhrConfig::default(), Some("doc-platform"))
        .expect("valid");
    assert_eq!(
        request,
        SendToEhrRequest {
            patient_id: "p1".into(),
            encounter_id: None,
            content_type: "application/pdf".into(),
            document_type: "11488-4".into(),
            title: None,
            sender: Sender::Application("doc-platform".into()),
            payload: PDF.to_vec(),
        }
    );
    let request = validate_request(&params(Value::Array(valid())), &SendToEhrConfig::default(), None).expect("valid");
    assert_eq!(request.sender, Sender::Application("plexus".into()), "without a caller, the configured default sender");
}

#[test]
fn a_full_request_is_read_as_given() {
    let body = params(json!([
        {"name": "subject", "valueReference": {"reference": "Patient/p1"}},
        {"name": "context", "valueReference": {"reference": "Encounter/e1"}},
        {"name": "content-type", "valueCode": "image/png"},
        {"name": "document-type", "valueCode": "18842-5"},
        {"name": "document-title", "valueString": "  Discharge letter  "},
        {"name": "sender-identifier", "valueString": "10003456789"},
        // Line-wrapped base64 (MIME style) is accepted.
        {"name": "payload", "valueString": format!("{}\r\n{}", &b64(PNG)[..8], &b64(PNG)[8..])},
    ]));
    let request = validate_request(&body, &SendToEhrConfig::default(), None).expect("valid");
    assert_eq!(request.encounter_id.as_deref(), Some("e1"));
    assert_eq!(request.content_type, "image/png");
    assert_eq!(request.document_type, "18842-5");
    assert_eq!(request.title.as_deref(), Some("Discharge letter"));
    assert_eq!(request.sender, Sender::Rpps("10003456789".into()));
    assert_eq!(request.payload, PNG);
}

#[test]
fn malformed_bodies_are_400() {
    assert_refused(json!([1, 2]), 400, "request body: expected a FHIR Parameters resource (a JSON object)");
    assert_refused(
        json!({"resourceType": "Bundle"}),
        400,
        "request body: expected a FHIR Parameters resource, got Bundle",
    );
    assert_refused(
        json!({"parameter": []}),
        400,
        "request body: expected a FHIR Parameters resource (no resourceType)",
    );
    assert_refused(
        json!({"resourceType": "Parameters", "parameter": {}}),
        400,
        "Parameters.parameter: expected an array",
    );
}

#[test]
fn malformed_parameters_are_400_and_name_the_parameter() {
    assert_refused(
        with(json!({"name": "subject", "valueString": "Patient/p1"})),
        400,
        "subject: expected valueReference, got valueString",
    );
    assert_refused(
        with(json!({"name": "payload", "valueString": "%%%not base64%%%"})),
        400,
        "payload: not valid base64 (Invalid symbol 37, offset 0.)",
    );
    assert_refused(with(json!({"name": "payload", "valueString": 42})), 400, "payload: valueString must be a string");
    assert_refused(
        with(json!({"name": "document_type", "valueCode": "18842-5"})),
        400,
        "document_type: unknown parameter (expected one of subject, context, content-type, document-type, document-title, sender-identifier, payload)",
    );
    let mut twice = valid();
    twice.push(json!({"name": "subject", "valueReference": {"reference": "Patient/p2"}}));
    assert_refused(params(Value::Array(twice)), 400, "subject: given more than once");
    assert_refused(
        with(json!({"name": "context", "valueReference": {"display": "visit"}})),
        400,
        "context: valueReference has no reference (expected Encounter/{id})",
    );
}

#[test]
fn business_rule_violations_are_422_and_name_the_parameter() {
    assert_refused(without("subject"), 422, "subject: required parameter is missing (a reference to Patient/{id})");
    assert_refused(without("payload"), 422, "payload: required parameter is missing (the document, base64)");
    assert_refused(
        with(json!({"name": "subject", "valueReference": {"reference": "Practitioner/p1"}})),
        422,
        "subject: expected a reference to Patient/{id}, got `Practitioner/p1`",
    );
    assert_refused(
        with(json!({"name": "subject", "valueReference": {"reference": "Patient/a b"}})),
        422,
        "subject: `a b` is not a valid Patient id",
    );
    assert_refused(
        with(json!({"name": "context", "valueReference": {"reference": "Patient/p1"}})),
        422,
        "context: expected a reference to Encounter/{id}, got `Patient/p1`",
    );
    assert_refused(
        with(json!({"name": "document-type", "valueCode": "99999-9"})),
        422,
        "document-type: `99999-9` is not an accepted LOINC document type (accepted: 11488-4, 34133-9, 18842-5, 11506-3, 57133-1, 34117-2, 28570-0, 11502-2, 18748-4, 59284-0, 57833-6)",
    );
    assert_refused(
        with(json!({"name": "content-type", "valueCode": "application/msword"})),
        422,
        "content-type: `application/msword` is not accepted (accepted: application/pdf, image/jpeg, image/png, text/plain)",
    );
    assert_refused(
        with(json!({"name": "sender-identifier", "valueString": "123456789"})),
        422,
        "sender-identifier: an RPPS number has 11 digits, got 9",
    );
    assert_refused(
        with(json!({"name": "sender-identifier", "valueString": "100034567890"})),
        422,
        "sender-identifier: an RPPS number has 11 digits, got 12",
    );
    assert_refused(
        with(json!({"name": "document-title", "valueString": "   "})),
        422,
        "document-title: is empty (omit it to use the default title)",
    );
    assert_refused(with(json!({"name": "payload", "valueString": ""})), 422, "payload: is empty");
}

#[test]
fn content_type_must_match_the_payload_bytes() {
    assert_refused(
        with(json!({"name": "payload", "valueString": b64(PNG)})),
        422,
        "content-type: the payload's bytes are not application/pdf (they look like image/png)",
    );
    let mut list = valid();
    list.push(json!({"name": "content-type", "valueCode": "image/jpeg"}));
    assert_refused(
        params(Value::Array(list)),
        422,
        "content-type: the payload's bytes are not image/jpeg (they look like application/pdf)",
    );
    let mut list = valid();
    list.retain(|p| p["name"] != "payload");
    list.push(json!({"name": "content-type", "valueCode": "text/plain"}));
    list.push(json!({"name": "payload", "valueString": b64(b"abc\0def")}));
    assert_refused(
        params(Value::Array(list)),
        422,
        "content-type: the payload's bytes are not text/plain (they match no accepted type)",
    );
}

#[test]
fn sniffing_recognises_each_signature() {
    assert_eq!(sniff(PDF), Some("application/pdf"));
    assert_eq!(sniff(PNG), Some("image/png"));
    assert_eq!(sniff(JPEG), Some("image/jpeg"));
    assert_eq!(sniff("Compte rendu: tout va bien.".as_bytes()), Some("text/plain"));
    assert_eq!(sniff(&[0xC3, 0x28]), None, "invalid UTF-8 is not text");
    // A text document may start like a PDF; it is still valid text.
    assert!(content_matches("text/plain", b"%PDF- is how a PDF begins"));
    assert!(!content_matches("application/pdf", b"%PD"));
}

#[test]
fn payload_over_the_limit_is_422_before_and_after_decoding() {
    let config = SendToEhrConfig { max_payload: engine::config::ByteSize(40), ..SendToEhrConfig::default() };
    let mut big = PDF.to_vec();
    big.resize(400, b' ');
    let r = validate_request(&with(json!({"name": "payload", "valueString": b64(&big)})), &config, None)
        .expect_err("too big");
    assert_eq!(r.status, 422);
    assert_eq!(r.diagnostics(), ["payload: about 400 bytes, over the limit of 40 bytes"]);
    // Just over the limit: decoded, then refused on the exact size.
    big.truncate(41);
    let r = validate_request(&with(json!({"name": "payload", "valueString": b64(&big)})), &config, None)
        .expect_err("too big");
    assert_eq!(r.diagnostics(), ["payload: 41 bytes, over the limit of 40 bytes"]);
    big.truncate(40);
    validate_request(&with(json!({"name": "payload", "valueString": b64(&big)})), &config, None).expect("at the limit");
}

#[test]
fn encounter_required_by_configuration() {
    let config = SendToEhrConfig { encounter: EncounterRule::Required, ..SendToEhrConfig::default() };
    let r = validate_request(&params(Value::Array(valid())), &config, None).expect_err("context required");
    assert_eq!(
        (r.status, r.diagnostics()),
        (422, vec!["context: required parameter is missing (a reference to Encounter/{id})"])
    );
}

#[test]
fn every_problem_is_reported_and_malformed_wins() {
    let body = params(json!([
        {"name": "subject", "valueReference": {"reference": "Group/g"}},
        {"name": "document-type", "valueCode": "1-1"},
        {"name": "payload", "valueString": "!!"},
    ]));
    let r = refuse(&body);
    assert_eq!(r.status, 400);
    assert_eq!(r.problems.len(), 3, "{:?}", r.diagnostics());
    let expressions: Vec<Value> = r.to_operation_outcome()["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["expression"][0].clone())
        .collect();
    assert_eq!(
        expressions,
        [
            "Parameters.parameter.where(name='subject')",
            "Parameters.parameter.where(name='document-type')",
            "Parameters.parameter.where(name='payload')"
        ]
    );
}

fn built(format: OutputFormat, with_encounter: bool) -> (SendToEhrRequest, build::Outputs, EhrMessage) {
    let request = SendToEhrRequest {
        patient_id: "p1".into(),
        encounter_id: with_encounter.then(|| "e1".into()),
        content_type: "application/pdf".into(),
        document_type: "11488-4".into(),
        title: None,
        sender: Sender::Rpps("10003456789".into()),
        payload: PDF.to_vec(),
    };
    let resolved = Resolved { patient: patient(), encounter: with_encounter.then(encounter) };
    let outputs = build::outputs(&request, &resolved, "https://plexus.example/fhir/", TX, now());
    let message = build::ehr_message(&outputs, &resolved, format, TX, now(), &Default::default()).expect("converts");
    (request, outputs, message)
}

#[test]
fn default_title_is_last_first_birthdate_type_identifier() {
    assert_eq!(build::default_title(&patient(), "11488-4"), "Van-der-Berg_Anne-Marie_19800402_11488-4_MRN77");
    let bare = json!({"resourceType": "Patient", "id": "p9"});
    assert_eq!(build::default_title(&bare, "18842-5"), "___18842-5_p9", "absent parts stay empty, positions kept");
}

#[test]
fn outputs_are_linked_and_deterministic() {
    let (_, outputs, _) = built(OutputFormat::OruR01, true);
    assert_eq!(outputs, built(OutputFormat::OruR01, true).1, "same request, id and time give the same resources");
    assert_eq!(
        outputs.binary,
        json!({"resourceType": "Binary", "id": TX, "contentType": "application/pdf", "data": b64(PDF)})
    );
    let doc = &outputs.document_reference;
    assert_eq!(
        doc["type"]["coding"][0],
        json!({"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"})
    );
    assert_eq!(doc["subject"]["reference"], "Patient/p1");
    assert_eq!(doc["context"]["encounter"][0]["reference"], "Encounter/e1");
    assert_eq!(doc["content"][0]["attachment"]["url"], format!("https://plexus.example/fhir/Binary/{TX}"), "absolute");
    assert_eq!(doc["content"][0]["attachment"]["size"], PDF.len());
    assert_eq!(doc["content"][0]["attachment"]["title"], "Van-der-Berg_Anne-Marie_19800402_11488-4_MRN77");
    assert_eq!(doc["author"][0]["identifier"], json!({"system": build::RPPS_SYSTEM, "value": "10003456789"}));
    assert_eq!(doc["date"], "2026-11-21T10:30:00Z");
    let cr = &outputs.communication_request;
    assert_eq!(cr["status"], "active");
    assert_eq!(cr["payload"][0]["contentReference"]["reference"], format!("DocumentReference/{TX}"));
    assert_eq!(cr["encounter"]["reference"], "Encounter/e1");
    assert_eq!(cr["identifier"][0]["value"], format!("urn:uuid:{TX}"));
}

fn check_hl7(message: &EhrMessage, kind: &str) -> hl7v2::Message {
    let EhrMessage::Hl7(msg) = message else { panic!("expected HL7 v2") };
    // Round trip through the bytes that go on the wire.
    let parsed = hl7v2::Message::parse(message.to_bytes()).expect("parses");
    assert_eq!(parsed.get("MSH-9-1").as_deref(), Some(kind));
    let issues = hl7v2::validate::validate(&parsed);
    assert!(issues.iter().all(|i| i.severity < hl7v2::Severity::Error), "{issues:?}");
    assert_eq!(parsed.get("PID-3-1").as_deref(), Some("1800175123456"));
    assert_eq!(parsed.get("PID-3(2)-1").as_deref(), Some("MRN77"));
    assert_eq!(parsed.get("PID-7").as_deref(), Some("19800402"));
    assert_eq!(parsed.get("MSH-10").as_deref(), Some("0190a1b2c3d47e5f8a9b"));
    assert_eq!(parsed.get("OBX-2").as_deref(), Some("ED"));
    assert_eq!(parsed.get("OBX-3-1").as_deref(), Some("11488-4"));
    assert_eq!(parsed.get("OBX-3-2").as_deref(), Some("Van-der-Berg_Anne-Marie_19800402_11488-4_MRN77"));
    assert_eq!(parsed.get("OBX-5-3").as_deref(), Some("pdf"));
    assert_eq!(parsed.get("OBX-5-4").as_deref(), Some("Base64"));
    let data = parsed.get("OBX-5-5").expect("OBX-5-5");
    let decoded = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).expect("base64");
    assert_eq!(decoded, PDF, "OBX-5 decodes to exactly the submitted bytes");
    assert_eq!(msg.encode(), message.to_bytes());
    parsed
}

#[test]
fn oru_r01_carries_the_document_in_an_ed_obx() {
    let (_, _, message) = built(OutputFormat::OruR01, true);
    let parsed = check_hl7(&message, "ORU");
    assert_eq!(parsed.get("MSH-9-2").as_deref(), Some("R01"));
    assert_eq!(parsed.get("OBR-4-1").as_deref(), Some("11488-4"));
}

#[test]
fn mdm_t02_carries_the_document_and_title_in_txa() {
    let (_, _, message) = built(OutputFormat::MdmT02, true);
    let parsed = check_hl7(&message, "MDM");
    assert_eq!(parsed.get("MSH-9-2").as_deref(), Some("T02"));
    assert_eq!(parsed.get("TXA-2-1").as_deref(), Some("11488-4"));
    assert_eq!(parsed.get("TXA-16").as_deref(), Some("Van-der-Berg_Anne-Marie_19800402_11488-4_MRN77"));
    assert_eq!(parsed.get("TXA-12-1").as_deref(), Some(format!("urn:uuid:{TX}").as_str()));
}

#[test]
fn a_title_with_hl7_delimiters_is_escaped_not_split() {
    let request = SendToEhrRequest {
        patient_id: "p1".into(),
        encounter_id: None,
        content_type: "application/pdf".into(),
        document_type: "11488-4".into(),
        title: Some("Lettre|sortie^J&K~1".into()),
        sender: Sender::Application("portal".into()),
        payload: PDF.to_vec(),
    };
    let resolved = Resolved { patient: patient(), encounter: None };
    let outputs = build::outputs(&request, &resolved, "https://plexus.example/fhir/", TX, now());
    let message = build::ehr_message(&outputs, &resolved, OutputFormat::MdmT02, TX, now(), &Default::default())
        .expect("converts");
    let parsed = hl7v2::Message::parse(message.to_bytes()).expect("parses");
    assert_eq!(parsed.get("TXA-16").as_deref(), Some("Lettre|sortie^J&K~1"));
    assert_eq!(parsed.get("OBX-3-2").as_deref(), Some("Lettre|sortie^J&K~1"));
}

#[test]
fn json_output_is_the_collection_bundle() {
    let (_, outputs, message) = built(OutputFormat::Json, false);
    let EhrMessage::Json(bundle) = &message else { panic!("expected JSON") };
    assert_eq!(bundle["type"], "collection");
    let types: Vec<&str> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert_eq!(types, ["Patient", "DocumentReference", "Binary"]);
    assert_eq!(bundle["entry"][1]["resource"], outputs.document_reference);
    assert_eq!(
        bundle["entry"][2]["fullUrl"], outputs.document_reference["content"][0]["attachment"]["url"],
        "the url resolves in the Bundle"
    );
    assert_eq!(message.media_type(), "application/fhir+json");
}

/// What the engine stores reads back to the same resources, and the
/// worker's conversion of it equals the direct one (same MSH-7 and MSH-10:
/// a retried delivery sends the same bytes).
#[test]
fn a_stored_submission_converts_like_the_direct_build() {
    for format in [OutputFormat::OruR01, OutputFormat::MdmT02, OutputFormat::Json] {
        let (request, outputs, direct) = built(format, true);
        let resolved = Resolved { patient: patient(), encounter: Some(encounter()) };
        let stored = serde_json::to_vec(&build::submission_bundle(&outputs, &resolved)).expect("JSON");
        let read = build::read_submission(&stored).expect("reads back");
        assert_eq!(read.transaction_id, TX);
        assert_eq!(read.submitted, now());
        assert_eq!(read.outputs, outputs);
        assert_eq!(read.resolved, resolved);
        let from_stored = build::ehr_message_from_stored(&stored, format, &Default::default()).expect("converts");
        assert_eq!(from_stored.to_bytes(), direct.to_bytes(), "{format:?}");
        assert_eq!(request.payload, PDF);
    }
    let broken =
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection", "entry": []})).expect("JSON");
    assert_eq!(build::read_submission(&broken).expect_err("nothing in it"), "the stored submission has no Patient");
    assert!(build::read_submission(b"%PDF").expect_err("not JSON").starts_with("the stored submission is not JSON"));
}

#[test]
fn tracking_goes_preparation_in_progress_completed() {
    let mut record = TrackingRecord::new(TX, "p1", now());
    assert_eq!(
        tracking::tracking_bundle(std::slice::from_ref(&record))["entry"][0]["resource"]["status"],
        "preparation"
    );
    record.advance(TrackingStatus::InProgress, now()).expect("to in-progress");
    record.advance(TrackingStatus::InProgress, now()).expect("retrying stays in-progress");
    let sent = now() + chrono::Duration::minutes(5);
    record.advance(TrackingStatus::Completed { sent }, sent).expect("to completed");
    let bundle = tracking::tracking_bundle(&[record.clone()]);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let communication = &bundle["entry"][0]["resource"];
    assert_eq!(communication["resourceType"], "Communication");
    assert_eq!(communication["status"], "completed");
    assert_eq!(communication["sent"], "2026-11-21T10:35:00Z");
    assert_eq!(communication["basedOn"][0]["reference"], format!("CommunicationRequest/{TX}"));
    assert_eq!(communication["payload"][0]["contentReference"]["reference"], format!("DocumentReference/{TX}"));
    let err = record.advance(TrackingStatus::InProgress, now()).expect_err("completed is final for delivery");
    assert_eq!(err.to_string(), "a completed submission cannot become in-progress");
}

#[test]
fn entered_in_error_carries_its_reason_and_is_final() {
    let mut record = TrackingRecord::new(TX, "p1", now());
    record
        .advance(TrackingStatus::EnteredInError { reason: "EHR refused: AR unknown patient".into() }, now())
        .expect("to error");
    let communication = record.to_communication();
    assert_eq!(communication["status"], "entered-in-error");
    assert_eq!(communication["statusReason"]["text"], "EHR refused: AR unknown patient");
    assert!(communication.get("sent").is_none());
    assert!(record.advance(TrackingStatus::Unknown, now()).is_err());
    let mut lost = TrackingRecord::new(TX, "p1", now());
    lost.advance(TrackingStatus::Unknown, now()).expect("to unknown");
    assert_eq!(lost.to_communication()["status"], "unknown");
}

#[test]
fn tracking_expires_after_the_retention() {
    let record = TrackingRecord::new(TX, "p1", now());
    let retention = SendToEhrConfig::default().tracking_retention.get();
    assert!(!record.is_expired(now() + chrono::Duration::days(60), retention));
    assert!(record.is_expired(now() + chrono::Duration::days(60) + chrono::Duration::seconds(1), retention));
    assert!(!record.is_expired(now(), Duration::MAX), "an enormous retention never expires");
}

#[test]
fn unknown_transaction_is_404_and_success_names_the_tracking_url() {
    let r = tracking::not_found("nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.diagnostics(), ["transaction-id: no submission nope (unknown, or older than the tracking retention)"]);
    assert_eq!(r.to_operation_outcome()["issue"][0]["code"], "not-found");
    let answer = tracking::success_parameters("https://plexus.example/fhir/", TX);
    assert_eq!(
        answer,
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "tracking-url", "valueUrl": format!("https://plexus.example/fhir/CommunicationRequest/$tracking?transaction-id={TX}")},
            {"name": "transaction-id", "valueString": TX},
        ]})
    );
}

/// Every resource the flow answers with or creates passes the FHIR R4
/// structure validator nobody here wrote (peer-backed; skipped without
/// PLEXUS_PEERS).
#[test]
fn created_and_answered_resources_validate_as_fhir_r4() {
    let Some(peers) = testkit::peers_or_skip("engine::send_to_ehr_core::fhir_validator") else { return };
    let (_, outputs, _) = built(OutputFormat::OruR01, true);
    let mut completed = TrackingRecord::new(TX, "p1", now());
    completed.advance(TrackingStatus::Completed { sent: now() }, now()).expect("completed");
    let mut failed = TrackingRecord::new(TX, "p1", now());
    failed.advance(TrackingStatus::EnteredInError { reason: "EHR refused".into() }, now()).expect("error");
    let resources = [
        ("binary", outputs.binary.clone()),
        ("document_reference", outputs.document_reference.clone()),
        (
            "stored_submission",
            build::submission_bundle(&outputs, &Resolved { patient: patient(), encounter: Some(encounter()) }),
        ),
        ("communication_request", outputs.communication_request.clone()),
        ("tracking_completed", tracking::tracking_bundle(&[completed])),
        ("tracking_error", tracking::tracking_bundle(&[failed])),
        ("success", tracking::success_parameters("https://plexus.example/fhir", TX)),
        ("refusal", refuse(&without("subject")).to_operation_outcome()),
        ("not_found", tracking::not_found(TX).to_operation_outcome()),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for (name, resource) in resources {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, resource.to_string()).expect("write");
        files.push(path);
    }
    let python = peers.join("venv").join("bin").join("python");
    let script = testkit::shared_dir().join("peers").join("validate-fhir.py");
    let out = std::process::Command::new(&python).arg(&script).args(&files).output().expect("run validate-fhir.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report.lines().filter(|l| l.starts_with("OK")).count(), files.len(), "{report}");
}
