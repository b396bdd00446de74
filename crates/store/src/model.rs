//! The store's vocabulary: what goes in (`NewMessage`, `Outcome`), what comes
//! out (`Accepted`, `ClaimedDelivery`, `MessageDetail` ...), and the retry
//! policy the store applies on behalf of a destination.
//!
//! Everything here is plain data (serde for the API layer) and carries no
//! database handle.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message's id: a UUID v7 chosen by the store, so ids sort by acceptance
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// A delivery's id (one message to one destination). Increasing in creation
/// order; the queue orders each key's deliveries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof that a worker holds a delivery's lease. A new token is issued by
/// every claim, so a worker whose lease expired and was re-claimed cannot
/// complete the delivery any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(pub i64);

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A local SQLite file (WAL mode), one process.
    Sqlite,
    /// PostgreSQL, possibly shared by several Plexus processes.
    Postgres,
    /// MariaDB (10.11+) or MySQL 8.
    Mysql,
}

/// A message the engine has received, parsed and acknowledged in memory, to
/// be stored before the ACK goes out.
///
/// The store computes size and SHA-256 itself; the metadata is extracted by
/// the engine (the store knows nothing of HL7).
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Channel name from the config.
    pub channel: String,
    /// When the source received the message.
    pub received_at: DateTime<Utc>,
    /// The sender's address (`ip:port`), if the source has one.
    pub peer_addr: Option<String>,
    /// MIME type of `raw`, e.g. `x-application/hl7-v2+er7`,
    /// `application/fhir+json`.
    pub content_type: String,
    /// The message exactly as received.
    pub raw: Vec<u8>,
    /// MSH-10 (or a notification id): with `sender_key` and `channel`, the
    /// duplicate key. `None` disables duplicate detection for this message.
    pub control_id: Option<String>,
    /// Who sent it, e.g. MSH-3 and MSH-4 joined (`LAB^HOSP`). Empty if unknown.
    pub sender_key: String,
    /// Message type, e.g. `ADT` (MSH-9.1).
    pub message_type: Option<String>,
    /// Trigger event, e.g. `A08` (MSH-9.2).
    pub event: Option<String>,
    /// Deliveries with the same order key (per channel and destination) are
    /// delivered strictly in acceptance order; `None` means no ordering.
    pub order_key: Option<String>,
    /// Patient identifiers (MRNs) to find the message by.
    pub patient_ids: Vec<String>,
    /// The ACK that will be sent back, stored atomically with the message so
    /// a duplicate gets the very same answer.
    pub ack: Option<Vec<u8>>,
    /// One entry per destination of the channel.
    pub deliveries: Vec<NewDelivery>,
}

// Hand-written so that a `{:?}` in a log line can never print patient data.
impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("channel", &self.channel)
            .field("received_at", &self.received_at)
            .field("content_type", &self.content_type)
            .field("raw_len", &self.raw.len())
            .field("message_type", &self.message_type)
            .field("event", &self.event)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

/// The delivery of a new message to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Destination name from the channel's config.
    pub destination: String,
    /// Whether it waits in the queue or was already filtered out.
    pub initial: InitialState,
}

impl NewDelivery {
    /// A delivery that waits in the destination's queue.
    pub fn queued(destination: impl Into<String>) -> Self {
        NewDelivery { destination: destination.into(), initial: InitialState::Queued }
    }

    /// A delivery that a filter rule already dropped (final, never claimed).
    pub fn filtered(destination: impl Into<String>, rule: impl Into<String>) -> Self {
        NewDelivery { destination: destination.into(), initial: InitialState::Filtered { rule: rule.into() } }
    }
}

/// How a delivery starts its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialState {
    /// Waiting in the queue.
    Queued,
    /// Dropped by a filter at acceptance: final, with the rule's name.
    Filtered {
        /// The filter rule that dropped it.
        rule: String,
    },
}

/// The answer to [`crate::Store::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Committed durably: send the ACK.
    Stored {
        /// The new message's id.
        id: MessageId,
    },
    /// Same channel, sender key and control id as a message accepted within
    /// the duplicate window: nothing was created; answer with the original
    /// ACK.
    Duplicate {
        /// The first message with this key.
        original: MessageId,
        /// The ACK stored with it (`None` if it had none or retention
        /// removed it).
        ack: Option<Vec<u8>>,
    },
}

/// The state of one delivery.
///
/// `queued`, `in_flight` and `error` hold up the deliveries behind them with
/// the same order key; `sent`, `filtered` and `dead` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for a worker (possibly until `next_attempt_at`, after a
    /// transient failure).
    Queued,
    /// Leased by a worker.
    InFlight,
    /// Delivered.
    Sent,
    /// Dropped by a filter rule, at acceptance or by the worker.
    Filtered,
    /// Failed for good under `on_failure = block`: it stays at the head of
    /// its key, holding the key up, until replayed or dead-lettered.
    Error,
    /// Failed for good and moved aside (dead letter); its key went on.
    Dead,
}

impl DeliveryState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeliveryState; 6] = [
        DeliveryState::Queued,
        DeliveryState::InFlight,
        DeliveryState::Sent,
        DeliveryState::Filtered,
        DeliveryState::Error,
        DeliveryState::Dead,
    ];

    /// The name stored in the database and used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Sent => "sent",
            DeliveryState::Filtered => "filtered",
            DeliveryState::Error => "error",
            DeliveryState::Dead => "dead",
        }
    }

    /// Parses [`DeliveryState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more happens to it without an operator.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Sent | DeliveryState::Filtered | DeliveryState::Dead)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request for work from one destination's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Channel name.
    pub channel: String,
    /// Destination name within the channel.
    pub destination: String,
    /// At most this many deliveries (each from a different order key).
    pub max: u32,
    /// How long the worker may hold them before they are given to another
    /// worker.
    pub lease: Duration,
    /// Who claims, for the dashboard and the attempt log (`node-1/mllp-out/3`).
    pub worker: String,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The deliveries now leased to the worker, oldest first. Never two with
    /// the same order key.
    pub deliveries: Vec<ClaimedDelivery>,
    /// When the next delivery of this destination that is waiting for a
    /// retry or a lease expiry becomes claimable, so an idle worker can sleep
    /// until then instead of polling. New messages wake it through
    /// [`crate::Store::changes`].
    pub next_due: Option<DateTime<Utc>>,
}

/// One delivery leased to a worker.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery to complete.
    pub id: DeliveryId,
    /// The lease to present to `complete`.
    pub lease: LeaseToken,
    /// When the lease ends (after that, `complete` fails with `LeaseLost`).
    pub lease_expires_at: DateTime<Utc>,
    /// 1 for the first try, 2 for the first retry ... (counted since the
    /// last replay).
    pub attempt: u32,
    /// The message.
    pub message_id: MessageId,
    /// Channel name.
    pub channel: String,
    /// Destination name.
    pub destination: String,
    /// The message's order key.
    pub order_key: Option<String>,
    /// When the source received it.
    pub received_at: DateTime<Utc>,
    /// MIME type of `raw`.
    pub content_type: String,
    /// MSH-10 or equivalent.
    pub control_id: Option<String>,
    /// Message type, e.g. `ADT`.
    pub message_type: Option<String>,
    /// Trigger event, e.g. `A08`.
    pub event: Option<String>,
    /// The message as received.
    pub raw: Vec<u8>,
}

impl fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("id", &self.id)
            .field("message_id", &self.message_id)
            .field("channel", &self.channel)
            .field("destination", &self.destination)
            .field("attempt", &self.attempt)
            .field("lease_expires_at", &self.lease_expires_at)
            .field("raw_len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// What the destination answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// An HL7 ACK (MLLP destinations), as text.
    Ack {
        /// The ACK message.
        text: String,
    },
    /// An HTTP answer (FHIR and HTTP destinations).
    Http {
        /// Status code.
        status: u16,
        /// The start of the body (the store keeps at most
        /// [`MAX_RESPONSE_BYTES`]).
        body_excerpt: String,
    },
    /// Anything else worth keeping (a file path written, a broker offset).
    Text {
        /// The text.
        text: String,
    },
}

/// The longest response text the store keeps per attempt; longer ones are
/// cut at a character boundary.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Retry with backoff (connection refused, timeout, HTTP 503, AE).
    Transient,
    /// Do not retry (AR, HTTP 400/422, a transform error).
    Permanent,
}

impl FailureClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<FailureClass> {
        match s {
            "transient" => Some(FailureClass::Transient),
            "permanent" => Some(FailureClass::Permanent),
            _ => None,
        }
    }
}

/// How a worker's attempt ended, reported with [`crate::Store::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Sent {
        /// What the destination answered.
        response: Option<Response>,
        /// The content as sent after transformation, if it differs from the
        /// raw message.
        transformed: Option<Vec<u8>>,
    },
    /// A destination filter dropped it at delivery time.
    Filtered {
        /// The rule's name.
        rule: String,
    },
    /// It did not go through.
    Failed {
        /// Retry or not.
        class: FailureClass,
        /// Why, for the operator (no patient data).
        reason: String,
        /// What the destination answered, if it did.
        response: Option<Response>,
    },
}

/// What a destination does when its head delivery fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep it at the head in state `error`: the key waits for an operator
    /// (order is never broken). The default.
    #[default]
    Block,
    /// Move it to the dead letters (`dead`) and let the key go on.
    DeadLetter,
}

/// A destination's retry policy, applied by the store when a delivery fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first try included) before a transient failure
    /// counts as final. At least 1.
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(with = "duration_ms")]
    pub initial_backoff: Duration,
    /// The delay doubles per attempt up to this.
    #[serde(with = "duration_ms")]
    pub max_backoff: Duration,
    /// What happens after the last attempt, or on a permanent failure.
    pub on_failure: OnFailure,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            on_failure: OnFailure::Block,
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What [`crate::Store::complete`] did with the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The delivery's new state.
    pub state: DeliveryState,
    /// When it will be retried (state `queued` after a transient failure).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A request to send deliveries of one message again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The message.
    pub message_id: MessageId,
    /// Only this destination; `None` for every destination of the message.
    pub destination: Option<String>,
    /// Who asked (user name or API client id), for the audit trail.
    pub actor: String,
    /// Why, for the audit trail.
    pub reason: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayResult {
    /// Deliveries moved back to `queued` (from `sent`, `error` or `dead`).
    pub replayed: Vec<DeliveryId>,
    /// Deliveries left alone because they were queued, in flight or
    /// filtered.
    pub skipped: Vec<DeliveryId>,
}

/// An audit event to record: who did what to which message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// User name or API client id.
    pub actor: String,
    /// What they did: `replay`, `read_content`, `dead_letter` ...
    pub action: String,
    /// The message concerned, if any.
    pub message_id: Option<MessageId>,
    /// The delivery concerned, if any.
    pub delivery_id: Option<DeliveryId>,
    /// Free text (no patient data), e.g. the reason given.
    pub detail: Option<String>,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Increasing id.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: String,
    /// What they did.
    pub action: String,
    /// The message concerned.
    pub message_id: Option<MessageId>,
    /// The delivery concerned.
    pub delivery_id: Option<DeliveryId>,
    /// Free text.
    pub detail: Option<String>,
}

/// Which audit events to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events about this message.
    pub message_id: Option<MessageId>,
    /// Only events older than this id (keyset pagination).
    pub before_id: Option<i64>,
    /// At most this many (capped at 1,000; 0 means 100).
    pub limit: u32,
}

/// A message's metadata, as listed by the message browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// Id.
    pub id: MessageId,
    /// Channel name.
    pub channel: String,
    /// When the source received it.
    pub received_at: DateTime<Utc>,
    /// Sender address.
    pub peer_addr: Option<String>,
    /// MIME type.
    pub content_type: String,
    /// Size of the raw message in bytes.
    pub size: u64,
    /// SHA-256 of the raw message, lower-case hex.
    pub sha256: String,
    /// MSH-10.
    pub control_id: Option<String>,
    /// Sender key.
    pub sender_key: String,
    /// Message type.
    pub message_type: Option<String>,
    /// Trigger event.
    pub event: Option<String>,
    /// Order key.
    pub order_key: Option<String>,
    /// Whether retention removed the contents (raw, ACK, transformed content,
    /// responses).
    pub contents_deleted: bool,
    /// One line per destination.
    pub deliveries: Vec<DeliverySummary>,
}

/// A delivery's state in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySummary {
    /// Id.
    pub id: DeliveryId,
    /// Destination name.
    pub destination: String,
    /// State.
    pub state: DeliveryState,
    /// Attempts since creation or the last replay.
    pub attempts: u32,
}

/// Everything about one message, for the message view (reading it is an
/// auditable act: the API records a `read_content` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDetail {
    /// Metadata and delivery summary.
    pub summary: MessageSummary,
    /// The message as received (`None` after retention).
    pub raw: Option<Vec<u8>>,
    /// The ACK sent back.
    pub ack: Option<Vec<u8>>,
    /// Patient identifiers it is indexed by.
    pub patient_ids: Vec<String>,
    /// Full delivery records with their attempts.
    pub deliveries: Vec<DeliveryDetail>,
}

/// A delivery with its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDetail {
    /// Id.
    pub id: DeliveryId,
    /// Destination name.
    pub destination: String,
    /// State.
    pub state: DeliveryState,
    /// Attempts since creation or the last replay.
    pub attempts: u32,
    /// When it will be retried (queued after a transient failure).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Worker holding the lease (in flight).
    pub lease_owner: Option<String>,
    /// When the lease ends (in flight).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The filter rule (filtered).
    pub filter_rule: Option<String>,
    /// Class of the last failure.
    pub error_class: Option<FailureClass>,
    /// Reason of the last failure.
    pub error_reason: Option<String>,
    /// Content as sent, if transformed.
    pub transformed: Option<Vec<u8>>,
    /// Created with the message.
    pub created_at: DateTime<Utc>,
    /// Last state change.
    pub updated_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<Attempt>,
}

/// One try at a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1, 2, 3 ... over the delivery's whole life (replays included).
    pub number: u32,
    /// The worker.
    pub worker: String,
    /// When it was claimed.
    pub started_at: DateTime<Utc>,
    /// When the outcome was recorded (or the lease was found expired).
    pub finished_at: DateTime<Utc>,
    /// `sent`, `filtered`, `failed` or `lease_expired`.
    pub outcome: String,
    /// Failure class.
    pub error_class: Option<FailureClass>,
    /// Failure reason or filter rule.
    pub reason: Option<String>,
    /// What the destination answered.
    pub response: Option<Response>,
}

/// Filters for the message browser. All set filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchQuery {
    /// Channel name.
    pub channel: Option<String>,
    /// Messages with at least one delivery in this state.
    pub state: Option<DeliveryState>,
    /// Received at or after.
    pub received_from: Option<DateTime<Utc>>,
    /// Received before.
    pub received_to: Option<DateTime<Utc>>,
    /// MSH-10.
    pub control_id: Option<String>,
    /// Order key.
    pub order_key: Option<String>,
    /// Patient identifier (MRN).
    pub patient_id: Option<String>,
    /// Message type (`ADT`).
    pub message_type: Option<String>,
    /// Trigger event (`A08`).
    pub event: Option<String>,
    /// Page size (capped at 1,000; 0 means 50).
    pub limit: u32,
    /// Where the previous page ended ([`SearchPage::next`]).
    pub cursor: Option<Cursor>,
}

/// An opaque position in a search's results (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

/// One page of search results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    /// The messages.
    pub items: Vec<MessageSummary>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// How many deliveries are in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    /// Channel.
    pub channel: String,
    /// Destination.
    pub destination: String,
    /// State.
    pub state: DeliveryState,
    /// Number of deliveries.
    pub count: u64,
}

/// What retention removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionMode {
    /// Raw message, ACK, transformed contents and response texts; metadata,
    /// states, attempts and patient identifiers stay searchable.
    Contents,
    /// Whole messages with their deliveries, attempts and identifiers.
    Messages,
}

/// One retention run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRequest {
    /// Messages received before this instant.
    pub older_than: DateTime<Utc>,
    /// What to remove.
    pub mode: RetentionMode,
    /// Messages per transaction (small, so ingestion never waits long).
    pub batch_size: u32,
}

/// What one retention batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionBatch {
    /// Messages whose contents (or whole records) were removed.
    pub messages: u64,
    /// Whether more messages are eligible (run another batch).
    pub more: bool,
}
