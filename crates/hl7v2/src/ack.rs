//! Acknowledgements: ACK/NAK in original mode (AA/AE/AR) and enhanced mode
//! (CA/CE/CR accept acknowledgements, then AA/AE/AR application
//! acknowledgements), following MSH-15 and MSH-16.
//!
//! An ACK is built from the original message: sending and receiving
//! application/facility swapped, `MSH-9 = ACK^<trigger>^ACK` (`ACK^<trigger>`
//! for 2.3 and older, which have no message structure component), a new
//! MSH-10 and MSH-7 given by the caller (this crate reads no clock and makes
//! no random ids, so ACKs are reproducible in tests), MSH-11, MSH-12 and
//! MSH-18 echoed, MSA-2 = the original MSH-10, and one ERR segment per
//! [`Issue`]. ERR uses the layout of the original's version: ERR-1 (ELD) up
//! to 2.4, ERR-2 to ERR-8 from 2.5 on (and for an unknown version).
//!
//! A message that failed to parse still gets a proper answer: when its MSH
//! was readable, [`Ack::for_parse_error`] acknowledges that MSH; when not,
//! [`Ack::for_unreadable`] builds a best-effort NAK with default delimiters
//! and whatever header values could be recovered.

use crate::element::nth_part;
use crate::issue::{ErrorCode, Issue, Location, Severity};
use crate::message::{Message, skip_preamble};
use crate::{Charset, Delimiters, ParseError, ParseErrorKind, Version, escape};

/// MSA-1, HL7 table 0008.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// AA: the application processed the message.
    ApplicationAccept,
    /// AE: the application found an error in the message.
    ApplicationError,
    /// AR: the application rejected the message (unsupported type, version,
    /// processing id, or a problem unrelated to the content).
    ApplicationReject,
    /// CA: committed to safe storage (enhanced mode).
    CommitAccept,
    /// CE: could not be committed because of an error (enhanced mode).
    CommitError,
    /// CR: rejected (enhanced mode).
    CommitReject,
}

impl AckCode {
    /// The two-letter code.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::ApplicationAccept => "AA",
            AckCode::ApplicationError => "AE",
            AckCode::ApplicationReject => "AR",
            AckCode::CommitAccept => "CA",
            AckCode::CommitError => "CE",
            AckCode::CommitReject => "CR",
        }
    }

    /// Reads a two-letter code (as in MSA-1 of a received ACK).
    ///
    /// ```
    /// use hl7v2::ack::AckCode;
    /// assert_eq!(AckCode::parse("CA"), Some(AckCode::CommitAccept));
    /// assert_eq!(AckCode::parse("XX"), None);
    /// ```
    pub fn parse(code: &str) -> Option<AckCode> {
        Some(match code.trim() {
            "AA" => AckCode::ApplicationAccept,
            "AE" => AckCode::ApplicationError,
            "AR" => AckCode::ApplicationReject,
            "CA" => AckCode::CommitAccept,
            "CE" => AckCode::CommitError,
            "CR" => AckCode::CommitReject,
            _ => return None,
        })
    }

    /// Whether this says the message was accepted (AA or CA).
    pub fn is_accept(&self) -> bool {
        matches!(self, AckCode::ApplicationAccept | AckCode::CommitAccept)
    }
}

/// What happened to a message, independent of the acknowledgement mode.
///
/// ```
/// use hl7v2::ack::{AckMode, AckCode, Outcome};
/// assert_eq!(AckMode::Original.immediate(Outcome::Rejected), Some(AckCode::ApplicationReject));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Stored / processed.
    Accepted,
    /// Not stored / processed because of an error in it or while handling it.
    Errored,
    /// Refused: unsupported type, version, processing id ...
    Rejected,
}

/// HL7 table 0155: when an acknowledgement is wanted (MSH-15, MSH-16).
///
/// ```
/// use hl7v2::ack::{AckCondition, Outcome};
/// let c = AckCondition::parse("ER").unwrap();
/// assert!(!c.wants(Outcome::Accepted));
/// assert!(c.wants(Outcome::Errored));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCondition {
    /// AL: always.
    Always,
    /// NE: never.
    Never,
    /// ER: only on error or reject.
    OnError,
    /// SU: only on success.
    OnSuccess,
}

impl AckCondition {
    /// Reads a table 0155 code; `None` when it is not one.
    pub fn parse(code: &str) -> Option<AckCondition> {
        Some(match code.trim() {
            "AL" => AckCondition::Always,
            "NE" => AckCondition::Never,
            "ER" => AckCondition::OnError,
            "SU" => AckCondition::OnSuccess,
            _ => return None,
        })
    }

    /// Whether an acknowledgement is due for this outcome.
    pub fn wants(&self, outcome: Outcome) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::OnError => outcome != Outcome::Accepted,
            AckCondition::OnSuccess => outcome == Outcome::Accepted,
        }
    }
}

/// The acknowledgement protocol a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// MSH-15 and MSH-16 both empty: one application acknowledgement
    /// (AA/AE/AR) on the same connection.
    Original,
    /// MSH-15 or MSH-16 valued: an accept acknowledgement (CA/CE/CR) when
    /// MSH-15 asks for it, and later an application acknowledgement
    /// (AA/AE/AR, a new message to the sender) when MSH-16 asks for it.
    Enhanced {
        /// MSH-15.
        accept: AckCondition,
        /// MSH-16.
        application: AckCondition,
    },
}

impl AckMode {
    /// The mode `msg` asks for. In enhanced mode a missing or unknown
    /// condition counts as "always": the standard requires both fields in
    /// that mode, and answering a sender that did not ask is harmless while
    /// staying silent to one that did makes it resend.
    ///
    /// ```
    /// use hl7v2::{Message, ack::{AckMode, AckCondition, AckCode, Outcome}};
    /// let msg = Message::parse("MSH|^~\\&|A|B|C|D|20261121||ORU^R01|1|P|2.5.1|||AL|NE").unwrap();
    /// let mode = AckMode::of(&msg);
    /// assert_eq!(mode, AckMode::Enhanced { accept: AckCondition::Always, application: AckCondition::Never });
    /// assert_eq!(mode.immediate(Outcome::Accepted), Some(AckCode::CommitAccept));
    /// assert_eq!(mode.application(Outcome::Accepted), None);
    /// let original = Message::parse("MSH|^~\\&|A|B|C|D|20261121||ADT^A01|1|P|2.3").unwrap();
    /// assert_eq!(AckMode::of(&original).immediate(Outcome::Errored), Some(AckCode::ApplicationError));
    /// ```
    pub fn of(msg: &Message) -> AckMode {
        // MSH-n read from the header segment directly: this runs for every
        // message received, and a path would be formatted and parsed twice.
        let msh = msg.segment("MSH");
        let read = |n: usize| msh.and_then(|s| s.get(n)).map(|v| v.trim().to_owned()).unwrap_or_default();
        let (accept, application) = (read(15), read(16));
        if accept.is_empty() && application.is_empty() {
            return AckMode::Original;
        }
        AckMode::Enhanced {
            accept: AckCondition::parse(&accept).unwrap_or(AckCondition::Always),
            application: AckCondition::parse(&application).unwrap_or(AckCondition::Always),
        }
    }

    /// The acknowledgement to send right away on the connection, if any:
    /// AA/AE/AR in original mode, CA/CE/CR in enhanced mode when MSH-15
    /// wants one.
    pub fn immediate(&self, outcome: Outcome) -> Option<AckCode> {
        match self {
            AckMode::Original => Some(application_code(outcome)),
            AckMode::Enhanced { accept, .. } => accept.wants(outcome).then_some(match outcome {
                Outcome::Accepted => AckCode::CommitAccept,
                Outcome::Errored => AckCode::CommitError,
                Outcome::Rejected => AckCode::CommitReject,
            }),
        }
    }

    /// The application acknowledgement to send later (enhanced mode only),
    /// if MSH-16 wants one. In original mode the immediate acknowledgement is
    /// the application acknowledgement, so this is `None`.
    pub fn application(&self, outcome: Outcome) -> Option<AckCode> {
        match self {
            AckMode::Original => None,
            AckMode::Enhanced { application, .. } => application.wants(outcome).then(|| application_code(outcome)),
        }
    }
}

fn application_code(outcome: Outcome) -> AckCode {
    match outcome {
        Outcome::Accepted => AckCode::ApplicationAccept,
        Outcome::Errored => AckCode::ApplicationError,
        Outcome::Rejected => AckCode::ApplicationReject,
    }
}

/// An acknowledgement to build: the code, the new MSH-10 and MSH-7, and
/// optionally issues (one ERR each) and a text for MSA-3.
///
/// ```
/// use hl7v2::{Message, ack::{Ack, AckCode}, Issue, ErrorCode, Location};
/// let msg = Message::parse("MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20261121||ORU^R01^ORU_R01|MSG42|P|2.5.1\rPID|1").unwrap();
/// let issues = [Issue::error(Location::field("PID", 1, 3), ErrorCode::RequiredFieldMissing, "PID-3 is required")];
/// let ack = Ack::new(AckCode::ApplicationError, "ACK0001", "20261121120000").issues(&issues).for_message(&msg);
/// assert_eq!(
///     String::from_utf8_lossy(ack.as_bytes()),
///     "MSH|^~\\&|EHR|CLINIC|LAB|HOSP|20261121120000||ACK^R01^ACK|ACK0001|P|2.5.1\r\
///      MSA|AE|MSG42|PID-3 is required\r\
///      ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 is required\r"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Ack<'a> {
    code: AckCode,
    control_id: &'a str,
    timestamp: &'a str,
    issues: &'a [Issue],
    text: Option<&'a str>,
}

impl<'a> Ack<'a> {
    /// An acknowledgement with this code, MSH-10 and MSH-7.
    pub fn new(code: AckCode, control_id: &'a str, timestamp: &'a str) -> Ack<'a> {
        Ack { code, control_id, timestamp, issues: &[], text: None }
    }

    /// One ERR segment per issue.
    pub fn issues(mut self, issues: &'a [Issue]) -> Ack<'a> {
        self.issues = issues;
        self
    }

    /// MSA-3 (text message; written for versions before 2.7, which still
    /// have it). Defaults to the first issue's message.
    pub fn text(mut self, text: &'a str) -> Ack<'a> {
        self.text = Some(text);
        self
    }

    /// The acknowledgement of `original`.
    pub fn for_message(&self, original: &Message) -> Message {
        self.build(original, &[])
    }

    /// The acknowledgement of input that failed to parse: of its MSH when it
    /// was readable, otherwise the best-effort [`for_unreadable`](Ack::for_unreadable).
    /// The parse error is reported as the first ERR.
    ///
    /// ```
    /// use hl7v2::{Message, ack::{Ack, AckCode}};
    /// let input = b"MSH|^~\\&|LAB||EHR||20261121||ADT^A01|77|P|2.4\rPID|1\r???|x";
    /// let err = Message::parse(&input[..]).unwrap_err();
    /// let nak = Ack::new(AckCode::ApplicationError, "N1", "20261121120000").for_parse_error(&err, input);
    /// assert_eq!(nak.get("MSA-1").as_deref(), Some("AE"));
    /// assert_eq!(nak.get("MSA-2").as_deref(), Some("77"));
    /// assert_eq!(nak.get("ERR-1-4-1").as_deref(), Some("100"));
    /// ```
    pub fn for_parse_error(&self, error: &ParseError, input: &[u8]) -> Message {
        let issue = error.to_issue();
        match error.header() {
            Some(header) => self.build(header, std::slice::from_ref(&issue)),
            None => self.unreadable(input, std::slice::from_ref(&issue)),
        }
    }

    /// A best-effort acknowledgement of bytes whose MSH cannot be read: the
    /// default delimiters, version 2.5 layout, and MSH-3 to MSH-6, MSH-10,
    /// MSH-11 and MSH-12 recovered from the first line when it starts with
    /// `MSH` and the values are plain printable ASCII.
    ///
    /// ```
    /// use hl7v2::ack::{Ack, AckCode};
    /// let nak = Ack::new(AckCode::ApplicationReject, "N2", "20261121120000").for_unreadable(b"MSH|^^^^|APP|FAC|||||ADT^A01|99|P|2.5");
    /// assert_eq!(nak.get("MSA-2").as_deref(), Some("99"));
    /// assert_eq!(nak.get("MSH-5").as_deref(), Some("APP"));
    /// ```
    pub fn for_unreadable(&self, input: &[u8]) -> Message {
        self.unreadable(input, &[])
    }

    fn unreadable(&self, input: &[u8], extra: &[Issue]) -> Message {
        let start = skip_preamble(input);
        let line = &input[start..];
        let line = &line[..memchr::memchr2(b'\r', b'\n', line).unwrap_or(line.len())];
        let mut header = Message::new(Delimiters::default());
        if let (Some(b"MSH"), Some(&fs)) = (line.get(..3), line.get(3))
            && fs.is_ascii_punctuation()
        {
            let parts: Vec<&[u8]> = line.split(|&b| b == fs).collect();
            // parts[k] is MSH-(k+1) for k >= 1.
            for n in [3usize, 4, 5, 6, 10, 11, 12] {
                if let Some(value) =
                    parts.get(n - 1).filter(|v| v.len() <= 200 && v.iter().all(|b| (0x20..0x7f).contains(b)))
                {
                    let text = String::from_utf8_lossy(value);
                    let _ = header.set(format!("MSH-{n}").as_str(), &text);
                }
            }
        }
        self.build(&header, extra)
    }

    fn build(&self, original: &Message, extra: &[Issue]) -> Message {
        let d = *original.delimiters();
        let charset = original.charset();
        let version = original.version().as_deref().and_then(Version::parse);
        let modern = version.is_none_or(|v| v >= Version::V2_5);
        let msh = original.segment_at(0);
        let raw = |n: usize| msh.and_then(|s| s.field(n)).map(|f| f.raw()).unwrap_or_default();
        let text = |t: &str| encode_text(t, charset, &d);

        let trigger =
            nth_part(nth_part(raw(9), d.repetition, 1).unwrap_or_default(), d.component, 2).unwrap_or_default();
        let mut msh9 = b"ACK".to_vec();
        if !trigger.is_empty() || version.is_none_or(|v| v >= Version::V2_3_1) {
            msh9.push(d.component);
            msh9.extend_from_slice(trigger);
        }
        if version.is_none_or(|v| v >= Version::V2_3_1) {
            msh9.push(d.component);
            msh9.extend_from_slice(b"ACK");
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"MSH");
        out.push(d.field);
        out.extend_from_slice(&d.encoding_characters());
        let msh_fields: [&[u8]; 16] = [
            raw(5),
            raw(6),
            raw(3),
            raw(4),
            &text(self.timestamp),
            b"",
            &msh9,
            &text(self.control_id),
            raw(11),
            raw(12),
            b"",
            b"",
            b"",
            b"",
            b"",
            raw(18),
        ];
        push_fields(&mut out, d.field, &msh_fields);

        let issues: Vec<&Issue> = extra.iter().chain(self.issues).collect();
        let msa_text = self.text.or(issues.first().map(|i| i.message.as_str())).unwrap_or_default();
        let old_text = version.is_none_or(|v| v < Version::V2_7);
        let msa3 = if old_text { text(msa_text) } else { Vec::new() };
        let msa6 = match issues.first() {
            Some(i) if !modern => coded(i.code, &d, d.component),
            _ => Vec::new(),
        };
        out.extend_from_slice(b"MSA");
        push_fields(&mut out, d.field, &[self.code.as_str().as_bytes(), raw(10), &msa3, b"", b"", &msa6]);

        for issue in issues {
            out.extend_from_slice(b"ERR");
            if modern {
                let severity = match issue.severity {
                    Severity::Fatal if version.is_some_and(|v| v < Version::V2_7) => "E",
                    s => s.code(),
                };
                let erl = issue.location.as_ref().map(|l| location(l, &d, 6)).unwrap_or_default();
                let diagnostic = issue.diagnostic.as_deref().map(text).unwrap_or_default();
                push_fields(
                    &mut out,
                    d.field,
                    &[
                        b"",
                        &erl,
                        &coded(issue.code, &d, d.component),
                        severity.as_bytes(),
                        b"",
                        b"",
                        &diagnostic,
                        &text(&issue.message),
                    ],
                );
            } else {
                // ELD: segment ^ sequence ^ field ^ code&text&HL70357
                let mut eld = issue.location.as_ref().map(|l| location(l, &d, 3)).unwrap_or_default();
                let parts = eld.iter().filter(|&&b| b == d.component).count();
                for _ in parts..3 {
                    eld.push(d.component);
                }
                match d.subcomponent() {
                    Some(sub) => eld.extend_from_slice(&coded(issue.code, &d, sub)),
                    // Without a sub-component separator the coded element
                    // can only hold its code.
                    None => eld.extend_from_slice(issue.code.code().to_string().as_bytes()),
                }
                push_fields(&mut out, d.field, &[&eld]);
            }
        }
        Message::from_built(out, d)
    }
}

/// Appends `|f1|f2...` without trailing empty fields, then the CR.
fn push_fields(out: &mut Vec<u8>, fs: u8, fields: &[&[u8]]) {
    let used = fields.iter().rposition(|f| !f.is_empty()).map_or(0, |i| i + 1);
    for f in &fields[..used] {
        out.push(fs);
        out.extend_from_slice(f);
    }
    out.push(b'\r');
}

/// `code<sep>text<sep>HL70357`.
fn coded(code: ErrorCode, d: &Delimiters, sep: u8) -> Vec<u8> {
    let mut v = code.code().to_string().into_bytes();
    v.push(sep);
    v.extend_from_slice(&escape::encode(code.text().as_bytes(), d));
    v.push(sep);
    v.extend_from_slice(b"HL70357");
    v
}

/// ERL (`SEG^occurrence^field^repetition^component^sub-component`), or its
/// first `parts` components (3 for the 2.3 ELD).
fn location(l: &Location, d: &Delimiters, parts: usize) -> Vec<u8> {
    let numbers = [l.occurrence, l.field, l.repetition, l.component, l.subcomponent];
    let mut items: Vec<Vec<u8>> = vec![escape::encode(l.segment.as_bytes(), d).into_owned()];
    items.extend(numbers.iter().map(|n| n.map(|n| n.to_string().into_bytes()).unwrap_or_default()));
    items.truncate(parts.max(1));
    while items.len() > 1 && items.last().is_some_and(|i| i.is_empty()) {
        items.pop();
    }
    items.join(&d.component)
}

/// Text for the ACK in the original's character set; characters the set
/// cannot hold become `?` (our texts are ASCII; this only guards callers').
fn encode_text(text: &str, charset: Charset, d: &Delimiters) -> Vec<u8> {
    let bytes = match charset.encode(text) {
        Ok(b) => b.into_owned(),
        Err(_) => text.chars().map(|c| if c.is_ascii() { c as u8 } else { b'?' }).collect(),
    };
    escape::encode(&bytes, d).into_owned()
}

impl ParseError {
    /// This error as an [`Issue`] for an ERR segment: code 100 (segment
    /// sequence error) for a missing or unreadable segment, 102 (data type
    /// error) for unusable delimiters, 207 for input too large to index.
    /// The byte offset goes in the diagnostic (ERR-7).
    pub fn to_issue(&self) -> Issue {
        let code = match self.kind() {
            ParseErrorKind::InvalidDelimiters(_) | ParseErrorKind::TruncatedHeader => ErrorCode::DataTypeError,
            ParseErrorKind::TooLarge => ErrorCode::ApplicationInternalError,
            _ => ErrorCode::SegmentSequenceError,
        };
        let location = match (self.kind(), self.field()) {
            (ParseErrorKind::InvalidSegmentName, _) => None,
            (_, Some(field)) => Some(Location::field("MSH", 1, field as u32)),
            (ParseErrorKind::MissingHeader | ParseErrorKind::Batch, _) => Some(Location::segment("MSH", 1)),
            _ => None,
        };
        let message = match self.kind() {
            ParseErrorKind::InvalidSegmentName => {
                format!("segment {} has an invalid name", self.segment())
            }
            kind => kind.to_string(),
        };
        Issue::error(location, code, message).with_diagnostic(format!("byte offset {}", self.offset()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        Message::parse(s).unwrap()
    }

    #[test]
    fn version_2_3_uses_eld_in_err_1_and_two_part_msh_9() {
        let msg = parse("MSH|^~\\&|A|B|C|D|20261121||ADT^A01|X1|P|2.3\rPID|1");
        let issues = [
            Issue::error(Location::field("PID", 1, 7), ErrorCode::DataTypeError, "PID-7 is not a valid TS"),
            Issue::error(None, ErrorCode::UnsupportedEventCode, "no"),
        ];
        let ack = Ack::new(AckCode::ApplicationError, "K", "20261121120000").issues(&issues).for_message(&msg);
        assert_eq!(
            String::from_utf8_lossy(ack.as_bytes()),
            "MSH|^~\\&|C|D|A|B|20261121120000||ACK^A01|K|P|2.3\r\
             MSA|AE|X1|PID-7 is not a valid TS|||102^Data type error^HL70357\r\
             ERR|PID^1^7^102&Data type error&HL70357\r\
             ERR|^^^201&Unsupported event code&HL70357\r"
        );
    }

    #[test]
    fn version_2_8_drops_msa_3_and_writes_fatal_severity() {
        let msg = parse("MSH|^~\\&|A|B|C|D|20261121||SIU^S12^SIU_S12|X2|T|2.8||||||UNICODE UTF-8");
        let issues = [Issue {
            severity: Severity::Fatal,
            ..Issue::error(Location::field("SCH", 1, 1), ErrorCode::RequiredFieldMissing, "SCH-1 is required")
        }];
        let ack = Ack::new(AckCode::ApplicationReject, "K2", "20261121120000").issues(&issues).for_message(&msg);
        assert_eq!(
            String::from_utf8_lossy(ack.as_bytes()),
            "MSH|^~\\&|C|D|A|B|20261121120000||ACK^S12^ACK|K2|T|2.8||||||UNICODE UTF-8\r\
             MSA|AR|X2\r\
             ERR||SCH^1^1|101^Required field missing^HL70357|F||||SCH-1 is required\r"
        );
    }

    #[test]
    fn ack_keeps_the_originals_delimiters_and_raw_header_values() {
        let msg = parse("MSH#*@!%#APP*1.2*ISO#FAC#R#F##20261121#ADT*A04#ID!F!#P#2.5.1");
        let ack = Ack::new(AckCode::ApplicationAccept, "K3", "20261121120000").for_message(&msg);
        assert_eq!(
            String::from_utf8_lossy(ack.as_bytes()),
            "MSH#*@!%#R#F#APP*1.2*ISO#FAC#20261121120000##ACK*A04*ACK#K3#P#2.5.1\rMSA#AA#ID!F!\r"
        );
        assert_eq!(ack.get("MSA-2").as_deref(), Some("ID#"));
    }

    #[test]
    fn unreadable_input_gets_a_default_nak() {
        let nak = Ack::new(AckCode::ApplicationReject, "K4", "20261121120000").for_unreadable(b"\x00\x01garbage");
        assert_eq!(String::from_utf8_lossy(nak.as_bytes()), "MSH|^~\\&|||||20261121120000||ACK^^ACK|K4\rMSA|AR\r");
        let err = Message::parse(&b"garbage"[..]).unwrap_err();
        let nak = Ack::new(AckCode::ApplicationReject, "K5", "20261121120000").for_parse_error(&err, b"garbage");
        assert_eq!(
            String::from_utf8_lossy(nak.as_bytes()),
            "MSH|^~\\&|||||20261121120000||ACK^^ACK|K5\r\
             MSA|AR||the message does not start with an MSH segment\r\
             ERR||MSH^1|100^Segment sequence error^HL70357|E|||byte offset 0|the message does not start with an MSH segment\r"
        );
    }

    #[test]
    fn eld_without_subcomponent_separator_keeps_the_err_segment_whole() {
        let msg = parse("MSH|^~|A|B|C|D|20261121||ADT^A01|X1|P|2.4");
        let issues = [Issue::error(Location::field("PID", 1, 3), ErrorCode::RequiredFieldMissing, "PID-3 is required")];
        let ack = Ack::new(AckCode::ApplicationError, "K", "20261121120000").issues(&issues).for_message(&msg);
        assert_eq!(ack.segment("ERR").unwrap().raw(), b"ERR|PID^1^3^101");
        assert_eq!(ack.segment("MSA").unwrap().field_count(), 6);
    }

    #[test]
    fn enhanced_mode_conditions() {
        let msg = parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5|||ER|SU");
        let mode = AckMode::of(&msg);
        assert_eq!(mode.immediate(Outcome::Accepted), None);
        assert_eq!(mode.immediate(Outcome::Rejected), Some(AckCode::CommitReject));
        assert_eq!(mode.application(Outcome::Accepted), Some(AckCode::ApplicationAccept));
        assert_eq!(mode.application(Outcome::Errored), None);
        // Only MSH-16 valued: enhanced, MSH-15 counts as always.
        let msg = parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5||||NE");
        assert_eq!(AckMode::of(&msg).immediate(Outcome::Errored), Some(AckCode::CommitError));
        assert_eq!(AckMode::of(&msg).application(Outcome::Errored), None);
    }
}
