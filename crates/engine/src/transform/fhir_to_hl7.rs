//! The `fhir_to_hl7` step: converts the FHIR R4 content of a `json` or
//! `fhir` channel (a Bundle of any type, or one resource) to an HL7 v2
//! message with [`convert::fhir_to_hl7`].
//!
//! After it the content is that HL7 v2 message (`x-application/hl7-v2+er7`):
//! the HL7 v2 steps (`set`, `copy`, `delete`, `map`, `javascript`, `route`,
//! with `when` rules) may follow it, in the same transform or a
//! destination's, and a destination's filters read it.
//!
//! The step's keys are those of [`convert::FhirToHl7Options`] but for
//! `control_id` and `message_time`, which the converter derives from the
//! input (a hash and the newest time in it): a fixed value in the
//! configuration would give every message the same MSH-10 or MSH-7.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use convert::{ConvertError, FhirToHl7Options, TargetMessage};
use serde::{Deserialize, Serialize};

use super::TransformError;

/// `type = "fhir_to_hl7"`: convert FHIR R4 to an HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirToHl7Step {
    /// The message to make: `ORU_R01`, `MDM_T02`, `ADT_A04`, `ADT_A08`,
    /// `SIU_S12` or `RAS_O17` (`ORU^R01` is accepted too).
    pub message: String,
    /// MSH-12; `2.5.1` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// MSH-3; `PLEXUS` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_application: Option<String>,
    /// MSH-4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_facility: Option<String>,
    /// MSH-5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_application: Option<String>,
    /// MSH-6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_facility: Option<String>,
    /// MSH-11: `P` (the default), `T` or `D`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_id: Option<String>,
    /// Identifier.system URI to the assigning authority written in CX-4
    /// (the reverse of `identifier_systems` of `hl7_to_fhir`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assigning_authorities: BTreeMap<String, String>,
}

/// What a compiled `fhir_to_hl7` step runs.
#[derive(Debug, Clone)]
pub(super) struct FhirToHl7 {
    pub(super) target: TargetMessage,
    pub(super) options: FhirToHl7Options,
}

impl FhirToHl7Step {
    /// A step making `target` with the converter's default options.
    pub fn new(target: TargetMessage) -> Self {
        let (_, _, structure) = target.msh9();
        FhirToHl7Step {
            message: structure.to_owned(),
            version: None,
            sending_application: None,
            sending_facility: None,
            receiving_application: None,
            receiving_facility: None,
            processing_id: None,
            assigning_authorities: BTreeMap::new(),
        }
    }

    /// The target and options these keys give, or every problem as (key,
    /// message).
    pub(super) fn compile(&self) -> Result<FhirToHl7, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let target = match self.message.parse::<TargetMessage>() {
            Ok(t) => Some(t),
            Err(_) => {
                problems.push((
                    "message".to_owned(),
                    format!(
                        "{:?} is not a message fhir_to_hl7 makes (ORU_R01, MDM_T02, ADT_A04, ADT_A08, SIU_S12, RAS_O17)",
                        self.message
                    ),
                ));
                None
            }
        };
        let defaults = FhirToHl7Options::default();
        if let Some(v) = &self.version
            && !hl7v2::Version::parse(v).is_some_and(|v| v.major == 2 && (3..=8).contains(&v.minor))
        {
            problems.push((
                "version".to_owned(),
                format!("{v:?} is not an HL7 v2 version from 2.3 to 2.8 (e.g. \"2.5.1\")"),
            ));
        }
        if let Some(p) = &self.processing_id
            && !matches!(p.as_str(), "P" | "T" | "D")
        {
            problems.push(("processing_id".to_owned(), format!("{p:?} must be P, T or D")));
        }
        for (system, authority) in &self.assigning_authorities {
            if !system.contains(':') {
                problems.push((
                    format!("assigning_authorities.{system}"),
                    format!("{system:?} is not a URI (the Identifier.system, e.g. \"urn:oid:1.2.3\")"),
                ));
            }
            if authority.is_empty() {
                problems.push((format!("assigning_authorities.{system}"), "the authority is empty".to_owned()));
            }
        }
        for (key, value) in [
            ("sending_application", &self.sending_application),
            ("sending_facility", &self.sending_facility),
            ("receiving_application", &self.receiving_application),
            ("receiving_facility", &self.receiving_facility),
        ] {
            if let Some(v) = value
                && v.contains(['|', '\r', '\n'])
            {
                problems.push((key.to_owned(), format!("{v:?} holds a field separator or a line break")));
            }
        }
        let (Some(target), true) = (target, problems.is_empty()) else { return Err(problems) };
        let pick = |value: &Option<String>, default: String| value.clone().unwrap_or(default);
        let options = FhirToHl7Options {
            version: pick(&self.version, defaults.version),
            sending_application: pick(&self.sending_application, defaults.sending_application),
            sending_facility: pick(&self.sending_facility, defaults.sending_facility),
            receiving_application: pick(&self.receiving_application, defaults.receiving_application),
            receiving_facility: pick(&self.receiving_facility, defaults.receiving_facility),
            processing_id: pick(&self.processing_id, defaults.processing_id),
            assigning_authorities: self.assigning_authorities.clone(),
            ..defaults
        };
        Ok(FhirToHl7 { target, options })
    }
}

impl FhirToHl7 {
    /// Converts `doc`, the content of the step named `step`. MSH-7 is the
    /// newest time in the input; an input with none (a bare Patient for an
    /// ADT^A08) gets `received_at`, when the message was received, which is
    /// as deterministic on a retry (the converter never reads the clock).
    pub(super) fn run(
        &self,
        step: &str,
        doc: &serde_json::Value,
        received_at: Option<DateTime<Utc>>,
    ) -> Result<hl7v2::Message, TransformError> {
        let error = |e: ConvertError| TransformError::Convert { step: step.to_owned(), reason: e.to_string() };
        match convert::fhir_to_hl7(doc, self.target, &self.options) {
            Err(ConvertError::Missing { path }) if path.starts_with("message time") && received_at.is_some() => {
                let time = received_at.map(|t| t.format("%Y%m%d%H%M%S+0000").to_string()).unwrap_or_default();
                let options = FhirToHl7Options { message_time: time, ..self.options.clone() };
                convert::fhir_to_hl7(doc, self.target, &options).map_err(error)
            }
            result => result.map_err(error),
        }
    }
}
