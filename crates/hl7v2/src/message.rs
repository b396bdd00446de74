//! The message: one owned buffer and an index of positions.
//!
//! Parsing makes two allocations whatever the size of the message: a vector
//! of segment spans and one flat vector of field-separator positions (each
//! segment owns a run of it, closed by the segment's end). Reading a field is
//! an index lookup; repetitions, components and sub-components are found by
//! scanning the few bytes of that field when they are asked for, so the read
//! path allocates only when a value has escapes or non-UTF-8 text to decode.
//!
//! Segments may be separated by CR, LF or CRLF, mixed within one message.
//! The buffer is kept exactly as received, so [`Message::encode`] of an
//! unchanged message gives back the input byte for byte (separators, a
//! leading byte-order mark, blank lines and all). The first edit rewrites the
//! buffer in the standard form (one CR after every segment, nothing else), and
//! from then on `as_bytes`/`encode` give that form.

use std::borrow::Cow;
use std::fmt;

use memchr::{memchr, memchr2};

use crate::element::{Ctx, Presence, Segment, nth_part};
use crate::error::{ParseError, ParseErrorKind};
use crate::path::{Path, ToPath, is_segment_name};
use crate::{Charset, Delimiters};

/// Where one segment lies in the buffer.
#[derive(Clone, Copy)]
pub(crate) struct SegmentSpan {
    /// First byte of the name.
    pub(crate) start: u32,
    /// One past the last byte, before the terminator.
    pub(crate) end: u32,
    /// Where this segment's run starts in `Message::seps`.
    pub(crate) seps_start: u32,
    /// Length of the run: one per field separator, plus the segment end.
    pub(crate) seps_len: u32,
    pub(crate) name: [u8; 3],
}

/// A parsed HL7 v2 message.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::parse(
///     "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261121120000||ORU^R01^ORU_R01|MSG001|P|2.5.1\r\
///      PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\r\
///      OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL\r\
///      OBX|2|NM|4544-3^Hematocrit^LN||40.1|%",
/// )?;
/// assert_eq!(msg.control_id().as_deref(), Some("MSG001"));
/// assert_eq!(msg.get("PID-5-2").as_deref(), Some("Jane"));
/// assert_eq!(msg.get("OBX(2)-5").as_deref(), Some("40.1"));
/// let values: Vec<_> = msg.segments_named("OBX").map(|obx| obx.get(5).unwrap_or_default()).collect();
/// assert_eq!(values, ["13.5", "40.1"]);
/// # Ok::<(), hl7v2::ParseError>(())
/// ```
#[derive(Clone)]
pub struct Message {
    pub(crate) buf: Vec<u8>,
    pub(crate) delims: Delimiters,
    pub(crate) charset: Charset,
    pub(crate) segments: Vec<SegmentSpan>,
    pub(crate) seps: Vec<u32>,
    /// True once the buffer is in the standard form (after an edit, or built).
    pub(crate) normalized: bool,
}

/// MSH-9: message code, trigger event and message structure.
///
/// ```
/// let msg = hl7v2::Message::parse("MSH|^~\\&|A||||||SIU^S12^SIU_S12|1|P|2.5").unwrap();
/// let t = msg.message_type().unwrap();
/// assert_eq!((&*t.code, &*t.trigger, &*t.structure), ("SIU", "S12", "SIU_S12"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageType<'a> {
    /// MSH-9-1, e.g. `ADT`.
    pub code: Cow<'a, str>,
    /// MSH-9-2, e.g. `A01` (empty when absent, as in ACKs from some systems).
    pub trigger: Cow<'a, str>,
    /// MSH-9-3, e.g. `ADT_A01` (empty before 2.3.1 or when not sent).
    pub structure: Cow<'a, str>,
}

/// Segments whose first two fields are the delimiters.
pub(crate) fn is_header_name(name: &[u8]) -> bool {
    matches!(name, b"MSH" | b"FHS" | b"BHS")
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b' ' || b == b'\t')
}

/// Every byte of a word, for [`zero_bytes`] comparisons.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of each byte of `x` that is zero, and no other bit: exact,
/// unlike the shorter `(x - ONES) & !x & HIGHS`, whose borrow can mark a
/// 0x01 byte above a zero one (each hit here is acted on, so a false one
/// would be a wrong field separator).
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Appends the position of each byte marked in `hits` (see [`zero_bytes`])
/// of the word at `at`, in order.
#[inline(always)]
fn push_seps(seps: &mut Vec<u32>, at: usize, mut hits: u64) {
    while hits != 0 {
        seps.push((at + (hits.trailing_zeros() / 8) as usize) as u32);
        hits &= hits - 1;
    }
}

/// Ends the segment `buf[seg_start..end]` whose field separators are
/// `seps[run_start..]`: checks its name and records its span, or skips it
/// when it is a blank line.
fn close_segment(
    buf: &[u8],
    seps: &mut Vec<u32>,
    segments: &mut Vec<SegmentSpan>,
    seg_start: usize,
    end: usize,
    run_start: &mut usize,
) -> Result<(), ParseError> {
    let line = &buf[seg_start..end];
    let run = &seps[*run_start..];
    if run.is_empty() && is_blank(line) {
        return Ok(());
    }
    let named = line.len() >= 3
        && is_segment_name(&line[..3])
        && run.first().map_or(line.len() == 3, |&p| p as usize == seg_start + 3);
    if !named {
        return Err(ParseError::new(ParseErrorKind::InvalidSegmentName, seg_start, segments.len() + 1));
    }
    seps.push(end as u32);
    segments.push(SegmentSpan {
        start: seg_start as u32,
        end: end as u32,
        seps_start: *run_start as u32,
        seps_len: (seps.len() - *run_start) as u32,
        name: [line[0], line[1], line[2]],
    });
    *run_start = seps.len();
    Ok(())
}

/// Skips a UTF-8 byte-order mark and any white space or line breaks before
/// the first segment.
pub(crate) fn skip_preamble(buf: &[u8]) -> usize {
    let mut i = if buf.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Reads the delimiters of a header segment (MSH/FHS/BHS) starting at `at`.
pub(crate) fn read_delimiters(buf: &[u8], at: usize) -> Result<Delimiters, ParseError> {
    let line_end = memchr2(b'\r', b'\n', &buf[at..]).map_or(buf.len(), |i| at + i);
    let line = &buf[at..line_end];
    let Some(&field) = line.get(3) else {
        return Err(ParseError::new(ParseErrorKind::TruncatedHeader, at + 3, 1).in_field(1));
    };
    let rest = &line[4..];
    let encoding = &rest[..memchr(field, rest).unwrap_or(rest.len())];
    Delimiters::from_parts(field, encoding).map_err(|e| {
        let (offset, field) = match e {
            crate::DelimiterError::NotPunctuation if !field.is_ascii_punctuation() => (at + 3, 1),
            _ => (at + 4, 2),
        };
        ParseError::new(ParseErrorKind::InvalidDelimiters(e), offset, 1).in_field(field)
    })
}

impl Message {
    /// Parses one message. The bytes become the message's buffer (no copy
    /// when given a `Vec<u8>`).
    ///
    /// Accepts CR, LF and CRLF between segments, a UTF-8 byte-order mark,
    /// white space before MSH, blank lines, trailing separators, segments
    /// with no fields and unknown or Z segments. Refuses (with the byte offset
    /// and segment) input that does not start with MSH, unusable delimiters,
    /// and a segment whose name is not three characters A-Z/0-9.
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Message, ParseError> {
        let buf = bytes.into();
        if u32::try_from(buf.len()).is_err() {
            return Err(ParseError::new(ParseErrorKind::TooLarge, 0, 0));
        }
        let start = skip_preamble(&buf);
        if start == buf.len() {
            return Err(ParseError::new(ParseErrorKind::Empty, start, 0));
        }
        let head = &buf[start..];
        if head.starts_with(b"FHS") || head.starts_with(b"BHS") {
            return Err(ParseError::new(ParseErrorKind::Batch, start, 1));
        }
        if !head.starts_with(b"MSH") {
            return Err(ParseError::new(ParseErrorKind::MissingHeader, start, 1));
        }
        let delims = read_delimiters(&buf, start)?;
        let mut msg =
            Message { buf, delims, charset: Charset::Ascii, segments: Vec::new(), seps: Vec::new(), normalized: false };
        if let Err(e) = msg.reindex(start) {
            // The MSH was readable: hand it back for the ACK.
            let header = msg.segments.first().map(|s| {
                let raw = msg.buf[s.start as usize..s.end as usize].to_vec();
                Message::parse(raw)
            });
            return Err(match header {
                Some(Ok(h)) => e.with_header(h),
                _ => e,
            });
        }
        Ok(msg)
    }

    /// A message from bytes this crate wrote in the standard form with
    /// constant segment names (ACKs, batches). Indexing cannot fail on them;
    /// should it ever, the header alone is returned rather than panicking.
    pub(crate) fn from_built(buf: Vec<u8>, delims: Delimiters) -> Message {
        let mut msg =
            Message { buf, delims, charset: Charset::Ascii, segments: Vec::new(), seps: Vec::new(), normalized: true };
        match msg.reindex(0) {
            Ok(()) => msg,
            Err(_) => {
                debug_assert!(false, "built message does not index");
                Message::new(delims)
            }
        }
    }

    /// The version id (MSH-12-1) parsed, when it is a valid `2.x[.y]`.
    pub fn version_id(&self) -> Option<crate::Version> {
        crate::Version::parse(&self.version()?)
    }

    /// Rebuilds the index from `start`. On error the index holds the
    /// segments before the bad one.
    ///
    /// One pass over the bytes: each field separator, CR or LF is either a
    /// field boundary or a segment end, so the whole message is scanned once,
    /// whatever its line endings.
    pub(crate) fn reindex(&mut self, start: usize) -> Result<(), ParseError> {
        let buf = &self.buf;
        let fs = self.delims.field;
        let segments = &mut self.segments;
        let seps = &mut self.seps;
        segments.clear();
        seps.clear();
        // Room for a typical message without regrowing; the estimate is cheap.
        segments.reserve(buf.len() / 64 + 4);
        seps.reserve(buf.len() / 6 + 8);
        let mut seg_start = start;
        let mut run_start = 0usize;
        // Eight bytes at a time: a mask of the field separators and line
        // ends in each word (exact, see `zero_bytes`), then one step per
        // hit. Hits are dense (a field separator every few bytes), so the
        // cost per byte is what this saves over a byte loop with a class
        // table; a word without a hit costs a dozen operations.
        let (fs_word, cr_word, lf_word) = (ONES * u64::from(fs), ONES * u64::from(b'\r'), ONES * u64::from(b'\n'));
        let body = buf.get(start..).unwrap_or_default();
        let mut words = body.chunks_exact(8);
        let mut at = start;
        for word in words.by_ref() {
            let w = u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]);
            let mut field_seps = zero_bytes(w ^ fs_word);
            let mut ends = zero_bytes(w ^ cr_word) | zero_bytes(w ^ lf_word);
            // Most words hold no line end: their separators only.
            while ends != 0 {
                let end = ends.trailing_zeros();
                ends &= ends - 1;
                let before = field_seps & ((1u64 << end) - 1);
                field_seps &= !before;
                push_seps(seps, at, before);
                let i = at + (end / 8) as usize;
                close_segment(buf, seps, segments, seg_start, i, &mut run_start)?;
                seg_start = i + 1;
            }
            push_seps(seps, at, field_seps);
            at += 8;
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            let i = at + i;
            if b == fs {
                seps.push(i as u32);
            } else if b == b'\r' || b == b'\n' {
                close_segment(buf, seps, segments, seg_start, i, &mut run_start)?;
                seg_start = i + 1;
            }
        }
        if seg_start < buf.len() {
            close_segment(buf, seps, segments, seg_start, buf.len(), &mut run_start)?;
        }
        self.charset = self.read_charset();
        Ok(())
    }

    pub(crate) fn read_charset(&self) -> Charset {
        let declared = self
            .segment_at(0)
            .and_then(|msh| msh.field(18))
            .map(|f| {
                let first = nth_part(f.raw(), self.delims.repetition, 1).unwrap_or_default();
                nth_part(first, self.delims.component, 1).unwrap_or_default()
            })
            .unwrap_or_default();
        match Charset::from_msh18(declared) {
            // A byte-order mark says UTF-8 even when MSH-18 is silent.
            Charset::Ascii if self.buf.starts_with(b"\xEF\xBB\xBF") => Charset::Utf8,
            c => c,
        }
    }

    pub(crate) fn ctx(&self) -> Ctx {
        Ctx { delims: self.delims, charset: self.charset }
    }

    /// The message bytes: the input as received for a message that was not
    /// edited, the standard CR-separated form after an edit.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The message bytes, owned. For a parsed message that was not edited
    /// this is exactly the input; after an edit (or for a built message) every
    /// segment is followed by one CR and nothing else is kept.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let input = "MSH|^~\\&|A||||||ADT^A01|1|P|2.5\nPID|1||42\r\n";
    /// let mut msg = Message::parse(input).unwrap();
    /// assert_eq!(msg.encode(), input.as_bytes());
    /// msg.set("PID-3", "43").unwrap();
    /// assert_eq!(msg.encode(), b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||43\r");
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        self.buf.clone()
    }

    /// The message bytes in the standard form (CR after every segment), even
    /// for an unedited message, as an MLLP sender wants them.
    pub fn to_standard_form(&self) -> Vec<u8> {
        if self.normalized {
            return self.buf.clone();
        }
        let mut out = Vec::with_capacity(self.buf.len() + 1);
        for s in &self.segments {
            out.extend_from_slice(&self.buf[s.start as usize..s.end as usize]);
            out.push(b'\r');
        }
        out
    }

    /// Consumes the message, giving back its buffer.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The delimiters from MSH-1 and MSH-2.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    /// The character set from MSH-18 (or UTF-8 for a message with a
    /// byte-order mark and no MSH-18).
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segment at `index` (0 is MSH).
    pub fn segment_at(&self, index: usize) -> Option<Segment<'_>> {
        (index < self.segments.len()).then_some(Segment { msg: self, index })
    }

    /// All segments in order.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = Segment<'_>> + ExactSizeIterator {
        (0..self.segments.len()).map(move |index| Segment { msg: self, index })
    }

    /// The segments with this name, in order.
    pub fn segments_named<'m>(&'m self, name: &str) -> impl Iterator<Item = Segment<'m>> + 'm {
        let name = name_bytes(name);
        self.segments
            .iter()
            .enumerate()
            .filter(move |(_, s)| Some(s.name) == name)
            .map(move |(index, _)| Segment { msg: self, index })
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<Segment<'_>> {
        self.segments_named(name).next()
    }

    /// The `occurrence`th (1-based) segment with this name.
    pub fn segment_occurrence(&self, name: &str, occurrence: usize) -> Option<Segment<'_>> {
        self.segments_named(name).nth(occurrence.checked_sub(1)?)
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> Option<Cow<'_, str>> {
        self.msh_leaf(10)
    }

    /// MSH-12-1, the version id (`2.5.1`).
    pub fn version(&self) -> Option<Cow<'_, str>> {
        self.msh_leaf(12)
    }

    /// MSH-9 split into code, trigger event and structure; `None` when MSH-9-1
    /// is empty.
    pub fn message_type(&self) -> Option<MessageType<'_>> {
        let field = self.segment_at(0)?.field(9)?;
        let rep = field.repetition(1)?;
        let part = |n| rep.component(n).map(|c| c.text()).unwrap_or_default();
        let code = part(1);
        if code.is_empty() {
            return None;
        }
        Some(MessageType { code, trigger: part(2), structure: part(3) })
    }

    fn msh_leaf(&self, field: usize) -> Option<Cow<'_, str>> {
        let f = self.segment_at(0)?.field(field)?;
        let text = f.repetition(1)?.component(1)?.subcomponent(1)?.text();
        (!text.is_empty()).then_some(text)
    }

    /// Finds the segment a path names.
    fn path_segment(&self, path: &Path) -> Option<Segment<'_>> {
        let occurrence = path.segment_repetition.unwrap_or(1) as usize;
        let mut seen = 0;
        for (index, s) in self.segments.iter().enumerate() {
            if s.name == path.segment {
                seen += 1;
                if seen == occurrence {
                    return Some(Segment { msg: self, index });
                }
            }
        }
        None
    }

    /// The raw bytes of the node a path names, at the depth it names:
    /// `PID-5` is the whole field (all repetitions, separators included),
    /// `PID-5(2)` one repetition, `PID-5-1` the first component of the first
    /// repetition. `None` when the node is absent. Escapes are not decoded.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let msg = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|||1^^^A~2^^^B||Doe^J\\S\\r").unwrap();
    /// assert_eq!(msg.get_raw("PID-3"), Some(&b"1^^^A~2^^^B"[..]));
    /// assert_eq!(msg.get_raw("PID-3(2)"), Some(&b"2^^^B"[..]));
    /// assert_eq!(msg.get_raw("PID-3(2)-4"), Some(&b"B"[..]));
    /// assert_eq!(msg.get_raw("PID-5-2"), Some(&b"J\\S\\r"[..]));
    /// assert_eq!(msg.get_raw("PID-3(3)"), None);
    /// ```
    pub fn get_raw(&self, path: impl ToPath) -> Option<&[u8]> {
        let path = path.to_path().ok()?;
        self.node(&path, false)
    }

    /// The node's raw bytes; with `leaf`, repetition, component and
    /// sub-component default to 1 (the Terser convention).
    pub(crate) fn node(&self, path: &Path, leaf: bool) -> Option<&[u8]> {
        let field = self.path_segment(path)?.field(path.field as usize)?;
        let ctx = field.ctx;
        let d = &ctx.delims;
        let mut raw = field.raw();
        let default = |n: Option<u32>| if leaf { n.or(Some(1)) } else { n };
        let component = default(path.component).or(path.subcomponent.map(|_| 1));
        let repetition = default(path.field_repetition).or(component.map(|_| 1));
        if let Some(r) = repetition {
            raw = nth_part(raw, d.repetition, r as usize)?;
        }
        if let Some(c) = component {
            raw = nth_part(raw, d.component, c as usize)?;
        }
        if let Some(s) = default(path.subcomponent) {
            raw = nth_part(raw, d.subcomponent, s as usize)?;
        }
        Some(raw)
    }

    /// The decoded text (escapes and character set) of the value a path
    /// names. As in HAPI's Terser, a path that stops above the leaf reads its
    /// first repetition, component and sub-component: `get("PID-5")` is
    /// `get("PID-5-1-1")`. `None` when the value is absent (the segment,
    /// field, repetition or component is not there); `Some("")` when it is
    /// present but empty; the explicit null `""` reads as the two quote
    /// characters (see [`presence`](Message::presence) and
    /// [`valued`](Message::valued)). An invalid path text reads as `None`:
    /// parse it with [`Path::parse`] to see why.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let msg = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|||||Smith\\T\\Jones^Ann||\"\"").unwrap();
    /// assert_eq!(msg.get("PID-5").as_deref(), Some("Smith&Jones"));
    /// assert_eq!(msg.get("PID-5-2").as_deref(), Some("Ann"));
    /// assert_eq!(msg.get("PID-6").as_deref(), Some(""));
    /// assert_eq!(msg.get("PID-7").as_deref(), Some("\"\""));
    /// assert_eq!(msg.get("PID-8"), None);
    /// ```
    pub fn get(&self, path: impl ToPath) -> Option<Cow<'_, str>> {
        let path = path.to_path().ok()?;
        let raw = self.node(&path, true)?;
        Some(self.path_ctx(&path).text(raw))
    }

    /// Like [`get`](Message::get), but `None` also when the value is empty
    /// or the explicit null `""`: the value if the sender valued it.
    pub fn valued(&self, path: impl ToPath) -> Option<Cow<'_, str>> {
        let path = path.to_path().ok()?;
        let raw = self.node(&path, true)?;
        (Presence::of(raw) == Presence::Valued).then(|| self.path_ctx(&path).text(raw))
    }

    /// Whether the value a path names (with the Terser defaults of
    /// [`get`](Message::get)) is absent, empty, the explicit null `""`, or
    /// valued.
    ///
    /// ```
    /// use hl7v2::{Message, Presence};
    /// let msg = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||\"\"").unwrap();
    /// assert_eq!(msg.presence("PID-1"), Presence::Valued);
    /// assert_eq!(msg.presence("PID-2"), Presence::Empty);
    /// assert_eq!(msg.presence("PID-3"), Presence::Null);
    /// assert_eq!(msg.presence("PID-4"), Presence::Absent);
    /// assert_eq!(msg.presence("NK1-1"), Presence::Absent);
    /// ```
    pub fn presence(&self, path: impl ToPath) -> Presence {
        match path.to_path() {
            Ok(path) => self.node(&path, true).map_or(Presence::Absent, Presence::of),
            Err(_) => Presence::Absent,
        }
    }

    /// MSH-1 and MSH-2 (and FHS/BHS-1, -2) are the delimiters: their bytes
    /// are not split or unescaped.
    fn path_ctx(&self, path: &Path) -> Ctx {
        let mut ctx = self.ctx();
        if is_header_name(&path.segment) && path.field <= 2 {
            ctx.delims = ctx.delims.opaque();
        }
        ctx
    }
}

pub(crate) fn name_bytes(name: &str) -> Option<[u8; 3]> {
    match name.as_bytes() {
        &[a, b, c] => Some([a, b, c]),
        _ => None,
    }
}

impl fmt::Debug for Message {
    /// Shows the structure only: message bodies are patient data and must not
    /// reach logs through a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.segments().map(|s| s.name()).collect();
        f.debug_struct("Message")
            .field("bytes", &self.buf.len())
            .field("delimiters", &self.delims)
            .field("charset", &self.charset)
            .field("segments", &names)
            .finish()
    }
}

impl std::str::FromStr for Message {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Message, ParseError> {
        Message::parse(s)
    }
}

impl TryFrom<&[u8]> for Message {
    type Error = ParseError;
    fn try_from(bytes: &[u8]) -> Result<Message, ParseError> {
        Message::parse(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segments and fields of `text` found by splitting it (the index
    /// must agree wherever a separator or line end falls in a word).
    fn split(text: &str) -> Vec<(String, Vec<String>)> {
        text.split(['\r', '\n'])
            .filter(|line| !line.trim_matches([' ', '\t']).is_empty())
            .map(|line| {
                let fields: Vec<String> = line.split('|').map(str::to_string).collect();
                (fields[0].clone(), fields[1..].to_vec())
            })
            .collect()
    }

    #[test]
    fn the_index_finds_every_separator_and_line_end_at_every_offset() {
        for pad in 0..17 {
            for line_end in ["\r", "\n", "\r\n", "\n\n"] {
                let filler = "x".repeat(pad);
                let text = format!(
                    "MSH|^~\\&|{filler}|A||{filler}{line_end}PID|{filler}||1^^^H|{line_end}ZAB{line_end}\
                     OBX|{filler}|{filler}x|||é{line_end}NTE|{filler}"
                );
                let msg = Message::parse(text.as_str()).unwrap();
                let expected = split(&text);
                assert_eq!(msg.segments().len(), expected.len(), "{text:?}");
                for (seg, (name, fields)) in msg.segments().zip(&expected) {
                    assert_eq!(seg.name(), name, "{text:?}");
                    if name == "MSH" {
                        continue;
                    }
                    assert_eq!(seg.field_count(), fields.len(), "{text:?}");
                    for (n, want) in fields.iter().enumerate() {
                        let got = seg.field(n + 1).map(|f| f.raw().to_vec()).unwrap_or_default();
                        assert_eq!(String::from_utf8(got).unwrap(), *want, "{name}-{} of {text:?}", n + 1);
                    }
                }
            }
        }
    }

    #[test]
    fn field_bytes_are_the_fields_raw_bytes() {
        for text in [
            "MSH|^~\\&|APP|FAC|||20200101||ADT^A01|1|P|2.5\rPID|1||42^^^H~7||Doe^J|\rZZZ\rNTE",
            "MSH|^~\\&\rEVN|",
            "MSH|\rPID|1",
        ] {
            let Ok(msg) = Message::parse(text) else { continue };
            for seg in msg.segments() {
                for n in 0..seg.field_count() + 3 {
                    let raw = seg.field(n).map(|f| f.raw()).unwrap_or_default();
                    assert_eq!(seg.field_bytes(n), raw, "{}-{n} of {text:?}", seg.name());
                }
            }
        }
    }

    #[test]
    fn a_bad_segment_name_is_found_wherever_its_line_starts() {
        for pad in 0..9 {
            let text = format!("MSH|^~\\&|{}\rPiD|1", "x".repeat(pad));
            let err = Message::parse(text.as_str()).err().unwrap();
            assert_eq!(err.kind(), &ParseErrorKind::InvalidSegmentName, "{text:?}");
        }
    }
}
