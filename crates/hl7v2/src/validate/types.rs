//! Data types, built-in tables and the field rules of the validated segments.

use crate::Version;
use crate::issue::{ErrorCode, Issue, Location};

/// Checks a DTM (and the first component of a TS): `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`,
/// with real calendar and clock ranges.
///
/// ```
/// use hl7v2::validate::check_dtm;
/// assert!(check_dtm("2026").is_ok());
/// assert!(check_dtm("20261121120000.1234+0100").is_ok());
/// assert!(check_dtm("202611211200-0530").is_ok());
/// assert_eq!(check_dtm("20260230"), Err("day out of range"));
/// assert_eq!(check_dtm("2026112"), Err("wrong number of digits for a precision"));
/// assert_eq!(check_dtm("20261121.5"), Err("fraction of a second without seconds"));
/// assert_eq!(check_dtm("2026+01"), Err("time zone offset is not +/-HHMM"));
/// ```
pub fn check_dtm(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    // One pass finds the offset's sign, the first point before it, and
    // whether everything before both is digits: a message has a dozen
    // timestamps and this runs on each.
    let (mut sign, mut point, mut all_digits) = (None, None, true);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'+' | b'-' => {
                sign = Some(i);
                break;
            }
            b'.' if point.is_none() => point = Some(i),
            c if point.is_none() && !c.is_ascii_digit() => all_digits = false,
            _ => {}
        }
    }
    let main = &b[..sign.unwrap_or(b.len())];
    let offset = sign.map(|i| &b[i + 1..]);
    let digits = &main[..point.unwrap_or(main.len())];
    let fraction = point.map(|i| &main[i + 1..]);
    check_dtm_parts(all_digits, digits, fraction, offset)
}

/// The checks of a DTM once it is split into the digits before the point
/// (`all_digits` says whether they are all digits), the fraction after the
/// point and the offset after the sign.
fn check_dtm_parts(
    all_digits: bool,
    digits: &[u8],
    fraction: Option<&[u8]>,
    offset: Option<&[u8]>,
) -> Result<(), &'static str> {
    if !all_digits {
        return Err("not digits");
    }
    if ![4, 6, 8, 10, 12, 14].contains(&digits.len()) {
        return Err("wrong number of digits for a precision");
    }
    date_parts(&digits[..digits.len().min(8)])?;
    let n = |i: usize| u32::from(digits[i] - b'0') * 10 + u32::from(digits[i + 1] - b'0');
    if digits.len() >= 10 && n(8) > 23 {
        return Err("hour out of range");
    }
    if digits.len() >= 12 && n(10) > 59 {
        return Err("minute out of range");
    }
    if digits.len() >= 14 && n(12) > 59 {
        return Err("second out of range");
    }
    if let Some(f) = fraction {
        if digits.len() != 14 {
            return Err("fraction of a second without seconds");
        }
        if f.is_empty() || f.len() > 4 || !f.iter().all(u8::is_ascii_digit) {
            return Err("fraction of a second is not 1 to 4 digits");
        }
    }
    if let Some(z) = offset {
        if z.len() != 4 || !z.iter().all(u8::is_ascii_digit) {
            return Err("time zone offset is not +/-HHMM");
        }
        let hours = u32::from(z[0] - b'0') * 10 + u32::from(z[1] - b'0');
        let minutes = u32::from(z[2] - b'0') * 10 + u32::from(z[3] - b'0');
        if hours > 14 || minutes > 59 {
            return Err("time zone offset out of range");
        }
    }
    Ok(())
}

/// Checks a DT: `YYYY[MM[DD]]`.
///
/// ```
/// use hl7v2::validate::check_dt;
/// assert!(check_dt("20240229").is_ok());
/// assert_eq!(check_dt("20230229"), Err("day out of range"));
/// assert_eq!(check_dt("2024022"), Err("not YYYY, YYYYMM or YYYYMMDD"));
/// ```
pub fn check_dt(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    if ![4, 6, 8].contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
        return Err("not YYYY, YYYYMM or YYYYMMDD");
    }
    date_parts(b)
}

fn date_parts(d: &[u8]) -> Result<(), &'static str> {
    let num = |s: &[u8]| s.iter().fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
    let year = num(&d[..4]);
    if d.len() >= 6 {
        let month = num(&d[4..6]);
        if !(1..=12).contains(&month) {
            return Err("month out of range");
        }
        if d.len() >= 8 {
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let days = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            if !(1..=days).contains(&num(&d[6..8])) {
                return Err("day out of range");
            }
        }
    }
    Ok(())
}

/// Checks an NM: an optional sign, digits, an optional decimal point.
///
/// ```
/// use hl7v2::validate::check_nm;
/// assert!(check_nm("-12.50").is_ok());
/// assert!(check_nm(".5").is_ok());
/// assert_eq!(check_nm("1,5"), Err("not a number"));
/// assert_eq!(check_nm("+"), Err("not a number"));
/// ```
pub fn check_nm(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    let b = b.strip_prefix(b"+").or_else(|| b.strip_prefix(b"-")).unwrap_or(b);
    let dots = b.iter().filter(|&&c| c == b'.').count();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if dots > 1 || digits == 0 || digits + dots != b.len() {
        return Err("not a number");
    }
    Ok(())
}

/// Checks an SI: a non-negative integer of at most four digits.
///
/// ```
/// use hl7v2::validate::check_si;
/// assert!(check_si("1").is_ok());
/// assert_eq!(check_si("-1"), Err("not a non-negative integer of up to 4 digits"));
/// ```
pub fn check_si(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    if b.is_empty() || b.len() > 4 || !b.iter().all(u8::is_ascii_digit) {
        return Err("not a non-negative integer of up to 4 digits");
    }
    Ok(())
}

/// HL7 table 0001, administrative sex.
pub(crate) const T0001: &[&str] = &["A", "F", "M", "N", "O", "U"];
/// HL7 table 0008, acknowledgment code.
pub(crate) const T0008: &[&str] = &["AA", "AE", "AR", "CA", "CE", "CR"];
/// HL7 table 0076, message type.
pub(crate) const T0076: &[&str] = &[
    "ACK", "ADR", "ADT", "BAR", "BPS", "BRP", "BRT", "BTS", "CCF", "CCI", "CCM", "CCQ", "CCU", "CQU", "CRM", "CSU",
    "DBC", "DBU", "DEL", "DFT", "DOC", "DPR", "DRC", "DRG", "DSR", "EAC", "EAN", "EAR", "EHC", "ESR", "ESU", "INR",
    "INU", "LSR", "LSU", "MDM", "MFD", "MFK", "MFN", "MFQ", "MFR", "NMD", "NMQ", "NMR", "OMB", "OMD", "OMG", "OMI",
    "OML", "OMN", "OMP", "OMQ", "OMS", "OPL", "OPR", "OPU", "ORA", "ORB", "ORD", "ORF", "ORG", "ORI", "ORL", "ORM",
    "ORN", "ORP", "ORR", "ORS", "ORU", "ORX", "OSM", "OSQ", "OSR", "OSU", "OUL", "PEX", "PGL", "PIN", "PMU", "PPG",
    "PPP", "PPR", "PPT", "PPV", "PRR", "PTR", "QBP", "QCK", "QCN", "QRF", "QRY", "QSB", "QSX", "QVR", "RAR", "RAS",
    "RCI", "RCL", "RDE", "RDR", "RDS", "RDY", "REF", "RER", "RGR", "RGV", "ROC", "ROD", "ROR", "RPA", "RPI", "RPL",
    "RPR", "RQA", "RQC", "RQI", "RQP", "RRA", "RRD", "RRE", "RRG", "RRI", "RSP", "RTB", "SCN", "SDN", "SDR", "SIU",
    "SLN", "SLR", "SMD", "SQM", "SQR", "SRM", "SRR", "SSR", "SSU", "STC", "STI", "SUR", "TBR", "TCR", "TCU", "UDM",
    "VXQ", "VXR", "VXU", "VXX",
];
/// HL7 table 0085, observation result status.
pub(crate) const T0085: &[&str] = &["A", "C", "D", "F", "I", "N", "O", "P", "R", "S", "U", "W", "X"];
/// HL7 table 0103, processing id.
pub(crate) const T0103: &[&str] = &["D", "P", "T"];
/// HL7 table 0104, version id.
pub(crate) const T0104: &[&str] = &[
    "2.0", "2.0D", "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2",
    "2.9",
];
/// HL7 table 0155, accept/application acknowledgment conditions.
pub(crate) const T0155: &[&str] = &["AL", "ER", "NE", "SU"];

/// HL7 table 0003, event type: the ranges the standard defines up to 2.8,
/// plus site-specific `Z..` events.
pub(crate) fn is_event(code: &str) -> bool {
    const RANGES: &[(u8, u8, u8)] = &[
        (b'A', 1, 62),
        (b'B', 1, 8),
        (b'C', 1, 12),
        (b'E', 1, 31),
        (b'I', 1, 23),
        (b'J', 1, 2),
        (b'K', 11, 35),
        (b'M', 1, 17),
        (b'N', 1, 2),
        (b'O', 1, 59),
        (b'P', 1, 12),
        (b'Q', 1, 35),
        (b'R', 1, 45),
        (b'S', 1, 37),
        (b'T', 1, 12),
        (b'U', 1, 13),
        (b'V', 1, 4),
        (b'W', 1, 2),
    ];
    let b = code.as_bytes();
    if b.first() == Some(&b'Z') || matches!(code, "CNQ" | "ROR" | "NMQ") {
        return true;
    }
    if let [b'P', b'C', c] = b {
        return c.is_ascii_digit() && *c != b'0' || (b'A'..=b'L').contains(c);
    }
    match b {
        [letter, d1, d2] if d1.is_ascii_digit() && d2.is_ascii_digit() => {
            let n = (d1 - b'0') * 10 + (d2 - b'0');
            RANGES.iter().any(|&(l, lo, hi)| l == *letter && (lo..=hi).contains(&n))
        }
        _ => false,
    }
}

/// The data type a rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Presence and table only.
    Text,
    Si,
    Nm,
    Dt,
    /// DTM, or the first component of a TS.
    Ts,
}

/// One field rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) segment: &'static str,
    pub(crate) field: u32,
    pub(crate) kind: Kind,
    /// Required from this version on (`Some(V2_3)`: always here).
    pub(crate) required_since: Option<Version>,
    pub(crate) table: Option<(&'static str, &'static [&'static str])>,
}

const ALWAYS: Option<Version> = Some(Version::V2_3);

const fn rule(segment: &'static str, field: u32, kind: Kind, required_since: Option<Version>) -> Rule {
    Rule { segment, field, kind, required_since, table: None }
}

const fn coded(
    segment: &'static str,
    field: u32,
    required_since: Option<Version>,
    table: (&'static str, &'static [&'static str]),
) -> Rule {
    Rule { segment, field, kind: Kind::Text, required_since, table: Some(table) }
}

/// Table 0003 is a predicate, not a list: marked with an empty slice.
const EVENT: (&str, &[&str]) = ("0003", &[]);

/// Fields checked in the segments of validated messages. The list is the
/// fields that routing, patient matching and conversion rely on, with their
/// optionality in 2.3 to 2.8.
pub(crate) const RULES: &[Rule] = &[
    coded("EVN", 1, None, EVENT),
    rule("EVN", 2, Kind::Ts, ALWAYS),
    rule("EVN", 3, Kind::Ts, None),
    rule("EVN", 6, Kind::Ts, None),
    rule("PID", 1, Kind::Si, None),
    rule("PID", 3, Kind::Text, ALWAYS),
    rule("PID", 5, Kind::Text, ALWAYS),
    rule("PID", 7, Kind::Ts, None),
    coded("PID", 8, None, ("0001", T0001)),
    rule("PID", 29, Kind::Ts, None),
    rule("PID", 33, Kind::Ts, None),
    rule("NK1", 1, Kind::Si, ALWAYS),
    rule("NK1", 8, Kind::Dt, None),
    rule("NK1", 9, Kind::Dt, None),
    coded("NK1", 15, None, ("0001", T0001)),
    rule("NK1", 16, Kind::Ts, None),
    rule("PV1", 1, Kind::Si, None),
    rule("PV1", 2, Kind::Text, ALWAYS),
    rule("PV1", 44, Kind::Ts, None),
    rule("PV1", 45, Kind::Ts, None),
    rule("MRG", 1, Kind::Text, ALWAYS),
    rule("DB1", 1, Kind::Si, ALWAYS),
    rule("AL1", 1, Kind::Si, ALWAYS),
    rule("AL1", 3, Kind::Text, ALWAYS),
    rule("AL1", 6, Kind::Dt, None),
    rule("DG1", 1, Kind::Si, ALWAYS),
    rule("DG1", 5, Kind::Ts, None),
    rule("DG1", 6, Kind::Text, ALWAYS),
    rule("PR1", 1, Kind::Si, ALWAYS),
    rule("PR1", 3, Kind::Text, ALWAYS),
    rule("PR1", 5, Kind::Ts, ALWAYS),
    rule("GT1", 1, Kind::Si, ALWAYS),
    rule("GT1", 3, Kind::Text, ALWAYS),
    rule("GT1", 8, Kind::Dt, None),
    coded("GT1", 9, None, ("0001", T0001)),
    rule("IN1", 1, Kind::Si, ALWAYS),
    rule("IN1", 2, Kind::Text, ALWAYS),
    rule("IN1", 3, Kind::Text, ALWAYS),
    rule("IN1", 12, Kind::Dt, None),
    rule("IN1", 13, Kind::Dt, None),
    coded("IN1", 43, None, ("0001", T0001)),
    rule("ORC", 1, Kind::Text, ALWAYS),
    rule("ORC", 9, Kind::Ts, None),
    rule("OBR", 1, Kind::Si, None),
    rule("OBR", 4, Kind::Text, ALWAYS),
    rule("OBR", 6, Kind::Ts, None),
    rule("OBR", 7, Kind::Ts, None),
    rule("OBR", 8, Kind::Ts, None),
    rule("OBR", 14, Kind::Ts, None),
    rule("OBR", 22, Kind::Ts, None),
    rule("OBX", 1, Kind::Si, None),
    rule("OBX", 3, Kind::Text, ALWAYS),
    coded("OBX", 11, ALWAYS, ("0085", T0085)),
    rule("OBX", 14, Kind::Ts, None),
    rule("OBX", 19, Kind::Ts, None),
    rule("NTE", 1, Kind::Si, None),
    rule("TQ1", 1, Kind::Si, None),
    rule("TQ1", 7, Kind::Ts, None),
    rule("TQ1", 8, Kind::Ts, None),
    rule("SPM", 1, Kind::Si, None),
    rule("TXA", 1, Kind::Si, ALWAYS),
    rule("TXA", 2, Kind::Text, ALWAYS),
    rule("TXA", 4, Kind::Ts, None),
    rule("TXA", 12, Kind::Text, ALWAYS),
    rule("TXA", 17, Kind::Text, ALWAYS),
    rule("RGS", 1, Kind::Si, ALWAYS),
    rule("AIS", 1, Kind::Si, ALWAYS),
    rule("AIG", 1, Kind::Si, ALWAYS),
    rule("AIL", 1, Kind::Si, ALWAYS),
    rule("AIP", 1, Kind::Si, ALWAYS),
    rule("RXA", 1, Kind::Nm, ALWAYS),
    rule("RXA", 2, Kind::Nm, ALWAYS),
    rule("RXA", 3, Kind::Ts, ALWAYS),
    rule("RXA", 4, Kind::Ts, ALWAYS),
    rule("RXA", 5, Kind::Text, ALWAYS),
    rule("RXA", 6, Kind::Nm, ALWAYS),
    rule("RXR", 1, Kind::Text, ALWAYS),
    coded("MSA", 1, ALWAYS, ("0008", T0008)),
    rule("MSA", 2, Kind::Text, ALWAYS),
];

/// Checks one repetition's first component against a rule. `at` builds
/// the location only when there is something to report: validation runs on
/// every message, and most values are fine.
pub(crate) fn check(rule: &Rule, value: &str, segment: &str, at: impl FnOnce() -> Location) -> Option<Issue> {
    let result = match rule.kind {
        Kind::Text => Ok(()),
        Kind::Si => check_si(value).map_err(|w| ("SI", w)),
        Kind::Nm => check_nm(value).map_err(|w| ("NM", w)),
        Kind::Dt => check_dt(value).map_err(|w| ("DT", w)),
        Kind::Ts => check_dtm(value).map_err(|w| ("DTM", w)),
    };
    if let Err((ty, why)) = result {
        return Some(Issue::error(
            at(),
            ErrorCode::DataTypeError,
            format!("{segment}-{} is not a valid {ty}: {why}", rule.field),
        ));
    }
    let (table, values) = rule.table?;
    let known = if table == "0003" { is_event(value) } else { values.contains(&value) };
    (!known).then(|| {
        Issue::error(
            at(),
            ErrorCode::TableValueNotFound,
            format!("{segment}-{} is not in HL7 table {table}", rule.field),
        )
    })
}

/// The rules of one segment (they are contiguous in [`RULES`]).
pub(crate) fn rules_for(name: [u8; 3]) -> &'static [Rule] {
    // Looked up for every segment of every message: an index of the runs,
    // compared as 3-byte arrays, instead of a string comparison per rule.
    static INDEX: std::sync::OnceLock<Vec<([u8; 3], usize, usize)>> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut runs: Vec<([u8; 3], usize, usize)> = Vec::new();
        for (i, rule) in RULES.iter().enumerate() {
            let b = rule.segment.as_bytes();
            let key = [b[0], b[1], b[2]];
            match runs.last_mut() {
                Some((last, _, end)) if *last == key => *end = i + 1,
                _ => runs.push((key, i, i + 1)),
            }
        }
        runs
    });
    index.iter().find(|(key, _, _)| *key == name).map_or(&[], |&(_, start, end)| &RULES[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_dtm`'s split as it was written before its one-pass scan: at
    /// the sign, then at the point, then the digits checked apart (the
    /// checks after the split are the same function).
    fn check_dtm_reference(value: &str) -> Result<(), &'static str> {
        let b = value.as_bytes();
        let (main, offset) = match b.iter().position(|&c| c == b'+' || c == b'-') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        };
        let (digits, fraction) = match main.iter().position(|&c| c == b'.') {
            Some(i) => (&main[..i], Some(&main[i + 1..])),
            None => (main, None),
        };
        check_dtm_parts(digits.iter().all(u8::is_ascii_digit), digits, fraction, offset)
    }

    proptest::proptest! {
        #[test]
        fn dtm_one_pass_answers_as_the_reference(
            value in "(19|20)?[0-9]{0,12}(\\.[0-9a.]{0,5})?([+-][0-9a]{0,5})?|[0-9.+ a-]{0,24}"
        ) {
            proptest::prop_assert_eq!(check_dtm(&value), check_dtm_reference(&value), "{:?}", value);
        }
    }

    #[test]
    fn event_table_covers_the_fixture_triggers_and_refuses_typos() {
        for e in ["A01", "A62", "R01", "O01", "S26", "T11", "V04", "PC1", "PCL", "Z99"] {
            assert!(is_event(e), "{e}");
        }
        for e in ["A63", "A00", "R1", "PC0", "XYZ", "a01", ""] {
            assert!(!is_event(e), "{e}");
        }
    }

    #[test]
    fn rules_of_a_segment_are_contiguous() {
        let mut seen: Vec<&str> = Vec::new();
        for pair in RULES.windows(2) {
            if pair[0].segment != pair[1].segment {
                assert!(!seen.contains(&pair[1].segment), "{} split", pair[1].segment);
                seen.push(pair[0].segment);
            }
        }
        assert_eq!(rules_for(*b"PID").len(), 7);
        assert!(rules_for(*b"ZZZ").is_empty());
    }

    #[test]
    fn dtm_edges() {
        for ok in [
            "2000",
            "200002",
            "20000229",
            "2000022923",
            "200002292359",
            "20000229235959",
            "20000229235959.1",
            "20261121-1400",
        ] {
            assert_eq!(check_dtm(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "19000229",
            "2026132",
            "2026112124",
            "202611212360",
            "20261121235960",
            "20261121235959.12345",
            "20261121+1500",
            "20261121+0160",
            "2026-11-21",
            "20261121 ",
        ] {
            assert!(check_dtm(bad).is_err(), "{bad}");
        }
    }
}
