//! Borrowed views of a message's tree: segment, field, repetition,
//! component, sub-component.
//!
//! Views are two words and a copy of the delimiters; they borrow the
//! message's buffer, so walking a message allocates nothing. Every level has
//! `raw()` (the bytes as written, separators of deeper levels included) and
//! `text()` (decoded escapes and character set of the node's first leaf, the
//! same convention as [`Message::get`]).

use std::borrow::Cow;
use std::fmt;

use memchr::{memchr, memchr_iter};

use crate::message::{Message, is_header_name};
use crate::{Charset, Delimiters, escape};

/// Whether a value is there, and how.
///
/// ```
/// use hl7v2::Presence;
/// assert_eq!(Presence::of(b""), Presence::Empty);
/// assert_eq!(Presence::of(b"\"\""), Presence::Null);
/// assert_eq!(Presence::of(b"F"), Presence::Valued);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    /// Not in the message: the segment ends before the field, or there is no
    /// such repetition, component or sub-component.
    Absent,
    /// Present with no value (`||`).
    Empty,
    /// The explicit null `""`: the sender says "delete this value".
    Null,
    /// Present with a value.
    Valued,
}

impl Presence {
    /// The presence of a node with these raw bytes.
    pub fn of(raw: &[u8]) -> Presence {
        match raw {
            b"" => Presence::Empty,
            b"\"\"" => Presence::Null,
            _ => Presence::Valued,
        }
    }
}

/// What decoding needs: the delimiters and the character set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub(crate) delims: Delimiters,
    pub(crate) charset: Charset,
}

impl Ctx {
    pub(crate) fn text<'a>(&self, raw: &'a [u8]) -> Cow<'a, str> {
        match escape::decode(raw, &self.delims) {
            Cow::Borrowed(b) => self.charset.decode(b),
            Cow::Owned(v) => Cow::Owned(self.charset.decode_owned(v)),
        }
    }

    /// Text of the first leaf under `raw` at `level` (0 field, 1 repetition,
    /// 2 component, 3 sub-component).
    fn leaf_text<'a>(&self, mut raw: &'a [u8], level: u8) -> Cow<'a, str> {
        let d = &self.delims;
        for sep in [d.repetition, d.component, d.subcomponent].iter().skip(level as usize) {
            raw = first_part(raw, *sep);
        }
        self.text(raw)
    }
}

#[inline]
fn first_part(raw: &[u8], sep: u8) -> &[u8] {
    &raw[..find_byte(sep, raw).unwrap_or(raw.len())]
}

/// `memchr`, with a plain loop for the short values most fields hold: a
/// message's validation and metadata look up a few hundred of them, and
/// for a handful of bytes memchr's dispatch costs more than the scan.
#[inline]
pub(crate) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    if haystack.len() < 16 { haystack.iter().position(|&b| b == needle) } else { memchr(needle, haystack) }
}

/// The `n`th (1-based) part of `raw` split on `sep`.
#[inline]
pub(crate) fn nth_part(raw: &[u8], sep: u8, n: usize) -> Option<&[u8]> {
    if n == 1 {
        return Some(first_part(raw, sep));
    }
    let mut start = 0;
    let mut count = 1;
    for i in memchr_iter(sep, raw) {
        if count == n {
            return Some(&raw[start..i]);
        }
        start = i + 1;
        count += 1;
    }
    (count == n && n != 0).then(|| &raw[start..])
}

fn count_parts(raw: &[u8], sep: u8) -> usize {
    memchr_iter(sep, raw).count() + 1
}

/// One segment of a [`Message`].
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse("MSH|^~\\&|A\rOBX|1|NM|718-7||13.5\rOBX|2|NM|4544-3||40.1").unwrap();
/// let obx = msg.segments_named("OBX").nth(1).unwrap();
/// assert_eq!((obx.name(), obx.index(), obx.occurrence()), ("OBX", 2, 2));
/// assert_eq!(obx.get(5).as_deref(), Some("40.1"));
/// assert_eq!(obx.raw(), b"OBX|2|NM|4544-3||40.1");
/// ```
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    pub(crate) msg: &'a Message,
    pub(crate) index: usize,
}

impl<'a> Segment<'a> {
    fn span(&self) -> &'a crate::message::SegmentSpan {
        &self.msg.segments[self.index]
    }

    fn seps(&self) -> &'a [u32] {
        let s = self.span();
        &self.msg.seps[s.seps_start as usize..(s.seps_start + s.seps_len) as usize]
    }

    /// The segment name (`PID`).
    pub fn name(&self) -> &'a str {
        std::str::from_utf8(&self.span().name).unwrap_or_default()
    }

    /// Position in the message, 0-based (MSH is 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Which occurrence of its name this segment is, 1-based (`OBX(3)` is 3).
    pub fn occurrence(&self) -> usize {
        let name = self.span().name;
        self.msg.segments[..=self.index].iter().filter(|s| s.name == name).count()
    }

    /// Whether this is MSH, FHS or BHS, whose fields 1 and 2 are the
    /// delimiters.
    pub fn is_header(&self) -> bool {
        is_header_name(&self.span().name)
    }

    /// The whole segment as written, without its terminator.
    pub fn raw(&self) -> &'a [u8] {
        let s = self.span();
        &self.msg.buf[s.start as usize..s.end as usize]
    }

    /// Number of fields present (a trailing empty field counts: `PID|1|`
    /// has two). For MSH this counts MSH-1.
    pub fn field_count(&self) -> usize {
        let n = self.seps().len() - 1;
        // A header segment counts MSH-1 only when the separator is there: a
        // bare `BHS` line has no fields at all.
        if self.is_header() && n > 0 { n + 1 } else { n }
    }

    /// Field `n` (1-based, as in the standard: MSH-1 is the field
    /// separator, MSH-2 the encoding characters). `None` when the segment
    /// ends before it.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let msg = Message::parse("MSH|^~\\&|APP\rPID|1||42").unwrap();
    /// let msh = msg.segment("MSH").unwrap();
    /// assert_eq!(msh.field(1).unwrap().raw(), b"|");
    /// assert_eq!(msh.field(2).unwrap().raw(), b"^~\\&");
    /// assert_eq!(msh.field(3).unwrap().raw(), b"APP");
    /// let pid = msg.segment("PID").unwrap();
    /// assert_eq!(pid.field_count(), 3);
    /// assert_eq!(pid.field(3).unwrap().text(), "42");
    /// assert!(pid.field(4).is_none());
    /// ```
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let seps = self.seps();
        let buf = &self.msg.buf;
        let mut ctx = self.msg.ctx();
        let k = if self.is_header() {
            if seps.len() < 2 {
                return None;
            }
            let at = self.span().start as usize + 3;
            match n {
                0 => return None,
                1 => {
                    ctx.delims = ctx.delims.opaque();
                    return Some(Field { raw: &buf[at..at + 1], ctx });
                }
                2 => ctx.delims = ctx.delims.opaque(),
                _ => {}
            }
            n - 1
        } else {
            n
        };
        if k == 0 || k >= seps.len() {
            return None;
        }
        let raw = &buf[seps[k - 1] as usize + 1..seps[k] as usize];
        Some(Field { raw, ctx })
    }

    /// The bytes of field `n` as written, what [`Segment::field`] gives as
    /// [`Field::raw`], empty when the segment ends before it: for readers
    /// that split and decode fields themselves and read hundreds per
    /// message (one lookup of the segment, no field context made).
    ///
    /// ```
    /// use hl7v2::Message;
    /// let msg = Message::parse("MSH|^~\\&|APP\rPID|1||42^^^H").unwrap();
    /// let msh = msg.segment("MSH").unwrap();
    /// assert_eq!(msh.field_bytes(1), b"|");
    /// assert_eq!(msh.field_bytes(3), b"APP");
    /// let pid = msg.segment("PID").unwrap();
    /// assert_eq!(pid.field_bytes(3), b"42^^^H");
    /// assert_eq!(pid.field_bytes(2), b"");
    /// assert_eq!(pid.field_bytes(9), b"");
    /// ```
    pub fn field_bytes(&self, n: usize) -> &'a [u8] {
        let span = self.span();
        let buf = &self.msg.buf;
        let seps = &self.msg.seps[span.seps_start as usize..(span.seps_start + span.seps_len) as usize];
        let k = if is_header_name(&span.name) {
            if seps.len() < 2 {
                return b"";
            }
            if n == 1 {
                let at = span.start as usize + 3;
                return &buf[at..at + 1];
            }
            // MSH-2 is the first field after the separator; n = 0 wraps
            // out of range.
            n.wrapping_sub(1)
        } else {
            n
        };
        if k == 0 || k >= seps.len() {
            return b"";
        }
        &buf[seps[k - 1] as usize + 1..seps[k] as usize]
    }

    /// The fields in order, from field 1.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let seg = *self;
        (1..=seg.field_count()).filter_map(move |n| seg.field(n))
    }

    /// The text of field `n`'s first leaf (as [`Message::get`] reads
    /// `SEG-n`); `None` when the field is absent.
    pub fn get(&self, n: usize) -> Option<Cow<'a, str>> {
        self.field(n).map(|f| f.text())
    }
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name())
            .field("index", &self.index)
            .field("fields", &self.field_count())
            .finish()
    }
}

macro_rules! node_common {
    ($ty:ident, $level:expr) => {
        impl<'a> $ty<'a> {
            /// The bytes as written (escapes not decoded; deeper separators
            /// included).
            pub fn raw(&self) -> &'a [u8] {
                self.raw
            }
            /// Decoded text (escapes, then the character set) of this node's
            /// first leaf: the whole value for a simple one.
            pub fn text(&self) -> Cow<'a, str> {
                self.ctx.leaf_text(self.raw, $level)
            }
            /// Whether it is empty (`||`).
            pub fn is_empty(&self) -> bool {
                self.raw.is_empty()
            }
            /// Whether it is the explicit null `""`.
            pub fn is_null(&self) -> bool {
                self.raw == b"\"\""
            }
            /// Empty, null or valued (a node you hold is never absent).
            pub fn presence(&self) -> Presence {
                Presence::of(self.raw)
            }
        }

        impl fmt::Debug for $ty<'_> {
            /// The length only: values are patient data.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty)).field("bytes", &self.raw.len()).finish()
            }
        }
    };
}

/// One field: all its repetitions.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse("MSH|^~\\&|A\rPID|1||111^^^H^MR~222^^^S^SS").unwrap();
/// let ids = msg.segment("PID").unwrap().field(3).unwrap();
/// assert_eq!(ids.repetition_count(), 2);
/// let kinds: Vec<_> = ids.repetitions().map(|r| r.component(5).unwrap().text()).collect();
/// assert_eq!(kinds, ["MR", "SS"]);
/// assert_eq!(ids.text(), "111"); // first leaf
/// ```
#[derive(Clone, Copy)]
pub struct Field<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) ctx: Ctx,
}
node_common!(Field, 0);

impl<'a> Field<'a> {
    /// The repetitions (a field always has at least one, possibly empty).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let ctx = self.ctx;
        self.raw.split(move |&b| b == ctx.delims.repetition).map(move |raw| Repetition { raw, ctx })
    }
    /// Repetition `n`, 1-based.
    pub fn repetition(&self, n: usize) -> Option<Repetition<'a>> {
        nth_part(self.raw, self.ctx.delims.repetition, n).map(|raw| Repetition { raw, ctx: self.ctx })
    }
    /// Number of repetitions.
    pub fn repetition_count(&self) -> usize {
        count_parts(self.raw, self.ctx.delims.repetition)
    }
    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.repetition(1)?.component(n)
    }
}

/// One repetition of a field.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse("MSH|^~\\&|A\rPID|1||||Doe^Jane^^^Dr").unwrap();
/// let name = msg.segment("PID").unwrap().field(5).unwrap().repetition(1).unwrap();
/// assert_eq!(name.component_count(), 5);
/// assert_eq!(name.component(5).unwrap().text(), "Dr");
/// assert!(name.component(3).unwrap().is_empty());
/// ```
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) ctx: Ctx,
}
node_common!(Repetition, 1);

impl<'a> Repetition<'a> {
    /// The components.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let ctx = self.ctx;
        self.raw.split(move |&b| b == ctx.delims.component).map(move |raw| Component { raw, ctx })
    }
    /// Component `n`, 1-based.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        nth_part(self.raw, self.ctx.delims.component, n).map(|raw| Component { raw, ctx: self.ctx })
    }
    /// Number of components.
    pub fn component_count(&self) -> usize {
        count_parts(self.raw, self.ctx.delims.component)
    }
}

/// One component.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse("MSH|^~\\&|A\rPID|1||42^^^HOSP&1.2.3&ISO").unwrap();
/// let authority = msg.segment("PID").unwrap().field(3).unwrap().component(4).unwrap();
/// let parts: Vec<_> = authority.subcomponents().map(|s| s.text()).collect();
/// assert_eq!(parts, ["HOSP", "1.2.3", "ISO"]);
/// ```
#[derive(Clone, Copy)]
pub struct Component<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) ctx: Ctx,
}
node_common!(Component, 2);

impl<'a> Component<'a> {
    /// The sub-components.
    pub fn subcomponents(&self) -> impl Iterator<Item = SubComponent<'a>> + 'a {
        let ctx = self.ctx;
        self.raw.split(move |&b| b == ctx.delims.subcomponent).map(move |raw| SubComponent { raw, ctx })
    }
    /// Sub-component `n`, 1-based.
    pub fn subcomponent(&self, n: usize) -> Option<SubComponent<'a>> {
        nth_part(self.raw, self.ctx.delims.subcomponent, n).map(|raw| SubComponent { raw, ctx: self.ctx })
    }
    /// Number of sub-components.
    pub fn subcomponent_count(&self) -> usize {
        count_parts(self.raw, self.ctx.delims.subcomponent)
    }
}

/// One sub-component: a leaf.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse("MSH|^~\\&|A\rPID|1||42^^^A\\T\\B&1.2").unwrap();
/// let sub = msg.segment("PID").unwrap().field(3).unwrap().component(4).unwrap().subcomponent(1).unwrap();
/// assert_eq!(sub.raw(), b"A\\T\\B");
/// assert_eq!(sub.text(), "A&B");
/// ```
#[derive(Clone, Copy)]
pub struct SubComponent<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) ctx: Ctx,
}
node_common!(SubComponent, 3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_named_segment_without_field_separator_has_no_fields() {
        // Found by fuzzing: a bare `BHS` line inside a message.
        let msg = Message::parse("MSH|^~\\&|A\rBHS\rMSH").unwrap();
        for index in [1, 2] {
            let seg = msg.segment_at(index).unwrap();
            assert_eq!(seg.field_count(), 0);
            assert!(seg.field(1).is_none());
            assert!(seg.field(2).is_none());
            assert_eq!(seg.fields().count(), 0);
        }
        assert_eq!(msg.get("BHS-1"), None);
    }

    #[test]
    fn nth_part_counts_from_one_and_keeps_empty_parts() {
        assert_eq!(nth_part(b"a^^c", b'^', 1), Some(&b"a"[..]));
        assert_eq!(nth_part(b"a^^c", b'^', 2), Some(&b""[..]));
        assert_eq!(nth_part(b"a^^c", b'^', 3), Some(&b"c"[..]));
        assert_eq!(nth_part(b"a^^c", b'^', 4), None);
        assert_eq!(nth_part(b"a^^c", b'^', 0), None);
        assert_eq!(nth_part(b"", b'^', 1), Some(&b""[..]));
        assert_eq!(nth_part(b"", b'^', 2), None);
    }

    #[test]
    fn find_byte_agrees_with_memchr_on_both_sides_of_its_threshold() {
        let text = b"0123456789abcdef^ghijklmnopqrstuvwxyz^";
        for len in 0..text.len() {
            for needle in [b'^', b'0', b'f', b'g', b'z', b'#'] {
                assert_eq!(find_byte(needle, &text[..len]), memchr(needle, &text[..len]), "{len} {needle}");
            }
        }
    }
}
