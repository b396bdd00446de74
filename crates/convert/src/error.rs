//! The crate's error type.

use crate::rules::RulesError;

/// How a caller should treat an error (drives retries, the ACK code and
/// dead-lettering in the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retrying may succeed. Conversions are pure, so none are.
    Transient,
    /// The input cannot be converted; retrying gives the same answer.
    Permanent,
    /// The conversion is misconfigured (options or rules).
    Config,
}

/// Errors of the converters.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The message type or trigger event has no converter.
    #[error("unsupported message type {message_type}: {hint}")]
    UnsupportedMessage {
        /// As in MSH-9, e.g. `ADT^A17`.
        message_type: String,
        /// What is supported.
        hint: &'static str,
    },
    /// The input is not an HL7 v2 message the converter can read.
    #[error("not a readable HL7 v2 message: {0}")]
    NotHl7(String),
    /// Something the target format requires is absent from the input.
    #[error("required {path} is missing")]
    Missing {
        /// Where it was looked for, e.g. `PID segment`, `Patient.identifier`.
        path: String,
    },
    /// A value cannot be converted.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// Where, e.g. `OBX(2)-5` or `Bundle.entry[3].resource.valueQuantity`.
        path: String,
        /// Why (without patient data).
        reason: String,
    },
    /// The FHIR input has no content for the requested message.
    #[error("FHIR input cannot become {target}: {reason}")]
    UnsupportedFhir {
        /// The requested message, e.g. `ORU^R01`.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// The conversion options are invalid.
    #[error("invalid conversion options: {0}")]
    Options(String),
    /// The HL7 v2 encoder rejected the output.
    #[error("cannot encode the HL7 v2 output: {0}")]
    Encode(String),
    /// A mapping-rules error.
    #[error(transparent)]
    Rules(#[from] RulesError),
}

impl ConvertError {
    /// Whether retrying can help, or the configuration is at fault.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConvertError::Options(_) => ErrorClass::Config,
            ConvertError::Rules(RulesError::Syntax { .. } | RulesError::Definition(_)) => ErrorClass::Config,
            _ => ErrorClass::Permanent,
        }
    }
}
