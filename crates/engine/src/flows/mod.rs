//! Flows: orchestrations that are more than one message through one channel
//! (document submission, partner notifications). Each flow is a folder or a
//! file with its pure parts (validation, resource building, status models)
//! separated from the I/O, so the pure parts are tested without a runtime
//! and the runtime wires the I/O.
//!
//! [`FlowStage`] is the hook through which a flow runs inside the destination
//! workers (prepare the content to send, follow up after delivery).

pub mod notification;
pub mod patient_sync;
pub mod send_to_ehr;

use std::fmt;

use async_trait::async_trait;
use store::{ClaimedDelivery, FailureClass, Outcome};

/// A channel's flow stage: the hook through which a flow takes part in the
/// destination workers' processing of each delivery.
///
/// # Where it runs
///
/// A channel built with a flow (`ChannelStage::flow` in [`crate::worker`])
/// hands each claimed delivery to the flow first:
///
/// 1. [`FlowStage::prepare`] turns the stored content (a partner
///    notification, a send-to-ehr request ...) into what the destination
///    sends, at every attempt (so it must be deterministic in the stored
///    message, like transforms; a fetch that may fail is fine, its failure
///    is the attempt's). The result replaces the stored content for the
///    rest of the attempt: when it is HL7 v2 ([`FlowOutput::content_type`]
///    is [`crate::destinations::HL7_V2_CONTENT_TYPE`]) the channel's and the
///    destination's filters and transforms then run on it as for any HL7 v2
///    message; other content goes out as it is. The content actually sent is
///    kept with the delivery as its transformed content, so the converted
///    message is in the message's history.
/// 2. The destination sends it; the store records the attempt as usual.
/// 3. Only when the destination accepted it, [`FlowStage::delivered`] runs,
///    before the delivery is recorded as sent. The data is delivered at that
///    point whatever the hook does: an error is logged (by kind) and does
///    not fail the delivery. A follow-up that can fail and must be retried
///    (the partner acknowledgement) therefore queues its own work durably
///    (its own message and delivery in the store) instead of doing it
///    inline.
/// 4. When a delivery fails for good (state `error` or `dead` after the
///    retry policy), [`FlowStage::failed`] runs (default: nothing), e.g. to
///    mark a tracked request as failed.
///
/// A [`FlowError`] from `prepare` becomes the attempt's outcome: transient
/// failures are retried by the destination's policy, permanent ones are
/// final at once, [`FlowError::Skip`] completes the delivery as filtered
/// with the reason (nothing to send).
///
/// Implementations are shared by every worker of every destination of the
/// channel (`Arc<dyn FlowStage>`) and must not log message content.
#[async_trait]
pub trait FlowStage: Send + Sync + fmt::Debug + 'static {
    /// What `destination` sends for this delivery.
    async fn prepare(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<FlowOutput, FlowError>;

    /// `destination` accepted `sent`, answering `response`. Runs before the
    /// delivery is recorded as sent; at-least-once (a crash between the two
    /// runs it again with the next attempt).
    async fn delivered(
        &self,
        delivery: &ClaimedDelivery,
        destination: &str,
        sent: &FlowOutput,
        response: &store::Response,
    ) -> Result<(), FlowError>;

    /// `destination` has nothing to send: a channel or destination filter,
    /// or a `route` step, dropped the flow's output and the delivery is
    /// about to be recorded as filtered. Like `delivered`, it runs before the
    /// outcome is recorded and at-least-once. Default: nothing (a flow that
    /// waits for every destination, such as the partner acknowledgement,
    /// counts this one as done).
    async fn filtered(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<(), FlowError> {
        let _ = (delivery, destination);
        Ok(())
    }

    /// The delivery to `destination` failed for good (`reason` as stored).
    async fn failed(&self, delivery: &ClaimedDelivery, destination: &str, reason: &str) {
        let _ = (delivery, destination, reason);
    }
}

/// What a flow hands to the destination in place of the stored content.
#[derive(Clone, PartialEq, Eq)]
pub struct FlowOutput {
    /// The bytes to send.
    pub content: Vec<u8>,
    /// Their media type (HL7 v2 content then goes through the channel's and
    /// destination's filters and transforms).
    pub content_type: String,
}

// Hand-written: the content may hold patient data.
impl fmt::Debug for FlowOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowOutput")
            .field("content_type", &self.content_type)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// Why a flow did not produce content to send. The text is stored with the
/// attempt: it must not quote patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// May go away by itself (a fetch timed out, the partner answered 503):
    /// retried by the destination's policy.
    #[error("{0}")]
    Transient(String),
    /// Will not go away (the bundle is not FHIR, too large): final at once.
    #[error("{0}")]
    Permanent(String),
    /// Nothing to send for this destination: completed as filtered.
    #[error("{0}")]
    Skip(String),
}

impl FlowError {
    /// The outcome to record for the attempt.
    pub fn to_outcome(&self) -> Outcome {
        match self {
            FlowError::Transient(reason) => {
                Outcome::Failed { class: FailureClass::Transient, reason: format!("flow: {reason}"), response: None }
            }
            FlowError::Permanent(reason) => {
                Outcome::Failed { class: FailureClass::Permanent, reason: format!("flow: {reason}"), response: None }
            }
            FlowError::Skip(reason) => Outcome::Filtered { rule: format!("flow: {reason}") },
        }
    }

    /// A short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FlowError::Transient(_) => "transient",
            FlowError::Permanent(_) => "permanent",
            FlowError::Skip(_) => "skip",
        }
    }
}
