//! The document-submission flow's configuration: what the operation accepts
//! and what the EHR receives. Loading it does no I/O; [`SendToEhrConfig::validate`]
//! reports every problem with its path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, ConfigErrors, Duration};

/// The content types the operation can check against a payload's bytes
/// (see `request::sniff`): anything else could not be verified, so the
/// configuration may only narrow this list.
pub const SUPPORTED_CONTENT_TYPES: &[&str] = &["application/pdf", "image/jpeg", "image/png", "text/plain"];

/// The LOINC document types accepted when the configuration names none,
/// with their displays (used in DocumentReference.type and OBX-3).
pub const DEFAULT_DOCUMENT_TYPES: &[(&str, &str)] = &[
    ("11488-4", "Consult note"),
    ("34133-9", "Summary of episode note"),
    ("18842-5", "Discharge summary"),
    ("11506-3", "Progress note"),
    ("57133-1", "Referral note"),
    ("34117-2", "History and physical note"),
    ("28570-0", "Procedure note"),
    ("11502-2", "Laboratory report"),
    ("18748-4", "Diagnostic imaging study"),
    ("59284-0", "Consent Document"),
    ("57833-6", "Prescription for medication"),
];

/// The document type used when a request names none (consultation note).
pub const DEFAULT_DOCUMENT_TYPE: &str = "11488-4";

/// Whether a submission must name an Encounter (`context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncounterRule {
    /// `context` is required: EHRs that file documents per visit.
    Required,
    /// `context` may be omitted; when given it is still resolved.
    #[default]
    Optional,
}

/// What the EHR receives for a submitted document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// HL7 v2 ORU^R01 with the document in an ED OBX (base64).
    #[default]
    OruR01,
    /// HL7 v2 MDM^T02: TXA plus the document in an ED OBX (base64).
    MdmT02,
    /// A FHIR collection Bundle (Patient, Encounter, DocumentReference,
    /// Binary) as JSON, for EHRs with a proprietary JSON intake (mapped
    /// further by the channel's transform).
    Json,
}

/// Configuration of `POST CommunicationRequest/$send-to-ehr`: the
/// `[channels.<name>.source]` table of a `type = "send_to_ehr"` source.
///
/// ```toml
/// patient_source = "ehr"          # a [fhir_servers.ehr] table
/// public_url = "https://plexus.example/fhir"
/// outputs = { archive = "json" }  # per destination; the others get `output`
/// hl7 = { receiving_application = "EHR" }
/// encounter = "required"
/// content_types = ["application/pdf"]
/// document_types = ["11488-4", "18842-5"]
/// max_payload = "10MiB"
/// output = "mdm_t02"
/// tracking_retention = "60d"
/// default_sender = "document-platform"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendToEhrConfig {
    /// Whether `context` (the Encounter) is required. Optional by default.
    pub encounter: EncounterRule,
    /// Accepted content types: a subset of [`SUPPORTED_CONTENT_TYPES`]
    /// (all four by default).
    pub content_types: Vec<String>,
    /// Accepted LOINC document types (`document-type`). Default:
    /// [`DEFAULT_DOCUMENT_TYPES`]. Must include the type used when a request
    /// names none, 11488-4, unless every client sends one.
    pub document_types: Vec<String>,
    /// The largest decoded payload accepted (10 MiB by default). The HTTP
    /// body limit must leave room for base64 (4/3 of this) and the rest of
    /// the Parameters.
    pub max_payload: ByteSize,
    /// What the EHR receives (`oru_r01` by default).
    pub output: OutputFormat,
    /// How long a transaction's tracking stays answerable (60 days, about
    /// two months, by default).
    pub tracking_retention: Duration,
    /// Sender used when a request has no `sender-identifier` and the calling
    /// application is unknown (with API tokens, the token's application
    /// name comes first).
    pub default_sender: String,
    /// The `[fhir_servers.<name>]` where `subject` and `context` are
    /// resolved. Required when the flow runs as a channel source (checked
    /// with the other tables, see `sources::send_to_ehr`).
    pub patient_source: Option<String>,
    /// The FHIR base URL applications reach this server's operation under
    /// (behind a proxy: `https://plexus.example/fhir`), used in the
    /// `tracking-url` answer. Default: `http://{api listen address}/fhir`.
    pub public_url: Option<String>,
    /// The message format per destination name, for destinations that need
    /// another than [`output`](Self::output).
    pub outputs: BTreeMap<String, OutputFormat>,
    /// MSH settings of the HL7 v2 messages (`[...source.hl7]`:
    /// `sending_application` (`PLEXUS`), `receiving_application`,
    /// `version` (`2.5.1`) ...); MSH-7 and MSH-10 come from the submission.
    pub hl7: convert::FhirToHl7Options,
}

impl Default for SendToEhrConfig {
    fn default() -> Self {
        SendToEhrConfig {
            encounter: EncounterRule::Optional,
            content_types: SUPPORTED_CONTENT_TYPES.iter().map(|s| s.to_string()).collect(),
            document_types: DEFAULT_DOCUMENT_TYPES.iter().map(|(code, _)| code.to_string()).collect(),
            max_payload: ByteSize::mib(10),
            output: OutputFormat::OruR01,
            tracking_retention: Duration::from_secs(60 * 86_400),
            default_sender: "plexus".into(),
            patient_source: None,
            public_url: None,
            outputs: BTreeMap::new(),
            hl7: convert::FhirToHl7Options::default(),
        }
    }
}

impl SendToEhrConfig {
    /// Checks the values serde cannot, recording each problem under `path`
    /// (the table this config was read from). No I/O.
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if self.content_types.is_empty() {
            errors.push(format!("{path}.content_types"), "must name at least one content type");
        }
        for (i, ct) in self.content_types.iter().enumerate() {
            if !SUPPORTED_CONTENT_TYPES.contains(&ct.as_str()) {
                errors.push(
                    format!("{path}.content_types[{i}]"),
                    format!(
                        "`{ct}` cannot be checked against a payload (supported: {})",
                        SUPPORTED_CONTENT_TYPES.join(", ")
                    ),
                );
            }
        }
        if self.document_types.is_empty() {
            errors.push(format!("{path}.document_types"), "must name at least one LOINC document type");
        }
        for (i, code) in self.document_types.iter().enumerate() {
            if !is_loinc_code(code) {
                errors.push(
                    format!("{path}.document_types[{i}]"),
                    format!("`{code}` is not a LOINC code (digits, a dash and a check digit, e.g. 11488-4)"),
                );
            }
        }
        if self.max_payload.0 == 0 {
            errors.push(format!("{path}.max_payload"), "must be more than 0 bytes");
        }
        if self.tracking_retention.get().is_zero() {
            errors.push(format!("{path}.tracking_retention"), "must be more than 0 (tracking would expire at once)");
        }
        if self.default_sender.trim().is_empty() {
            errors.push(format!("{path}.default_sender"), "must not be empty");
        }
        if let Some(public) = &self.public_url {
            match url::Url::parse(public) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => errors.push(format!("{path}.public_url"), "must be an http:// or https:// URL (the FHIR base)"),
            }
        }
    }

    /// The message format of destination `destination`: its entry in
    /// [`outputs`](Self::outputs), else [`output`](Self::output).
    pub fn output_for(&self, destination: &str) -> OutputFormat {
        self.outputs.get(destination).copied().unwrap_or(self.output)
    }

    /// The display of a configured LOINC document type, when it is one the
    /// engine knows.
    pub fn document_type_display(code: &str) -> Option<&'static str> {
        DEFAULT_DOCUMENT_TYPES.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
    }
}

/// A LOINC code's shape, `NNNNN-C` with the mod-10 check digit. The check
/// digit catches the typical typo (two swapped or one wrong digit) in a
/// configuration before a request is refused for it.
pub fn is_loinc_code(code: &str) -> bool {
    let Some((number, check)) = code.split_once('-') else { return false };
    if number.is_empty() || number.len() > 7 || check.len() != 1 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(check) = check.bytes().next().filter(u8::is_ascii_digit).map(|b| u32::from(b - b'0')) else {
        return false;
    };
    // LOINC's Mod 10 algorithm: double every other digit from the right.
    let mut sum = 0;
    for (i, b) in number.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10 == check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = SendToEhrConfig::default();
        let mut errors = ConfigErrors::default();
        config.validate("flows.send_to_ehr", &mut errors);
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(config.tracking_retention.get().as_secs(), 60 * 86_400);
        assert!(config.document_types.iter().any(|c| c == DEFAULT_DOCUMENT_TYPE));
        for code in ["11488-4", "34133-9", "18842-5", "11506-3", "57133-1"] {
            assert!(config.document_types.iter().any(|c| c == code), "{code} missing from the defaults");
        }
    }

    #[test]
    fn every_default_document_type_passes_the_loinc_check_digit() {
        for (code, _) in DEFAULT_DOCUMENT_TYPES {
            assert!(is_loinc_code(code), "{code}");
        }
        assert!(!is_loinc_code("11488-5"));
        assert!(!is_loinc_code("11488"));
        assert!(!is_loinc_code("-4"));
        assert!(!is_loinc_code("1a488-4"));
    }

    #[test]
    fn reads_toml_and_rejects_unknown_keys() {
        let config: SendToEhrConfig = toml::from_str(
            r#"
            encounter = "required"
            content_types = ["application/pdf"]
            document_types = ["18842-5"]
            max_payload = "2MiB"
            output = "mdm_t02"
            tracking_retention = "30d"
            default_sender = "portal"
            "#,
        )
        .expect("valid config");
        assert_eq!(config.encounter, EncounterRule::Required);
        assert_eq!(config.output, OutputFormat::MdmT02);
        assert_eq!(config.max_payload, ByteSize::mib(2));
        assert_eq!(config.tracking_retention.get().as_secs(), 30 * 86_400);
        let err = toml::from_str::<SendToEhrConfig>("encounters = \"required\"").expect_err("typo must fail");
        assert!(err.to_string().contains("unknown field `encounters`"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let config = SendToEhrConfig {
            content_types: vec!["application/pdf".into(), "application/msword".into()],
            document_types: vec!["11488-4".into(), "12345-6".into()],
            max_payload: ByteSize(0),
            tracking_retention: Duration::from_secs(0),
            default_sender: " ".into(),
            ..SendToEhrConfig::default()
        };
        let mut errors = ConfigErrors::default();
        config.validate("flows.send_to_ehr", &mut errors);
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flows.send_to_ehr.content_types[1]",
                "flows.send_to_ehr.document_types[1]",
                "flows.send_to_ehr.max_payload",
                "flows.send_to_ehr.tracking_retention",
                "flows.send_to_ehr.default_sender",
            ]
        );
        assert!(errors.0[0].message.contains("application/msword"));
    }
}
