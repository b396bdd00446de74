//! Editing: set values by path, add and remove segments, build from scratch.
//!
//! An edit rewrites the one segment it touches and splices it into the
//! buffer, then re-indexes (messages are a few kilobytes; edits are not on the
//! hot read path, and a single buffer keeps reads zero-copy). The first edit
//! of a parsed message also rewrites the buffer in the standard form: one CR
//! after every segment, no byte-order mark, no blank lines. A failed edit
//! leaves the message unchanged.

use std::borrow::Cow;

use crate::error::{EditError, ParseErrorKind};
use crate::message::{Message, is_header_name};
use crate::path::{Path, ToPath, is_segment_name};
use crate::{Charset, Delimiters, escape};

/// At which depth a write replaces the node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Terser: the first leaf under the path.
    Leaf,
    /// Exactly the node the path names.
    Node,
}

impl Message {
    /// A message holding only `MSH|^~\&` (with these delimiters), in the
    /// standard form; fill it with [`set`](Message::set) and
    /// [`push_segment`](Message::push_segment), or use
    /// [`Message::builder`].
    ///
    /// ```
    /// use hl7v2::{Delimiters, Message};
    /// let mut msg = Message::new(Delimiters::default());
    /// msg.set("MSH-9", "ADT")?;
    /// msg.set("MSH-9-2", "A01")?;
    /// msg.set("PID-5-1", "O'Brien & Sons")?;
    /// assert_eq!(msg.as_bytes(), b"MSH|^~\\&|||||||ADT^A01\rPID|||||O'Brien \\T\\ Sons\r");
    /// # Ok::<(), hl7v2::EditError>(())
    /// ```
    pub fn new(delimiters: Delimiters) -> Message {
        let mut buf = b"MSH".to_vec();
        buf.push(delimiters.field);
        buf.extend_from_slice(&delimiters.encoding_characters());
        buf.push(b'\r');
        let mut msg = Message {
            buf,
            delims: delimiters,
            charset: Charset::Ascii,
            segments: Vec::new(),
            seps: Vec::new(),
            normalized: true,
        };
        // Cannot fail: the only segment is a valid MSH.
        let _ = msg.reindex(0);
        msg
    }

    /// Starts building a message from scratch.
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }

    /// Writes `value` (escaped, in the message's character set) at the
    /// first leaf under `path`, as HAPI's Terser does: `set("PID-5", "Doe")`
    /// writes PID-5-1-1 and keeps the other components. Missing fields,
    /// repetitions and components are padded with empty ones; a missing
    /// segment is appended when the path names the next occurrence of it
    /// (`NTE(3)` when there are two NTE).
    ///
    /// ```
    /// use hl7v2::Message;
    /// let mut msg = Message::parse("MSH|^~\\&|||||||ADT^A08|7|P|2.5\rPID|1||42||Doe^John").unwrap();
    /// msg.set("PID-5-2", "Jean-Luc")?;
    /// msg.set("PID-3(2)-1", "X9")?;
    /// msg.set("PID-13-4", "a@b.example")?;
    /// assert_eq!(msg.get("PID-5-2").as_deref(), Some("Jean-Luc"));
    /// assert_eq!(msg.segment("PID").unwrap().raw(), b"PID|1||42~X9||Doe^Jean-Luc||||||||^^^a@b.example");
    /// # Ok::<(), hl7v2::EditError>(())
    /// ```
    pub fn set(&mut self, path: impl ToPath, value: &str) -> Result<(), EditError> {
        let path = path.to_path()?;
        let bytes = self
            .charset
            .encode(value)
            .map_err(|character| EditError::Unrepresentable { character, charset: self.charset.msh18() })?;
        let escaped = escape::encode(&bytes, &self.delims).into_owned();
        self.write(&path, &escaped, Depth::Leaf)
    }

    /// Replaces the node `path` names, at the depth it names (`PID-3` the
    /// whole field with its repetitions, `PID-3(2)` one repetition, `PID-3-4`
    /// one component) with raw bytes that are already encoded with this
    /// message's delimiters. Refuses bytes holding a separator of that level
    /// or above, or CR/LF.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let mut msg = Message::parse("MSH|^~\\&|||||||ADT^A08|7|P|2.5\rPID|1||42^^^A").unwrap();
    /// msg.set_raw("PID-3", b"1^^^A~2^^^B")?;
    /// assert_eq!(msg.get("PID-3(2)-4").as_deref(), Some("B"));
    /// msg.set_raw("PID-8", b"\"\"")?; // explicit null
    /// assert!(msg.set_raw("PID-3-1", b"a^b").is_err());
    /// # Ok::<(), hl7v2::EditError>(())
    /// ```
    pub fn set_raw(&mut self, path: impl ToPath, raw: &[u8]) -> Result<(), EditError> {
        let path = path.to_path()?;
        let d = &self.delims;
        let mut forbidden = vec![d.field, b'\r', b'\n'];
        if path.field_repetition.is_some() || path.component.is_some() {
            forbidden.push(d.repetition);
        }
        if path.component.is_some() {
            forbidden.push(d.component);
        }
        if path.subcomponent.is_some() {
            forbidden.push(d.subcomponent);
        }
        if raw.iter().any(|b| forbidden.contains(b)) {
            return Err(EditError::RawValue);
        }
        self.write(&path, raw, Depth::Node)
    }

    fn write(&mut self, path: &Path, replacement: &[u8], depth: Depth) -> Result<(), EditError> {
        let header = is_header_name(&path.segment);
        if header && path.field <= 2 {
            return Err(EditError::Delimiters);
        }
        let d = self.delims;
        let (rep, comp, sub) = match depth {
            Depth::Leaf => (
                Some(path.field_repetition.unwrap_or(1)),
                Some(path.component.unwrap_or(1)),
                Some(path.subcomponent.unwrap_or(1)),
            ),
            Depth::Node => {
                let comp = path.component.or(path.subcomponent.map(|_| 1));
                (path.field_repetition.or(comp.map(|_| 1)), comp, path.subcomponent)
            }
        };
        // A write may need a delimiter the message lacks only when it goes
        // past the first part of that level.
        for (n, sep) in [(rep, d.repetition), (comp, d.component), (sub, d.subcomponent)] {
            if n.unwrap_or(1) > 1 && sep == d.field {
                return Err(EditError::MissingDelimiter { path: path.to_string() });
            }
        }
        let occurrence = path.segment_repetition.unwrap_or(1) as usize;
        let existing: Vec<usize> =
            self.segments.iter().enumerate().filter(|(_, s)| s.name == path.segment).map(|(i, _)| i).collect();
        if occurrence > existing.len() + 1 {
            return Err(EditError::NoSuchSegment { path: path.to_string() });
        }
        if header && occurrence > existing.len() {
            return Err(EditError::Segment("MSH, FHS and BHS cannot be added to a message"));
        }
        // Indices survive normalisation (only separators change).
        self.normalize();
        let line: Vec<u8> = match existing.get(occurrence - 1) {
            Some(&i) => {
                let s = self.segments[i];
                self.buf[s.start as usize..s.end as usize].to_vec()
            }
            None => path.segment.to_vec(),
        };
        // Splitting on the field separator gives the name first, then
        // SEG-1 ...; for MSH the first item after the name is MSH-2.
        let field_index = if header { path.field } else { path.field + 1 } as usize;
        let mut levels = vec![(d.field, field_index)];
        for (n, sep) in [(rep, d.repetition), (comp, d.component), (sub, d.subcomponent)] {
            if let Some(n) = n {
                levels.push((sep, n as usize));
            }
        }
        let new_line = splice(&line, &levels, replacement);
        let target = existing.get(occurrence - 1).copied();
        self.replace_segment(target, &new_line)
    }

    /// Puts `line` in place of segment `index`, or appends it, updating the
    /// index in place: only the edited segment is scanned, the positions
    /// after it are shifted. (Re-indexing the whole message after every
    /// edit dominated the cost of transform steps.) The buffer must be in
    /// the standard form.
    fn replace_segment(&mut self, index: Option<usize>, line: &[u8]) -> Result<(), EditError> {
        let fs = self.delims.field;
        let named = line.len() >= 3 && is_segment_name(&line[..3]) && line.get(3).is_none_or(|&b| b == fs);
        if !named || line.contains(&b'\r') || line.contains(&b'\n') {
            return Err(EditError::Segment("the edit would produce an invalid segment"));
        }
        let (start, end, old_run) = match index {
            Some(i) => {
                let s = self.segments[i];
                let run = s.seps_start as usize..(s.seps_start + s.seps_len) as usize;
                (s.start as usize, s.end as usize, run)
            }
            // Appended after the last segment's CR.
            None => (self.buf.len(), self.buf.len(), self.seps.len()..self.seps.len()),
        };
        let new_len = self.buf.len() - (end - start) + line.len() + usize::from(index.is_none());
        if u32::try_from(new_len).is_err() {
            return Err(EditError::TooLarge);
        }
        let new_end = start + line.len();
        self.buf.splice(start..end, line.iter().copied());
        if index.is_none() {
            self.buf.push(b'\r');
        }
        let run: Vec<u32> = memchr::memchr_iter(fs, line).map(|p| (start + p) as u32).chain([new_end as u32]).collect();
        let run_len = run.len();
        let run_start = old_run.start;
        let old_run_len = old_run.len();
        self.seps.splice(old_run, run);
        // Shift what follows: byte positions by the length change, run
        // starts by the change in the number of separators.
        let byte_shift = |p: u32| (i64::from(p) + line.len() as i64 - (end - start) as i64) as u32;
        let run_shift = run_len as i64 - old_run_len as i64;
        for p in &mut self.seps[run_start + run_len..] {
            *p = byte_shift(*p);
        }
        let span = crate::message::SegmentSpan {
            start: start as u32,
            end: new_end as u32,
            seps_start: run_start as u32,
            seps_len: run_len as u32,
            name: [line[0], line[1], line[2]],
        };
        match index {
            Some(i) => {
                self.segments[i] = span;
                for s in &mut self.segments[i + 1..] {
                    s.start = byte_shift(s.start);
                    s.end = byte_shift(s.end);
                    s.seps_start = (i64::from(s.seps_start) + run_shift) as u32;
                }
            }
            None => self.segments.push(span),
        }
        if index == Some(0) {
            self.charset = self.read_charset();
        }
        Ok(())
    }

    /// Makes `next` the buffer if it indexes; otherwise keeps the old one.
    fn commit(&mut self, next: Vec<u8>) -> Result<(), EditError> {
        if u32::try_from(next.len()).is_err() {
            return Err(EditError::TooLarge);
        }
        let old = std::mem::replace(&mut self.buf, next);
        match self.reindex(0) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.buf = old;
                // The old buffer indexed before; it indexes again.
                let _ = self.reindex(0);
                Err(match e.kind() {
                    ParseErrorKind::TooLarge => EditError::TooLarge,
                    _ => EditError::Segment("the edit would produce an invalid segment"),
                })
            }
        }
    }

    /// Rewrites the buffer in the standard form (once).
    fn normalize(&mut self) {
        if self.normalized {
            return;
        }
        let standard = self.to_standard_form();
        self.buf = standard;
        self.normalized = true;
        // Same segments, same names: indexing cannot fail.
        let _ = self.reindex(0);
    }

    /// Appends a segment given whole, already encoded with this message's
    /// delimiters (`NTE|1||text`, or just `NTE`), and returns its index.
    ///
    /// ```
    /// use hl7v2::Message;
    /// let mut msg = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5").unwrap();
    /// let i = msg.push_segment("ZPI|1|custom")?;
    /// assert_eq!(i, 1);
    /// assert_eq!(msg.get("ZPI-2").as_deref(), Some("custom"));
    /// assert!(msg.push_segment("bad|1").is_err());
    /// # Ok::<(), hl7v2::EditError>(())
    /// ```
    pub fn push_segment(&mut self, raw: impl AsRef<[u8]>) -> Result<usize, EditError> {
        let index = self.segments.len();
        self.insert_segment(index, raw)?;
        Ok(index)
    }

    /// Inserts a segment given whole before the segment at `index` (1 puts
    /// it right after MSH; the segment count appends).
    pub fn insert_segment(&mut self, index: usize, raw: impl AsRef<[u8]>) -> Result<(), EditError> {
        let raw = raw.as_ref();
        self.check_segment(raw)?;
        if index == 0 || index > self.segments.len() {
            return Err(EditError::SegmentIndex(index));
        }
        self.normalize();
        let at = self.segments.get(index).map_or(self.buf.len(), |s| s.start as usize);
        let mut next = Vec::with_capacity(self.buf.len() + raw.len() + 1);
        next.extend_from_slice(&self.buf[..at]);
        next.extend_from_slice(raw);
        next.push(b'\r');
        next.extend_from_slice(&self.buf[at..]);
        self.commit(next)
    }

    /// Replaces the segment at `index` (not MSH) with one given whole.
    pub fn replace_segment_raw(&mut self, index: usize, raw: impl AsRef<[u8]>) -> Result<(), EditError> {
        let raw = raw.as_ref();
        self.check_segment(raw)?;
        if index == 0 || index >= self.segments.len() {
            return Err(EditError::SegmentIndex(index));
        }
        self.normalize();
        self.replace_segment(Some(index), raw)
    }

    /// Removes the segment at `index` (MSH, index 0, cannot be removed).
    ///
    /// ```
    /// use hl7v2::Message;
    /// let mut msg = Message::parse("MSH|^~\\&|||||||ORU^R01|1|P|2.5\rPID|1\rNTE|1\rOBR|1").unwrap();
    /// let nte = msg.segment("NTE").unwrap().index();
    /// msg.remove_segment(nte)?;
    /// assert_eq!(msg.as_bytes(), b"MSH|^~\\&|||||||ORU^R01|1|P|2.5\rPID|1\rOBR|1\r");
    /// # Ok::<(), hl7v2::EditError>(())
    /// ```
    pub fn remove_segment(&mut self, index: usize) -> Result<(), EditError> {
        if index == 0 || index >= self.segments.len() {
            return Err(EditError::SegmentIndex(index));
        }
        self.normalize();
        let s = self.segments[index];
        // In the standard form every segment is followed by exactly one CR.
        let end = (s.end as usize + 1).min(self.buf.len());
        let mut next = self.buf.clone();
        next.drain(s.start as usize..end);
        self.commit(next)
    }

    fn check_segment(&self, raw: &[u8]) -> Result<(), EditError> {
        if raw.contains(&b'\r') || raw.contains(&b'\n') {
            return Err(EditError::Segment("contains a segment terminator"));
        }
        let name = &raw[..raw.len().min(3)];
        if !is_segment_name(name) || raw.get(3).is_some_and(|&b| b != self.delims.field) {
            return Err(EditError::Segment("does not start with a segment name and the field separator"));
        }
        if is_header_name(name) {
            return Err(EditError::Segment("MSH, FHS and BHS cannot be added to a message"));
        }
        Ok(())
    }
}

/// Replaces, inside `bytes`, the part addressed by `levels` (separator and
/// 1-based index per level, outermost first) with `replacement`, padding with
/// empty parts where the path goes past the end.
fn splice(bytes: &[u8], levels: &[(u8, usize)], replacement: &[u8]) -> Vec<u8> {
    let Some(&(sep, n)) = levels.first() else {
        return replacement.to_vec();
    };
    let mut parts: Vec<Cow<'_, [u8]>> = bytes.split(|&b| b == sep).map(Cow::Borrowed).collect();
    while parts.len() < n {
        parts.push(Cow::Borrowed(&[]));
    }
    parts[n - 1] = Cow::Owned(splice(&parts[n - 1], &levels[1..], replacement));
    // Trailing empty parts added by padding are not kept when the
    // replacement itself is empty and was beyond the end: nothing to write.
    let mut out = Vec::with_capacity(bytes.len() + replacement.len() + n);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.extend_from_slice(part);
    }
    out
}

/// Builds a message from scratch: the header fields, then any values by path
/// and whole segments, applied in the order given.
///
/// ```
/// use hl7v2::Message;
/// let msg = Message::builder()
///     .sender("PLEXUS", "HOSP")
///     .receiver("EHR", "HOSP")
///     .timestamp("20261121120000")
///     .message_type("ADT", "A01", "ADT_A01")
///     .control_id("MSG0001")
///     .processing_id("P")
///     .version("2.5.1")
///     .segment("EVN|A01|20261121120000")
///     .set("PID-3-1", "12345")
///     .set("PID-5-1", "Doe")
///     .build()?;
/// assert_eq!(
///     msg.as_bytes(),
///     &b"MSH|^~\\&|PLEXUS|HOSP|EHR|HOSP|20261121120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r\
///        EVN|A01|20261121120000\rPID|||12345||Doe\r"[..]
/// );
/// # Ok::<(), hl7v2::EditError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    delimiters: Delimiters,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    Set(String, String),
    Segment(Vec<u8>),
}

impl MessageBuilder {
    /// Uses these delimiters instead of `|^~\&`.
    pub fn delimiters(mut self, delimiters: Delimiters) -> Self {
        self.delimiters = delimiters;
        self
    }
    /// Sets a value by path (escaped when built).
    pub fn set(mut self, path: &str, value: &str) -> Self {
        self.steps.push(Step::Set(path.to_owned(), value.to_owned()));
        self
    }
    /// Appends a segment given whole, already encoded.
    pub fn segment(mut self, raw: impl AsRef<[u8]>) -> Self {
        self.steps.push(Step::Segment(raw.as_ref().to_vec()));
        self
    }
    /// MSH-3 and MSH-4.
    pub fn sender(self, application: &str, facility: &str) -> Self {
        self.set("MSH-3", application).set("MSH-4", facility)
    }
    /// MSH-5 and MSH-6.
    pub fn receiver(self, application: &str, facility: &str) -> Self {
        self.set("MSH-5", application).set("MSH-6", facility)
    }
    /// MSH-7 (the caller's clock: this crate reads none).
    pub fn timestamp(self, timestamp: &str) -> Self {
        self.set("MSH-7", timestamp)
    }
    /// MSH-9: code, trigger event, structure (an empty part is left out).
    pub fn message_type(self, code: &str, trigger: &str, structure: &str) -> Self {
        let mut b = self.set("MSH-9-1", code);
        if !trigger.is_empty() {
            b = b.set("MSH-9-2", trigger);
        }
        if !structure.is_empty() {
            b = b.set("MSH-9-3", structure);
        }
        b
    }
    /// MSH-10.
    pub fn control_id(self, control_id: &str) -> Self {
        self.set("MSH-10", control_id)
    }
    /// MSH-11 (`P`, `T`, `D`).
    pub fn processing_id(self, processing_id: &str) -> Self {
        self.set("MSH-11", processing_id)
    }
    /// MSH-12.
    pub fn version(self, version: &str) -> Self {
        self.set("MSH-12", version)
    }
    /// MSH-18 (`UNICODE UTF-8`, `8859/1` ...): set it before values that
    /// need it.
    pub fn charset(self, msh18: &str) -> Self {
        self.set("MSH-18", msh18)
    }
    /// Applies the steps in order; the first failure is returned.
    pub fn build(self) -> Result<Message, EditError> {
        let mut msg = Message::new(self.delimiters);
        for step in self.steps {
            match step {
                Step::Set(path, value) => msg.set(path.as_str(), &value)?,
                Step::Segment(raw) => {
                    msg.push_segment(raw)?;
                }
            }
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_pads_each_level() {
        assert_eq!(splice(b"PID|1", &[(b'|', 3)], b"x"), b"PID|1|x");
        assert_eq!(splice(b"PID|1", &[(b'|', 3), (b'~', 2), (b'^', 2)], b"x"), b"PID|1|~^x");
        assert_eq!(splice(b"a^b^c", &[(b'^', 2)], b"X"), b"a^X^c");
    }

    #[test]
    fn failed_edit_leaves_message_unchanged() {
        let input = "MSH|^~\\&|A||||||ADT^A01|1|P|2.5\nPID|1\n";
        let mut msg = Message::parse(input).unwrap();
        assert!(msg.set("MSH-2", "x").is_err());
        assert!(msg.set("PID(3)-1", "x").is_err());
        assert!(msg.remove_segment(0).is_err());
        assert_eq!(msg.as_bytes(), input.as_bytes());
    }

    #[test]
    fn set_msh_field_counts_msh1() {
        let mut msg = Message::parse("MSH|^~\\&|A|B").unwrap();
        msg.set("MSH-4", "F").unwrap();
        msg.set("MSH-10", "X").unwrap();
        assert_eq!(msg.as_bytes(), b"MSH|^~\\&|A|F||||||X\r");
        assert_eq!(msg.control_id().as_deref(), Some("X"));
    }

    #[test]
    fn set_in_latin1_message_writes_latin1_bytes() {
        let mut msg = Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||8859/1").unwrap();
        msg.set("PID-5", "Müller").unwrap();
        assert_eq!(msg.get_raw("PID-5"), Some(&b"M\xfcller"[..]));
        assert_eq!(msg.get("PID-5").as_deref(), Some("Müller"));
        assert_eq!(msg.set("PID-6", "日本"), Err(EditError::Unrepresentable { character: '日', charset: "8859/1" }));
    }
}
