//! The `channel` destination: hands the message to another channel of the
//! same engine, as if it had arrived on that channel's source.
//!
//! ```toml
//! type = "channel"
//! channel = "lab-out"
//! ```
//!
//! The destination does not know the runtime: it calls a
//! [`ChannelInjector`], which the runtime implements with its ingest path
//! (parse, validate, store with the target's deliveries) and passes in the
//! [`BuildContext`]. The delivery succeeds once the target channel has
//! stored the message, so nothing is lost between channels; a retry after a
//! crash injects the same content again, which the target deduplicates like
//! any resent message (sender + MSH-10) and answers with the original ACK.
//!
//! That the target channel exists is checked by the config loader, which
//! knows every channel ([`ChannelConfig::validate`] only sees this one).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{BuildContext, DeliveryError, DeliveryResponse, DestinationError, ErrorClass, Outbound, ResponseKind};
use crate::config::ConfigErrors;

/// Configuration of a `channel` destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The name of the channel to inject into.
    pub channel: String,
}

impl ChannelConfig {
    /// Checks the name is present (no I/O; the loader checks it exists).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if self.channel.trim().is_empty() {
            errors.push(format!("{path}.channel"), "must name a channel");
        }
    }

    /// Takes the injector from the context.
    pub fn build(&self, ctx: &BuildContext) -> Result<ChannelDestination, DestinationError> {
        let injector = ctx.injector.clone().ok_or(DestinationError::NoInjector)?;
        Ok(ChannelDestination { target: self.channel.clone(), injector })
    }
}

/// One message to inject into a channel.
#[derive(Debug, Clone, Copy)]
pub struct Injected<'a> {
    /// The channel to inject into.
    pub target: &'a str,
    /// The content, as a source would have received it.
    pub content: &'a [u8],
    /// Its media type.
    pub content_type: &'a str,
    /// The channel the message comes from.
    pub origin_channel: &'a str,
    /// The store's id of the message in the origin channel.
    pub origin_message_id: &'a str,
}

/// What the target channel did with an injected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The id of the message stored in the target channel.
    pub message_id: String,
    /// The ACK code the target's source would have answered (`AA`, or the
    /// original code for a duplicate), when the content is HL7 v2.
    pub ack_code: Option<String>,
    /// True when the target recognised a duplicate and stored nothing new.
    pub duplicate: bool,
}

/// Why an injection failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// No channel by that name is running.
    #[error("no channel named {0:?}")]
    UnknownChannel(String),
    /// The target channel refused the content (parse or validation error,
    /// AR/AE): retrying the same content gives the same answer.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The target could not store the message now (store unavailable,
    /// shutting down, back-pressure).
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// A hint for when to retry.
        retry_after: Option<Duration>,
    },
}

impl InjectError {
    /// Unknown channel and rejections are permanent, unavailability transient.
    pub fn class(&self) -> ErrorClass {
        match self {
            InjectError::UnknownChannel(_) | InjectError::Rejected(_) => ErrorClass::Permanent,
            InjectError::Unavailable { .. } => ErrorClass::Transient,
        }
    }

    /// The retry hint of [`InjectError::Unavailable`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InjectError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The runtime's ingest path, as seen by `channel` destinations.
///
/// Implementations must return only after the message is durably stored in
/// the target channel (or has been recognised as a duplicate), so that a
/// successful delivery never loses the message.
#[async_trait]
pub trait ChannelInjector: Send + Sync {
    /// Ingests `message` into channel `message.target`.
    async fn inject(&self, message: Injected<'_>) -> Result<Injection, InjectError>;
}

/// A built `channel` destination.
pub struct ChannelDestination {
    target: String,
    injector: Arc<dyn ChannelInjector>,
}

impl std::fmt::Debug for ChannelDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelDestination").field("target", &self.target).finish_non_exhaustive()
    }
}

impl ChannelDestination {
    /// The target channel's name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Injects one message; the response names the new message's id.
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        let injected = Injected {
            target: &self.target,
            content: out.content,
            content_type: out.content_type,
            origin_channel: out.channel,
            origin_message_id: out.message_id,
        };
        let injection = self
            .injector
            .inject(injected)
            .await
            .map_err(|source| DeliveryError::Inject { channel: self.target.clone(), source })?;
        let mut summary = format!("injected into {} as {}", self.target, injection.message_id);
        if let Some(code) = &injection.ack_code {
            summary.push_str(&format!(" ({code})"));
        }
        if injection.duplicate {
            // A retry after a crash lands here as it should; a replay does
            // too, and an operator reading the replayed delivery must see
            // that the target did not process the message again.
            summary.push_str(&format!(
                " (duplicate: channel {:?} already had this message and did not process it again; \
                 to reprocess it, replay message {} there)",
                self.target, injection.message_id
            ));
        }
        Ok(DeliveryResponse { kind: ResponseKind::Local, summary, body: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, Vec<u8>, String)>>,
    }

    #[async_trait]
    impl ChannelInjector for Recorder {
        async fn inject(&self, m: Injected<'_>) -> Result<Injection, InjectError> {
            if m.target == "missing" {
                return Err(InjectError::UnknownChannel(m.target.to_owned()));
            }
            self.seen.lock().unwrap().push((m.target.to_owned(), m.content.to_vec(), m.origin_message_id.to_owned()));
            Ok(Injection { message_id: "m2".into(), ack_code: Some("AA".into()), duplicate: false })
        }
    }

    fn outbound() -> Outbound<'static> {
        Outbound {
            content: b"MSH|^~\\&|A\r",
            content_type: super::super::HL7_V2_CONTENT_TYPE,
            message_id: "m1",
            channel: "adt-in",
            control_id: Some("C1"),
            received_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn injects_into_the_target_channel() {
        let recorder = Arc::new(Recorder::default());
        let ctx = BuildContext::new("adt-in", "copy").with_injector(recorder.clone());
        let dest = ChannelConfig { channel: "lab".into() }.build(&ctx).unwrap();
        let response = dest.send(&outbound()).await.unwrap();
        assert_eq!(response.summary, "injected into lab as m2 (AA)");
        let seen = recorder.seen.lock().unwrap();
        assert_eq!(seen.as_slice(), [("lab".to_owned(), b"MSH|^~\\&|A\r".to_vec(), "m1".to_owned())]);
    }

    /// A duplicate (a retry after a crash, or a replay) says that the
    /// target did not process the message again, and where to replay it.
    #[tokio::test]
    async fn a_duplicate_says_the_target_did_not_process_it_again() {
        struct Duplicate;
        #[async_trait]
        impl ChannelInjector for Duplicate {
            async fn inject(&self, _: Injected<'_>) -> Result<Injection, InjectError> {
                Ok(Injection { message_id: "m0".into(), ack_code: Some("AA".into()), duplicate: true })
            }
        }
        let ctx = BuildContext::new("adt-in", "copy").with_injector(Arc::new(Duplicate));
        let dest = ChannelConfig { channel: "lab".into() }.build(&ctx).unwrap();
        let response = dest.send(&outbound()).await.unwrap();
        assert_eq!(
            response.summary,
            "injected into lab as m0 (AA) (duplicate: channel \"lab\" already had this message and did not \
             process it again; to reprocess it, replay message m0 there)"
        );
    }

    #[tokio::test]
    async fn unknown_channel_is_permanent() {
        let ctx = BuildContext::new("adt-in", "copy").with_injector(Arc::new(Recorder::default()));
        let dest = ChannelConfig { channel: "missing".into() }.build(&ctx).unwrap();
        let err = dest.send(&outbound()).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(err.kind(), "inject");
    }

    #[test]
    fn build_without_injector_fails() {
        let err = ChannelConfig { channel: "lab".into() }.build(&BuildContext::new("a", "b")).unwrap_err();
        assert!(matches!(err, DestinationError::NoInjector));
    }

    #[test]
    fn empty_name_is_reported() {
        let mut errors = ConfigErrors::default();
        ChannelConfig { channel: " ".into() }.validate("d", &mut errors);
        assert_eq!(errors.0[0].path, "d.channel");
    }
}
