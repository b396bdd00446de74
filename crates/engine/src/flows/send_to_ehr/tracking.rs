//! Tracking a submission: its status, the `$tracking` answer (a collection
//! Bundle of Communication resources), the 404 for an unknown id, and the
//! operation's success Parameters.
//!
//! A submission is `preparation` when accepted, `in-progress` while the EHR
//! delivery is attempted (and stays so while the EHR is down and the
//! delivery retries), then `completed` with the time it was sent or
//! `entered-in-error` with the reason. `unknown` is for a submission whose
//! delivery outcome was lost (the engine cannot tell whether the EHR got it).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::build::fhir_instant;
use super::outcome::Rejection;

/// Where a submission is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingStatus {
    /// Accepted and stored, not yet picked up.
    Preparation,
    /// Being converted and delivered (retrying while the EHR is down).
    InProgress,
    /// Delivered to the EHR.
    Completed {
        /// When the EHR accepted it.
        sent: DateTime<Utc>,
    },
    /// Refused or abandoned; it will not be delivered.
    EnteredInError {
        /// Why, for the submitting application (no patient data).
        reason: String,
    },
    /// The outcome cannot be told.
    Unknown,
}

impl TrackingStatus {
    /// The Communication.status code.
    pub fn code(&self) -> &'static str {
        match self {
            TrackingStatus::Preparation => "preparation",
            TrackingStatus::InProgress => "in-progress",
            TrackingStatus::Completed { .. } => "completed",
            TrackingStatus::EnteredInError { .. } => "entered-in-error",
            TrackingStatus::Unknown => "unknown",
        }
    }

    /// Whether the status can still change by delivery: `completed` can
    /// only become `entered-in-error` (a retraction), `entered-in-error`
    /// never changes.
    pub fn can_become(&self, next: &TrackingStatus) -> bool {
        match (self, next) {
            (TrackingStatus::EnteredInError { .. }, _) => false,
            (TrackingStatus::Completed { .. }, next) => matches!(next, TrackingStatus::EnteredInError { .. }),
            (_, TrackingStatus::Preparation) => false,
            _ => true,
        }
    }
}

/// A refused status change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} submission cannot become {to}")]
pub struct TransitionError {
    /// The current status code.
    pub from: &'static str,
    /// The refused status code.
    pub to: &'static str,
}

/// One submission's tracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingRecord {
    /// The transaction id (a UUID), also the id of the created resources.
    pub transaction_id: String,
    /// The Patient's id.
    pub patient_id: String,
    /// Where it is.
    pub status: TrackingStatus,
    /// When it was accepted.
    pub created: DateTime<Utc>,
    /// When the status last changed.
    pub updated: DateTime<Utc>,
}

impl TrackingRecord {
    /// A just-accepted submission, in `preparation`.
    pub fn new(transaction_id: impl Into<String>, patient_id: impl Into<String>, now: DateTime<Utc>) -> TrackingRecord {
        TrackingRecord {
            transaction_id: transaction_id.into(),
            patient_id: patient_id.into(),
            status: TrackingStatus::Preparation,
            created: now,
            updated: now,
        }
    }

    /// Moves to `next` if [`TrackingStatus::can_become`] allows it.
    pub fn advance(&mut self, next: TrackingStatus, now: DateTime<Utc>) -> Result<(), TransitionError> {
        if !self.status.can_become(&next) {
            return Err(TransitionError { from: self.status.code(), to: next.code() });
        }
        self.status = next;
        self.updated = now;
        Ok(())
    }

    /// Whether the tracking is older than `retention` and must no longer be
    /// answered (nor kept).
    pub fn is_expired(&self, now: DateTime<Utc>, retention: Duration) -> bool {
        match chrono::Duration::from_std(retention) {
            Ok(retention) => now.signed_duration_since(self.created) > retention,
            // Longer than chrono can count: never expires.
            Err(_) => false,
        }
    }

    /// The Communication this record answers `$tracking` with.
    pub fn to_communication(&self) -> Value {
        let tx = &self.transaction_id;
        let mut communication = json!({
            "resourceType": "Communication",
            "id": tx,
            "identifier": [{"system": super::build::TRANSACTION_ID_SYSTEM, "value": format!("urn:uuid:{tx}")}],
            "basedOn": [{"reference": format!("CommunicationRequest/{tx}")}],
            "status": self.status.code(),
            "subject": {"reference": format!("Patient/{}", self.patient_id)},
            "payload": [{"contentReference": {"reference": format!("DocumentReference/{tx}")}}],
            "meta": {"lastUpdated": fhir_instant(self.updated)},
        });
        match &self.status {
            TrackingStatus::Completed { sent } => communication["sent"] = json!(fhir_instant(*sent)),
            TrackingStatus::EnteredInError { reason } => communication["statusReason"] = json!({"text": reason}),
            _ => {}
        }
        communication
    }
}

/// The `$tracking` answer: a collection Bundle of the records'
/// Communications.
pub fn tracking_bundle(records: &[TrackingRecord]) -> Value {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| json!({"fullUrl": format!("urn:uuid:{}", r.transaction_id), "resource": r.to_communication()}))
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "total": entries.len(), "entry": entries})
}

/// The 404 for a transaction id with no (unexpired) tracking.
pub fn not_found(transaction_id: &str) -> Rejection {
    Rejection::one(
        404,
        Some("transaction-id"),
        "not-found",
        format!("transaction-id: no submission {transaction_id} (unknown, or older than the tracking retention)"),
    )
}

/// The operation's success answer: Parameters with `tracking-url` (the
/// `$tracking` URL under `fhir_base`, e.g. `https://plexus.example/fhir`)
/// and `transaction-id`.
pub fn success_parameters(fhir_base: &str, transaction_id: &str) -> Value {
    let base = fhir_base.trim_end_matches('/');
    json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "tracking-url", "valueUrl": format!("{base}/CommunicationRequest/$tracking?transaction-id={transaction_id}")},
            {"name": "transaction-id", "valueString": transaction_id},
        ],
    })
}
