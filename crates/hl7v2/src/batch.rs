//! Batches: `FHS [BHS {MSH...} BTS]... FTS` files split into messages, and
//! built.
//!
//! Splitting walks the segment boundaries once: a message runs from its MSH
//! to the segment before the next MSH, BHS, BTS, FHS or FTS. Each message is
//! then parsed on its own (its MSH declares its own delimiters), keeping its
//! bytes exactly as they were in the file. The envelope (FHS/BHS/BTS/FTS) is
//! optional: a file of plain concatenated messages is one batch with no
//! header. Counts in BTS-1 and FTS-1 are compared by [`BatchFile::issues`]
//! rather than refused, because a wrong count should be reported, not lose
//! the messages.

use crate::issue::{ErrorCode, Issue, Location};
use crate::message::{read_delimiters, skip_preamble};
use crate::{Delimiters, Message, ParseError, escape};

/// One batch (see [`BatchFile`] for an example): its BHS and BTS (each a one-segment [`Message`], read with
/// paths such as `BHS-11`), and its messages.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The BHS segment, if the batch had one.
    pub header: Option<Message>,
    /// The BTS segment, if the batch had one.
    pub trailer: Option<Message>,
    /// The messages, in file order.
    pub messages: Vec<Message>,
}

/// A batch file: its FHS and FTS and its batches.
///
/// ```
/// use hl7v2::batch::BatchFile;
/// let file = BatchFile::parse(
///     "FHS|^~\\&|LAB||EHR||20261121||results.hl7||F1\r\
///      BHS|^~\\&|LAB||EHR||20261121||||B1\r\
///      MSH|^~\\&|LAB||EHR||20261121||ORU^R01|M1|P|2.5\rPID|1||1\r\
///      MSH|^~\\&|LAB||EHR||20261121||ORU^R01|M2|P|2.5\rPID|1||2\r\
///      BTS|2\rFTS|1\r",
/// )?;
/// assert_eq!(file.header.as_ref().unwrap().get("FHS-9").as_deref(), Some("results.hl7"));
/// let ids: Vec<_> = file.messages().map(|m| m.control_id().unwrap().into_owned()).collect();
/// assert_eq!(ids, ["M1", "M2"]);
/// assert!(file.issues().is_empty());
/// # Ok::<(), hl7v2::batch::BatchError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct BatchFile {
    /// The FHS segment, if the file had one.
    pub header: Option<Message>,
    /// The FTS segment, if the file had one.
    pub trailer: Option<Message>,
    /// The batches (one implicit batch when there is no BHS).
    pub batches: Vec<Batch>,
}

/// Why a batch file could not be split.
///
/// ```
/// use hl7v2::batch::{BatchError, BatchFile};
/// assert!(matches!(BatchFile::parse("BHS|^~\\&\rPID|1"), Err(BatchError::Stray { offset: 9 })));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The file does not start with FHS, BHS or MSH, or its delimiters are
    /// unusable.
    #[error("batch header: {0}")]
    Header(ParseError),
    /// A segment other than a message's sits between messages.
    #[error("segment at byte {offset} is outside any message")]
    Stray {
        /// Byte offset of the segment.
        offset: usize,
    },
    /// FHS appears after the start, or something follows FTS.
    #[error("file envelope out of place at byte {offset}")]
    Envelope {
        /// Byte offset of the segment.
        offset: usize,
    },
    /// One of the messages does not parse.
    #[error("message {index} (at byte {offset}) does not parse: {error}")]
    Message {
        /// 0-based index of the message in the file.
        index: usize,
        /// Byte offset of its MSH in the file.
        offset: usize,
        /// The parser's error (offsets relative to the message).
        error: ParseError,
    },
}

/// Raw envelope segment as a one-segment message (for path access).
fn envelope(line: &[u8], delims: Delimiters) -> Message {
    let mut raw = line.to_vec();
    raw.push(b'\r');
    Message::from_built(raw, delims)
}

impl BatchFile {
    /// Splits a batch file into its envelope and messages.
    pub fn parse(bytes: impl AsRef<[u8]>) -> Result<BatchFile, BatchError> {
        let buf = bytes.as_ref();
        let start = skip_preamble(buf);
        let head = &buf[start..];
        if !(head.starts_with(b"FHS") || head.starts_with(b"BHS") || head.starts_with(b"MSH")) {
            return Err(BatchError::Header(ParseError::new(crate::ParseErrorKind::MissingHeader, start, 1)));
        }
        let delims = read_delimiters(buf, start).map_err(BatchError::Header)?;
        let fs = delims.field();
        let mut file = BatchFile::default();
        let mut batch: Option<Batch> = None;
        // Byte range of the message being collected.
        let mut current: Option<(usize, usize)> = None;
        let mut index = 0usize;
        let mut finish_message =
            |current: &mut Option<(usize, usize)>, batch: &mut Option<Batch>| -> Result<(), BatchError> {
                if let Some((from, to)) = current.take() {
                    let msg = Message::parse(&buf[from..to]).map_err(|error| BatchError::Message {
                        index,
                        offset: from,
                        error,
                    })?;
                    index += 1;
                    batch.get_or_insert_with(Batch::default).messages.push(msg);
                }
                Ok(())
            };
        let mut pos = start;
        let mut seen_fts = false;
        while pos < buf.len() {
            let end = memchr::memchr2(b'\r', b'\n', &buf[pos..]).map_or(buf.len(), |i| pos + i);
            let line = &buf[pos..end];
            let next =
                if end + 1 < buf.len() && buf[end] == b'\r' && buf[end + 1] == b'\n' { end + 2 } else { end + 1 };
            if line.iter().all(|&b| b == b' ' || b == b'\t') {
                pos = next;
                continue;
            }
            if seen_fts {
                return Err(BatchError::Envelope { offset: pos });
            }
            let name = &line[..line.len().min(3)];
            let is = |n: &[u8]| name == n && line.get(3).is_none_or(|&b| b == fs);
            if is(b"MSH") {
                finish_message(&mut current, &mut batch)?;
                current = Some((pos, end));
            } else if is(b"BHS") {
                finish_message(&mut current, &mut batch)?;
                if let Some(b) = batch.take() {
                    file.batches.push(b);
                }
                batch = Some(Batch { header: Some(envelope(line, delims)), ..Batch::default() });
            } else if is(b"BTS") {
                finish_message(&mut current, &mut batch)?;
                let mut b = batch.take().unwrap_or_default();
                b.trailer = Some(envelope(line, delims));
                file.batches.push(b);
            } else if is(b"FHS") {
                if pos != start {
                    return Err(BatchError::Envelope { offset: pos });
                }
                file.header = Some(envelope(line, delims));
            } else if is(b"FTS") {
                finish_message(&mut current, &mut batch)?;
                file.trailer = Some(envelope(line, delims));
                seen_fts = true;
            } else if let Some((_, to)) = current.as_mut() {
                *to = end;
            } else {
                return Err(BatchError::Stray { offset: pos });
            }
            pos = next;
        }
        finish_message(&mut current, &mut batch)?;
        if let Some(b) = batch.take() {
            file.batches.push(b);
        }
        Ok(file)
    }

    /// All messages of all batches, in file order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.batches.iter().flat_map(|b| b.messages.iter())
    }

    /// Envelope problems: a BTS-1 or FTS-1 count that does not match, a
    /// batch header without trailer or the reverse, an FHS without FTS.
    pub fn issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (i, b) in self.batches.iter().enumerate() {
            let n = i as u32 + 1;
            match (&b.header, &b.trailer) {
                (Some(_), None) => issues.push(Issue::error(
                    Location::segment("BTS", n),
                    ErrorCode::SegmentSequenceError,
                    format!("batch {n} has a BHS but no BTS"),
                )),
                (None, Some(_)) if self.batches.len() > 1 || self.header.is_some() => issues.push(Issue::error(
                    Location::segment("BHS", n),
                    ErrorCode::SegmentSequenceError,
                    format!("batch {n} has a BTS but no BHS"),
                )),
                _ => {}
            }
            if let Some(count) = b.trailer.as_ref().and_then(|t| t.get("BTS-1")).filter(|c| !c.is_empty())
                && count.trim().parse::<usize>().ok() != Some(b.messages.len())
            {
                issues.push(Issue::error(
                    Location::field("BTS", n, 1),
                    ErrorCode::DataTypeError,
                    format!("BTS-1 does not match the {} messages of batch {n}", b.messages.len()),
                ));
            }
        }
        if self.header.is_some() && self.trailer.is_none() {
            issues.push(Issue::error(
                Location::segment("FTS", 1),
                ErrorCode::SegmentSequenceError,
                "the file has an FHS but no FTS",
            ));
        }
        if let Some(count) = self.trailer.as_ref().and_then(|t| t.get("FTS-1")).filter(|c| !c.is_empty())
            && count.trim().parse::<usize>().ok() != Some(self.batches.len())
        {
            issues.push(Issue::error(
                Location::field("FTS", 1, 1),
                ErrorCode::DataTypeError,
                format!("FTS-1 does not match the {} batches of the file", self.batches.len()),
            ));
        }
        issues
    }
}

/// Values for an FHS or BHS header (fields 3 to 11; all optional); see
/// [`build_batch`] for an example.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// FHS-3 / BHS-3.
    pub sending_application: String,
    /// FHS-4 / BHS-4.
    pub sending_facility: String,
    /// FHS-5 / BHS-5.
    pub receiving_application: String,
    /// FHS-6 / BHS-6.
    pub receiving_facility: String,
    /// FHS-7 / BHS-7 (the caller's clock).
    pub timestamp: String,
    /// FHS-9 file name / BHS-9 batch name.
    pub name: String,
    /// FHS-10 / BHS-10 comment.
    pub comment: String,
    /// FHS-11 / BHS-11 control id.
    pub control_id: String,
}

fn header_segment(out: &mut Vec<u8>, name: &[u8], e: &Envelope, d: &Delimiters) {
    out.extend_from_slice(name);
    out.push(d.field());
    out.extend_from_slice(&d.encoding_characters());
    let values = [
        &e.sending_application,
        &e.sending_facility,
        &e.receiving_application,
        &e.receiving_facility,
        &e.timestamp,
        &String::new(),
        &e.name,
        &e.comment,
        &e.control_id,
    ];
    let used = values.iter().rposition(|v| !v.is_empty()).map_or(0, |i| i + 1);
    for v in &values[..used] {
        out.push(d.field());
        out.extend_from_slice(&escape::encode(v.as_bytes(), d));
    }
    out.push(b'\r');
}

fn batch_into(out: &mut Vec<u8>, messages: &[Message], header: &Envelope, d: &Delimiters) {
    header_segment(out, b"BHS", header, d);
    for m in messages {
        out.extend_from_slice(&m.to_standard_form());
    }
    out.extend_from_slice(format!("BTS{}{}\r", d.field() as char, messages.len()).as_bytes());
}

/// Builds one batch: `BHS`, the messages in standard form, `BTS|<count>`.
///
/// ```
/// use hl7v2::{Message, batch::{build_batch, BatchFile, Envelope}};
/// let m = Message::parse("MSH|^~\\&|A||B||20261121||ADT^A08|1|P|2.5").unwrap();
/// let bytes = build_batch(&[m.clone(), m], &Envelope { control_id: "B7".into(), ..Envelope::default() });
/// let file = BatchFile::parse(&bytes).unwrap();
/// assert_eq!(file.batches[0].header.as_ref().unwrap().get("BHS-11").as_deref(), Some("B7"));
/// assert_eq!(file.messages().count(), 2);
/// assert!(file.issues().is_empty());
/// ```
pub fn build_batch(messages: &[Message], header: &Envelope) -> Vec<u8> {
    let d = Delimiters::default();
    let mut out = Vec::new();
    batch_into(&mut out, messages, header, &d);
    out
}

/// Builds a file: `FHS`, each batch as [`build_batch`] does, `FTS|<count>`.
pub fn build_file(header: &Envelope, batches: &[(Envelope, &[Message])]) -> Vec<u8> {
    let d = Delimiters::default();
    let mut out = Vec::new();
    header_segment(&mut out, b"FHS", header, &d);
    for (h, messages) in batches {
        batch_into(&mut out, messages, h, &d);
    }
    out.extend_from_slice(format!("FTS{}{}\r", d.field() as char, batches.len()).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "MSH|^~\\&|A||B||20261121||ADT^A08|1|P|2.5\nPID|1||9\r\nPV1|1|I";

    #[test]
    fn plain_concatenated_messages_are_one_batch_and_keep_their_bytes() {
        let text = format!("{M}\n{M}\n\n{M}");
        let file = BatchFile::parse(&text).unwrap();
        assert_eq!(file.batches.len(), 1);
        assert!(file.batches[0].header.is_none());
        assert_eq!(file.messages().count(), 3);
        for m in file.messages() {
            assert_eq!(m.as_bytes(), M.as_bytes());
        }
        assert!(file.issues().is_empty());
    }

    #[test]
    fn built_file_splits_back_with_counts_that_match() {
        let m = Message::parse(M).unwrap();
        let ms = [m.clone(), m.clone()];
        let bytes = build_file(
            &Envelope { name: "f.hl7".into(), ..Envelope::default() },
            &[(Envelope::default(), &ms[..]), (Envelope::default(), &ms[..1])],
        );
        let file = BatchFile::parse(&bytes).unwrap();
        assert_eq!(file.batches.len(), 2);
        assert_eq!(file.batches[0].messages.len(), 2);
        assert_eq!(file.batches[1].messages.len(), 1);
        assert_eq!(file.trailer.as_ref().unwrap().get("FTS-1").as_deref(), Some("2"));
        assert!(file.issues().is_empty());
        assert_eq!(file.messages().next().unwrap().get("PID-3").as_deref(), Some("9"));
    }

    #[test]
    fn wrong_counts_and_missing_trailers_are_issues() {
        let text = format!("FHS|^~\\&\rBHS|^~\\&\r{M}\rBTS|5\rBHS|^~\\&\r{M}\r");
        let file = BatchFile::parse(&text).unwrap();
        let issues: Vec<String> = file.issues().iter().map(|i| i.to_string()).collect();
        assert_eq!(
            issues,
            [
                "BTS(1)-1: 102 Data type error: BTS-1 does not match the 1 messages of batch 1 (E)",
                "BTS(2): 100 Segment sequence error: batch 2 has a BHS but no BTS (E)",
                "FTS(1): 100 Segment sequence error: the file has an FHS but no FTS (E)",
            ]
        );
    }

    #[test]
    fn stray_segments_and_bad_messages_say_where() {
        assert!(matches!(BatchFile::parse("BHS|^~\\&\rPID|1\r"), Err(BatchError::Stray { offset: 9 })));
        assert!(matches!(BatchFile::parse(format!("{M}\rFTS|1\r{M}")), Err(BatchError::Envelope { .. })));
        match BatchFile::parse(format!("{M}\r{M}\rbad|1")) {
            Err(BatchError::Message { index: 1, error, .. }) => {
                assert_eq!(error.kind(), &crate::ParseErrorKind::InvalidSegmentName);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(BatchFile::parse("PID|1"), Err(BatchError::Header(_))));
    }
}
