//! Conversion options, deserialisable so an engine channel can embed them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ConvertError;

/// Options of the HL7 v2 to FHIR conversion.
///
/// ```
/// let opts: convert::Hl7ToFhirOptions = toml::from_str(r#"
///     default_offset = "+01:00"
///     [identifier_systems]
///     HOSP = "https://hospital.example/mrn"
///     [code_systems]
///     LOCAL = "https://hospital.example/codes"
///     [code_tables.0001]
///     X = "other"
/// "#).unwrap();
/// assert_eq!(opts.identifier_systems["HOSP"], "https://hospital.example/mrn");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hl7ToFhirOptions {
    /// Assigning authority (the namespace id, CX-4.1 / HD-1) to the
    /// Identifier.system URI. Checked before the universal id (an OID
    /// becomes `urn:oid:...` without configuration).
    pub identifier_systems: BTreeMap<String, String>,
    /// Identifier.system for an authority that has neither a universal id
    /// nor an entry above: this prefix followed by the namespace id.
    pub unknown_authority_prefix: String,
    /// v2 coding-system name (CWE-3) to code system URI; overrides and
    /// extends the built-in table (LN, SCT, I10, CVX, HL7nnnn ...).
    pub code_systems: BTreeMap<String, String>,
    /// Per v2 table (`"0001"` sex, `"0004"` patient class, `"0078"` abnormal
    /// flags, `"0085"` observation status, `"0123"` result status, `"0278"`
    /// appointment status): v2 code to the FHIR code, overriding the built-in
    /// mapping.
    pub code_tables: BTreeMap<String, BTreeMap<String, String>>,
    /// UTC offset (`+01:00`) assumed for times that carry none. Without it,
    /// such times keep only their date, because FHIR requires an offset on
    /// every time and guessing one would shift the time.
    pub default_offset: Option<String>,
}

impl Default for Hl7ToFhirOptions {
    fn default() -> Self {
        Hl7ToFhirOptions {
            identifier_systems: BTreeMap::new(),
            unknown_authority_prefix: "urn:plexus:authority:".into(),
            code_systems: BTreeMap::new(),
            code_tables: BTreeMap::new(),
            default_offset: None,
        }
    }
}

impl Hl7ToFhirOptions {
    /// Reads options from TOML (the same keys as the engine config embeds),
    /// checked with [`Hl7ToFhirOptions::validate`].
    pub fn from_toml(text: &str) -> Result<Self, ConvertError> {
        let opts: Self = toml::from_str(text).map_err(|e| ConvertError::Options(e.to_string()))?;
        opts.validate()?;
        Ok(opts)
    }

    /// Checks the options (called by the converter; the engine calls it when
    /// it loads its config).
    pub fn validate(&self) -> Result<(), ConvertError> {
        if let Some(off) = &self.default_offset
            && crate::v2::datatypes::parse_offset(off).is_none()
        {
            return Err(ConvertError::Options(format!("default_offset '{off}' is not +hh:mm or -hh:mm")));
        }
        for (k, v) in self.identifier_systems.iter().chain(&self.code_systems) {
            if !v.contains(':') {
                return Err(ConvertError::Options(format!("system for '{k}' is not a URI: '{v}'")));
            }
        }
        Ok(())
    }

    /// A code-table override.
    pub(crate) fn table(&self, table: &str, code: &str) -> Option<&str> {
        self.code_tables.get(table)?.get(code).map(String::as_str)
    }
}

/// The HL7 v2 message to produce from FHIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetMessage {
    /// Observation results (and documents as an ED OBX).
    #[serde(rename = "ORU_R01")]
    OruR01,
    /// A document with its content (TXA + OBX ED).
    #[serde(rename = "MDM_T02")]
    MdmT02,
    /// Patient registration.
    #[serde(rename = "ADT_A04")]
    AdtA04,
    /// Patient update.
    #[serde(rename = "ADT_A08")]
    AdtA08,
    /// A new appointment.
    #[serde(rename = "SIU_S12")]
    SiuS12,
    /// Medication administrations.
    #[serde(rename = "RAS_O17")]
    RasO17,
}

impl TargetMessage {
    /// MSH-9 as `TYPE^EVENT^STRUCTURE`.
    pub fn msh9(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            TargetMessage::OruR01 => ("ORU", "R01", "ORU_R01"),
            TargetMessage::MdmT02 => ("MDM", "T02", "MDM_T02"),
            TargetMessage::AdtA04 => ("ADT", "A04", "ADT_A01"),
            TargetMessage::AdtA08 => ("ADT", "A08", "ADT_A01"),
            TargetMessage::SiuS12 => ("SIU", "S12", "SIU_S12"),
            TargetMessage::RasO17 => ("RAS", "O17", "RAS_O17"),
        }
    }
}

impl std::str::FromStr for TargetMessage {
    type Err = ConvertError;

    /// Accepts `ORU_R01`, `ORU^R01` or `oru_r01`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().replace('^', "_").as_str() {
            "ORU_R01" => TargetMessage::OruR01,
            "MDM_T02" => TargetMessage::MdmT02,
            "ADT_A04" => TargetMessage::AdtA04,
            "ADT_A08" => TargetMessage::AdtA08,
            "SIU_S12" => TargetMessage::SiuS12,
            "RAS_O17" => TargetMessage::RasO17,
            _ => {
                return Err(ConvertError::Options(format!(
                    "unknown target message '{s}' (ORU_R01, MDM_T02, ADT_A04, ADT_A08, SIU_S12, RAS_O17)"
                )));
            }
        })
    }
}

/// Options of the FHIR to HL7 v2 conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FhirToHl7Options {
    /// MSH-12; 2.5.1 by default.
    pub version: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-11 (P, T or D).
    pub processing_id: String,
    /// MSH-10. When empty, a control id is derived from a hash of the input,
    /// so converting the same input twice gives the same message.
    pub control_id: String,
    /// MSH-7 as a v2 timestamp. When empty, the newest time found in the
    /// input is used (conversions never read the clock).
    pub message_time: String,
    /// Identifier.system URI to the v2 assigning authority written in CX-4
    /// (the reverse of `identifier_systems` of the other direction).
    pub assigning_authorities: BTreeMap<String, String>,
}

impl FhirToHl7Options {
    /// Reads options from TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConvertError> {
        toml::from_str(text).map_err(|e| ConvertError::Options(e.to_string()))
    }
}

impl Default for FhirToHl7Options {
    fn default() -> Self {
        FhirToHl7Options {
            version: "2.5.1".into(),
            sending_application: "PLEXUS".into(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            processing_id: "P".into(),
            control_id: String::new(),
            message_time: String::new(),
            assigning_authorities: BTreeMap::new(),
        }
    }
}
