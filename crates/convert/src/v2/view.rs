//! A borrowed, lazily split view of an HL7 v2 message for the mappers.
//!
//! The mappers read hundreds of leaves per message, mostly by position
//! (`PID-5` repetition 2, component 1, sub-component 1), and most of them are
//! empty. This view keeps each node as a `&str` slice of the message and
//! splits it on demand, so reading a leaf costs a few `memchr`-like scans of a
//! short field and allocates only when an escape sequence must be decoded.
//! Nothing here can panic on malformed input: a missing field, repetition,
//! component or sub-component reads as empty.

use std::borrow::Cow;

/// The separators of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seps {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Default for Seps {
    fn default() -> Self {
        Seps { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' }
    }
}

/// A parsed message: segments in order.
#[derive(Debug, Clone)]
pub(crate) struct Msg<'a> {
    pub segments: Vec<Seg<'a>>,
}

/// One segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg<'a> {
    /// Segment id, e.g. `PID`.
    pub name: &'a str,
    /// The segment text after the name and its field separator.
    body: &'a str,
    seps: Seps,
}

/// A node: a field, one repetition, a component or a sub-component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    raw: &'a str,
    seps: Seps,
}

fn nth(raw: &str, sep: char, n: usize) -> &str {
    // n is 1-based; an out-of-range n reads as empty.
    if n == 0 {
        return "";
    }
    raw.split(sep).nth(n - 1).unwrap_or("")
}

impl<'a> Msg<'a> {
    /// Splits `text` into segments (CR, LF or CRLF between them). Returns
    /// None when it does not start with an MSH segment with separators.
    pub fn parse(text: &'a str) -> Option<Msg<'a>> {
        let text = text.trim_start_matches(['\u{feff}', '\r', '\n', ' ']);
        let bytes = text.as_bytes();
        if !text.starts_with("MSH") || bytes.len() < 8 {
            return None;
        }
        let field = text[3..].chars().next()?;
        let enc: Vec<char> = text[3 + field.len_utf8()..].chars().take_while(|c| *c != field).take(4).collect();
        let get = |i: usize| enc.get(i).copied().unwrap_or(field);
        let seps = Seps {
            field,
            component: get(0),
            repetition: get(1),
            escape: get(2),
            subcomponent: get(3),
        };
        let segments = text
            .split(['\r', '\n'])
            .filter(|line| line.len() >= 3)
            .map(|line| {
                let (name, body) = match line.find(field) {
                    Some(at) => (&line[..at], &line[at + field.len_utf8()..]),
                    None => (line, ""),
                };
                Seg { name: name.trim(), body, seps }
            })
            .collect();
        Some(Msg { segments })
    }

    /// The first segment named `name`.
    pub fn seg(&self, name: &str) -> Option<&Seg<'a>> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Every segment named `name`.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Seg<'a>> + 's {
        self.segments.iter().filter(move |s| s.name == name)
    }
}

impl<'a> Seg<'a> {
    /// Field `n` (1-based as in HL7). For MSH, field 1 is the field separator
    /// and field 2 the encoding characters, as the standard counts them.
    pub fn f(&self, n: usize) -> Node<'a> {
        let raw = if self.name == "MSH" {
            match n {
                0 => "",
                // MSH-1 cannot be a slice of the body; callers never need it.
                1 => "",
                _ => nth(self.body, self.seps.field, n - 1),
            }
        } else {
            nth(self.body, self.seps.field, n)
        };
        Node { raw, seps: self.seps }
    }

}

impl<'a> Node<'a> {
    /// A node over any text (for callers that already hold a component).
    #[cfg(test)]
    pub fn new(raw: &'a str, seps: Seps) -> Node<'a> {
        Node { raw, seps }
    }

    /// Whether nothing (or only the HL7 null `""`) is here.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || self.raw == "\"\""
    }

    /// The repetitions of a field (one, possibly empty, when not repeated).
    pub fn reps(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        let seps = self.seps;
        self.raw.split(seps.repetition).map(move |raw| Node { raw, seps }).filter(|n| !n.is_empty())
    }

    /// The first repetition.
    pub fn first(&self) -> Node<'a> {
        Node { raw: self.raw.split(self.seps.repetition).next().unwrap_or(""), seps: self.seps }
    }

    /// Component `n` (1-based) of the first repetition.
    pub fn c(&self, n: usize) -> Node<'a> {
        Node { raw: nth(self.first().raw, self.seps.component, n), seps: self.seps }
    }

    /// Sub-component `n` (1-based) of this component.
    pub fn s(&self, n: usize) -> Node<'a> {
        Node { raw: nth(self.raw, self.seps.subcomponent, n), seps: self.seps }
    }

    /// The decoded text of this node's first leaf (a component read as a
    /// value means its first sub-component, as HL7 says a composite read as a
    /// primitive does). Empty for the HL7 null `""`.
    pub fn text(&self) -> Cow<'a, str> {
        let leaf = self.raw.split([self.seps.subcomponent, self.seps.repetition]).next().unwrap_or("");
        let leaf = if self.raw.contains(self.seps.component) {
            leaf.split(self.seps.component).next().unwrap_or("")
        } else {
            leaf
        };
        if leaf == "\"\"" {
            return Cow::Borrowed("");
        }
        unescape(leaf.trim(), &self.seps)
    }

    /// The decoded text with every separator kept (for free text such as
    /// TX/FT values and ED data where `^` can only be a component break).
    pub fn whole(&self) -> Cow<'a, str> {
        unescape(self.raw, &self.seps)
    }

}

/// Decodes the standard escapes; formatting escapes stay as written.
pub(crate) fn unescape<'a>(raw: &'a str, seps: &Seps) -> Cow<'a, str> {
    let esc = seps.escape;
    if esc == seps.field || !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find(esc) {
        out.push_str(&rest[..at]);
        let after = &rest[at + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // A lone escape character is kept literally.
            out.push(esc);
            rest = after;
            continue;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            _ if seq.len() >= 3 && seq.starts_with('X') && seq.len() % 2 == 1 => {
                let hex = &seq[1..];
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                match bytes.map(String::from_utf8) {
                    Some(Ok(s)) => out.push_str(&s),
                    _ => {
                        out.push(esc);
                        out.push_str(seq);
                        out.push(esc);
                    }
                }
            }
            _ => {
                out.push(esc);
                out.push_str(seq);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_components_and_subcomponents() {
        let m = Msg::parse("MSH|^~\\&|APP|FAC|||20200101||ADT^A01^ADT_A01|1|P|2.5\nPID|1||123^^^HOSP&1.2.3&ISO^MR~456^^^SSA^SS||Doe^John\\T\\Jr^Q\n")
            .unwrap();
        let msh = m.seg("MSH").unwrap();
        assert_eq!(msh.f(3).text(), "APP");
        assert_eq!(msh.f(9).c(2).text(), "A01");
        assert_eq!(msh.f(12).text(), "2.5");
        let pid = m.seg("PID").unwrap();
        let ids: Vec<_> = pid.f(3).reps().collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].c(4).s(2).text(), "1.2.3");
        assert_eq!(ids[1].c(5).text(), "SS");
        assert_eq!(pid.f(5).c(2).whole(), "John&Jr");
        assert_eq!(pid.f(40).c(9).s(9).text(), "");
    }

    #[test]
    fn hl7_null_and_missing_read_empty() {
        let m = Msg::parse("MSH|^~\\&|A\rPID|1|\"\"|").unwrap();
        assert!(m.seg("PID").unwrap().f(2).is_empty());
        assert_eq!(m.seg("PID").unwrap().f(2).text(), "");
        assert!(m.seg("OBX").is_none());
        assert!(Msg::parse("PID|1").is_none());
        assert!(Msg::parse("MSH").is_none());
    }

    #[test]
    fn escapes_decode_and_unknown_ones_stay() {
        let s = Seps::default();
        assert_eq!(unescape(r"A\T\E \F\ \S\ \R\ \E\", &s), "A&E | ^ ~ \\");
        assert_eq!(unescape(r"x\.br\y\X41\", &s), "x\nyA");
        assert_eq!(unescape(r"\H\bold\N\ C:\dir", &s), r"\H\bold\N\ C:\dir");
    }
}
