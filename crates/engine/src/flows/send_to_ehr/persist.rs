//! Submissions kept in the engine's message store: a [`TrackingStore`] over
//! [`store::Store`].
//!
//! An accepted submission is one message of the flow's channel: its content
//! is the submission Bundle (Patient, Encounter, DocumentReference, Binary,
//! CommunicationRequest, see [`build::submission_bundle`]), its control id
//! the transaction id (indexed, so `$tracking` finds it without a new
//! table), its order key `Patient/{id}` (one patient's documents reach the
//! EHR in submission order), its ACK the operation's answer with the
//! request's digest ([`Receipt`]), with one queued delivery per
//! destination. It is committed before the operation answers 200.
//!
//! A retry with the same `Idempotency-Key` has the same transaction id (see
//! [`super::api::keyed_transaction_id`]), so the store's duplicate
//! detection (channel, sender, control id) stores it once, even when two
//! race, and hands back the original's ACK: its answer.
//!
//! The tracking status is read from the deliveries, never stored twice:
//! see [`status_of`].

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use store::{
    Accepted, DeliveryDetail, DeliveryState, MessageDetail, NewAuditEvent, NewDelivery, NewMessage, SearchQuery, Store,
};

use super::api::{Earlier, Receipt, Submission, TrackingStore, TrackingStoreError};
use super::build::{self, Outputs};
use super::tracking::{TrackingRecord, TrackingStatus};

/// The media type of a stored submission.
pub const SUBMISSION_CONTENT_TYPE: &str = "application/fhir+json";

/// The sender key of submissions whose caller is unknown.
const ANONYMOUS_SENDER: &str = "send-to-ehr";

/// The prefix of a submission's order key (then the Patient's id).
const ORDER_KEY_PREFIX: &str = "Patient/";

/// A submission's message type in the store (its event is the LOINC
/// document type).
pub const MESSAGE_TYPE: &str = "send-to-ehr";

/// The store's limits on keys and identifiers (characters), and on the
/// number of patient identifiers.
const MAX_KEY_CHARS: usize = 255;
const MAX_PATIENT_IDS: usize = 64;

/// A [`TrackingStore`] over the engine's message store, for one channel.
/// Its errors carry [`store::StoreError::summary`] (no database-quoted
/// values), since they are logged.
#[derive(Debug, Clone)]
pub struct StoreTracking {
    store: Arc<dyn Store>,
    channel: String,
    destinations: Vec<String>,
}

impl StoreTracking {
    /// Submissions stored as messages of `channel`, queued for each of
    /// `destinations`.
    pub fn new(store: Arc<dyn Store>, channel: impl Into<String>, destinations: Vec<String>) -> StoreTracking {
        StoreTracking { store, channel: channel.into(), destinations }
    }

    /// The message a submission is stored as.
    pub fn new_message(&self, submission: &Submission) -> NewMessage {
        let Submission { record, outputs, resolved, caller, receipt } = submission;
        let bundle = build::submission_bundle(outputs, resolved);
        let document_type =
            outputs.document_reference.pointer("/type/coding/0/code").and_then(Value::as_str).map(str::to_string);
        NewMessage {
            channel: self.channel.clone(),
            received_at: record.created,
            peer_addr: None,
            content_type: SUBMISSION_CONTENT_TYPE.to_string(),
            // Serialising a Value cannot fail (string keys only).
            raw: serde_json::to_vec(&bundle).unwrap_or_default(),
            control_id: Some(record.transaction_id.clone()),
            sender_key: sender_key(caller.as_deref()),
            message_type: Some(MESSAGE_TYPE.to_string()),
            event: document_type,
            order_key: Some(format!("{ORDER_KEY_PREFIX}{}", record.patient_id)),
            patient_ids: patient_identifiers(&resolved.patient),
            // The answer, stored atomically with the submission: a retry
            // (same Idempotency-Key, so same control id) gets it back from
            // the store's duplicate detection.
            ack: Some(serde_json::to_vec(receipt).unwrap_or_default()),
            deliveries: self.destinations.iter().map(NewDelivery::queued).collect(),
        }
    }
}

/// The stored sender key of `caller`'s submissions: the application that
/// made a submission, the only one that may read it back.
fn sender_key(caller: Option<&str>) -> String {
    caller.unwrap_or(ANONYMOUS_SENDER).chars().take(MAX_KEY_CHARS).collect()
}

/// A stored submission's answer from its ACK ([`Receipt`] as JSON);
/// without one (removed by retention) it is [`Earlier::Forgotten`].
fn earlier_from_ack(ack: Option<&[u8]>) -> Earlier {
    match ack.and_then(|ack| serde_json::from_slice::<Receipt>(ack).ok()) {
        Some(receipt) => Earlier::Answered(receipt),
        None => Earlier::Forgotten,
    }
}

/// The Patient's identifier values, for finding its submissions in the
/// message browser.
fn patient_identifiers(patient: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for identifier in patient.get("identifier").and_then(Value::as_array).into_iter().flatten() {
        if let Some(value) = identifier.get("value").and_then(Value::as_str).filter(|v| !v.is_empty())
            && value.chars().count() <= MAX_KEY_CHARS
            && !ids.iter().any(|i| i == value)
        {
            ids.push(value.to_string());
        }
    }
    ids.truncate(MAX_PATIENT_IDS);
    ids
}

#[async_trait]
impl TrackingStore for StoreTracking {
    async fn insert(&self, submission: Submission) -> Result<Option<Earlier>, TrackingStoreError> {
        match self.store.accept(self.new_message(&submission)).await {
            Ok(Accepted::Stored { .. }) => Ok(None),
            // Same sender and transaction id within the duplicate window: a
            // retry with the same Idempotency-Key (a fresh UUID v7 never
            // collides). Nothing was stored; the original's answer is the
            // ACK the store kept with it.
            Ok(Accepted::Duplicate { ack, .. }) => Ok(Some(earlier_from_ack(ack.as_deref()))),
            Err(e) => Err(TrackingStoreError(e.summary())),
        }
    }

    async fn earlier(&self, transaction_id: &str) -> Result<Option<Earlier>, TrackingStoreError> {
        // Also past the store's duplicate window: as long as the message is
        // kept, its transaction id is not given to another submission.
        let Some(detail) = self.message(transaction_id, None).await? else { return Ok(None) };
        Ok(Some(earlier_from_ack(detail.ack.as_deref())))
    }

    async fn get(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<TrackingRecord>, TrackingStoreError> {
        let owner = sender_key(caller);
        let Some(detail) = self.message(transaction_id, Some(&owner)).await? else { return Ok(None) };
        let summary = &detail.summary;
        let patient_id =
            summary.order_key.as_deref().and_then(|k| k.strip_prefix(ORDER_KEY_PREFIX)).unwrap_or_default().to_string();
        let updated = detail.deliveries.iter().map(|d| d.updated_at).max().unwrap_or(summary.received_at);
        let created = summary.received_at;
        Ok(Some(TrackingRecord {
            transaction_id: transaction_id.to_string(),
            patient_id,
            status: status_of(&detail.deliveries),
            created,
            updated,
        }))
    }

    async fn resources(
        &self,
        transaction_id: &str,
        caller: Option<&str>,
    ) -> Result<Option<Outputs>, TrackingStoreError> {
        let owner = sender_key(caller);
        let Some(detail) = self.message(transaction_id, Some(&owner)).await? else { return Ok(None) };
        let Some(raw) = &detail.raw else { return Ok(None) };
        let submission = build::read_submission(raw).map_err(TrackingStoreError)?;
        // Reading a stored message's content is audited, as in the API.
        let event = NewAuditEvent {
            actor: super::api::reader_name(caller).to_string(),
            action: "read_content".into(),
            message_id: Some(detail.summary.id),
            delivery_id: None,
            detail: Some("send-to-ehr resource read".into()),
        };
        self.store.record_audit(event).await.map_err(|e| TrackingStoreError(e.summary()))?;
        Ok(Some(submission.outputs))
    }
}

impl StoreTracking {
    /// The message stored for `transaction_id` (its control id), with its
    /// deliveries; with `owner`, only one whose sender key is `owner` (a
    /// submission is read back by the application that made it only).
    async fn message(
        &self,
        transaction_id: &str,
        owner: Option<&str>,
    ) -> Result<Option<MessageDetail>, TrackingStoreError> {
        let query = SearchQuery {
            channel: Some(self.channel.clone()),
            control_id: Some(transaction_id.to_string()),
            // One is expected; a few leave room for a (foreign) message of
            // another sender under the same control id.
            limit: 8,
            ..SearchQuery::default()
        };
        let page = self.store.search(&query).await.map_err(|e| TrackingStoreError(e.summary()))?;
        let Some(summary) = page.items.into_iter().find(|m| owner.is_none_or(|o| m.sender_key == o)) else {
            return Ok(None);
        };
        self.store.get_message(summary.id).await.map_err(|e| TrackingStoreError(e.summary()))
    }
}

/// A submission's status from its deliveries (one per destination):
///
/// - any delivery failed for good (`error` or `dead`): `entered-in-error`
///   with the destination and the failure's reason;
/// - every delivery `sent` (or filtered, at least one sent): `completed`,
///   at the last one's time;
/// - every delivery still queued without an attempt: `preparation`;
/// - some attempted, in flight, or sent while others wait: `in-progress`
///   (this is where a submission stays while the EHR is down);
/// - every delivery filtered out: `entered-in-error` (it will never be
///   delivered); no delivery at all (a channel without destinations):
///   `unknown`.
pub fn status_of(deliveries: &[DeliveryDetail]) -> TrackingStatus {
    if deliveries.is_empty() {
        return TrackingStatus::Unknown;
    }
    if let Some(failed) = deliveries.iter().find(|d| matches!(d.state, DeliveryState::Error | DeliveryState::Dead)) {
        let reason = failed.error_reason.as_deref().unwrap_or("no reason recorded");
        return TrackingStatus::EnteredInError {
            reason: format!("delivery to {} failed: {reason}", failed.destination),
        };
    }
    let sent: Vec<&DeliveryDetail> = deliveries.iter().filter(|d| d.state == DeliveryState::Sent).collect();
    let waiting = deliveries.iter().any(|d| matches!(d.state, DeliveryState::Queued | DeliveryState::InFlight));
    if !waiting {
        return match sent.iter().map(|d| sent_at(d)).max() {
            Some(at) => TrackingStatus::Completed { sent: at },
            None => {
                TrackingStatus::EnteredInError { reason: "not delivered: every destination filtered it out".into() }
            }
        };
    }
    let untouched = deliveries.iter().all(|d| d.state == DeliveryState::Queued && d.attempts == 0);
    if untouched { TrackingStatus::Preparation } else { TrackingStatus::InProgress }
}

/// When a sent delivery was sent: its last `sent` attempt's end, else its
/// last state change.
fn sent_at(delivery: &DeliveryDetail) -> DateTime<Utc> {
    delivery
        .attempt_log
        .iter()
        .rev()
        .find(|a| a.outcome == "sent")
        .map(|a| a.finished_at)
        .unwrap_or(delivery.updated_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use store::{Attempt, DeliveryId};

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, second).single().expect("valid time")
    }

    fn delivery(destination: &str, state: DeliveryState, attempts: u32) -> DeliveryDetail {
        DeliveryDetail {
            id: DeliveryId(1),
            destination: destination.into(),
            state,
            attempts,
            next_attempt_at: None,
            lease_owner: None,
            lease_expires_at: None,
            filter_rule: None,
            error_class: None,
            error_reason: None,
            transformed: None,
            created_at: at(0),
            updated_at: at(5),
            attempt_log: Vec::new(),
        }
    }

    #[test]
    fn queued_without_attempts_is_preparation() {
        let ds = [delivery("ehr", DeliveryState::Queued, 0), delivery("mdm", DeliveryState::Queued, 0)];
        assert_eq!(status_of(&ds), TrackingStatus::Preparation);
    }

    #[test]
    fn attempts_in_flight_or_partly_sent_is_in_progress() {
        assert_eq!(status_of(&[delivery("ehr", DeliveryState::Queued, 2)]), TrackingStatus::InProgress);
        assert_eq!(status_of(&[delivery("ehr", DeliveryState::InFlight, 1)]), TrackingStatus::InProgress);
        let ds = [delivery("ehr", DeliveryState::Sent, 1), delivery("mdm", DeliveryState::Queued, 0)];
        assert_eq!(status_of(&ds), TrackingStatus::InProgress);
    }

    #[test]
    fn all_sent_is_completed_at_the_last_sent_attempt() {
        let mut a = delivery("ehr", DeliveryState::Sent, 1);
        a.attempt_log.push(Attempt {
            number: 1,
            worker: "w".into(),
            started_at: at(1),
            finished_at: at(2),
            outcome: "sent".into(),
            error_class: None,
            reason: None,
            response: None,
        });
        let b = delivery("mdm", DeliveryState::Filtered, 0);
        assert_eq!(status_of(&[a.clone(), b]), TrackingStatus::Completed { sent: at(2) });
        a.attempt_log.clear();
        assert_eq!(
            status_of(&[a]),
            TrackingStatus::Completed { sent: at(5) },
            "without an attempt log, the state change"
        );
    }

    #[test]
    fn a_final_failure_is_entered_in_error_with_its_reason() {
        let mut failed = delivery("ehr", DeliveryState::Dead, 3);
        failed.error_reason = Some("the receiver answered AE".into());
        let ds = [delivery("mdm", DeliveryState::Sent, 1), failed];
        assert_eq!(
            status_of(&ds),
            TrackingStatus::EnteredInError { reason: "delivery to ehr failed: the receiver answered AE".into() }
        );
        let mut blocked = delivery("ehr", DeliveryState::Error, 1);
        blocked.error_reason = None;
        assert_eq!(
            status_of(&[blocked]),
            TrackingStatus::EnteredInError { reason: "delivery to ehr failed: no reason recorded".into() }
        );
    }

    #[test]
    fn all_filtered_is_entered_in_error_and_no_delivery_is_unknown() {
        assert_eq!(
            status_of(&[delivery("ehr", DeliveryState::Filtered, 0)]),
            TrackingStatus::EnteredInError { reason: "not delivered: every destination filtered it out".into() }
        );
        assert_eq!(status_of(&[]), TrackingStatus::Unknown);
    }
}
