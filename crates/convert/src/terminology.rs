//! Code systems and value tables shared by both directions.
//!
//! HL7 v2 names a coding system with a short mnemonic in CWE-3 (`LN`, `SCT`,
//! `HL70078`); FHIR with a URI. The table here follows the HL7 v2-to-FHIR
//! Implementation Guide's coding-system map for the common ones; channels add
//! or override entries through the options (`code_systems`), and the reverse
//! direction uses the same table read backwards.

use std::borrow::Cow;

/// Built-in v2 coding-system mnemonic to FHIR system URI.
const SYSTEMS: &[(&str, &str)] = &[
    ("LN", "http://loinc.org"),
    ("LNC", "http://loinc.org"),
    ("SCT", "http://snomed.info/sct"),
    ("SNM", "http://snomed.info/sct"),
    ("SNOMED", "http://snomed.info/sct"),
    ("SNOMEDCT", "http://snomed.info/sct"),
    ("I10", "http://hl7.org/fhir/sid/icd-10"),
    ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("ICD10CM", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("I9", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I9CM", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("CVX", "http://hl7.org/fhir/sid/cvx"),
    ("MVX", "http://terminology.hl7.org/CodeSystem/MVX"),
    ("NDC", "http://hl7.org/fhir/sid/ndc"),
    ("RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("RXN", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("C4", "http://www.ama-assn.org/go/cpt"),
    ("CPT", "http://www.ama-assn.org/go/cpt"),
    ("UCUM", "http://unitsofmeasure.org"),
    ("CDCREC", "urn:oid:2.16.840.1.113883.6.238"),
    ("ISO3166_1", "urn:iso:std:iso:3166"),
    ("ISO639", "urn:ietf:bcp:47"),
    ("NPI", "http://hl7.org/fhir/sid/us-npi"),
    ("NUCC", "http://nucc.org/provider-taxonomy"),
    ("HCPCS", "urn:oid:2.16.840.1.113883.6.285"),
    ("NCIT", "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"),
    ("CDCPHINVS", "urn:oid:2.16.840.1.114222.4.5.274"),
    ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),
];

/// The FHIR system URI for a v2 coding-system mnemonic, if known: the
/// built-in table, `HL7nnnn`/`HL7xnnnn` table names, and OIDs.
pub fn system_uri(mnemonic: &str) -> Option<String> {
    system_uri_cow(mnemonic).map(Cow::into_owned)
}

/// [`system_uri`], borrowing the built-in URIs (the HL7 v2 mappers look one
/// up for nearly every coded field).
pub(crate) fn system_uri_cow(mnemonic: &str) -> Option<Cow<'static, str>> {
    let m = mnemonic.trim();
    if m.is_empty() {
        return None;
    }
    if let Some((_, uri)) = SYSTEMS.iter().find(|(k, _)| k.eq_ignore_ascii_case(m)) {
        return Some(Cow::Borrowed(uri));
    }
    // HL70078, HL7-0078, HL7 0078: a v2 table (the prefix in any case,
    // compared in place: ORU fields name such tables all the time).
    if let Some(rest) = m.get(3..).filter(|_| m[..3].eq_ignore_ascii_case("HL7")) {
        let digits = rest.trim_start_matches(['-', ' ', '_']);
        if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(v2_table_cow(digits));
        }
    }
    if is_oid(m) {
        return Some(Cow::Owned(format!("urn:oid:{m}")));
    }
    None
}

/// The v2 mnemonic for a FHIR system URI (the reverse of [`system_uri`]).
pub fn system_mnemonic(uri: &str) -> Option<String> {
    if let Some(t) = uri.strip_prefix("http://terminology.hl7.org/CodeSystem/v2-") {
        return Some(format!("HL7{t}"));
    }
    if let Some((k, _)) = SYSTEMS.iter().find(|(_, u)| *u == uri) {
        return Some((*k).to_string());
    }
    uri.strip_prefix("urn:oid:").map(str::to_string)
}

/// `http://terminology.hl7.org/CodeSystem/v2-NNNN`.
pub fn v2_table(number: &str) -> String {
    format!("http://terminology.hl7.org/CodeSystem/v2-{number}")
}

/// [`v2_table`], borrowed for the tables the mappers name (no allocation
/// and no formatting for each coded field).
pub(crate) fn v2_table_cow(number: &str) -> Cow<'static, str> {
    macro_rules! known {
        ($($n:literal)*) => {
            match number {
                $($n => Cow::Borrowed(concat!("http://terminology.hl7.org/CodeSystem/v2-", $n)),)*
                _ => Cow::Owned(v2_table(number)),
            }
        };
    }
    known!(
        "0001" "0002" "0004" "0007" "0018" "0023" "0063" "0069" "0074" "0078" "0085" "0086" "0092" "0112" "0114"
        "0123" "0131" "0162" "0163" "0203" "0270" "0276" "0278" "0286" "0296" "0443" "0487" "0488" "0493"
    )
}

/// Whether `s` is an ISO OID (digits and dots, no empty arc).
pub fn is_oid(s: &str) -> bool {
    s.contains('.') && s.split('.').all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

/// Table 0001 administrative sex to FHIR `AdministrativeGender`.
pub fn gender(v2: &str) -> Option<&'static str> {
    Some(match v2 {
        "M" => "male",
        "F" => "female",
        "O" | "A" | "X" => "other",
        "U" | "N" => "unknown",
        _ => return None,
    })
}

/// FHIR gender back to table 0001.
pub fn gender_v2(fhir: &str) -> &'static str {
    match fhir {
        "male" => "M",
        "female" => "F",
        "other" => "O",
        _ => "U",
    }
}

/// Table 0085 observation result status to FHIR `ObservationStatus`.
pub fn observation_status(v2: &str) -> &'static str {
    match v2 {
        "F" | "U" => "final",
        "C" => "corrected",
        "P" | "S" => "preliminary",
        "R" | "I" | "O" => "registered",
        "D" | "W" => "entered-in-error",
        "X" | "N" => "cancelled",
        "A" => "amended",
        _ => "unknown",
    }
}

/// FHIR observation status back to table 0085.
pub fn observation_status_v2(fhir: &str) -> &'static str {
    match fhir {
        "final" => "F",
        "corrected" | "amended" => "C",
        "preliminary" => "P",
        "registered" => "R",
        "entered-in-error" => "W",
        "cancelled" => "X",
        _ => "F",
    }
}

/// Table 0123 result status (OBR-25) to FHIR `DiagnosticReportStatus`.
pub fn report_status(v2: &str) -> &'static str {
    match v2 {
        "F" => "final",
        "C" => "corrected",
        "A" | "P" => "partial",
        "R" | "S" | "O" | "I" => "registered",
        "X" => "cancelled",
        "M" => "amended",
        _ => "unknown",
    }
}

/// FHIR report status back to table 0123.
pub fn report_status_v2(fhir: &str) -> &'static str {
    match fhir {
        "final" => "F",
        "corrected" | "amended" | "appended" => "C",
        "partial" | "preliminary" => "P",
        "registered" => "O",
        "cancelled" | "entered-in-error" => "X",
        _ => "F",
    }
}

/// Table 0078 abnormal flags to the v3 ObservationInterpretation code system
/// the Implementation Guide maps them to (the codes coincide).
pub const INTERPRETATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// Whether a v2 abnormal flag is also a v3 ObservationInterpretation code.
pub fn interpretation_known(code: &str) -> bool {
    matches!(
        code,
        "L" | "H"
            | "LL"
            | "HH"
            | "N"
            | "A"
            | "AA"
            | "<"
            | ">"
            | "S"
            | "R"
            | "I"
            | "NEG"
            | "POS"
            | "IND"
            | "U"
            | "D"
            | "B"
            | "W"
            | "MS"
            | "VS"
            | "LU"
            | "HU"
            | "ND"
            | "DET"
            | "E"
            | "EX"
            | "EXP"
    )
}

/// Table 0004 patient class to the v3 ActCode encounter class.
pub fn encounter_class(v2: &str) -> (&'static str, &'static str) {
    match v2 {
        "I" => ("IMP", "inpatient encounter"),
        "O" => ("AMB", "ambulatory"),
        "E" => ("EMER", "emergency"),
        "P" => ("PRENC", "pre-admission"),
        "R" => ("IMP", "inpatient encounter"),
        "B" => ("OBSENC", "observation encounter"),
        "N" => ("AMB", "ambulatory"),
        _ => ("AMB", "ambulatory"),
    }
}

/// The v3 ActCode system.
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Units that are valid UCUM as written (v2 feeds often leave OBX-6-3 empty
/// for them). Conservative: a unit not listed is kept as display text only.
pub fn looks_ucum(unit: &str) -> bool {
    matches!(
        unit,
        "%" | "/min"
            | "mg/dL"
            | "g/dL"
            | "mmol/L"
            | "umol/L"
            | "mg/L"
            | "g/L"
            | "kg"
            | "g"
            | "mg"
            | "cm"
            | "m"
            | "mm"
            | "mm[Hg]"
            | "kg/m2"
            | "Cel"
            | "[degF]"
            | "L"
            | "mL"
            | "dL"
            | "U/L"
            | "[iU]/L"
            | "10*3/uL"
            | "10*6/uL"
            | "10*9/L"
            | "10*12/L"
            | "fL"
            | "pg"
            | "ng/mL"
            | "meq/L"
            | "mosm/kg"
            | "s"
            | "min"
            | "h"
            | "d"
            | "wk"
            | "mo"
            | "a"
            | "[lb_av]"
            | "[in_i]"
            | "mL/min"
            | "kcal"
            | "{beats}/min"
            | "/[HPF]"
            | "/[LPF]"
            | "1"
            | "{score}"
            | "%{HemoglobinA1C}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_map_both_ways() {
        assert_eq!(system_uri("LN").as_deref(), Some("http://loinc.org"));
        assert_eq!(system_uri("HL70078").as_deref(), Some("http://terminology.hl7.org/CodeSystem/v2-0078"));
        assert_eq!(system_uri("2.16.840.1.113883.6.1").as_deref(), Some("urn:oid:2.16.840.1.113883.6.1"));
        assert_eq!(system_uri("XYZ"), None);
        assert_eq!(system_uri("HL7nnnn"), None);
        // The table prefix in any case, with or without a separator.
        for table in ["hl7-0203", "Hl7 0203", "HL7_0203", " hl70203 "] {
            assert_eq!(system_uri(table).as_deref(), Some("http://terminology.hl7.org/CodeSystem/v2-0203"), "{table}");
        }
        for other in ["HL", "HL7", "\u{e9}l70203", "\u{e9}1234", "XHL70203"] {
            assert_eq!(system_uri(other), None, "{other}");
        }
        assert_eq!(system_mnemonic("http://loinc.org").as_deref(), Some("LN"));
        assert_eq!(system_mnemonic("http://terminology.hl7.org/CodeSystem/v2-0203").as_deref(), Some("HL70203"));
    }
}
