//! HL7 v2 data types to FHIR data types (the "Datatype Maps" of the HL7
//! v2-to-FHIR Implementation Guide): DTM, CX, XPN, XAD, XTN, CWE, XCN, XON,
//! HD, EI.
//!
//! Each function returns `Json::Null` (or None) for an empty input and may
//! leave null members inside what it returns; empty elements are left out
//! once, when the Bundle is written, which is cheaper and simpler than
//! testing every member here.

use std::borrow::Cow;

use super::json::Json;
use super::view::Node;
use crate::options::Hl7ToFhirOptions;
use crate::terminology;

fn s<'a>(n: Node<'a>) -> Json<'a> {
    match n.text() {
        t if t.is_empty() => Json::Null,
        t => Json::Str(t),
    }
}

/// A UTC offset: its sign and four digits (`hhmm`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offset {
    sign: char,
    digits: [u8; 4],
}

impl Offset {
    /// Parses `+hh:mm`, `+hhmm`, `Z` (a colon anywhere is ignored).
    fn parse(off: &str) -> Option<Offset> {
        if off == "Z" {
            return Some(Offset { sign: '+', digits: *b"0000" });
        }
        let (sign, rest) = off.split_at_checked(1)?;
        let sign = match sign {
            "+" => '+',
            "-" => '-',
            _ => return None,
        };
        let mut digits = [0u8; 4];
        let mut count = 0;
        for b in rest.bytes().filter(|b| *b != b':') {
            if !b.is_ascii_digit() || count == 4 {
                return None;
            }
            digits[count] = b;
            count += 1;
        }
        if count != 4 {
            return None;
        }
        let two = |at: usize| u32::from(digits[at] - b'0') * 10 + u32::from(digits[at + 1] - b'0');
        let (h, m) = (two(0), two(2));
        if h > 14 || m > 59 || (h == 14 && m > 0) {
            return None;
        }
        Some(Offset { sign, digits })
    }

    /// Appends `+hh:mm`.
    fn push_to(self, out: &mut String) {
        out.push(self.sign);
        let [h1, h2, m1, m2] = self.digits.map(char::from);
        out.extend([h1, h2, ':', m1, m2]);
    }
}

/// Parses `+hh:mm`, `+hhmm`, `Z` into `+hh:mm`.
pub fn parse_offset(off: &str) -> Option<String> {
    let offset = Offset::parse(off)?;
    let mut out = String::with_capacity(6);
    offset.push_to(&mut out);
    Some(out)
}

/// A v2 date/time split into its parts, as far as it is given, borrowed
/// from the message (checked digits, so copying them needs no formatting;
/// a Bundle has dozens of dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct V2Time<'a> {
    year: &'a str,
    month: Option<&'a str>,
    day: Option<&'a str>,
    /// Hours, minutes, seconds (`00` where not given) and the fraction of
    /// a second, when any time is given.
    time: Option<[&'a str; 4]>,
    offset: Option<Offset>,
}

impl V2Time<'_> {
    /// Appends the date: `YYYY[-MM[-DD]]`.
    fn push_date(&self, out: &mut String) {
        out.push_str(self.year);
        for part in [self.month, self.day].into_iter().flatten() {
            out.push('-');
            out.push_str(part);
        }
    }
}

/// Parses a DTM/TS/DT value: `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`.
/// None when malformed (a value that is not a date is not guessed at).
pub(crate) fn parse_dtm(raw: &str) -> Option<V2Time<'_>> {
    let raw = raw.trim();
    // Most dates asked for are absent (a period's end, an identifier's
    // dates); the searches below are byte loops, not char patterns.
    if raw.is_empty() {
        return None;
    }
    let (body, offset) = match raw.bytes().position(|b| b == b'+' || b == b'-') {
        Some(at) => (&raw[..at], Some(Offset::parse(&raw[at..])?)),
        None => (raw, None),
    };
    let (digits, frac) = match body.bytes().position(|b| b == b'.').map(|at| (&body[..at], &body[at + 1..])) {
        Some((d, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (d, Some(f)),
        Some(_) => return None,
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![4, 6, 8, 10, 12, 14].contains(&digits.len()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|x| x.parse::<u32>().ok());
    let year = &digits[..4];
    if year == "0000" {
        return None;
    }
    let part = |r: std::ops::Range<usize>| digits.get(r).unwrap_or("00");
    let month = match num(4..6) {
        Some(m) if !(1..=12).contains(&m) => return None,
        Some(_) => Some(part(4..6)),
        None => None,
    };
    let day = match num(6..8) {
        Some(d) if !(1..=31).contains(&d) => return None,
        Some(_) => Some(part(6..8)),
        None => None,
    };
    let time = match num(8..10) {
        None => None,
        Some(h) => {
            let mi = num(10..12).unwrap_or(0);
            let se = num(12..14).unwrap_or(0);
            if h > 23 || mi > 59 || se > 59 {
                return None;
            }
            Some([part(8..10), part(10..12), part(12..14), frac.unwrap_or("")])
        }
    };
    Some(V2Time { year, month, day, time, offset })
}

/// FHIR `dateTime` from a v2 DTM. A time needs an offset (the value's or
/// `default_offset`); without one only the date is kept.
pub(crate) fn date_time(raw: &str, opts: &Hl7ToFhirOptions) -> Json<'static> {
    let Some(t) = parse_dtm(raw) else {
        return Json::Null;
    };
    let offset = t.offset.or_else(|| opts.default_offset.as_deref().and_then(Offset::parse));
    let mut out = String::with_capacity(32);
    t.push_date(&mut out);
    if let (Some([h, m, s, frac]), Some(off), Some(_)) = (t.time, offset, t.day) {
        out.push('T');
        out.extend([h, ":", m, ":", s]);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        off.push_to(&mut out);
    }
    Json::from(out)
}

/// FHIR `date` from a v2 DT/DTM (the time is dropped).
pub(crate) fn date(raw: &str) -> Json<'static> {
    let Some(t) = parse_dtm(raw) else {
        return Json::Null;
    };
    let mut out = String::with_capacity(10);
    t.push_date(&mut out);
    Json::from(out)
}

/// FHIR `instant`: needs a full date, a time and an offset, else null.
pub(crate) fn instant(raw: &str, opts: &Hl7ToFhirOptions) -> Json<'static> {
    match date_time(raw, opts) {
        Json::Str(s) if s.len() > 10 => Json::Str(s),
        _ => Json::Null,
    }
}

/// The Identifier.system for an assigning authority (HD) given as its
/// namespace id, universal id and universal id type.
pub(crate) fn authority_system(ns: &str, uid: &str, uid_type: &str, opts: &Hl7ToFhirOptions) -> Json<'static> {
    if let Some(sys) = opts.identifier_systems.get(ns).or_else(|| opts.identifier_systems.get(uid)) {
        return Json::from(sys.clone());
    }
    if !uid.is_empty() {
        // The type as given, in any case (no upper-cased copy per identifier).
        let is = |t: &str| uid_type.eq_ignore_ascii_case(t);
        if is("ISO") && terminology::is_oid(uid) {
            return Json::from(["urn:oid:", uid].concat());
        }
        if (is("UUID") || is("GUID")) && uuid::Uuid::parse_str(uid).is_ok() {
            return Json::from(format!("urn:uuid:{}", uid.to_ascii_lowercase()));
        }
        if (is("URI") || is("URL")) && uid.contains(':') {
            return Json::from(uid.to_string());
        }
        if terminology::is_oid(uid) {
            return Json::from(["urn:oid:", uid].concat());
        }
    }
    let name = if ns.is_empty() { uid } else { ns };
    if name.is_empty() {
        return Json::Null;
    }
    let prefix = &opts.unknown_authority_prefix;
    let mut system = String::with_capacity(prefix.len() + name.len());
    system.push_str(prefix);
    push_uri_safe(&mut system, name);
    Json::from(system)
}

/// Appends `s` percent-encoded where it may not appear in a URI.
fn push_uri_safe(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn hd_system(hd: Node<'_>, opts: &Hl7ToFhirOptions) -> Json<'static> {
    authority_system(&hd.s(1).text(), &hd.s(2).text(), &hd.s(3).text(), opts)
}

/// A CWE-typed `type` for Identifier.type (table 0203).
fn identifier_type<'a>(code: Cow<'a, str>) -> Json<'a> {
    if code.is_empty() {
        return Json::Null;
    }
    Json::IdType(code)
}

/// CX to Identifier.
pub(crate) fn cx<'a>(n: Node<'a>, opts: &Hl7ToFhirOptions) -> Json<'a> {
    let c = n.comps::<8>();
    let value = c[0].text();
    if value.is_empty() {
        return Json::Null;
    }
    let auth = c[3];
    obj! {
        "type" => identifier_type(c[4].text()),
        "system" => hd_system(auth, opts),
        "value" => value,
        "period" => obj!{"start" => date(&c[6].text()), "end" => date(&c[7].text())},
        "assigner" => obj!{"display" => s(auth.s(1))},
    }
}

/// EI (entity identifier) to Identifier, with an optional type code (table 0203).
pub(crate) fn ei<'a>(n: Node<'a>, type_code: &'static str, opts: &Hl7ToFhirOptions) -> Json<'a> {
    let value = n.c(1).text();
    if value.is_empty() {
        return Json::Null;
    }
    obj! {
        "type" => identifier_type(type_code.into()),
        "system" => authority_system(&n.c(2).text(), &n.c(3).text(), &n.c(4).text(), opts),
        "value" => value,
    }
}

/// The `system|value` search token of an Identifier, escaped for a FHIR
/// search parameter (`\`, `,`, `|`, `$`) and for a URL query.
pub(crate) fn identifier_token(identifier: &Json<'_>) -> Option<String> {
    let value = identifier.get("value")?.as_str()?;
    let system = identifier.get("system").and_then(Json::as_str);
    let mut out = String::with_capacity(system.map_or(0, str::len) + value.len() + 8);
    if let Some(sys) = system {
        token_escape(&mut out, sys);
        out.push('|');
    }
    token_escape(&mut out, value);
    Some(out)
}

/// Appends `s` escaped for a search parameter (a `\` before `\`, `,`, `|`,
/// `$`), then for a URL query, in one pass (a token is made for every
/// conditional entry).
fn token_escape(out: &mut String, s: &str) {
    // Most systems and values need neither escape: copied whole.
    if s.bytes().all(|b| TOKEN_PLAIN[usize::from(b)]) {
        out.push_str(s);
        return;
    }
    for b in s.bytes() {
        if matches!(b, b'\\' | b',' | b'|' | b'$') {
            // The search escape's backslash is itself kept as is by the
            // query escape.
            out.push('\\');
        }
        push_query_byte(out, b);
    }
}

/// The bytes a URL query keeps as they are.
const QUERY_SAFE: [bool; 256] = byte_set(b"-._~:/\\@!*'(),");

/// The bytes a search token keeps as they are: those of a query, except the
/// search parameter's own specials (`\`, `,`, `|`, `$`), which
/// [`token_escape`] escapes first.
const TOKEN_PLAIN: [bool; 256] = {
    let mut set = QUERY_SAFE;
    set[b'\\' as usize] = false;
    set[b',' as usize] = false;
    set[b'|' as usize] = false;
    set[b'$' as usize] = false;
    set
};

/// ASCII letters and digits, and `extra`.
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// Appends one byte of a URL query: as is where allowed, else `%XX`.
fn push_query_byte(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if QUERY_SAFE[usize::from(b)] {
        out.push(char::from(b));
    } else {
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Table 0200 name type to HumanName.use (the IG's ConceptMap).
fn name_use(code: &str) -> &'static str {
    match code {
        "L" => "official",
        "D" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "S" => "anonymous",
        "TEMP" => "temp",
        "NOUSE" | "BAD" => "old",
        _ => "",
    }
}

/// XPN to HumanName.
pub(crate) fn xpn(n: Node<'_>) -> Json<'_> {
    let c = n.comps::<13>();
    let family = c[0].s(1).text();
    let given = c[1].text();
    if family.is_empty() && given.is_empty() && c[2].is_empty() {
        return Json::Null;
    }
    let period = if c[11].is_empty() && c[12].is_empty() {
        obj! {"start" => date(&c[9].s(1).text()), "end" => date(&c[9].s(2).text())}
    } else {
        obj! {"start" => date(&c[11].text()), "end" => date(&c[12].text())}
    };
    obj! {
        "use" => name_use(&c[6].text()),
        "family" => family,
        "given" => arr![given, s(c[2])],
        "prefix" => arr![s(c[4])],
        "suffix" => arr![s(c[3]), s(c[5])],
        "period" => period,
    }
}

/// XAD to Address.
pub(crate) fn xad(n: Node<'_>) -> Json<'_> {
    let c = n.comps::<14>();
    // SAD: street address, street name, dwelling number. Senders split a
    // street either way; joining the parts keeps the whole line.
    let sad = c[0];
    let mut parts = [sad.s(1).text(), sad.s(2).text(), sad.s(3).text()].into_iter().filter(|p| !p.is_empty());
    // Mostly one part: kept borrowed from the message.
    let street = match (parts.next(), parts.next()) {
        (None, _) => Cow::Borrowed(""),
        (Some(one), None) => one,
        (Some(first), Some(second)) => {
            let mut joined = [first.as_ref(), " ", second.as_ref()].concat();
            for more in parts {
                joined.push(' ');
                joined.push_str(&more);
            }
            Cow::Owned(joined)
        }
    };
    if street.is_empty() && c[2].is_empty() && c[4].is_empty() && c[5].is_empty() && c[1].is_empty() {
        return Json::Null;
    }
    let kind = c[6].text();
    let (use_, type_) = match kind.as_ref() {
        "H" | "P" => ("home", ""),
        "B" | "O" => ("work", ""),
        "C" => ("temp", ""),
        "BA" => ("old", ""),
        "BI" => ("billing", ""),
        "M" => ("", "postal"),
        "SH" => ("", "physical"),
        _ => ("", ""),
    };
    let period = if c[12].is_empty() && c[13].is_empty() {
        obj! {"start" => date(&c[11].s(1).text()), "end" => date(&c[11].s(2).text())}
    } else {
        obj! {"start" => date(&c[12].text()), "end" => date(&c[13].text())}
    };
    obj! {
        "use" => use_,
        "type" => type_,
        "line" => arr![street, s(c[1])],
        "city" => s(c[2]),
        "district" => s(c[8]),
        "state" => s(c[3]),
        "postalCode" => s(c[4]),
        "country" => s(c[5]),
        "period" => period,
    }
}

/// XTN to ContactPoint. `default_use` applies when XTN-2 is empty (PID-13
/// is home, PID-14 work).
pub(crate) fn xtn<'a>(n: Node<'a>, default_use: &'static str) -> Json<'a> {
    let c = n.comps::<18>();
    let equip = c[2].text();
    let email = matches!(equip.as_ref(), "Internet" | "X.400" | "NET");
    let value = if email && !c[3].is_empty() {
        c[3].text()
    } else if !c[0].is_empty() {
        c[0].text()
    } else if !c[11].is_empty() {
        c[11].text()
    } else {
        let mut v = String::new();
        for (c, pre) in [(5, "+"), (6, "("), (7, "")] {
            let t = n.c(c).text();
            if !t.is_empty() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(pre);
                v.push_str(&t);
                if c == 6 {
                    v.push(')');
                }
            }
        }
        let ext = c[7].text();
        if !ext.is_empty() && !v.is_empty() {
            v.push_str(" ext. ");
            v.push_str(&ext);
        }
        Cow::Owned(v)
    };
    if value.is_empty() {
        return Json::Null;
    }
    let system = match equip.as_ref() {
        "PH" | "CP" | "SAT" => "phone",
        "FX" => "fax",
        "BP" => "pager",
        "Internet" | "X.400" | "NET" => "email",
        "" if email || value.contains('@') => "email",
        "" => "phone",
        _ => "other",
    };
    let use_ = match (c[1].text().as_ref(), equip.as_ref()) {
        (_, "CP") => "mobile",
        ("PRN" | "ORN" | "VHN", _) => "home",
        ("WPN", _) => "work",
        ("", _) => default_use,
        _ => "",
    };
    let rank = c[17].text().parse::<u32>().ok().filter(|r| *r > 0);
    obj! {
        "system" => system,
        "value" => value,
        "use" => use_,
        "rank" => rank,
        "period" => obj!{"start" => date(&c[12].text()), "end" => date(&c[13].text())},
    }
}

/// A Coding; the system from the v2 mnemonic (options first) or
/// `default_table` when the mnemonic is empty.
pub(crate) fn coding<'a>(
    code: Cow<'a, str>,
    display: Cow<'a, str>,
    mnemonic: &str,
    default_table: &str,
    opts: &Hl7ToFhirOptions,
) -> Json<'a> {
    let code = trimmed(code);
    if code.is_empty() {
        return Json::Null;
    }
    let system = if mnemonic.is_empty() {
        (!default_table.is_empty()).then(|| terminology::v2_table_cow(default_table))
    } else {
        opts.code_systems.get(mnemonic).map(|s| Cow::Owned(s.clone())).or_else(|| terminology::system_uri_cow(mnemonic))
    };
    obj! {"system" => system, "code" => code, "display" => trimmed(display)}
}

/// `s` without surrounding whitespace, still borrowed where it was.
pub(crate) fn trimmed(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) if o.trim().len() != o.len() => Cow::Owned(o.trim().to_string()),
        owned => owned,
    }
}

/// CWE/CE/CNE to CodeableConcept (primary and alternate coding, original
/// text). `default_table` names the v2 table the field is bound to, used
/// when CWE-3 is empty.
pub(crate) fn cwe<'a>(n: Node<'a>, default_table: &str, opts: &Hl7ToFhirOptions) -> Json<'a> {
    let c = n.comps::<9>();
    if n.is_empty() {
        return Json::Null;
    }
    let primary = coding(c[0].text(), c[1].text(), &c[2].text(), default_table, opts);
    let alternate = coding(c[3].text(), c[4].text(), &c[5].text(), "", opts);
    let original = c[8].text();
    let text = if !original.is_empty() {
        Json::Str(original)
    } else if primary.is_null() {
        s(c[1])
    } else {
        Json::Null
    };
    if primary.is_null() && alternate.is_null() && text.is_null() {
        return Json::Null;
    }
    obj! {"coding" => arr![primary, alternate], "text" => text}
}

/// A CodeableConcept with only text.
pub(crate) fn text_concept(t: Cow<'_, str>) -> Json<'_> {
    let t = trimmed(t);
    if t.is_empty() {
        Json::Null
    } else {
        obj! {"text" => t}
    }
}

/// An XCN read as far as it identifies a person: its components, its id
/// (XCN-1) and that id's system (XCN-9), and whether it has a name; the
/// rest is made by [`Xcn::into_parts`], once a practitioner seen before has
/// been ruled out.
pub(crate) struct Xcn<'a> {
    c: [Node<'a>; 13],
    pub id: Cow<'a, str>,
    /// Null without an id.
    pub system: Json<'static>,
    pub named: bool,
}

impl<'a> Xcn<'a> {
    pub fn of(n: Node<'a>, opts: &Hl7ToFhirOptions) -> Xcn<'a> {
        let c = n.comps::<13>();
        let id = c[0].text();
        let system = if id.is_empty() { Json::Null } else { hd_system(c[8], opts) };
        let named = !(c[1].s(1).text().is_empty() && c[2].is_empty());
        Xcn { c, id, system, named }
    }

    /// (Identifier, HumanName) for a Practitioner, each null when absent.
    pub fn into_parts(self) -> (Json<'a>, Json<'a>) {
        let c = self.c;
        let identifier = if self.id.is_empty() {
            Json::Null
        } else {
            obj! {"type" => identifier_type(c[12].text()), "system" => self.system, "value" => self.id}
        };
        (identifier, if self.named { xcn_name(&c) } else { Json::Null })
    }
}

/// XCN-2 to XCN-10 as a HumanName.
fn xcn_name<'a>(c: &[Node<'a>; 13]) -> Json<'a> {
    let family = c[1].s(1).text();
    if family.is_empty() && c[2].is_empty() {
        Json::Null
    } else {
        obj! {
            "use" => name_use(&c[9].text()),
            "family" => family,
            "given" => arr![s(c[2]), s(c[3])],
            "prefix" => arr![s(c[5])],
            "suffix" => arr![s(c[4]), s(c[6])],
        }
    }
}

/// XON to (Identifier, name) for an Organization.
pub(crate) fn xon<'a>(n: Node<'a>, opts: &Hl7ToFhirOptions) -> (Json<'a>, Json<'a>) {
    let c = n.comps::<10>();
    let id = if c[9].is_empty() { c[2].text() } else { c[9].text() };
    let identifier = if id.is_empty() {
        Json::Null
    } else {
        obj! {"type" => identifier_type(c[6].text()), "system" => hd_system(c[5], opts), "value" => id}
    };
    (identifier, s(c[0]))
}

/// The parts of a PL (person location) that name a place, most general
/// first: facility, building, floor, point of care, room, bed.
pub(crate) fn pl_name(n: Node<'_>) -> Option<String> {
    let c = n.comps::<8>();
    let mut name = String::new();
    for part in [3, 6, 7, 0, 1, 2].map(|at| c[at].text()) {
        if part.is_empty() {
            continue;
        }
        if !name.is_empty() {
            name.push_str(", ");
        }
        name.push_str(&part);
    }
    (!name.is_empty()).then_some(name)
}

/// The location-physical-type code of the most specific PL part given.
pub(crate) fn pl_physical_type(n: Node<'_>) -> Json<'static> {
    let (code, display) = if !n.c(3).is_empty() {
        ("bd", "Bed")
    } else if !n.c(2).is_empty() {
        ("ro", "Room")
    } else if !n.c(1).is_empty() {
        ("wa", "Ward")
    } else if !n.c(8).is_empty() {
        ("lvl", "Level")
    } else if !n.c(7).is_empty() {
        ("bu", "Building")
    } else {
        ("si", "Site")
    };
    obj! {
        "coding" => arr![
            obj!{
                "system" => "http://terminology.hl7.org/CodeSystem/location-physical-type",
                "code" => code,
                "display" => display,
            },
        ],
    }
}

/// A FHIR decimal from v2 NM text, keeping its precision ("1.50" stays
/// 1.50: FHIR says trailing zeros are significant); None when not a number.
/// NM is `[+|-]digits[.digits]`; the text is put in JSON number syntax
/// (no `+`, no leading zeros, a `0` before a bare `.`, no trailing `.`;
/// "-0" is 0) and otherwise written as given, never through an f64.
pub(crate) fn decimal(t: &str) -> Option<Json<'static>> {
    let t = t.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (body, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        significant => significant,
    };
    let mut out = String::with_capacity(int.len() + frac.len() + 2);
    // An integer zero has no sign in JSON as serde_json writes it; "-0.0"
    // keeps its sign, as it did when it went through an f64.
    if negative && !(int == "0" && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(Json::Decimal(Cow::Owned(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::view::tests::node;

    fn opts() -> Hl7ToFhirOptions {
        Hl7ToFhirOptions::default()
    }

    #[test]
    fn dates_keep_precision_and_offset() {
        let o = opts();
        assert_eq!(date_time("198808181126+0215", &o), "1988-08-18T11:26:00+02:15");
        assert_eq!(date_time("20120314235954.325-0500", &o), "2012-03-14T23:59:54.325-05:00");
        assert_eq!(date_time("201203", &o), "2012-03");
        assert_eq!(date_time("2012", &o), "2012");
        assert_eq!(date_time("20120314", &o), "2012-03-14");
        // No offset and none configured: the date only, never a guessed zone.
        assert_eq!(date_time("20150208113419", &o), "2015-02-08");
        let with = Hl7ToFhirOptions { default_offset: Some("+01:00".into()), ..opts() };
        assert_eq!(date_time("20150208113419", &with), "2015-02-08T11:34:19+01:00");
        for bad in ["2012131", "20121301", "2012-03-14", "20120314+99", "0000", "abc", ""] {
            assert_eq!(date_time(bad, &o), Json::Null, "{bad}");
        }
        assert_eq!(instant("20120314", &o), Json::Null);
    }

    #[test]
    fn identifier_systems_come_from_the_assigning_authority() {
        let o = opts();
        let id = cx(node("PATID1234^5^M11^test1&2.16.1&HCD^MR^GOOD HEALTH HOSPITAL"), &o).into_value().unwrap();
        assert_eq!(id["system"], "urn:oid:2.16.1");
        assert_eq!(id["value"], "PATID1234");
        assert_eq!(id["type"]["coding"][0]["code"], "MR");
        let id = cx(node("123456789^^^USSSA^SS"), &o).into_value().unwrap();
        assert_eq!(id["system"], "urn:plexus:authority:USSSA");
        // Percent-encoded where a URI needs it; the id type in any case.
        assert_eq!(authority_system("My Auth/\u{e9}", "", "", &o), "urn:plexus:authority:My%20Auth%2F%C3%A9");
        assert_eq!(authority_system("", "1.2.3", "iso", &o), "urn:oid:1.2.3");
        assert_eq!(authority_system("NS", "2.16.840", "L", &o), "urn:oid:2.16.840");
        assert_eq!(
            authority_system("", "A1B2C3D4-0000-4000-8000-00000000000F", "Guid", &o),
            "urn:uuid:a1b2c3d4-0000-4000-8000-00000000000f"
        );
        assert_eq!(authority_system("", "http://x.example/ids", "uri", &o), "http://x.example/ids");
        assert_eq!(authority_system("", "", "", &o), Json::Null);
        let mut o2 = opts();
        o2.identifier_systems.insert("USSSA".into(), "http://hl7.org/fhir/sid/us-ssn".into());
        assert_eq!(
            cx(node("123456789^^^USSSA^SS"), &o2).into_value().unwrap()["system"],
            "http://hl7.org/fhir/sid/us-ssn"
        );
    }

    #[test]
    fn decimals_keep_their_precision_in_json_number_syntax() {
        let text = |t: &str| match decimal(t) {
            Some(Json::Decimal(d)) => Some(d.into_owned()),
            other => panic!("{t}: {other:?}"),
        };
        for (nm, json) in [
            ("1.50", "1.50"),
            ("+1.50", "1.50"),
            (" 5.20 ", "5.20"),
            ("-0.050", "-0.050"),
            ("007", "7"),
            ("00.10", "0.10"),
            (".5", "0.5"),
            ("-.5", "-0.5"),
            ("5.", "5"),
            ("100.00", "100.00"),
            ("-0", "0"),
            ("-0.0", "-0.0"),
            ("12345678901234567890.123456789012345678", "12345678901234567890.123456789012345678"),
        ] {
            assert_eq!(text(nm).as_deref(), Some(json), "{nm}");
            // What was written is a JSON number of the same value.
            let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!((parsed.as_f64().unwrap() - nm.trim().parse::<f64>().unwrap()).abs() < 1e-9, "{nm}");
        }
        for bad in ["", "-", ".", "+", "1.2.3", "1-2", "--1", "1e5", "0x10", "1,5", "NaN", "inf", "1 2"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn search_tokens_escape_separators() {
        let t = identifier_token(&obj! {"system" => "urn:oid:1.2", "value" => "a|b,c d"}).unwrap();
        assert_eq!(t, "urn:oid:1.2|a\\%7Cb\\,c%20d");
        let t = identifier_token(&obj! {"system" => "urn:x:a\\b", "value" => "p$q/é"}).unwrap();
        assert_eq!(t, "urn:x:a\\\\b|p\\%24q/%C3%A9");
        let t = identifier_token(&obj! {"system" => "http://h.example/id-1_~.(x)", "value" => "A*7'@!"}).unwrap();
        assert_eq!(t, "http://h.example/id-1_~.(x)|A*7'@!");
    }
}
