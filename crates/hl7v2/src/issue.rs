//! Problems found in a message, with their location, HL7 error code (table
//! 0357) and severity (table 0516): what the parser, the validator and the
//! application report, and what an ACK turns into ERR segments.
//!
//! Messages of issues name positions and rules, never values, so they can be
//! logged and returned to the sender without leaking patient data.

use std::fmt;

use crate::Path;

/// HL7 table 0357, message error condition codes.
///
/// ```
/// use hl7v2::ErrorCode;
/// assert_eq!(ErrorCode::RequiredFieldMissing.code(), 101);
/// assert_eq!(ErrorCode::UnsupportedVersionId.text(), "Unsupported version id");
/// assert!(!ErrorCode::UnsupportedVersionId.is_content_error());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: message accepted.
    MessageAccepted,
    /// 100: segment sequence error (missing, out of order, unexpected).
    SegmentSequenceError,
    /// 101: required field missing.
    RequiredFieldMissing,
    /// 102: data type error.
    DataTypeError,
    /// 103: table value not found.
    TableValueNotFound,
    /// 104: value too long (2.7+).
    ValueTooLong,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEventCode,
    /// 202: unsupported processing id.
    UnsupportedProcessingId,
    /// 203: unsupported version id.
    UnsupportedVersionId,
    /// 204: unknown key identifier.
    UnknownKeyIdentifier,
    /// 205: duplicate key identifier.
    DuplicateKeyIdentifier,
    /// 206: application record locked.
    ApplicationRecordLocked,
    /// 207: application internal error.
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(&self) -> u16 {
        match self {
            ErrorCode::MessageAccepted => 0,
            ErrorCode::SegmentSequenceError => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::ValueTooLong => 104,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationRecordLocked => 206,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table's display text.
    pub fn text(&self) -> &'static str {
        match self {
            ErrorCode::MessageAccepted => "Message accepted",
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::ValueTooLong => "Value too long",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }

    /// Whether the problem is with the message's content (answer AE/CE)
    /// rather than with what the receiver supports (answer AR/CR).
    pub fn is_content_error(&self) -> bool {
        self.code() < 200
    }
}

/// HL7 table 0516, error severity.
///
/// ```
/// use hl7v2::Severity;
/// assert_eq!(Severity::Warning.code(), "W");
/// assert!(Severity::Error > Severity::Warning);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// I: information; the message was processed.
    Information,
    /// W: warning; the message was processed.
    Warning,
    /// E: error; the message was not processed (or only in part).
    Error,
    /// F: fatal error (2.7+; written as E in older versions).
    Fatal,
}

impl Severity {
    /// The table code.
    pub fn code(&self) -> &'static str {
        match self {
            Severity::Information => "I",
            Severity::Warning => "W",
            Severity::Error => "E",
            Severity::Fatal => "F",
        }
    }
}

/// Where an issue is: a segment (by name and occurrence), optionally a field,
/// repetition, component and sub-component (all 1-based), as ERR-2 (ERL)
/// and the 2.3 ERR-1 (ELD) report it.
///
/// ```
/// use hl7v2::{Location, Path};
/// assert_eq!(Location::field("OBX", 3, 5).to_string(), "OBX(3)-5");
/// assert_eq!(Location::from(Path::parse("PID-3(2)-4").unwrap()).to_string(), "PID(1)-3(2)-4");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// Segment name; empty when the segment could not be named (an
    /// unreadable segment).
    pub segment: String,
    /// Which occurrence of that segment (1 for the first); ERL-2.
    pub occurrence: Option<u32>,
    /// Field number.
    pub field: Option<u32>,
    /// Field repetition.
    pub repetition: Option<u32>,
    /// Component.
    pub component: Option<u32>,
    /// Sub-component.
    pub subcomponent: Option<u32>,
}

impl Location {
    /// The whole `occurrence`th segment named `segment`.
    pub fn segment(segment: &str, occurrence: u32) -> Location {
        Location { segment: segment.to_owned(), occurrence: Some(occurrence), ..Location::default() }
    }

    /// A field of the `occurrence`th segment named `segment`.
    pub fn field(segment: &str, occurrence: u32, field: u32) -> Location {
        Location { field: Some(field), ..Location::segment(segment, occurrence) }
    }
}

impl From<Path> for Location {
    fn from(p: Path) -> Location {
        Location {
            segment: p.segment().to_owned(),
            occurrence: Some(p.segment_repetition().unwrap_or(1)),
            field: Some(p.field()),
            repetition: p.field_repetition(),
            component: p.component(),
            subcomponent: p.subcomponent(),
        }
    }
}

impl fmt::Display for Location {
    /// Path style: `PID(1)-7`, `OBX(3)-5(2)-1`, `ORC(2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.segment.is_empty() { "?" } else { &self.segment })?;
        if let Some(n) = self.occurrence {
            write!(f, "({n})")?;
        }
        if let Some(n) = self.field {
            write!(f, "-{n}")?;
            if let Some(r) = self.repetition {
                write!(f, "({r})")?;
            }
            if let Some(c) = self.component {
                write!(f, "-{c}")?;
                if let Some(s) = self.subcomponent {
                    write!(f, "-{s}")?;
                }
            }
        }
        Ok(())
    }
}

/// One problem: where, which HL7 error code, how severe, and a message for
/// people (no patient data).
///
/// ```
/// use hl7v2::{ErrorCode, Issue, Location};
/// let issue = Issue::error(Location::field("PID", 1, 7), ErrorCode::DataTypeError, "PID-7 is not a valid DTM");
/// assert_eq!(issue.to_string(), "PID(1)-7: 102 Data type error: PID-7 is not a valid DTM (E)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Issue {
    /// Where it is; `None` for the message as a whole.
    pub location: Option<Location>,
    /// Table 0357 code.
    pub code: ErrorCode,
    /// Table 0516 severity.
    pub severity: Severity,
    /// What is wrong, for the user (ERR-8, MSA-3 in older versions).
    pub message: String,
    /// Extra detail for support staff (ERR-7), such as a byte offset.
    pub diagnostic: Option<String>,
}

impl Issue {
    /// An error at `location`.
    pub fn error(location: impl Into<Option<Location>>, code: ErrorCode, message: impl Into<String>) -> Issue {
        Issue { location: location.into(), code, severity: Severity::Error, message: message.into(), diagnostic: None }
    }

    /// A warning at `location`.
    pub fn warning(location: impl Into<Option<Location>>, code: ErrorCode, message: impl Into<String>) -> Issue {
        Issue { severity: Severity::Warning, ..Issue::error(location, code, message) }
    }

    /// The same issue with a diagnostic detail.
    pub fn with_diagnostic(mut self, diagnostic: impl Into<String>) -> Issue {
        self.diagnostic = Some(diagnostic.into());
        self
    }
}

impl fmt::Display for Issue {
    /// `PID(1)-7: 102 Data type error: not a valid DTM (E)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        write!(f, "{} {}: {} ({})", self.code.code(), self.code.text(), self.message, self.severity.code())
    }
}
