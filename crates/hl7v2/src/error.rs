//! Errors of the parser and of editing.

use std::fmt;

use crate::{DelimiterError, Message, PathError};

/// Why bytes could not be read as an HL7 v2 message, and where.
///
/// Every error carries the byte offset and the 1-based position of the
/// segment it was found in. When the MSH segment itself was readable (the
/// problem is further down), [`header`](ParseError::header) gives a message
/// holding just that MSH, so the receiver can still answer with a proper
/// AE/AR acknowledgement (see [`Ack::for_parse_error`](crate::ack::Ack::for_parse_error)).
///
/// The `Display` text names positions, never message content, so it is safe
/// to log.
///
/// ```
/// use hl7v2::{Message, ParseErrorKind};
/// let err = Message::parse("MSH|^~\\&|A|B|C|D|||ADT^A01|42|P|2.5\rPID|1\rpid|oops").unwrap_err();
/// assert_eq!(err.kind(), &ParseErrorKind::InvalidSegmentName);
/// assert_eq!(err.offset(), 42);
/// assert_eq!(err.segment(), 3);
/// assert_eq!(err.header().unwrap().control_id().as_deref(), Some("42"));
/// ```
#[derive(Clone, thiserror::Error)]
pub struct ParseError {
    kind: ParseErrorKind,
    offset: usize,
    segment: usize,
    field: Option<usize>,
    header: Option<Box<Message>>,
}

/// What kind of problem a [`ParseError`] is.
///
/// ```
/// use hl7v2::{Message, ParseErrorKind};
/// assert_eq!(Message::parse("PID|1").unwrap_err().kind(), &ParseErrorKind::MissingHeader);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input holds nothing but white space.
    #[error("the input is empty")]
    Empty,
    /// The first segment is not MSH.
    #[error("the message does not start with an MSH segment")]
    MissingHeader,
    /// The input starts with FHS or BHS: split it with [`BatchFile::parse`](crate::batch::BatchFile::parse).
    #[error("the input is a batch (FHS/BHS), not a single message")]
    Batch,
    /// MSH ends before MSH-1 and MSH-2 are complete.
    #[error("the MSH segment ends before its delimiters")]
    TruncatedHeader,
    /// MSH-1/MSH-2 do not define a usable set of delimiters.
    #[error("MSH-1/MSH-2 delimiters are invalid: {0}")]
    InvalidDelimiters(DelimiterError),
    /// A segment does not start with three characters A-Z/0-9 followed by the
    /// field separator or the end of the segment.
    #[error("invalid segment name")]
    InvalidSegmentName,
    /// The input is larger than the 4 GiB the index can address.
    #[error("the message is larger than 4 GiB")]
    TooLarge,
}

impl ParseError {
    pub(crate) fn new(kind: ParseErrorKind, offset: usize, segment: usize) -> Self {
        ParseError { kind, offset, segment, field: None, header: None }
    }

    pub(crate) fn in_field(mut self, field: usize) -> Self {
        self.field = Some(field);
        self
    }

    pub(crate) fn with_header(mut self, header: Message) -> Self {
        self.header = Some(Box::new(header));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }
    /// Byte offset in the input where the problem starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// 1-based position of the segment the problem is in (1 is MSH).
    pub fn segment(&self) -> usize {
        self.segment
    }
    /// The field the problem is in, when it is in one (MSH-1, MSH-2).
    pub fn field(&self) -> Option<usize> {
        self.field
    }
    /// The message's MSH segment, parsed, when it was readable.
    pub fn header(&self) -> Option<&Message> {
        self.header.as_deref()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}, segment {}", self.kind, self.offset, self.segment)?;
        if let Some(field) = self.field {
            write!(f, ", field {field}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParseError")
            .field("kind", &self.kind)
            .field("offset", &self.offset)
            .field("segment", &self.segment)
            .field("field", &self.field)
            .field("header_readable", &self.header.is_some())
            .finish()
    }
}

/// Why an edit ([`Message::set`] and friends) was refused. The message is
/// unchanged when an edit fails.
///
/// ```
/// use hl7v2::{EditError, Message};
/// let mut msg = Message::parse("MSH|^~\\&|A").unwrap();
/// assert_eq!(msg.set("MSH-2", "x"), Err(EditError::Delimiters));
/// assert!(matches!(msg.set("NTE(3)-1", "x"), Err(EditError::NoSuchSegment { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The path text is not a valid path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// MSH-1 and MSH-2 are the delimiters; build a message with other
    /// [`Delimiters`](crate::Delimiters) instead.
    #[error("MSH-1 and MSH-2 hold the delimiters and cannot be set")]
    Delimiters,
    /// The segment occurrence asked for is more than one past the last one.
    #[error("segment {path} does not exist and is not the next occurrence")]
    NoSuchSegment {
        /// The path that was given.
        path: String,
    },
    /// The path needs a delimiter this message does not declare (for example a
    /// repetition in a message whose MSH-2 has no `~`).
    #[error("{path} needs a delimiter that MSH-2 does not declare")]
    MissingDelimiter {
        /// The path that was given.
        path: String,
    },
    /// The value has a character the message's character set (MSH-18) cannot
    /// represent.
    #[error("U+{:04X} cannot be written in character set {charset}", *character as u32)]
    Unrepresentable {
        /// The character.
        character: char,
        /// The MSH-18 name of the character set.
        charset: &'static str,
    },
    /// Raw bytes given for a node contain a separator of that level or above,
    /// or a segment terminator.
    #[error("raw value contains a separator that would change the message structure")]
    RawValue,
    /// A segment given whole does not start with a valid segment name, or
    /// contains a segment terminator.
    #[error("invalid segment: {0}")]
    Segment(&'static str),
    /// The segment index is out of range, or is 0 (MSH) where MSH cannot go.
    #[error("segment index {0} is out of range or is the MSH")]
    SegmentIndex(usize),
    /// The edited message would be larger than 4 GiB.
    #[error("the message would be larger than 4 GiB")]
    TooLarge,
}
