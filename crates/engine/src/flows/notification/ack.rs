//! Sending the partner's acknowledgements: a small worker per notification
//! channel that claims the acknowledgement requests the
//! [`super::stage::NotificationStage`] stores (deliveries to the reserved
//! destination [`ACK_DESTINATION`]) and POSTs each to the partner's
//! acknowledgement URL.
//!
//! Because each acknowledgement is its own queued delivery, the store's
//! leases, retry policy and attempt log apply to it: a partner answering
//! 5xx or not at all is retried with backoff without the bundle being
//! delivered again, and every try is visible. The outcome is also recorded
//! in the notification's own audit trail (`partner_acknowledged`, or
//! `acknowledgement_failed` once the retries are used up), so the
//! notification's history shows the whole path.
//!
//! The request: `POST <acknowledgement.url>` with the notification and file
//! ids filled in, body `{"notification_id": ..., "file_id": ...,
//! "status": "delivered"}`, authenticated by the configured bearer token or
//! HMAC signature (same scheme as inbound notifications). Redirects are not
//! followed: a 3xx fails the acknowledgement for good (the configured URL
//! is wrong), like any other 4xx-class answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use store::{ClaimRequest, ClaimedDelivery, DeliveryState, FailureClass, MessageId, NewAuditEvent, Outcome, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ack_url_for;
use super::config::{AckAuth, AcknowledgementConfig};
use super::stage::ACK_DESTINATION;
use super::verify::sign;

/// How long one acknowledgement request may take.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest an idle acknowledgement worker sleeps without looking.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Acknowledgements queued at most per claim.
const BATCH: u32 = 16;

/// The acknowledgement sender of one channel.
#[derive(Debug)]
pub struct AckWorker {
    channel: String,
    config: AcknowledgementConfig,
    client: reqwest::Client,
    store: Arc<dyn Store>,
    retry: store::RetryPolicy,
}

impl AckWorker {
    /// A worker for `channel`, sending per `config` and retrying per `retry`.
    pub fn new(
        channel: &str,
        config: AcknowledgementConfig,
        retry: store::RetryPolicy,
        store: Arc<dyn Store>,
    ) -> Result<AckWorker, reqwest::Error> {
        // Redirects are not followed: the partner's endpoint must take the
        // POST itself. Followed, a 302/303 becomes a GET of another page
        // whose 200 would record an acknowledgement the partner never got,
        // and the partner's answer would choose what Plexus requests next.
        let client =
            reqwest::Client::builder().timeout(ACK_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(AckWorker { channel: channel.to_string(), config, client, store, retry })
    }

    /// Runs until `shutdown`; finishes the batch it holds first.
    pub async fn run(self: Arc<Self>, node: String, shutdown: CancellationToken) {
        let request = ClaimRequest {
            channel: self.channel.clone(),
            destination: ACK_DESTINATION.to_string(),
            max: BATCH,
            lease: ACK_TIMEOUT * 3,
            worker: format!("{node}/{}/{ACK_DESTINATION}", self.channel),
        };
        let mut changes = self.store.changes();
        while !shutdown.is_cancelled() {
            changes.borrow_and_update();
            let claim = match self.store.claim(&request).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(channel = %self.channel, error = %e.summary(), "claiming acknowledgements failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if claim.deliveries.is_empty() {
                let wait = claim
                    .next_due
                    .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(IDLE_POLL)
                    .min(IDLE_POLL);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = changes.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            futures::future::join_all(claim.deliveries.into_iter().map(|d| self.handle(d))).await;
        }
    }

    async fn handle(&self, delivery: ClaimedDelivery) {
        let request: Option<AckRequest> = serde_json::from_slice::<Value>(&delivery.raw).ok().and_then(|v| {
            Some(AckRequest {
                original: v.get("message_id")?.as_str()?.parse().ok()?,
                notification_id: v.get("notification_id")?.as_str()?.to_string(),
                file_id: v.get("file_id")?.as_str()?.to_string(),
            })
        });
        let outcome = match &request {
            Some(r) => self.send(r).await,
            None => Outcome::Failed {
                class: FailureClass::Permanent,
                reason: "the acknowledgement request is not readable".into(),
                response: None,
            },
        };
        let detail = match &outcome {
            Outcome::Sent { response: Some(store::Response::Http { status, .. }), .. } => format!("HTTP {status}"),
            Outcome::Failed { reason, .. } => reason.clone(),
            _ => String::new(),
        };
        let sent = matches!(outcome, Outcome::Sent { .. });
        match self.store.complete(delivery.id, delivery.lease, outcome, &self.retry).await {
            Ok(done) => {
                let action = match (sent, done.state) {
                    (true, _) => Some("partner_acknowledged"),
                    (false, DeliveryState::Error | DeliveryState::Dead) => Some("acknowledgement_failed"),
                    _ => None,
                };
                if let (Some(action), Some(r)) = (action, &request) {
                    self.audit(r.original, action, format!("{detail} (request {})", delivery.message_id)).await;
                }
                debug!(channel = %self.channel, delivery = %delivery.id, state = done.state.as_str(), "acknowledgement attempt recorded");
            }
            Err(e) => warn!(channel = %self.channel, delivery = %delivery.id, error = %e.summary(),
                            "recording an acknowledgement attempt failed; it is tried again after the lease"),
        }
    }

    async fn send(&self, request: &AckRequest) -> Outcome {
        let url = ack_url_for(&self.config.url, &request.notification_id, &request.file_id);
        let body = json!({
            "notification_id": request.notification_id,
            "file_id": request.file_id,
            "status": "delivered",
        })
        .to_string();
        let mut builder = self.client.post(&url).header(http::header::CONTENT_TYPE, "application/json");
        match &self.config.auth {
            AckAuth::None => {}
            AckAuth::Bearer { token } => builder = builder.bearer_auth(token),
            AckAuth::Hmac { secret, signature_header, timestamp_header } => {
                let ts = chrono::Utc::now().timestamp().to_string();
                let signature = sign(secret.as_bytes(), &ts, body.as_bytes());
                builder = builder.header(timestamp_header.as_str(), ts).header(signature_header.as_str(), signature);
            }
        }
        match builder.body(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let excerpt: String = response.text().await.unwrap_or_default().chars().take(512).collect();
                let answer = store::Response::Http { status, body_excerpt: excerpt };
                if (200..300).contains(&status) {
                    Outcome::Sent { response: Some(answer), transformed: None }
                } else {
                    let class = if status >= 500 || status == 429 || status == 408 {
                        FailureClass::Transient
                    } else {
                        FailureClass::Permanent
                    };
                    let reason = if (300..400).contains(&status) {
                        format!(
                            "the partner answered HTTP {status} (a redirect, not followed: check acknowledgement.url)"
                        )
                    } else {
                        format!("the partner answered HTTP {status}")
                    };
                    Outcome::Failed { class, reason, response: Some(answer) }
                }
            }
            Err(e) => Outcome::Failed {
                class: FailureClass::Transient,
                reason: format!(
                    "acknowledging failed: {}",
                    if e.is_timeout() { "timeout" } else { "connection error" }
                ),
                response: None,
            },
        }
    }

    async fn audit(&self, message: MessageId, action: &str, detail: String) {
        let event = NewAuditEvent {
            actor: format!("channel:{}", self.channel),
            action: action.to_string(),
            message_id: Some(message),
            delivery_id: None,
            detail: Some(detail),
        };
        if let Err(e) = self.store.record_audit(event).await {
            warn!(channel = %self.channel, error = %e.summary(), "recording an acknowledgement audit event failed");
        }
    }
}

struct AckRequest {
    original: MessageId,
    notification_id: String,
    file_id: String,
}
