//! Validation: the header, the message structure and the data types of the
//! fields that routing, matching and conversion rely on, returning every
//! issue with its location, table 0357 code and severity, ready for ERR
//! segments ([`crate::ack::Ack::issues`]).
//!
//! What is checked:
//! - **Header**, for every message: MSH-9 (code in table 0076, trigger in
//!   0003), MSH-10, MSH-11 (0103), MSH-12 (0104) present and known, MSH-7 a
//!   valid DTM (required from 2.5), MSH-15/16 in 0155, and MSH-9-3 against
//!   the structure the standard assigns to the trigger (a warning).
//!   Unsupported type, trigger, processing id and version get codes 200 to
//!   203, so [`outcome`] turns them into a reject (AR/CR).
//! - **Structure** (segment order, required segments, repeating groups) for
//!   ADT A01-A05, A08-A14, A28, A31, A39-A42, ORU R01, ORM O01, SIU S12-S26,
//!   MDM T01-T11, VXU V04 and ACK, in the variant of the message's version
//!   (2.3 to 2.8; see `grammar.rs` for the notation). Z segments are allowed
//!   anywhere. Other message types are checked at the header only.
//! - **Fields** of the segments of those messages: required fields, and the
//!   data types SI, NM, DT, DTM/TS (precision and offset), and ID/IS values
//!   against tables 0001, 0003, 0008, 0076, 0085, 0103, 0104, 0155. OBX-5
//!   is checked as NM when OBX-2 says NM.
//!
//! Issue messages name fields and rules, never the values, so they can go in
//! logs and back to the sender.

mod grammar;
mod types;

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::ack::Outcome;
use crate::issue::{ErrorCode, Issue, Location, Severity};
use crate::{Message, Segment, Version};

pub use types::{check_dt, check_dtm, check_nm, check_si};

/// At most this many issues are reported for one message: enough to fix it,
/// bounded so a garbage message cannot produce a megabyte of ERR segments.
pub const MAX_ISSUES: usize = 100;

/// Structures in the standard's abstract syntax (see `grammar.rs`).
const STRUCTURES: &[(&str, &str)] = &[
    ("ACK", "MSH [{SFT}]@2.5 [UAC]@2.7 MSA [{ERR}]"),
    (
        "ADT_A01",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID [PD1] [{ARV}]@2.6 [{ROL}]@2.4 [{NK1}] PV1 [PV2] [{ARV}]@2.6 \
         [{ROL}]@2.4 [{DB1}] [{OBX [{PRT}]@2.7}] [{AL1}] [{DG1}] [DRG] [{PR1 [{ROL}]}] [{GT1}] \
         [{IN1 [IN2] [{IN3}] [{ROL}]@2.4}] [ACC] [UB1] [UB2] [PDA]@2.4",
    ),
    (
        "ADT_A02",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID [PD1] [{ARV}]@2.6 [{ROL}]@2.4 PV1 [PV2] [{ARV}]@2.6 \
         [{ROL}]@2.4 [{DB1}] [{OBX [{PRT}]@2.7}] [PDA]@2.4",
    ),
    (
        "ADT_A03",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID [PD1] [{ARV}]@2.6 [{ROL}]@2.4 [{NK1}]@2.5 PV1 [PV2] \
         [{ARV}]@2.6 [{ROL}]@2.4 [{DB1}] [{AL1}]@2.5 [{DG1}] [DRG] [{PR1 [{ROL}]}] [{OBX [{PRT}]@2.7}] \
         [{GT1}]@2.5 [{IN1 [IN2] [{IN3}] [{ROL}]}]@2.5 [ACC]@2.5 [PDA]@2.4",
    ),
    (
        "ADT_A05",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID [PD1] [{ARV}]@2.6 [{ROL}]@2.4 [{NK1}] PV1 [PV2] [{ARV}]@2.6 \
         [{ROL}]@2.4 [{DB1}] [{OBX [{PRT}]@2.7}] [{AL1}] [{DG1}] [DRG] [{PR1 [{ROL}]}] [{GT1}] \
         [{IN1 [IN2] [{IN3}] [{ROL}]@2.4}] [ACC] [UB1] [UB2]",
    ),
    ("ADT_A09", "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID [PD1] PV1 [PV2] [{DB1}] [{OBX}] [{DG1}]"),
    ("ADT_A39", "MSH [{SFT}]@2.5 [UAC]@2.7 EVN {PID [PD1] MRG [PV1]}"),
    (
        "ORU_R01",
        "MSH [{SFT}]@2.5 [UAC]@2.7 {[PID [PD1] [{PRT}]@2.7 [{NTE}] [{NK1}] [{ARV}]@2.6 \
         [{OBX [{PRT}]}]@2.8 [PV1 [PV2] [{PRT}]@2.7]] {[ORC [{PRT}]@2.7] OBR [{NTE}] [{PRT}]@2.7 \
         [{TQ1 [{TQ2}]}]@2.5 [CTD] [{OBX [{PRT}]@2.7 [{NTE}]}] [{FT1}] [{CTI}] [{SPM [{OBX}]}]@2.5}} [DSC]",
    ),
    (
        "ORM_O01",
        "MSH [{NTE}] [PID [PD1] [{NTE}] [PV1 [PV2]] [{IN1 [IN2] [IN3]}] [GT1] [{AL1}]] \
         {ORC [<OBR|RQD|RQ1|RXO|ODS|ODT> [{NTE}] [CTD] [{DG1}] [{OBX [{NTE}]}]] [{FT1}] [{CTI}] [BLG]}",
    ),
    (
        "SIU_S12",
        "MSH [{SFT}]@2.5 [UAC]@2.7 SCH [{TQ1}]@2.5 [{NTE}] [{PID [PD1] [{PRT}]@2.7 [PV1] [PV2] \
         [{PRT}]@2.7 [{OBX}] [{DG1}]}] {RGS [{AIS [{NTE}]}] [{AIG [{NTE}]}] [{AIL [{NTE}]}] [{AIP [{NTE}]}]}",
    ),
    (
        "MDM_T01",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID PV1 [{ORC [{PRT}]@2.7 [{TQ1 [{TQ2}]}] OBR [{NTE}]}]@2.5 \
         TXA [{CON}]@2.6",
    ),
    (
        "MDM_T02",
        "MSH [{SFT}]@2.5 [UAC]@2.7 EVN PID PV1 [{ORC [{PRT}]@2.7 [{TQ1 [{TQ2}]}] OBR [{NTE}]}]@2.5 \
         TXA [{CON}]@2.6 {OBX [{PRT}]@2.7 [{NTE}]}",
    ),
    (
        "VXU_V04",
        "MSH [{SFT}]@2.5 [UAC]@2.7 PID [PD1] [{NK1}] [{ARV}]@2.6 [PV1 [PV2] [{ARV}]@2.6] [{GT1}] \
         [{IN1 [IN2] [IN3]}] [{OBX [{PRT}] [{NTE}]}]@2.8 \
         [{[ORC [{PRT}]@2.7] [{TQ1 [{TQ2}]}]@2.5 RXA [RXR] [{OBX [{PRT}]@2.7 [{NTE}]}]}]",
    ),
];

/// Which structure each trigger uses (the same in 2.3.1 to 2.8 for these).
const TRIGGERS: &[(&str, &[&str], &str)] = &[
    ("ADT", &["A01", "A04", "A08", "A13"], "ADT_A01"),
    ("ADT", &["A02"], "ADT_A02"),
    ("ADT", &["A03"], "ADT_A03"),
    ("ADT", &["A05", "A14", "A28", "A31"], "ADT_A05"),
    ("ADT", &["A09", "A10", "A11"], "ADT_A09"),
    ("ADT", &["A39", "A40", "A41", "A42"], "ADT_A39"),
    ("ORU", &["R01"], "ORU_R01"),
    ("ORM", &["O01"], "ORM_O01"),
    (
        "SIU",
        &["S12", "S13", "S14", "S15", "S16", "S17", "S18", "S19", "S20", "S21", "S22", "S23", "S24", "S26"],
        "SIU_S12",
    ),
    ("MDM", &["T01", "T03", "T05", "T07", "T09", "T11"], "MDM_T01"),
    ("MDM", &["T02", "T04", "T06", "T08", "T10"], "MDM_T02"),
    ("VXU", &["V04"], "VXU_V04"),
];

/// The structure the standard assigns to a message code and trigger
/// (`ADT`, `A04` gives `ADT_A01`), among those this validator knows.
///
/// ```
/// assert_eq!(hl7v2::validate::structure_for("ADT", "A28"), Some("ADT_A05"));
/// assert_eq!(hl7v2::validate::structure_for("ACK", ""), Some("ACK"));
/// assert_eq!(hl7v2::validate::structure_for("BAR", "P01"), None);
/// ```
pub fn structure_for(code: &str, trigger: &str) -> Option<&'static str> {
    if code == "ACK" {
        return Some("ACK");
    }
    TRIGGERS.iter().find(|(c, triggers, _)| *c == code && triggers.contains(&trigger)).map(|(_, _, s)| *s)
}

fn grammars() -> &'static Vec<(&'static str, Vec<grammar::Item>)> {
    static PARSED: OnceLock<Vec<(&'static str, Vec<grammar::Item>)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        STRUCTURES
            .iter()
            .filter_map(|(name, text)| {
                let parsed = grammar::parse(text);
                debug_assert!(parsed.is_ok(), "structure {name} does not parse: {parsed:?}");
                parsed.ok().map(|g| (*name, g))
            })
            .collect()
    })
}

/// Whether the issues allow the message through: any error with a code of
/// 200 or more (unsupported type, event, processing id, version) rejects it,
/// any other error is an error, warnings and information accept it.
///
/// ```
/// use hl7v2::{validate, ack::Outcome};
/// let msg = hl7v2::Message::parse("MSH|^~\\&|A|B|C|D|20261121||ZZZ^Z01|1|P|2.5").unwrap();
/// assert_eq!(validate::outcome(&validate::validate(&msg)), Outcome::Accepted);
/// ```
pub fn outcome(issues: &[Issue]) -> Outcome {
    let errors = issues.iter().filter(|i| i.severity >= Severity::Error);
    let mut outcome = Outcome::Accepted;
    for issue in errors {
        if !issue.code.is_content_error() {
            return Outcome::Rejected;
        }
        outcome = Outcome::Errored;
    }
    outcome
}

/// Validates a message; an empty list means it is valid as far as this
/// validator checks (see the module docs). At most [`MAX_ISSUES`] issues.
///
/// ```
/// use hl7v2::{Message, validate};
/// let msg = Message::parse(
///     "MSH|^~\\&|A|B|C|D|20261121||ADT^A01^ADT_A01|1|P|2.5\rEVN||20261121\rPID|1||42^^^H^MR||Doe^J||19801301|X\rPV1|1|I",
/// ).unwrap();
/// let issues: Vec<String> = validate::validate(&msg).iter().map(|i| i.to_string()).collect();
/// assert_eq!(issues, [
///     "PID(1)-7: 102 Data type error: PID-7 is not a valid DTM: month out of range (E)",
///     "PID(1)-8: 103 Table value not found: PID-8 is not in HL7 table 0001 (E)",
/// ]);
/// ```
pub fn validate(msg: &Message) -> Vec<Issue> {
    let mut issues = Vec::new();
    let Some(msh) = msg.segment_at(0) else {
        return issues;
    };
    let Header { version, code, trigger } = header(&msh, &mut issues);
    let Some(structure) = structure_for(&code, &trigger) else {
        issues.truncate(MAX_ISSUES);
        return issues;
    };
    let declared = text(&msh, 9, 1, 3);
    if !declared.is_empty() && declared != structure {
        issues.push(Issue {
            location: Some(Location { component: Some(3), ..Location::field("MSH", 1, 9) }),
            code: ErrorCode::TableValueNotFound,
            severity: Severity::Warning,
            message: format!("MSH-9-3 {declared} is not the structure of {code}^{trigger} ({structure})"),
            diagnostic: None,
        });
    }
    if let Some((_, items)) = grammars().iter().find(|(n, _)| *n == structure) {
        let names: Vec<[u8; 3]> = msg
            .segments()
            .map(|s| s.raw())
            .filter(|raw| !raw.starts_with(b"Z"))
            .map(|raw| [raw[0], raw[1], raw[2]])
            .collect();
        if !matched_before(structure, version, &names) {
            let mut m = grammar::Matcher {
                segments: &names,
                version,
                structure,
                pos: 0,
                issues: Vec::new(),
                limit: MAX_ISSUES,
                spare: Vec::new(),
            };
            m.seq(items, &[]);
            let found = m.issues;
            if found.is_empty() {
                remember_match(structure, version, names);
            }
            issues.extend(found);
        }
    }
    // Occurrence of each segment name so far (counting per segment would be
    // quadratic in long results), with the name's rules, looked up once.
    let mut seen: Vec<([u8; 3], u32, &'static [types::Rule])> = Vec::new();
    for seg in msg.segments().skip(1) {
        if issues.len() >= MAX_ISSUES {
            break;
        }
        let raw = seg.raw();
        let name = [raw[0], raw[1], raw[2]];
        let (occurrence, rules) = match seen.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, count, rules)) => {
                *count += 1;
                (*count, *rules)
            }
            None => {
                let rules = types::rules_for(name);
                seen.push((name, 1, rules));
                (1, rules)
            }
        };
        fields(&seg, rules, occurrence, version, &mut issues);
    }
    issues.truncate(MAX_ISSUES);
    issues
}

/// Segment sequences (Z segments left out) that matched their structure
/// without an issue, most recent last, per thread. The matcher's answer
/// depends only on the structure, the version and the sequence, and a feed
/// sends the same few shapes again and again (an interface's ORU with its
/// 12 OBX): a repeated shape is checked by one comparison instead of a walk
/// of the grammar (about a quarter of a typical ORU's validation). Only
/// clean matches are kept, so issues are always found by the matcher.
struct MatchedShapes {
    shapes: Vec<(&'static str, Version, Vec<[u8; 3]>)>,
    /// The slot the next new shape takes once the list is full.
    next: usize,
}

/// How many shapes each thread remembers, and the longest one kept (a
/// longer message is matched every time rather than held in memory).
const MATCHED_SHAPES: usize = 16;
const MATCHED_SHAPE_MAX_SEGMENTS: usize = 512;

thread_local! {
    static MATCHED: std::cell::RefCell<MatchedShapes> =
        const { std::cell::RefCell::new(MatchedShapes { shapes: Vec::new(), next: 0 }) };
}

fn matched_before(structure: &str, version: Version, names: &[[u8; 3]]) -> bool {
    MATCHED
        .with(|m| m.borrow().shapes.iter().any(|(s, v, n)| *v == version && n.as_slice() == names && *s == structure))
}

fn remember_match(structure: &'static str, version: Version, names: Vec<[u8; 3]>) {
    if names.len() > MATCHED_SHAPE_MAX_SEGMENTS {
        return;
    }
    MATCHED.with(|m| {
        let mut m = m.borrow_mut();
        if m.shapes.len() < MATCHED_SHAPES {
            m.shapes.push((structure, version, names));
        } else {
            let slot = m.next;
            m.shapes[slot] = (structure, version, names);
            m.next = (slot + 1) % MATCHED_SHAPES;
        }
    });
}

/// A header value for an issue message: shown when it looks like a code,
/// replaced otherwise, so a malformed header cannot carry free text (which
/// could be patient data) into logs and ACKs.
fn shown(value: &str) -> &str {
    let code_like =
        value.len() <= 12 && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if code_like { value } else { "(value not shown)" }
}

/// Decoded text of SEG-field(rep)-component, trimmed, empty when absent.
/// Borrowed from the message unless it had escapes or another character
/// set to decode: the header alone asks for about ten of these per message.
fn text<'a>(seg: &Segment<'a>, field: usize, rep: usize, component: usize) -> Cow<'a, str> {
    match seg.field(field).and_then(|f| f.repetition(rep)).and_then(|r| r.component(component)).map(|c| c.text()) {
        Some(Cow::Borrowed(t)) => Cow::Borrowed(t.trim()),
        Some(Cow::Owned(t)) if t.trim().len() == t.len() => Cow::Owned(t),
        Some(Cow::Owned(t)) => Cow::Owned(t.trim().to_owned()),
        None => Cow::Borrowed(""),
    }
}

/// What the rest of the validation needs of the header.
struct Header<'a> {
    /// The version whose rules apply (2.5 when MSH-12 is missing or not a
    /// version).
    version: Version,
    /// MSH-9-1 and MSH-9-2, trimmed.
    code: Cow<'a, str>,
    trigger: Cow<'a, str>,
}

/// Checks MSH.
fn header<'a>(msh: &Segment<'a>, issues: &mut Vec<Issue>) -> Header<'a> {
    let msh = *msh;
    let at = |field: u32| Location::field("MSH", 1, field);
    let at_component = |field: u32, c: u32| Location { component: Some(c), ..at(field) };
    let raw_version = text(&msh, 12, 1, 1);
    let version = Version::parse(&raw_version);
    let rules_version = version.unwrap_or(Version::V2_5);

    let missing = |f: u32| Issue::error(at(f), ErrorCode::RequiredFieldMissing, format!("MSH-{f} is required"));
    let code = text(&msh, 9, 1, 1);
    let trigger = text(&msh, 9, 1, 2);
    if code.is_empty() {
        issues.push(missing(9));
    } else if !types::T0076.contains(&&*code) && !code.starts_with('Z') {
        issues.push(Issue::error(
            at_component(9, 1),
            ErrorCode::UnsupportedMessageType,
            format!("message type {} is not in HL7 table 0076", shown(&code)),
        ));
    }
    if trigger.is_empty() {
        if !code.is_empty() && code != "ACK" {
            issues.push(Issue::error(
                at_component(9, 2),
                ErrorCode::RequiredFieldMissing,
                "MSH-9-2 (trigger event) is required",
            ));
        }
    } else if !types::is_event(&trigger) {
        issues.push(Issue::error(
            at_component(9, 2),
            ErrorCode::UnsupportedEventCode,
            format!("trigger event {} is not in HL7 table 0003", shown(&trigger)),
        ));
    }
    // An absent MSH-10 reads as empty too.
    if text(&msh, 10, 1, 1).is_empty() {
        issues.push(missing(10));
    }
    let processing = text(&msh, 11, 1, 1);
    if processing.is_empty() {
        issues.push(missing(11));
    } else if !types::T0103.contains(&&*processing) {
        issues.push(Issue::error(
            at_component(11, 1),
            ErrorCode::UnsupportedProcessingId,
            format!("processing id {} is not in HL7 table 0103", shown(&processing)),
        ));
    }
    if raw_version.is_empty() {
        issues.push(missing(12));
    } else if !types::T0104.contains(&&*raw_version) {
        issues.push(Issue::error(
            at_component(12, 1),
            ErrorCode::UnsupportedVersionId,
            format!("version {} is not in HL7 table 0104", shown(&raw_version)),
        ));
    }
    let timestamp = text(&msh, 7, 1, 1);
    if timestamp.is_empty() {
        if rules_version >= Version::V2_5 {
            issues.push(missing(7));
        }
    } else if let Err(why) = check_dtm(&timestamp) {
        issues.push(Issue::error(at(7), ErrorCode::DataTypeError, format!("MSH-7 is not a valid DTM: {why}")));
    }
    for f in [15u32, 16] {
        let v = text(&msh, f as usize, 1, 1);
        if !v.is_empty() && !types::T0155.contains(&&*v) {
            issues.push(Issue::error(
                at(f),
                ErrorCode::TableValueNotFound,
                format!("MSH-{f} is not in HL7 table 0155"),
            ));
        }
    }
    Header { version: rules_version, code, trigger }
}

fn fields(seg: &Segment<'_>, rules: &[types::Rule], occurrence: u32, version: Version, issues: &mut Vec<Issue>) {
    if rules.is_empty() {
        return;
    }
    let name = seg.name();
    for rule in rules {
        let field = seg.field(rule.field as usize);
        let valued = field.is_some_and(|f| !f.is_empty());
        if !valued {
            if rule.required_since.is_some_and(|v| v <= version) {
                issues.push(Issue::error(
                    Location::field(name, occurrence, rule.field),
                    ErrorCode::RequiredFieldMissing,
                    format!("{name}-{} is required", rule.field),
                ));
            }
            continue;
        }
        let Some(field) = field else { continue };
        if rule.kind == types::Kind::Text && rule.table.is_none() {
            // Presence, checked above, is all such a rule asks: no value to
            // decode (most rules of a long result are of this kind).
            continue;
        }
        for (r, rep) in field.repetitions().enumerate() {
            let value = rep.component(1).map(|c| c.text()).unwrap_or_default();
            if value.is_empty() || rep.is_null() {
                continue;
            }
            // Counted only to locate an issue: valid messages never need it.
            let at = || Location {
                repetition: (field.repetition_count() > 1).then_some(r as u32 + 1),
                ..Location::field(name, occurrence, rule.field)
            };
            if let Some(issue) = types::check(rule, &value, name, at) {
                issues.push(issue);
            }
        }
    }
    if name == "OBX" {
        obx(seg, occurrence, issues);
    }
}

/// OBX-2 is required when OBX-5 is valued, and OBX-5 must be NM when OBX-2
/// says so.
fn obx(seg: &Segment<'_>, occurrence: u32, issues: &mut Vec<Issue>) {
    let value_type = text(seg, 2, 1, 1);
    let Some(value) = seg.field(5).filter(|f| !f.is_empty()) else {
        return;
    };
    if value_type.is_empty() {
        issues.push(Issue::error(
            Location::field("OBX", occurrence, 2),
            ErrorCode::RequiredFieldMissing,
            "OBX-2 is required when OBX-5 is valued",
        ));
        return;
    }
    if value_type != "NM" {
        return;
    }
    for (r, rep) in value.repetitions().enumerate() {
        if rep.is_empty() || rep.is_null() {
            continue;
        }
        if let Err(why) = check_nm(&rep.text()) {
            // Counted only here: a valid value never needs it.
            let reps = value.repetition_count();
            issues.push(Issue::error(
                Location { repetition: (reps > 1).then_some(r as u32 + 1), ..Location::field("OBX", occurrence, 5) },
                ErrorCode::DataTypeError,
                format!("OBX-5 is not a valid NM (OBX-2 is NM): {why}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(text: &str) -> Vec<String> {
        validate(&Message::parse(text).unwrap()).iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn header_issues_use_codes_200_to_203_and_hide_free_text() {
        assert_eq!(
            issues("MSH|^~\\&|A|B|C|D|20261121||Jane Doe^A99|1|X|3.0"),
            [
                "MSH(1)-9-1: 200 Unsupported message type: message type (value not shown) is not in HL7 table 0076 (E)",
                "MSH(1)-9-2: 201 Unsupported event code: trigger event A99 is not in HL7 table 0003 (E)",
                "MSH(1)-11-1: 202 Unsupported processing id: processing id X is not in HL7 table 0103 (E)",
                "MSH(1)-12-1: 203 Unsupported version id: version 3.0 is not in HL7 table 0104 (E)",
            ]
        );
        assert_eq!(
            outcome(&validate(&Message::parse("MSH|^~\\&|A||||20261121||ADT^A99|1|P|2.5").unwrap())),
            Outcome::Rejected
        );
    }

    #[test]
    fn missing_header_fields_are_required_field_errors() {
        assert_eq!(
            issues("MSH|^~\\&|A"),
            [
                "MSH(1)-9: 101 Required field missing: MSH-9 is required (E)",
                "MSH(1)-10: 101 Required field missing: MSH-10 is required (E)",
                "MSH(1)-11: 101 Required field missing: MSH-11 is required (E)",
                "MSH(1)-12: 101 Required field missing: MSH-12 is required (E)",
                "MSH(1)-7: 101 Required field missing: MSH-7 is required (E)",
            ]
        );
        // MSH-7 became required in 2.5.
        assert!(issues("MSH|^~\\&|A||||||BAR^P01|1|P|2.4").is_empty());
    }

    #[test]
    fn obx_value_is_checked_as_nm_when_obx_2_says_so() {
        let text =
            "MSH|^~\\&|A||||20261121||ORU^R01|1|P|2.5\rOBR|1|||X\rOBX|1|NM|X||1.5~abc||||||F\rOBX|2||X||7||||||F";
        assert_eq!(
            issues(text),
            [
                "OBX(1)-5(2): 102 Data type error: OBX-5 is not a valid NM (OBX-2 is NM): not a number (E)",
                "OBX(2)-2: 101 Required field missing: OBX-2 is required when OBX-5 is valued (E)",
            ]
        );
    }

    #[test]
    fn a_remembered_shape_does_not_hide_issues_of_another_version_or_structure() {
        // Segment sequence issues only (the fields here are not the point).
        let sequence = |text: &str| -> Vec<String> {
            issues(text).into_iter().filter(|i| i.contains(": 100 Segment sequence error")).collect()
        };
        // Valid in 2.5, where SFT exists: the shape is remembered.
        let v25 = "MSH|^~\\&|A||||20261121||ORU^R01|1|P|2.5\rSFT|X\rPID|1\rOBR|1|||X";
        assert_eq!(sequence(v25), Vec::<String>::new());
        assert_eq!(sequence(v25), Vec::<String>::new());
        // The same segments in 2.4 still fail: SFT came in 2.5.
        let v24 = v25.replace("|P|2.5", "|P|2.4");
        assert_eq!(
            sequence(&v24),
            ["SFT(1): 100 Segment sequence error: segment SFT is not expected here in ORU_R01 (2.4) (E)"]
        );
        assert_eq!(sequence(&v24).len(), 1, "asked twice, still found");
        // Under another structure the same sequence is matched again.
        let adt = v25.replace("ORU^R01", "ADT^A01");
        assert!(sequence(&adt).iter().any(|i| i.contains("required segment EVN is missing")), "{:?}", issues(&adt));
        // A remembered shape with one more segment is still checked.
        let extra = format!("{v25}\rSFT|Y");
        assert_eq!(sequence(&extra).len(), 1, "{:?}", issues(&extra));
    }

    #[test]
    fn every_structure_parses() {
        assert_eq!(grammars().len(), STRUCTURES.len());
        for (_, triggers, structure) in TRIGGERS {
            assert!(STRUCTURES.iter().any(|(s, _)| s == structure), "{structure}");
            assert!(!triggers.is_empty());
        }
    }
}
