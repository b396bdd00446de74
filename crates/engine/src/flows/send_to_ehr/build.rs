//! Building what a valid submission produces: the Binary, DocumentReference
//! and CommunicationRequest resources, the default title, and the message
//! for the EHR.
//!
//! Pure and deterministic: the transaction id and the time are passed in,
//! so the same request gives the same resources (and the same message) when
//! processing is retried. The three resources share the transaction id as
//! their id, so each can be found from the tracking id alone.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use convert::{ConvertError, FhirToHl7Options, TargetMessage};
use serde_json::{Value, json};

use super::config::{OutputFormat, SendToEhrConfig};
use super::request::{SendToEhrRequest, Sender};
use super::source::Resolved;

/// The OID of the French RPPS (national health professional directory),
/// the Identifier.system of an RPPS sender.
pub const RPPS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";

/// The Identifier.system of the transaction id (a UUID).
pub const TRANSACTION_ID_SYSTEM: &str = "urn:ietf:rfc:3986";

/// The resources a valid submission creates.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// The document's bytes (`Binary/{transaction_id}`).
    pub binary: Value,
    /// The document's metadata (`DocumentReference/{transaction_id}`).
    pub document_reference: Value,
    /// The request to deliver it (`CommunicationRequest/{transaction_id}`).
    pub communication_request: Value,
    /// The title used: the given one, or [`default_title`].
    pub title: String,
}

/// The default document title,
/// `last_first_birthdate_documenttype_identifier`: the patient's official
/// (else first) family and given name, birth date as `YYYYMMDD`, the LOINC
/// code, and the patient's MR identifier (else the first one, else the
/// resource id). An absent part stays empty so the positions keep their
/// meaning; `_`, `/`, `\` and whitespace inside a part become `-` so the
/// title splits back into its parts and is safe as a file name.
pub fn default_title(patient: &Value, document_type: &str) -> String {
    let names: Vec<&Value> = patient.get("name").and_then(Value::as_array).into_iter().flatten().collect();
    let name = names.iter().find(|n| n.get("use").and_then(Value::as_str) == Some("official")).or(names.first());
    let family = name.and_then(|n| n.get("family")).and_then(Value::as_str).unwrap_or("");
    let given = name.and_then(|n| n.pointer("/given/0")).and_then(Value::as_str).unwrap_or("");
    let birth: String =
        patient.get("birthDate").and_then(Value::as_str).unwrap_or("").chars().filter(char::is_ascii_digit).collect();
    let identifiers: Vec<&Value> = patient.get("identifier").and_then(Value::as_array).into_iter().flatten().collect();
    let identifier = identifiers
        .iter()
        .find(|i| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some("MR"))
        .or(identifiers.first())
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .or_else(|| patient.get("id").and_then(Value::as_str))
        .unwrap_or("");
    [family, given, birth.as_str(), document_type, identifier]
        .iter()
        .map(|part| title_part(part))
        .collect::<Vec<_>>()
        .join("_")
}

fn title_part(part: &str) -> String {
    part.trim()
        .chars()
        .map(|c| if c == '_' || c == '/' || c == '\\' || c.is_whitespace() || c.is_control() { '-' } else { c })
        .collect()
}

/// A FHIR instant for `now` (UTC, seconds).
pub fn fhir_instant(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The Binary, DocumentReference and CommunicationRequest for a valid,
/// resolved request. `fhir_base` is this server's public FHIR base
/// (`https://plexus.example/fhir`): the attachment's url is the Binary's
/// absolute URL under it ([`binary_url`]).
pub fn outputs(
    request: &SendToEhrRequest,
    resolved: &Resolved,
    fhir_base: &str,
    transaction_id: &str,
    now: DateTime<Utc>,
) -> Outputs {
    let when = fhir_instant(now);
    let title = request.title.clone().unwrap_or_else(|| default_title(&resolved.patient, &request.document_type));
    let data = base64::engine::general_purpose::STANDARD.encode(&request.payload);
    let patient_ref = json!({"reference": format!("Patient/{}", request.patient_id)});
    let encounter_ref = request.encounter_id.as_ref().map(|id| json!({"reference": format!("Encounter/{id}")}));
    let transaction_identifier =
        json!({"system": TRANSACTION_ID_SYSTEM, "value": format!("urn:uuid:{transaction_id}")});
    let sender = match &request.sender {
        Sender::Rpps(rpps) => json!({"identifier": {"system": RPPS_SYSTEM, "value": rpps}, "type": "Practitioner"}),
        Sender::Application(name) => json!({"display": name}),
    };

    let binary = json!({
        "resourceType": "Binary",
        "id": transaction_id,
        "contentType": request.content_type,
        "data": data,
    });

    let mut coding = json!({"system": "http://loinc.org", "code": request.document_type});
    if let Some(display) = SendToEhrConfig::document_type_display(&request.document_type) {
        coding["display"] = json!(display);
    }
    let mut document_reference = json!({
        "resourceType": "DocumentReference",
        "id": transaction_id,
        "masterIdentifier": transaction_identifier,
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [coding]},
        "subject": patient_ref,
        "date": when,
        "author": [sender],
        "description": title,
        "content": [{"attachment": {
            "contentType": request.content_type,
            "url": binary_url(fhir_base, transaction_id),
            "size": request.payload.len(),
            "title": title,
            "creation": when,
        }}],
    });
    if let Some(enc) = &encounter_ref {
        document_reference["context"] = json!({"encounter": [enc]});
    }

    let mut communication_request = json!({
        "resourceType": "CommunicationRequest",
        "id": transaction_id,
        "identifier": [transaction_identifier],
        "status": "active",
        "subject": patient_ref,
        "payload": [{"contentReference": {"reference": format!("DocumentReference/{transaction_id}"), "display": title}}],
        "authoredOn": when,
        "requester": sender,
    });
    if let Some(enc) = encounter_ref {
        communication_request["encounter"] = enc;
    }
    Outputs { binary, document_reference, communication_request, title }
}

/// What the EHR receives.
#[derive(Debug, Clone)]
pub enum EhrMessage {
    /// ORU^R01 or MDM^T02.
    Hl7(hl7v2::Message),
    /// The collection Bundle as JSON.
    Json(Value),
}

impl EhrMessage {
    /// The bytes to deliver (HL7 v2 segments end with CR).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            EhrMessage::Hl7(message) => message.encode(),
            // Serialising a Value cannot fail (string keys only).
            EhrMessage::Json(bundle) => serde_json::to_vec(bundle).unwrap_or_default(),
        }
    }

    /// The media type of [`EhrMessage::to_bytes`].
    pub fn media_type(&self) -> &'static str {
        match self {
            EhrMessage::Hl7(_) => "x-application/hl7-v2+er7",
            EhrMessage::Json(_) => "application/fhir+json",
        }
    }
}

/// Errors building the EHR message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The conversion refused the resources (for example a Patient without
    /// identifier or id).
    #[error("conversion to {target}: {source}")]
    Convert {
        /// The message type asked for.
        target: &'static str,
        /// Why.
        #[source]
        source: ConvertError,
    },
    /// Writing the title into the message failed.
    #[error("writing the title into {target}: {reason}")]
    Edit {
        /// The message type.
        target: &'static str,
        /// Why.
        reason: String,
    },
}

impl BuildError {
    /// Always permanent: the same resources fail the same way.
    pub fn class(&self) -> fhir::ErrorClass {
        fhir::ErrorClass::Permanent
    }
}

/// The DocumentReference's `Attachment.url`: the Binary's absolute URL,
/// `{fhir_base}/Binary/{transaction_id}`, also its `fullUrl` in every
/// Bundle the flow builds. Absolute because Attachment.url is a FHIR `url`
/// that validators want with a scheme (a relative `Binary/{id}` is refused
/// by fhir.resources, a `urn:uuid:` too).
pub fn binary_url(fhir_base: &str, transaction_id: &str) -> String {
    format!("{}/Binary/{transaction_id}", fhir_base.trim_end_matches('/'))
}

/// The collection Bundle the conversion reads: Patient first (it is the
/// message's patient), then the Encounter, DocumentReference and Binary
/// (whose `fullUrl` is the attachment's url, [`binary_url`], so the
/// conversion finds the document's bytes).
pub fn document_bundle(outputs: &Outputs, resolved: &Resolved) -> Value {
    let mut entries = vec![json!({"resource": resolved.patient})];
    if let Some(enc) = &resolved.encounter {
        entries.push(json!({"resource": enc}));
    }
    entries.push(json!({"resource": outputs.document_reference}));
    match outputs.document_reference.pointer("/content/0/attachment/url").and_then(Value::as_str) {
        Some(url) => entries.push(json!({"fullUrl": url, "resource": outputs.binary})),
        None => entries.push(json!({"resource": outputs.binary})),
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

/// What the engine stores for an accepted submission (the message's
/// content): [`document_bundle`] plus the CommunicationRequest, so the
/// delivery needs nothing but the stored message, and the created
/// resources are kept with it.
pub fn submission_bundle(outputs: &Outputs, resolved: &Resolved) -> Value {
    let mut bundle = document_bundle(outputs, resolved);
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.push(json!({"resource": outputs.communication_request}));
    }
    bundle
}

/// A stored submission read back: what [`ehr_message`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubmission {
    /// The transaction id (the resources' id).
    pub transaction_id: String,
    /// When it was accepted (the DocumentReference's date).
    pub submitted: DateTime<Utc>,
    /// The created resources.
    pub outputs: Outputs,
    /// The Patient and Encounter as resolved at submission.
    pub resolved: Resolved,
}

/// Reads a [`submission_bundle`] back. The error says which part is missing
/// (never quoting patient data); it is permanent: the stored bytes do not
/// change.
pub fn read_submission(bundle: &[u8]) -> Result<StoredSubmission, String> {
    let bundle: Value =
        serde_json::from_slice(bundle).map_err(|e| format!("the stored submission is not JSON ({e})"))?;
    let entries: Vec<&Value> =
        bundle.get("entry").and_then(Value::as_array).into_iter().flatten().filter_map(|e| e.get("resource")).collect();
    let one = |kind: &str| {
        entries.iter().copied().find(|r| r.get("resourceType").and_then(Value::as_str) == Some(kind)).cloned()
    };
    let missing = |kind: &str| format!("the stored submission has no {kind}");
    let patient = one("Patient").ok_or_else(|| missing("Patient"))?;
    let document_reference = one("DocumentReference").ok_or_else(|| missing("DocumentReference"))?;
    let binary = one("Binary").ok_or_else(|| missing("Binary"))?;
    let communication_request = one("CommunicationRequest").ok_or_else(|| missing("CommunicationRequest"))?;
    let transaction_id = binary.get("id").and_then(Value::as_str).ok_or_else(|| missing("Binary id"))?.to_string();
    let submitted = document_reference
        .get("date")
        .and_then(Value::as_str)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| missing("DocumentReference date"))?;
    let title = document_reference.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(StoredSubmission {
        transaction_id,
        submitted,
        outputs: Outputs { binary, document_reference, communication_request, title },
        resolved: Resolved { patient, encounter: one("Encounter") },
    })
}

/// The message for the EHR in `format` from a stored submission: the
/// worker's conversion. Deterministic (MSH-7 is the submission time, MSH-10
/// from the transaction id), so a retried delivery sends the same message.
pub fn ehr_message_from_stored(
    stored: &[u8],
    format: OutputFormat,
    options: &FhirToHl7Options,
) -> Result<EhrMessage, String> {
    let submission = read_submission(stored)?;
    ehr_message(
        &submission.outputs,
        &submission.resolved,
        format,
        &submission.transaction_id,
        submission.submitted,
        options,
    )
    .map_err(|e| e.to_string())
}

/// The message for the EHR in `format`.
///
/// HL7 v2 goes through `convert::fhir_to_hl7` (PID from the Patient, PV1
/// from the Encounter, the document as an ED OBX). MSH-7 is `now`, MSH-10
/// the first 20 hex digits of the transaction id (MSH-10 is 20 characters
/// in HL7 2.3 to 2.5), unless `options` set them. HL7 v2 has no document
/// title field in ORU, so the title is written as the text of OBX-3 (the
/// LOINC code stays in OBX-3-1); in MDM it also goes into TXA-16 (unique
/// document file name), where EHRs that file documents read it.
pub fn ehr_message(
    outputs: &Outputs,
    resolved: &Resolved,
    format: OutputFormat,
    transaction_id: &str,
    now: DateTime<Utc>,
    options: &FhirToHl7Options,
) -> Result<EhrMessage, BuildError> {
    let bundle = document_bundle(outputs, resolved);
    let (target, name) = match format {
        OutputFormat::Json => return Ok(EhrMessage::Json(bundle)),
        OutputFormat::OruR01 => (TargetMessage::OruR01, "ORU^R01"),
        OutputFormat::MdmT02 => (TargetMessage::MdmT02, "MDM^T02"),
    };
    let mut options = options.clone();
    if options.control_id.is_empty() {
        options.control_id = transaction_id.chars().filter(char::is_ascii_hexdigit).take(20).collect();
    }
    if options.message_time.is_empty() {
        options.message_time = now.format("%Y%m%d%H%M%S+0000").to_string();
    }
    let mut message = convert::fhir_to_hl7(&bundle, target, &options)
        .map_err(|source| BuildError::Convert { target: name, source })?;
    let edit = |e: hl7v2::EditError| BuildError::Edit { target: name, reason: e.to_string() };
    let obx_count = message.segments_named("OBX").count();
    for n in 1..=obx_count {
        message.set(format!("OBX({n})-3-2").as_str(), &outputs.title).map_err(edit)?;
    }
    if target == TargetMessage::MdmT02 {
        message.set("TXA-16", &outputs.title).map_err(edit)?;
    }
    Ok(EhrMessage::Hl7(message))
}
