//! HL7 v2 for Plexus: a zero-copy parser, encoder and editor, Terser-style
//! paths, escapes and character sets.
//!
//! The crate is pure (no I/O, no clock, no randomness): everything that
//! varies, such as timestamps and control ids for acknowledgements, is an
//! argument, so every function is deterministic and easy to test and fuzz.
//!
//! ```
//! use hl7v2::Message;
//! let msg = Message::parse("MSH|^~\\&|LAB||EHR||20261121||ORU^R01^ORU_R01|42|P|2.5.1\nPID|1||123^^^H^MR||Doe^Ann")?;
//! assert_eq!(msg.message_type().unwrap().trigger, "R01");
//! assert_eq!(msg.get("PID-3-4").as_deref(), Some("H"));
//! assert_eq!(msg.get("PID-5-2").as_deref(), Some("Ann"));
//! # Ok::<(), hl7v2::ParseError>(())
//! ```
//!
//! Design, in one paragraph: a [`Message`] owns one buffer and indexes the
//! position of every segment and field separator; repetitions, components and
//! sub-components are found on demand inside a field. Views ([`Segment`],
//! [`Field`] ...) borrow the buffer. Text is decoded only when asked for
//! (escapes, then the MSH-18 character set), so reading the usual handful of
//! fields of a large message costs little more than finding its segment
//! boundaries.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ack;
pub mod batch;
mod charset;
mod delimiters;
mod edit;
mod element;
mod error;
pub mod escape;
mod issue;
mod message;
#[cfg(feature = "codec")]
pub mod mllp;
mod path;
pub mod validate;
mod version;

pub use charset::Charset;
pub use delimiters::{DelimiterError, Delimiters};
pub use edit::MessageBuilder;
pub use element::{Component, Field, Presence, Repetition, Segment, SubComponent};
pub use error::{EditError, ParseError, ParseErrorKind};
pub use issue::{ErrorCode, Issue, Location, Severity};
pub use message::{Message, MessageType};
pub use path::{MAX_INDEX, Path, PathError, ToPath};
pub use version::Version;
