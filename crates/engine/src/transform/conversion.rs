//! The `hl7_to_fhir` step: converts the (transformed) HL7 v2 message to a
//! FHIR R4 transaction Bundle with [`convert::hl7_to_fhir`].
//!
//! The Bundle replaces the message as what the destination sends
//! ([`TransformOutcome::converted`]), with the content type
//! `application/fhir+json`. Steps before it edit the HL7 v2 message the
//! conversion reads; after it only `route` steps are allowed, since an edit
//! of the message would no longer reach the destination.
//!
//! The step's keys are those of [`convert::Hl7ToFhirOptions`], so a channel
//! overrides the conversion's defaults (identifier systems per assigning
//! authority, code systems, code tables, default offset) by configuration.

use std::collections::BTreeMap;

use convert::Hl7ToFhirOptions;
use hl7v2::Message;
use serde::{Deserialize, Serialize};

use super::{TransformError, TransformOutcome};

/// The content type of a converted Bundle.
pub const FHIR_JSON: &str = "application/fhir+json";

/// `type = "hl7_to_fhir"`: convert the message to a FHIR R4 transaction
/// Bundle. Every key is optional; see [`Hl7ToFhirOptions`] for each one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7ToFhirStep {
    /// Assigning authority (CX-4.1 / HD-1) to the Identifier.system URI.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identifier_systems: BTreeMap<String, String>,
    /// Identifier.system prefix for an authority with no universal id and no
    /// entry in `identifier_systems` (default `urn:plexus:authority:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_authority_prefix: Option<String>,
    /// v2 coding-system name (CWE-3) to code system URI.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code_systems: BTreeMap<String, String>,
    /// Per v2 table (`"0001"`, `"0004"`, `"0078"` ...): v2 code to FHIR code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code_tables: BTreeMap<String, BTreeMap<String, String>>,
    /// UTC offset (`+01:00`) assumed for times that carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_offset: Option<String>,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

impl Hl7ToFhirStep {
    /// The converter's options these keys give, checked.
    pub fn options(&self) -> Result<Hl7ToFhirOptions, convert::ConvertError> {
        let defaults = Hl7ToFhirOptions::default();
        let options = Hl7ToFhirOptions {
            identifier_systems: self.identifier_systems.clone(),
            unknown_authority_prefix: self
                .unknown_authority_prefix
                .clone()
                .unwrap_or(defaults.unknown_authority_prefix),
            code_systems: self.code_systems.clone(),
            code_tables: self.code_tables.clone(),
            default_offset: self.default_offset.clone(),
        };
        options.validate()?;
        Ok(options)
    }
}

impl Hl7ToFhirStep {
    /// Every problem of the keys, as (key path, message), e.g.
    /// (`identifier_systems.HOSP`, `"hosp-mrn" is not a URI ...`).
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, systems) in [("identifier_systems", &self.identifier_systems), ("code_systems", &self.code_systems)] {
            for (name, uri) in systems {
                if !uri.contains(':') {
                    problems.push((
                        format!("{key}.{name}"),
                        format!("{uri:?} is not a URI (e.g. \"urn:oid:1.2.3\" or \"https://example.org/ids\")"),
                    ));
                }
            }
        }
        if let Some(offset) = &self.default_offset {
            let only_offset = Hl7ToFhirOptions { default_offset: Some(offset.clone()), ..Hl7ToFhirOptions::default() };
            if only_offset.validate().is_err() {
                problems.push(("default_offset".to_owned(), format!("{offset:?} is not +hh:mm or -hh:mm")));
            }
        }
        // Anything else the converter rejects (checks added there later).
        if problems.is_empty()
            && let Err(e) = self.options()
        {
            problems.push(("type".to_owned(), e.to_string()));
        }
        problems
    }
}

/// What a conversion step made of the message: the content to send instead
/// of the HL7 v2 message, and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The encoded output (a Bundle as JSON).
    pub content: Vec<u8>,
    /// Its content type, e.g. `application/fhir+json`.
    pub content_type: &'static str,
}

/// Runs the conversion of `msg` for the step named `step`.
pub(super) fn run(
    step: &str,
    options: &Hl7ToFhirOptions,
    msg: &Message,
    outcome: &mut TransformOutcome,
) -> Result<(), TransformError> {
    // The direct writer: the same bytes as serialising `hl7_to_fhir`'s
    // Value (crates/convert tests both paths over every fixture), about
    // twice as fast, since a channel only forwards the Bundle.
    let content = convert::hl7_to_fhir_json(msg, options)
        .map_err(|e| TransformError::Convert { step: step.to_owned(), reason: e.to_string() })?;
    outcome.converted = Some(Converted { content, content_type: FHIR_JSON });
    Ok(())
}
