//! Plexus conversions: HL7 v2 <-> FHIR R4, and declarative JSON mapping rules.
//!
//! Pure code: no I/O, no clock, no randomness. The same input always gives
//! the same output, so re-sending a message updates the FHIR server instead
//! of duplicating (ids are hashes of identifying fields and Bundle entries are
//! conditional).
//!
//! - [`hl7_to_fhir_text`]: an HL7 v2 message to a FHIR R4 transaction Bundle
//!   (ADT, ORU, ORM, SIU, MDM, VXU; see [`SUPPORTED`]).
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
mod v2;

pub use error::{ConvertError, ErrorClass};
pub use options::{FhirToHl7Options, Hl7ToFhirOptions, TargetMessage};
pub use v2::SUPPORTED;

/// Converts an HL7 v2 message to a FHIR R4 transaction Bundle.
///
/// Dispatches on MSH-9; an unsupported type or event is
/// [`ConvertError::UnsupportedMessage`] naming it. See [`SUPPORTED`].
pub fn hl7_to_fhir(message: &hl7v2::Message, options: &Hl7ToFhirOptions) -> Result<serde_json::Value, ConvertError> {
    v2::convert(message, options)
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
    v2::convert(&parsed, options)
}
