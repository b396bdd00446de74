//! A borrowed, lazily split view of an [`hl7v2::Message`] for the mappers.
//!
//! The mappers read hundreds of leaves per message, mostly by position
//! (`PID-5` repetition 2, component 1, sub-component 1), and most of them are
//! empty. The hl7v2 crate has already indexed segments and fields; this view
//! keeps each node below a field as a byte slice of the message and splits
//! it on demand, so reading a leaf costs a scan of a short field and
//! allocates only when an escape sequence or a non-UTF-8 character set must
//! be decoded (both done by hl7v2: `escape::decode`, then the MSH-18
//! charset). Nothing here can panic on malformed input: a missing field,
//! repetition, component or sub-component reads as empty.

use std::borrow::Cow;

use hl7v2::{Charset, Delimiters, Message};

/// What splitting and decoding need, made once per message and shared by
/// every node (a reference: nodes are copied around a lot, and a datatype
/// map splits a field into a dozen at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cx<'a> {
    delims: Delimiters,
    charset: Charset,
    component: u8,
    repetition: u8,
    subcomponent: u8,
    escape: u8,
    /// For each byte value: [`STOP`] for the repetition, component and
    /// sub-component separators (where a leaf ends), [`ESCAPE`] for the
    /// escape character, else 0: one lookup per byte where a leaf is read
    /// instead of four comparisons.
    classes: [u8; 256],
    /// The whole message as text, when every leaf without an escape
    /// sequence decodes to its own bytes: the message is valid UTF-8 and
    /// its character set is ASCII or UTF-8, or it is all ASCII (every
    /// supported set is an ASCII superset). Such a leaf is then a slice of
    /// this text (no decoding pass, no UTF-8 check per leaf).
    text: Option<&'a str>,
}

impl<'a> Cx<'a> {
    /// The context of `msg`'s nodes.
    pub fn of(msg: &'a Message) -> Cx<'a> {
        let d = *msg.delimiters();
        let charset = msg.charset();
        let bytes = msg.as_bytes();
        let text = match charset {
            Charset::Ascii | Charset::Utf8 => std::str::from_utf8(bytes).ok(),
            _ => bytes.is_ascii().then(|| std::str::from_utf8(bytes).ok()).flatten(),
        };
        // A missing delimiter is stored as the field separator, which never
        // occurs inside a field: splitting on it finds nothing.
        let (component, repetition) = (d.component(), d.repetition().unwrap_or(d.field()));
        let (subcomponent, escape) = (d.subcomponent().unwrap_or(d.field()), d.escape().unwrap_or(d.field()));
        // The separators last: where a missing escape shares the field
        // separator's byte, that byte ends a leaf (as the comparisons did).
        let mut classes = [0u8; 256];
        classes[usize::from(escape)] = ESCAPE;
        for b in [component, repetition, subcomponent] {
            classes[usize::from(b)] = STOP;
        }
        Cx { delims: d, charset, component, repetition, subcomponent, escape, classes, text }
    }

    /// `raw` as text when it is a slice of the message and the message's
    /// text is known ([`Cx::text`]); None otherwise (decode it instead).
    /// A slice cut at ASCII delimiters always falls on character
    /// boundaries; `get` checks it anyway.
    #[inline]
    fn str_of(&self, raw: &[u8]) -> Option<&'a str> {
        if raw.is_empty() {
            // Missing nodes are a static empty slice, not in the message.
            return Some("");
        }
        let text = self.text?;
        let at = raw.as_ptr().addr().wrapping_sub(text.as_ptr().addr());
        text.get(at..at.checked_add(raw.len())?)
    }
}

/// [`Cx::classes`]: the byte ends a leaf.
const STOP: u8 = 1;
/// [`Cx::classes`]: the byte starts an escape sequence.
const ESCAPE: u8 = 2;

/// A message: its segments in order.
#[derive(Debug, Clone)]
pub(crate) struct Msg<'a> {
    pub segments: Vec<Seg<'a>>,
}

/// One segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg<'a> {
    /// Segment id, e.g. `PID`.
    pub name: &'a str,
    seg: hl7v2::Segment<'a>,
    cx: &'a Cx<'a>,
}

/// A node: a field, one repetition, a component or a sub-component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    raw: &'a [u8],
    cx: &'a Cx<'a>,
}

// A node is its slice and a reference to the message's context: three
// words, copied by the dozen where a datatype splits a field.
const _: () = assert!(std::mem::size_of::<Node<'static>>() == 24);

fn nth(raw: &[u8], sep: u8, n: usize) -> &[u8] {
    // n is 1-based; an out-of-range n reads as empty.
    if n == 0 {
        return b"";
    }
    raw.split(|b| *b == sep).nth(n - 1).unwrap_or(b"")
}

impl<'a> Msg<'a> {
    /// The view of `msg`, with its context made by [`Cx::of`].
    pub fn new(msg: &'a Message, cx: &'a Cx<'a>) -> Msg<'a> {
        Msg { segments: msg.segments().map(|seg| Seg { name: seg.name(), seg, cx }).collect() }
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
    /// Field `n` (1-based as in HL7; MSH-1 is the field separator).
    pub fn f(&self, n: usize) -> Node<'a> {
        Node { raw: self.seg.field_bytes(n), cx: self.cx }
    }
}

impl<'a> Node<'a> {
    /// Whether nothing (or only the HL7 null `""`) is here.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || self.raw == b"\"\""
    }

    /// The repetitions of a field (empty ones skipped).
    pub fn reps(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        let cx = self.cx;
        self.raw.split(move |b| *b == cx.repetition).map(move |raw| Node { raw, cx }).filter(|n| !n.is_empty())
    }

    /// The first repetition.
    pub fn first(&self) -> Node<'a> {
        Node { raw: nth(self.raw, self.cx.repetition, 1), cx: self.cx }
    }

    /// Component `n` (1-based) of the first repetition.
    pub fn c(&self, n: usize) -> Node<'a> {
        Node { raw: nth(self.first().raw, self.cx.component, n), cx: self.cx }
    }

    /// Components 1 to `N` of the first repetition (`[c(1), .., c(N)]`),
    /// split in one pass: a datatype map reads a dozen components of one
    /// field, and `c` scans the field from its start each time.
    pub fn comps<const N: usize>(&self) -> [Node<'a>; N] {
        let cx = self.cx;
        let mut out = [Node { raw: b"", cx }; N];
        for (slot, raw) in out.iter_mut().zip(self.first().raw.split(|b| *b == cx.component)) {
            slot.raw = raw;
        }
        out
    }

    /// Sub-component `n` (1-based) of this component.
    pub fn s(&self, n: usize) -> Node<'a> {
        Node { raw: nth(self.raw, self.cx.subcomponent, n), cx: self.cx }
    }

    /// The decoded, trimmed text of this node's first leaf (a composite read
    /// as a primitive means its first sub-component, as HL7 says). Empty for
    /// the HL7 null `""`.
    #[inline]
    pub fn text(&self) -> Cow<'a, str> {
        // Most leaves read are missing (a component not sent): answered
        // here, inlined, without the call and its saved registers.
        if self.raw.is_empty() {
            return Cow::Borrowed("");
        }
        self.leaf_text()
    }

    /// [`Node::text`] of a node that is not empty.
    fn leaf_text(&self) -> Cow<'a, str> {
        let cx = self.cx;
        // One pass: the end of the first leaf, and whether it holds an
        // escape character (most leaves do not: they are then borrowed as
        // they are, see `Cx::str_of`).
        let mut end = self.raw.len();
        let mut escaped = false;
        for (i, &b) in self.raw.iter().enumerate() {
            match cx.classes[usize::from(b)] {
                0 => {}
                STOP => {
                    end = i;
                    break;
                }
                _ => escaped = true,
            }
        }
        let leaf = &self.raw[..end];
        if leaf == b"\"\"" {
            return Cow::Borrowed("");
        }
        let leaf = leaf.trim_ascii();
        if !escaped && let Some(s) = cx.str_of(leaf) {
            return Cow::Borrowed(s);
        }
        self.decoded_leaf(leaf)
    }

    /// A leaf with an escape sequence, or in a message that is not plain
    /// text: decoded (rare; kept out of line so the common path above
    /// saves fewer registers).
    #[cold]
    #[inline(never)]
    fn decoded_leaf(&self, leaf: &'a [u8]) -> Cow<'a, str> {
        match self.decode(leaf) {
            Cow::Borrowed(s) => Cow::Borrowed(s),
            Cow::Owned(s) if s.trim() != s => Cow::Owned(s.trim().to_string()),
            owned => owned,
        }
    }

    /// The decoded text with every separator kept (for free text such as
    /// TX/FT values and ED data where `^` can only be a component break).
    pub fn whole(&self) -> Cow<'a, str> {
        self.decode(self.raw)
    }

    fn decode(&self, raw: &'a [u8]) -> Cow<'a, str> {
        if !raw.contains(&self.cx.escape)
            && let Some(s) = self.cx.str_of(raw)
        {
            return Cow::Borrowed(s);
        }
        match hl7v2::escape::decode(raw, &self.cx.delims) {
            Cow::Borrowed(b) => self.cx.charset.decode(b),
            Cow::Owned(v) => Cow::Owned(self.cx.charset.decode(&v).into_owned()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node over `raw` with the default delimiters (for unit tests).
    pub(crate) fn node(raw: &'static str) -> Node<'static> {
        let msg: &'static Message = Box::leak(Box::new(Message::parse("MSH|^~\\&|T").unwrap()));
        Node { raw: raw.as_bytes(), cx: Box::leak(Box::new(Cx::of(msg))) }
    }

    #[test]
    fn reads_fields_components_and_subcomponents() {
        let m = Message::parse("MSH|^~\\&|APP|FAC|||20200101||ADT^A01^ADT_A01|1|P|2.5\nPID|1||123^^^HOSP&1.2.3&ISO^MR~456^^^SSA^SS||Doe^John\\T\\Jr^Q\n")
            .unwrap();
        let cx = Cx::of(&m);
        let m = Msg::new(&m, &cx);
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
        // comps reads the same components as c, in one pass.
        let name = pid.f(5);
        let comps = name.comps::<4>();
        for (i, c) in comps.iter().enumerate() {
            assert_eq!(c.whole(), name.c(i + 1).whole(), "component {}", i + 1);
        }
        assert_eq!(pid.f(3).comps::<6>()[3].s(2).text(), "1.2.3");
    }

    #[test]
    fn hl7_null_and_missing_read_empty() {
        let m = Message::parse("MSH|^~\\&|A\rPID|1|\"\"|").unwrap();
        let cx = Cx::of(&m);
        let m = Msg::new(&m, &cx);
        assert!(m.seg("PID").unwrap().f(2).is_empty());
        assert_eq!(m.seg("PID").unwrap().f(2).text(), "");
        assert!(m.seg("OBX").is_none());
    }

    #[test]
    fn leaves_are_decoded_by_the_charset_where_the_message_is_not_plain_text() {
        // Latin-1 (MSH-18): the non-ASCII leaf is decoded, ASCII ones borrowed.
        let latin = Message::parse(
            b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||7||M\xfcller^Ann\xe9 \\T\\ B^X^\xc3\xa9",
        )
        .unwrap();
        let cx = Cx::of(&latin);
        let latin = Msg::new(&latin, &cx);
        let pid = latin.seg("PID").unwrap();
        assert_eq!(pid.f(5).c(1).text(), "Müller");
        assert_eq!(pid.f(5).c(2).text(), "Anné & B");
        assert!(matches!(pid.f(5).c(3).text(), Cow::Borrowed("X")));
        // Bytes that happen to be valid UTF-8 are still Latin-1.
        assert_eq!(pid.f(5).c(4).text(), "Ã©");
        assert_eq!(pid.f(5).whole(), "Müller^Anné & B^X^Ã©");
        // UTF-8 declared, a stray Windows-1252 byte: that leaf falls back,
        // the others are still read as UTF-8.
        let mixed = Message::parse(
            "MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||7||Jos\u{e9}^M\u{fc}".as_bytes(),
        )
        .unwrap();
        let mut bytes = mixed.as_bytes().to_vec();
        bytes.extend_from_slice(b"^\x80 x");
        let mixed = Message::parse(bytes).unwrap();
        let cx = Cx::of(&mixed);
        let mixed = Msg::new(&mixed, &cx);
        let pid = mixed.seg("PID").unwrap();
        assert_eq!(pid.f(5).c(1).text(), "José");
        assert_eq!(pid.f(5).c(2).text(), "Mü");
        assert_eq!(pid.f(5).c(3).text(), "€ x");
        assert_eq!(pid.f(40).text(), "");
        // A valid UTF-8 message: leaves are slices of it.
        let utf8 =
            Message::parse("MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||7||Jos\u{e9}^\"\"^\\S\\".as_bytes()).unwrap();
        let cx = Cx::of(&utf8);
        let utf8 = Msg::new(&utf8, &cx);
        let pid = utf8.seg("PID").unwrap();
        assert!(matches!(pid.f(5).c(1).text(), Cow::Borrowed("José")));
        assert_eq!(pid.f(5).c(2).text(), "");
        assert_eq!(pid.f(5).c(3).text(), "^");
    }

    #[test]
    fn undeclared_delimiters_are_ordinary_characters_in_a_leaf() {
        // MSH-2 declares only the component separator: `~`, `\` and `&`
        // are text, and the leaf ends at `^` only.
        let m = Message::parse("MSH|^|A\rPID|1||a&b~c\\d^e").unwrap();
        let cx = Cx::of(&m);
        let m = Msg::new(&m, &cx);
        let pid = m.seg("PID").unwrap();
        assert_eq!(pid.f(3).text(), "a&b~c\\d");
        assert_eq!(pid.f(3).c(2).text(), "e");
    }

    #[test]
    fn text_is_trimmed_and_escapes_decoded() {
        assert_eq!(node("Ann Arbor ^MI").c(1).text(), "Ann Arbor");
        assert_eq!(node(r"A\T\E \F\ 1").text(), "A&E | 1");
        assert_eq!(node(r"x\.br\y").whole(), "x\ny");
    }
}
