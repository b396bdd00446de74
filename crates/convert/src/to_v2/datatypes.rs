//! FHIR data types to HL7 v2 composites (the reverse of the v2-to-FHIR
//! datatype maps): dateTime to DTM, CodeableConcept/Coding to CWE,
//! Identifier to CX/EI, HumanName to XPN/XCN, Address to XAD,
//! ContactPoint to XTN, Quantity units to CWE (UCUM).

use serde_json::Value;

use super::SegW;
use crate::options::FhirToHl7Options;
use crate::terminology;

/// A string member.
pub(crate) fn st<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A JSON number or string as HL7 NM text (as written, no float noise).
///
/// A number is printed as serde_json holds it: the shortest text that reads
/// back as the same f64 (1.5), or the text as written when serde_json's
/// `arbitrary_precision` feature is on (1.50). HL7 NM has no exponent, so
/// `1e-7` or `1e21` is written out in plain digits.
pub(crate) fn num(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => plain_decimal(&n.to_string()),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// [`num`] for a value OBX-5 holds as NM: a JSON number, or (leniently) a
/// string holding one; anything else is an error saying so, since "abc" in
/// an NM field is a message its receiver rejects.
pub(crate) fn checked_num(v: Option<&Value>) -> Result<String, String> {
    match v {
        None | Some(Value::Null) | Some(Value::Number(_)) => Ok(num(v)),
        Some(Value::String(s)) if is_decimal(s) => Ok(plain_decimal(s)),
        Some(_) => Err("not a number (a FHIR decimal or integer is a JSON number)".into()),
    }
}

/// Whether `s` is JSON number syntax (FHIR's decimal pattern).
fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exponent) = s.split_once(['e', 'E']).unwrap_or((s, "0"));
    let (int, frac) = mantissa.split_once('.').map_or((mantissa, None), |(i, f)| (i, Some(f)));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(digits) && digits(exponent)
}

/// `text` (a JSON number) without an exponent: the digits moved by the
/// exponent, none changed. Text that is not a number in exponent form comes
/// back as it was.
fn plain_decimal(text: &str) -> String {
    let Some((mantissa, exponent)) = text.split_once(['e', 'E']) else { return text.to_string() };
    // An exponent beyond what an f64 can hold would only make a huge string.
    let Some(exponent) = exponent.parse::<i64>().ok().filter(|e| e.abs() <= 400) else { return text.to_string() };
    let (sign, unsigned) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return text.to_string();
    }
    let digits = [int, frac].concat();
    // Where the decimal point falls in `digits`, counted from the left.
    let point = i64::try_from(int.len()).unwrap_or(i64::MAX).saturating_add(exponent);
    let (whole, fraction) = if point <= 0 {
        (String::from("0"), "0".repeat(usize::try_from(-point).unwrap_or(0)) + &digits)
    } else {
        let point = usize::try_from(point).unwrap_or(usize::MAX);
        if point >= digits.len() {
            (digits.clone() + &"0".repeat(point - digits.len()), String::new())
        } else {
            (digits[..point].to_string(), digits[point..].to_string())
        }
    };
    let whole = match whole.trim_start_matches('0') {
        "" => "0",
        significant => significant,
    };
    // Trailing zeros of the mantissa are kept: they are its precision.
    if fraction.is_empty() { [sign, whole].concat() } else { [sign, whole, ".", &fraction].concat() }
}

/// The FHIR R4 primitive a time element is declared as; each has its own
/// regular expression in the specification (and a date must exist in the
/// calendar, which no regular expression says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeKind {
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    Date,
    /// A date, or a full date with `Thh:mm:ss[.f...]` and a time zone.
    DateTime,
    /// A full date, time and time zone.
    Instant,
}

impl TimeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TimeKind::Date => "date",
            TimeKind::DateTime => "dateTime",
            TimeKind::Instant => "instant",
        }
    }
}

/// Two ASCII digits at `at` as a number.
fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at + 2)? {
        [x @ b'0'..=b'9', y @ b'0'..=b'9'] => Some(u32::from(x - b'0') * 10 + u32::from(y - b'0')),
        _ => None,
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A FHIR date, dateTime or instant (`kind`) as a v2 DTM:
/// `2012-03-14T23:59:54.325-05:00` becomes `20120314235954.325-0500`, `Z`
/// becomes `+0000`, a date keeps its precision, a fraction keeps at most
/// the four digits DTM holds. A value that does not match the FHIR R4
/// regular expression for `kind`, or names a day that does not exist
/// (2023-02-29, 2024-04-31), is an error saying what is wrong (without the
/// value, which may be patient data): converting it anyway would put a
/// wrong or empty time into the message.
pub(crate) fn v2_time(t: &str, kind: TimeKind) -> Result<String, String> {
    let fail = |what: &str| Err(format!("{what} (not a valid FHIR {})", kind.name()));
    let b = t.as_bytes();
    if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) {
        return fail("the year must be four digits");
    }
    if &b[..4] == b"0000" {
        return fail("year 0000 does not exist");
    }
    let year: u32 = t[..4].parse().unwrap_or(0);
    let mut out = String::with_capacity(24);
    out.push_str(&t[..4]);
    let incomplete =
        |out: String| if kind == TimeKind::Instant { fail("an instant needs a full date and time") } else { Ok(out) };
    if b.len() == 4 {
        return incomplete(out);
    }
    let Some(month) = (b[4] == b'-').then(|| two_digits(b, 5)).flatten() else {
        return fail("the month must be two digits after a '-'");
    };
    if !(1..=12).contains(&month) {
        return fail(&format!("month {month:02} does not exist"));
    }
    out.push_str(&t[5..7]);
    if b.len() == 7 {
        return incomplete(out);
    }
    let Some(day) = (b[7] == b'-').then(|| two_digits(b, 8)).flatten() else {
        return fail("the day must be two digits after a '-'");
    };
    if day == 0 || day > days_in_month(year, month) {
        let leap = if month == 2 && day == 29 { " (not a leap year)" } else { "" };
        return fail(&format!("day {day:02} does not exist in month {month:02}{leap}"));
    }
    out.push_str(&t[8..10]);
    if b.len() == 10 {
        return incomplete(out);
    }
    if kind == TimeKind::Date {
        return fail("a date has no time");
    }
    let clock = (b[10] == b'T' && b.get(13) == Some(&b':') && b.get(16) == Some(&b':'))
        .then(|| Some((two_digits(b, 11)?, two_digits(b, 14)?, two_digits(b, 17)?)))
        .flatten();
    let Some((hour, minute, second)) = clock else {
        return fail("the time must be 'T' and hh:mm:ss");
    };
    if hour > 23 || minute > 59 || second > 60 {
        return fail("the time is out of range (hours 00-23, minutes 00-59, seconds 00-60)");
    }
    out.push_str(&t[11..13]);
    out.push_str(&t[14..16]);
    out.push_str(&t[17..19]);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return fail("a '.' after the seconds must be followed by digits");
        }
        out.push('.');
        out.push_str(&t[i + 1..i + 1 + digits.min(4)]);
        i += 1 + digits;
    }
    match b.get(i) {
        Some(b'Z') if b.len() == i + 1 => out.push_str("+0000"),
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let zone = two_digits(b, i + 1).zip(two_digits(b, i + 4));
            match zone {
                Some((h, m)) if (h <= 13 && m <= 59) || (h, m) == (14, 0) => {
                    out.push(char::from(*sign));
                    out.push_str(&t[i + 1..i + 3]);
                    out.push_str(&t[i + 4..i + 6]);
                }
                _ => return fail("the time zone is out of range (-14:00 to +14:00)"),
            }
        }
        None => return fail("a time needs a time zone (Z or +hh:mm)"),
        _ => return fail("the time zone must be Z or +hh:mm / -hh:mm, and nothing after it"),
    }
    Ok(out)
}

/// A FHIR `time` (`hh:mm:ss[.f...]`, no zone) as a v2 TM (`hhmmss[.ffff]`);
/// an error saying why for anything else (25:99 is not a time of day).
pub(crate) fn v2_tm(t: &str) -> Result<String, String> {
    let b = t.as_bytes();
    let clock = (b.get(2) == Some(&b':') && b.get(5) == Some(&b':'))
        .then(|| Some((two_digits(b, 0)?, two_digits(b, 3)?, two_digits(b, 6)?)))
        .flatten();
    let Some((hour, minute, second)) = clock else {
        return Err("the time must be hh:mm:ss (not a valid FHIR time)".into());
    };
    if hour > 23 || minute > 59 || second > 60 {
        return Err(
            "the time is out of range: hours 00-23, minutes 00-59, seconds 00-60 (not a valid FHIR time)".into()
        );
    }
    let mut out = [&t[0..2], &t[3..5], &t[6..8]].concat();
    match b.get(8) {
        None => {}
        Some(b'.') if b.len() > 9 && b[9..].iter().all(u8::is_ascii_digit) => {
            out.push('.');
            out.push_str(&t[9..t.len().min(13)]);
        }
        Some(_) => return Err("only a fraction of a second may follow hh:mm:ss (not a valid FHIR time)".into()),
    }
    Ok(out)
}

/// The v2 mnemonic for a system URI (the built-in table; the URI itself
/// when unknown, so the meaning is not lost).
pub(crate) fn mnemonic(system: &str) -> String {
    if system.is_empty() {
        return String::new();
    }
    terminology::system_mnemonic(system).unwrap_or_else(|| system.to_string())
}

/// Writes a Coding as CWE components starting at component `first` (1 for
/// the primary triple, 4 for the alternate).
fn coding_at(seg: &mut SegW, f: usize, r: usize, first: usize, coding: &Value) {
    seg.at(f, r, first, 1, st(coding, "code"));
    seg.at(f, r, first + 1, 1, st(coding, "display"));
    seg.at(f, r, first + 2, 1, &mnemonic(st(coding, "system")));
}

/// CodeableConcept to CWE at field `f`, repetition `r`: the first two
/// codings, then the text as original text (CWE-9, from 2.5).
pub(crate) fn cwe(seg: &mut SegW, f: usize, r: usize, concept: &Value, opts: &FhirToHl7Options) {
    let codings: Vec<&Value> = concept.get("coding").and_then(Value::as_array).into_iter().flatten().collect();
    let text = st(concept, "text");
    match codings.first() {
        Some(first) => {
            coding_at(seg, f, r, 1, first);
            if let Some(second) = codings.get(1) {
                coding_at(seg, f, r, 4, second);
            }
            if !opts.version.starts_with("2.3") && !opts.version.starts_with("2.4") {
                seg.at(f, r, 9, 1, text);
            }
        }
        // Text only: HL7 puts it in the text component.
        None => {
            seg.at(f, r, 2, 1, text);
        }
    }
}

/// A Coding (not a CodeableConcept) to CWE.
pub(crate) fn coding(seg: &mut SegW, f: usize, r: usize, c: &Value) {
    coding_at(seg, f, r, 1, c);
}

/// The HD (namespace, universal id, type) for an Identifier.system.
pub(crate) fn authority(identifier: &Value, opts: &FhirToHl7Options) -> (String, String, String) {
    let system = st(identifier, "system");
    let assigner = identifier.pointer("/assigner/display").and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(ns) = opts.assigning_authorities.get(system) {
        return (ns.clone(), String::new(), String::new());
    }
    if let Some(oid) = system.strip_prefix("urn:oid:") {
        return (assigner, oid.to_string(), "ISO".into());
    }
    if let Some(ns) = system.strip_prefix("urn:plexus:authority:") {
        return (percent_decode(ns), String::new(), String::new());
    }
    if system.is_empty() {
        return (assigner, String::new(), String::new());
    }
    (assigner, system.to_string(), "URI".into())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Identifier to CX at field `f`, repetition `r`.
pub(crate) fn cx(seg: &mut SegW, f: usize, r: usize, identifier: &Value, opts: &FhirToHl7Options) {
    seg.at(f, r, 1, 1, st(identifier, "value"));
    let (ns, uid, kind) = authority(identifier, opts);
    seg.at(f, r, 4, 1, &ns).at(f, r, 4, 2, &uid).at(f, r, 4, 3, &kind);
    let type_code = identifier.pointer("/type/coding/0/code").and_then(Value::as_str).unwrap_or("");
    seg.at(f, r, 5, 1, type_code);
}

/// Identifier to EI at field `f`.
pub(crate) fn ei(seg: &mut SegW, f: usize, identifier: &Value, opts: &FhirToHl7Options) {
    seg.put(f, 1, st(identifier, "value"));
    let (ns, uid, kind) = authority(identifier, opts);
    seg.put(f, 2, &ns).put(f, 3, &uid).put(f, 4, &kind);
}

fn name_use(u: &str) -> &'static str {
    match u {
        "official" => "L",
        "usual" => "D",
        "maiden" => "M",
        "nickname" => "N",
        "anonymous" => "S",
        "temp" => "TEMP",
        "old" => "NOUSE",
        _ => "",
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

/// HumanName to XPN at field `f`, repetition `r`.
pub(crate) fn xpn(seg: &mut SegW, f: usize, r: usize, name: &Value) {
    let given = strings(name, "given");
    let family = st(name, "family");
    if family.is_empty() && given.is_empty() {
        // Only a text name: HL7 has no text component, the family holds it.
        seg.at(f, r, 1, 1, st(name, "text"));
        return;
    }
    seg.at(f, r, 1, 1, family);
    seg.at(f, r, 2, 1, given.first().map(String::as_str).unwrap_or(""));
    seg.at(f, r, 3, 1, &given.iter().skip(1).cloned().collect::<Vec<_>>().join(" "));
    seg.at(f, r, 4, 1, strings(name, "suffix").first().map(String::as_str).unwrap_or(""));
    seg.at(f, r, 5, 1, strings(name, "prefix").first().map(String::as_str).unwrap_or(""));
    seg.at(f, r, 7, 1, name_use(st(name, "use")));
}

/// A Practitioner (or any resource with identifier and name) to XCN.
pub(crate) fn xcn(seg: &mut SegW, f: usize, r: usize, who: &Value, opts: &FhirToHl7Options) {
    if let Some(id) = who.pointer("/identifier/0") {
        seg.at(f, r, 1, 1, st(id, "value"));
        let (ns, uid, kind) = authority(id, opts);
        seg.at(f, r, 9, 1, &ns).at(f, r, 9, 2, &uid).at(f, r, 9, 3, &kind);
    }
    if let Some(name) = who.pointer("/name/0") {
        let given = strings(name, "given");
        seg.at(f, r, 2, 1, st(name, "family"));
        seg.at(f, r, 3, 1, given.first().map(String::as_str).unwrap_or(""));
        seg.at(f, r, 4, 1, &given.iter().skip(1).cloned().collect::<Vec<_>>().join(" "));
        seg.at(f, r, 5, 1, strings(name, "suffix").first().map(String::as_str).unwrap_or(""));
        seg.at(f, r, 6, 1, strings(name, "prefix").first().map(String::as_str).unwrap_or(""));
    } else if let Some(display) = who.get("display").and_then(Value::as_str) {
        seg.at(f, r, 2, 1, display);
    }
}

/// Address to XAD at field `f`, repetition `r`.
pub(crate) fn xad(seg: &mut SegW, f: usize, r: usize, a: &Value) {
    let lines = strings(a, "line");
    seg.at(f, r, 1, 1, lines.first().map(String::as_str).unwrap_or(""));
    seg.at(f, r, 2, 1, &lines.iter().skip(1).cloned().collect::<Vec<_>>().join(", "));
    seg.at(f, r, 3, 1, st(a, "city"));
    seg.at(f, r, 4, 1, st(a, "state"));
    seg.at(f, r, 5, 1, st(a, "postalCode"));
    seg.at(f, r, 6, 1, st(a, "country"));
    let kind = match (st(a, "use"), st(a, "type")) {
        (_, "postal") => "M",
        ("home", _) => "H",
        ("work", _) => "O",
        ("temp", _) => "C",
        ("old", _) => "BA",
        ("billing", _) => "BI",
        (_, "physical") => "SH",
        _ => "",
    };
    seg.at(f, r, 7, 1, kind);
    seg.at(f, r, 9, 1, st(a, "district"));
}

/// ContactPoint to XTN at field `f`, repetition `r`.
pub(crate) fn xtn(seg: &mut SegW, f: usize, r: usize, cp: &Value) {
    let value = st(cp, "value");
    let system = st(cp, "system");
    let use_ = st(cp, "use");
    let equipment = match (system, use_) {
        ("email", _) => "Internet",
        ("fax", _) => "FX",
        ("pager", _) => "BP",
        ("phone" | "sms", "mobile") => "CP",
        ("phone" | "sms", _) => "PH",
        ("url", _) => "X.400",
        _ => "",
    };
    let code = match (system, use_) {
        ("email", _) => "NET",
        (_, "work") => "WPN",
        (_, "home" | "mobile") => "PRN",
        _ => "",
    };
    if system == "email" {
        seg.at(f, r, 4, 1, value);
    } else {
        seg.at(f, r, 1, 1, value);
    }
    seg.at(f, r, 2, 1, code).at(f, r, 3, 1, equipment);
}

/// Quantity units to CWE (OBX-6): UCUM code with its unit text.
pub(crate) fn units(seg: &mut SegW, f: usize, q: &Value) {
    let code = st(q, "code");
    let unit = st(q, "unit");
    let system = st(q, "system");
    if code.is_empty() {
        seg.put(f, 1, unit);
        return;
    }
    seg.put(f, 1, code).put(f, 2, unit).put(f, 3, &mnemonic(system));
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_written_without_an_exponent() {
        for (json, nm) in [
            ("1.5", "1.5"),
            ("1.0", "1.0"),
            ("-3", "-3"),
            ("1e21", "1000000000000000000000"),
            ("1.5e-7", "0.00000015"),
            ("-2.5E+3", "-2500"),
            ("1.25e1", "12.5"),
            ("0.5e1", "5"),
            ("123e-2", "1.23"),
            ("2.50e1", "25.0"),
        ] {
            assert_eq!(plain_decimal(json), nm, "{json}");
        }
        // Through serde_json's own f64 text.
        let tiny: Value = serde_json::from_str("0.00000015").unwrap();
        assert_eq!(num(Some(&tiny)), "0.00000015");
        let big: Value = serde_json::from_str("1e21").unwrap();
        assert_eq!(num(Some(&big)), "1000000000000000000000");
        assert_eq!(num(Some(&Value::String("1.50".into()))), "1.50");
        // Not a number in exponent form: unchanged.
        for odd in ["abc", "1e", "e5", "1e99999"] {
            assert_eq!(plain_decimal(odd), odd);
        }
    }

    use super::*;

    #[test]
    fn fhir_times_become_dtm_with_precision_and_offset() {
        use TimeKind::{Date, DateTime, Instant};
        let ok = |t: &str, kind: TimeKind| v2_time(t, kind).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(ok("2012-03-14T23:59:54.325-05:00", DateTime), "20120314235954.325-0500");
        assert_eq!(ok("2012-03-14T23:59:54.1234567+14:00", Instant), "20120314235954.1234+1400");
        assert_eq!(ok("2010-03-01T06:22:41Z", Instant), "20100301062241+0000");
        assert_eq!(ok("1988-08-18", Date), "19880818");
        assert_eq!(ok("1988-08", DateTime), "198808");
        assert_eq!(ok("1988", Date), "1988");
        assert_eq!(ok("2024-02-29", Date), "20240229");
        assert_eq!(ok("2000-02-29", Date), "20000229");
        assert_eq!(ok("2016-12-31T23:59:60Z", DateTime), "20161231235960+0000");
    }

    #[test]
    fn impossible_or_malformed_fhir_times_are_errors_that_say_why() {
        use TimeKind::{Date, DateTime, Instant};
        for (t, kind, why) in [
            ("2024-13-45", DateTime, "month 13 does not exist"),
            ("2024-00-10", Date, "month 00 does not exist"),
            ("2023-02-29", Date, "day 29 does not exist in month 02 (not a leap year)"),
            ("1900-02-29", Date, "not a leap year"),
            ("2024-04-31", DateTime, "day 31 does not exist in month 04"),
            ("2024-01-00", Date, "day 00"),
            ("0000-01-01", Date, "year 0000"),
            ("yesterday", DateTime, "four digits"),
            ("24-01-01", Date, "four digits"),
            ("2024-1-01", Date, "month must be two digits"),
            ("20240101", Date, "month must be two digits"),
            ("2024-05-01T10:00:00+02:00", Date, "a date has no time"),
            ("2024-05-01", Instant, "an instant needs a full date and time"),
            ("2024-05-01T10:00:00", DateTime, "needs a time zone"),
            ("2024-05-01T10:00Z", DateTime, "hh:mm:ss"),
            ("2012-03-14T23", DateTime, "hh:mm:ss"),
            ("2024-05-01T24:00:00Z", DateTime, "out of range"),
            ("2024-05-01T10:61:00Z", DateTime, "out of range"),
            ("2024-05-01T10:00:00.Z", DateTime, "followed by digits"),
            ("2024-05-01T10:00:00+14:30", DateTime, "time zone is out of range"),
            ("2024-05-01T10:00:00+0200", DateTime, "time zone must be"),
            ("2024-05-01T10:00:00Z ", DateTime, "nothing after it"),
            (" 2024-05-01", Date, "four digits"),
        ] {
            let err = v2_time(t, kind).expect_err(t);
            assert!(err.contains(why), "{t}: {err}");
            assert!(err.ends_with(&format!("(not a valid FHIR {})", kind.name())), "{t}: {err}");
            assert!(!err.contains(t.trim()), "{t}: the value is not repeated: {err}");
        }
    }

    #[test]
    fn fhir_times_of_day_become_tm_and_impossible_ones_are_errors() {
        assert_eq!(v2_tm("14:30:00").as_deref(), Ok("143000"));
        assert_eq!(v2_tm("23:59:60.12345").as_deref(), Ok("235960.1234"));
        for bad in ["25:99", "24:00:00", "10:60:00", "10:00", "10:00:00Z", "10:00:00.", "1:00:00", ""] {
            assert!(v2_tm(bad).unwrap_err().contains("not a valid FHIR time"), "{bad}");
        }
    }

    #[test]
    fn nm_values_are_numbers_or_number_text() {
        assert_eq!(checked_num(Some(&serde_json::json!(1.5))).as_deref(), Ok("1.5"));
        assert_eq!(checked_num(Some(&serde_json::json!("1.50"))).as_deref(), Ok("1.50"));
        assert_eq!(checked_num(Some(&serde_json::json!("-2.5E+3"))).as_deref(), Ok("-2500"));
        assert_eq!(checked_num(None).as_deref(), Ok(""));
        for bad in [
            serde_json::json!("abc"),
            serde_json::json!("1,5"),
            serde_json::json!("01"),
            serde_json::json!(true),
            serde_json::json!(""),
        ] {
            assert!(checked_num(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn identifier_systems_become_assigning_authorities() {
        let o = FhirToHl7Options::default();
        let id = serde_json::json!({"system": "urn:oid:2.16.1", "value": "1"});
        assert_eq!(authority(&id, &o), (String::new(), "2.16.1".into(), "ISO".into()));
        let id = serde_json::json!({"system": "urn:plexus:authority:GHH%20OE", "value": "1"});
        assert_eq!(authority(&id, &o).0, "GHH OE");
        let id = serde_json::json!({"system": "https://github.com/synthetichealth/synthea", "value": "1"});
        assert_eq!(authority(&id, &o).2, "URI");
    }
}
