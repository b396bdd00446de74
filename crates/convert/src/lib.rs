//! Plexus conversions: HL7 v2 <-> FHIR R4, and declarative JSON mapping rules.
//!
//! Pure code: no I/O, no clock, no randomness. The same input always gives
//! the same output, so re-sending a message updates the FHIR server instead
//! of duplicating (ids are hashes of identifying fields and Bundle entries are
//! conditional).
//!
//! - [`hl7_to_fhir_text`]: an HL7 v2 message to a FHIR R4 transaction Bundle
//!   (ADT, ORU, ORM, SIU, MDM, VXU; see [`SUPPORTED`]); [`hl7_to_fhir_json`]
//!   writes the same Bundle straight to JSON bytes, about twice as fast, for
//!   callers that only send or store it.
//! - [`rules::MappingRules`]: JSON to JSON (or FHIR) by declarative rules, both
//!   ways.
//!
//! Options ([`Hl7ToFhirOptions`], [`FhirToHl7Options`]) are serde types so a
//! channel's config can carry them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod options;
pub mod rules;
pub mod terminology;
mod to_v2;
mod v2;

pub use error::{ConvertError, ErrorClass};
pub use options::{FhirToHl7Options, Hl7ToFhirOptions, TargetMessage};
pub use v2::SUPPORTED;

/// Converts an HL7 v2 message to a FHIR R4 transaction Bundle.
///
/// Dispatches on MSH-9; an unsupported type or event is
/// [`ConvertError::UnsupportedMessage`] naming it. See [`SUPPORTED`].
///
/// To send or store the Bundle as JSON, [`hl7_to_fhir_json`] gives the same
/// bytes as serialising this value, without building it.
pub fn hl7_to_fhir(message: &hl7v2::Message, options: &Hl7ToFhirOptions) -> Result<serde_json::Value, ConvertError> {
    v2::convert(message, options)
}

/// Converts an HL7 v2 message to a FHIR R4 transaction Bundle, written as
/// compact JSON (UTF-8).
///
/// The bytes are exactly `serde_json::to_vec(&hl7_to_fhir(message,
/// options)?)`, member order included (`resourceType` first), except for
/// decimals: they are written as the message gives them (NM `1.50` is
/// `1.50`, its precision significant in FHIR), where a `serde_json::Value`
/// holds an f64 (`1.5`). The
/// Bundle is written from the converter's own tree, which borrows the
/// message's text and hashes no keys: about twice the throughput of
/// [`hl7_to_fhir`] plus serialisation. Use it where the Bundle is only sent
/// or stored; use [`hl7_to_fhir`] to read or edit it. Errors are those of
/// [`hl7_to_fhir`].
///
/// ```
/// let msg = hl7v2::Message::parse(
///     "MSH|^~\\&|LAB|HOSP|||20240101120000+0100||ADT^A04^ADT_A01|1|P|2.5.1\r\
///      PID|1||123^^^HOSP&1.2.3&ISO^MR||Doe^Jane||19800101|F\r".as_bytes(),
/// ).unwrap();
/// let json = convert::hl7_to_fhir_json(&msg, &Default::default()).unwrap();
/// assert!(json.starts_with(br#"{"resourceType":"Bundle","id":"#));
/// let bundle = convert::hl7_to_fhir(&msg, &Default::default()).unwrap();
/// assert_eq!(json, serde_json::to_vec(&bundle).unwrap());
/// ```
pub fn hl7_to_fhir_json(message: &hl7v2::Message, options: &Hl7ToFhirOptions) -> Result<Vec<u8>, ConvertError> {
    v2::convert_json(message, options, false)
}

/// Like [`hl7_to_fhir_json`], indented by two spaces for people to read:
/// exactly `serde_json::to_vec_pretty` of [`hl7_to_fhir`]'s Bundle (no
/// final newline). `plexus convert hl7-to-fhir` prints this.
pub fn hl7_to_fhir_json_pretty(message: &hl7v2::Message, options: &Hl7ToFhirOptions) -> Result<Vec<u8>, ConvertError> {
    v2::convert_json(message, options, true)
}

/// Parses `message` (CR, LF or CRLF between segments) and converts it like
/// [`hl7_to_fhir`].
///
/// ```
/// let msg = "MSH|^~\\&|LAB|HOSP|||20240101120000+0100||ADT^A04^ADT_A01|1|P|2.5.1\r\
///            PID|1||123^^^HOSP&1.2.3&ISO^MR||Doe^Jane||19800101|F\r";
/// let bundle = convert::hl7_to_fhir_text(msg, &Default::default()).unwrap();
/// assert_eq!(bundle["type"], "transaction");
/// assert_eq!(bundle["entry"][0]["request"]["url"], "Patient?identifier=urn:oid:1.2.3|123");
/// ```
pub fn hl7_to_fhir_text(message: &str, options: &Hl7ToFhirOptions) -> Result<serde_json::Value, ConvertError> {
    let parsed = hl7v2::Message::parse(message.as_bytes()).map_err(|e| ConvertError::NotHl7(e.to_string()))?;
    hl7_to_fhir(&parsed, options)
}

/// Converts FHIR R4 (a Bundle of any type, or one resource) to an HL7 v2
/// message of type `target` (version `options.version`, 2.5.1 by default).
///
/// References resolve inside the input only; an attachment given by URL must
/// be a Binary in the input. MSH-7 and MSH-10 come from the options or the
/// input, so the same input gives the same message.
///
/// ```
/// use serde_json::json;
/// let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
///   {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient",
///     "identifier": [{"system": "urn:oid:1.2.3", "value": "42"}], "name": [{"family": "Doe"}]}},
///   {"resource": {"resourceType": "Observation", "status": "final",
///     "subject": {"reference": "urn:uuid:p1"}, "effectiveDateTime": "2024-05-01T08:30:00+02:00",
///     "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
///     "valueQuantity": {"value": 95, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}}
/// ]});
/// let msg = convert::fhir_to_hl7(&bundle, convert::TargetMessage::OruR01, &Default::default()).unwrap();
/// assert_eq!(msg.get("OBX-5").as_deref(), Some("95"));
/// assert_eq!(msg.get("OBX-3-3").as_deref(), Some("LN"));
/// assert_eq!(msg.get("PID-3-4-2").as_deref(), Some("1.2.3"));
/// ```
pub fn fhir_to_hl7(
    input: &serde_json::Value,
    target: TargetMessage,
    options: &FhirToHl7Options,
) -> Result<hl7v2::Message, ConvertError> {
    to_v2::convert(input, target, options)
}
