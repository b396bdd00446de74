//! What the three backends share: request validation, the duplicate
//! decision for a group-commit batch, row types, the search query builder,
//! cursors and response encoding. Everything here is database-agnostic; the
//! backends own their SQL dialect and locking.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::{from_micros, to_micros};
use crate::model::*;
use crate::{Result, StoreError};

/// Length limits, in characters. They keep every indexed column within
/// MariaDB's 3,072-byte index key limit (utf8mb4) and stop a hostile sender
/// from inflating the indexes.
pub(crate) mod limits {
    pub const CHANNEL: usize = 100;
    pub const DESTINATION: usize = 100;
    pub const ORDER_KEY: usize = 255;
    pub const CONTROL_ID: usize = 199;
    pub const SENDER_KEY: usize = 255;
    pub const MESSAGE_TYPE: usize = 16;
    pub const PATIENT_ID: usize = 255;
    pub const PATIENT_IDS: usize = 64;
    pub const SHORT_TEXT: usize = 255;
    pub const ACTION: usize = 64;
    /// Reasons and details are cut, not rejected: refusing a worker's
    /// outcome over a long error text would leave the delivery in flight.
    pub const REASON: usize = 2000;
}

/// Delivery states that hold their key up, as an SQL list.
pub(crate) const OPEN_STATES: &str = "('queued', 'in_flight', 'error')";

fn check_len(field: &'static str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n > max {
        return Err(StoreError::invalid(field, format!("{n} characters, at most {max} allowed")));
    }
    Ok(())
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    check_len(field, value, max)
}

/// Rejects a message the store cannot index faithfully. Messages are checked
/// before they join a group commit, so one bad request never fails a batch.
pub(crate) fn validate_message(m: &NewMessage) -> Result<()> {
    check_name("channel", &m.channel, limits::CHANNEL)?;
    check_len("content_type", &m.content_type, limits::SHORT_TEXT)?;
    check_len("sender_key", &m.sender_key, limits::SENDER_KEY)?;
    if let Some(v) = &m.peer_addr {
        check_len("peer_addr", v, limits::SHORT_TEXT)?;
    }
    if let Some(v) = &m.control_id {
        check_name("control_id", v, limits::CONTROL_ID)?;
    }
    if let Some(v) = &m.order_key {
        check_name("order_key", v, limits::ORDER_KEY)?;
    }
    if let Some(v) = &m.message_type {
        check_len("message_type", v, limits::MESSAGE_TYPE)?;
    }
    if let Some(v) = &m.event {
        check_len("event", v, limits::MESSAGE_TYPE)?;
    }
    if m.patient_ids.len() > limits::PATIENT_IDS {
        return Err(StoreError::invalid(
            "patient_ids",
            format!("{} identifiers, at most {} allowed", m.patient_ids.len(), limits::PATIENT_IDS),
        ));
    }
    for p in &m.patient_ids {
        check_name("patient_ids", p, limits::PATIENT_ID)?;
    }
    for (i, d) in m.deliveries.iter().enumerate() {
        check_name("deliveries.destination", &d.destination, limits::DESTINATION)?;
        if m.deliveries[..i].iter().any(|e| e.destination == d.destination) {
            return Err(StoreError::invalid("deliveries", "a destination is listed twice"));
        }
        if let InitialState::Filtered { rule } = &d.initial {
            check_len("deliveries.rule", rule, limits::SHORT_TEXT)?;
        }
    }
    Ok(())
}

pub(crate) fn validate_claim(r: &ClaimRequest) -> Result<()> {
    check_name("channel", &r.channel, limits::CHANNEL)?;
    check_name("destination", &r.destination, limits::DESTINATION)?;
    check_len("worker", &r.worker, limits::SHORT_TEXT)?;
    if r.max == 0 {
        return Err(StoreError::invalid("max", "must be at least 1"));
    }
    if r.lease.is_zero() {
        return Err(StoreError::invalid("lease", "must be longer than zero"));
    }
    Ok(())
}

pub(crate) fn validate_actor(actor: &str) -> Result<()> {
    check_name("actor", actor, limits::SHORT_TEXT)
}

pub(crate) fn validate_audit(e: &NewAuditEvent) -> Result<()> {
    validate_actor(&e.actor)?;
    check_name("action", &e.action, limits::ACTION)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A reason or rule as stored: cut to [`limits::REASON`] characters' worth
/// of bytes (conservatively, bytes: a character is at least one).
pub(crate) fn clip_reason(s: &str) -> String {
    truncate(s, limits::REASON).to_owned()
}

/// The queue key: `k:` + order key, or `m:` + message id for a message with
/// no order key (its deliveries then have a key of their own).
pub(crate) fn queue_key(order_key: Option<&str>, message_id: Uuid) -> String {
    match order_key {
        Some(k) => format!("k:{k}"),
        None => format!("m:{}", message_id.simple()),
    }
}

/// A message ready to insert, with what the store computes itself.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub id: Uuid,
    pub message: &'a NewMessage,
    pub sha256: Vec<u8>,
    pub queue_key: String,
}

impl Prepared<'_> {
    pub(crate) fn size(&self) -> i64 {
        i64::try_from(self.message.raw.len()).unwrap_or(i64::MAX)
    }

    pub(crate) fn has_queued(&self) -> bool {
        self.message.deliveries.iter().any(|d| d.initial == InitialState::Queued)
    }
}

/// A stored message that a new one may duplicate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OriginalRow {
    pub id: Uuid,
    pub channel: String,
    pub sender_key: String,
    pub control_id: Option<String>,
    pub received_at: i64,
    pub ack: Option<Vec<u8>>,
}

/// What becomes of each message of a batch.
#[derive(Debug)]
pub(crate) enum Plan<'a> {
    Insert(Prepared<'a>),
    Duplicate(Accepted),
}

/// The distinct control ids of a batch (the duplicate lookup's input).
pub(crate) fn control_ids<'a>(messages: &[&'a NewMessage]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = messages.iter().filter_map(|m| m.control_id.as_deref()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Decides, in request order, which messages of a batch are new and which
/// duplicate either a stored message (`existing`, already restricted to the
/// window) or an earlier message of the same batch.
pub(crate) fn plan_batch<'a>(messages: &[&'a NewMessage], existing: Vec<OriginalRow>) -> Vec<Plan<'a>> {
    plan_stamped(messages, existing, |i| Stamp::of(messages[i]))
}

/// What the store derives from one message alone: its id (UUID v7) and the
/// SHA-256 of its raw bytes. The SQLite store computes it on the caller's
/// task, before the message reaches the writer thread, the one serial stage
/// of ingestion (it was 5% of that thread's time at 32 producers: the
/// digest, and a `getrandom` system call per id).
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub id: Uuid,
    pub sha256: Vec<u8>,
}

impl Stamp {
    pub(crate) fn of(message: &NewMessage) -> Stamp {
        Stamp { id: Uuid::now_v7(), sha256: Sha256::digest(&message.raw).to_vec() }
    }
}

/// [`plan_batch`] with the stamps given by the caller: `stamp(i)` is asked
/// for each message `i` that is inserted (not for duplicates).
pub(crate) fn plan_stamped<'a>(
    messages: &[&'a NewMessage],
    existing: Vec<OriginalRow>,
    mut stamp: impl FnMut(usize) -> Stamp,
) -> Vec<Plan<'a>> {
    type Key<'k> = (&'k str, &'k str, &'k str);
    /// (received_at, id, ack) of the oldest stored message with a key.
    type Original = (i64, Uuid, Option<Vec<u8>>);
    // The oldest original per key wins: it is the one whose ACK was first
    // sent, and a resending sender expects that answer.
    let mut first: HashMap<(String, String, String), Original> = HashMap::new();
    for o in existing {
        let Some(cid) = o.control_id else { continue };
        let key = (o.channel, o.sender_key, cid);
        match first.get(&key) {
            Some((t, id, _)) if (*t, *id) <= (o.received_at, o.id) => {}
            _ => {
                first.insert(key, (o.received_at, o.id, o.ack));
            }
        }
    }
    let mut in_batch: HashMap<Key<'a>, (Uuid, Option<&'a Vec<u8>>)> = HashMap::new();
    let mut plans = Vec::with_capacity(messages.len());
    for (i, &m) in messages.iter().enumerate() {
        if let Some(cid) = m.control_id.as_deref() {
            let lookup = (m.channel.clone(), m.sender_key.clone(), cid.to_owned());
            if let Some((_, id, ack)) = first.get(&lookup) {
                plans.push(Plan::Duplicate(Accepted::Duplicate { original: MessageId(*id), ack: ack.clone() }));
                continue;
            }
            let key = (m.channel.as_str(), m.sender_key.as_str(), cid);
            if let Some((id, ack)) = in_batch.get(&key) {
                plans.push(Plan::Duplicate(Accepted::Duplicate { original: MessageId(*id), ack: ack.cloned() }));
                continue;
            }
            let stamp = stamp(i);
            in_batch.insert(key, (stamp.id, m.ack.as_ref()));
            plans.push(Plan::Insert(prepare(stamp, m)));
        } else {
            plans.push(Plan::Insert(prepare(stamp(i), m)));
        }
    }
    plans
}

fn prepare(stamp: Stamp, message: &NewMessage) -> Prepared<'_> {
    Prepared {
        id: stamp.id,
        message,
        sha256: stamp.sha256,
        queue_key: queue_key(message.order_key.as_deref(), stamp.id),
    }
}

/// A 64-bit lock key for one duplicate key (channel, sender, control id),
/// for databases that lock by number (PostgreSQL advisory locks). A hash
/// collision only makes two unrelated batches wait for each other.
pub(crate) fn dedup_lock_key(channel: &str, sender_key: &str, control_id: &str) -> i64 {
    let mut h = Sha256::new();
    for part in [channel, sender_key, control_id] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The start of the duplicate window as stored micros.
pub(crate) fn window_start(now: DateTime<Utc>, window: std::time::Duration) -> i64 {
    to_micros(now) - i64::try_from(window.as_micros()).unwrap_or(i64::MAX / 2)
}

/// A response as three columns: kind, HTTP status, text (clipped).
pub(crate) fn encode_response(r: Option<&Response>) -> (Option<&'static str>, Option<i64>, Option<String>) {
    match r {
        None => (None, None, None),
        Some(Response::Ack { text }) => (Some("ack"), None, Some(truncate(text, MAX_RESPONSE_BYTES).to_owned())),
        Some(Response::Http { status, body_excerpt }) => {
            (Some("http"), Some(i64::from(*status)), Some(truncate(body_excerpt, MAX_RESPONSE_BYTES).to_owned()))
        }
        Some(Response::Text { text }) => (Some("text"), None, Some(truncate(text, MAX_RESPONSE_BYTES).to_owned())),
    }
}

fn decode_response(kind: Option<&str>, status: Option<i64>, text: Option<String>) -> Option<Response> {
    // Retention may have removed the text; keep what is left.
    let text = text.unwrap_or_default();
    match kind? {
        "ack" => Some(Response::Ack { text }),
        "http" => {
            Some(Response::Http { status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(0), body_excerpt: text })
        }
        _ => Some(Response::Text { text }),
    }
}

/// A value in the database that this crate never writes.
pub(crate) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(format!("unexpected {what} {value:?} in the store").into()))
}

pub(crate) fn parse_state(s: &str) -> Result<DeliveryState> {
    DeliveryState::parse(s).ok_or_else(|| corrupt("delivery state", s))
}

fn parse_class(s: Option<&str>) -> Result<Option<FailureClass>> {
    s.map(|s| FailureClass::parse(s).ok_or_else(|| corrupt("error class", s))).transpose()
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------- rows ----

/// The message columns every listing reads (never the contents).
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.channel, m.received_at, m.peer_addr, m.content_type, m.size, \
     m.sha256, m.control_id, m.sender_key, m.message_type, m.event, m.order_key, m.contents_deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub id: Uuid,
    pub channel: String,
    pub received_at: i64,
    pub peer_addr: Option<String>,
    pub content_type: String,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub control_id: Option<String>,
    pub sender_key: String,
    pub message_type: Option<String>,
    pub event: Option<String>,
    pub order_key: Option<String>,
    pub contents_deleted_at: Option<i64>,
}

impl MessageRow {
    pub(crate) fn into_summary(self, deliveries: Vec<DeliverySummary>) -> MessageSummary {
        MessageSummary {
            id: MessageId(self.id),
            channel: self.channel,
            received_at: from_micros(self.received_at),
            peer_addr: self.peer_addr,
            content_type: self.content_type,
            size: u64::try_from(self.size).unwrap_or(0),
            sha256: hex::encode(self.sha256),
            control_id: self.control_id,
            sender_key: self.sender_key,
            message_type: self.message_type,
            event: self.event,
            order_key: self.order_key,
            contents_deleted: self.contents_deleted_at.is_some(),
            deliveries,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeliverySummaryRow {
    pub id: i64,
    pub message_id: Uuid,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
}

/// Groups delivery rows by message id (rows come ordered by delivery id).
pub(crate) fn group_summaries(rows: Vec<DeliverySummaryRow>) -> Result<HashMap<Uuid, Vec<DeliverySummary>>> {
    let mut by_message: HashMap<Uuid, Vec<DeliverySummary>> = HashMap::new();
    for r in rows {
        by_message.entry(r.message_id).or_default().push(DeliverySummary {
            id: DeliveryId(r.id),
            destination: r.destination,
            state: parse_state(&r.state)?,
            attempts: to_u32(r.attempts),
        });
    }
    Ok(by_message)
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, destination, state, attempts, next_attempt_at, lease_owner, \
     lease_expires_at, filter_rule, error_class, error_reason, transformed, created_at, updated_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    pub id: i64,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub filter_rule: Option<String>,
    pub error_class: Option<String>,
    pub error_reason: Option<String>,
    pub transformed: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeliveryRow {
    pub(crate) fn into_detail(self, attempt_log: Vec<Attempt>) -> Result<DeliveryDetail> {
        let state = parse_state(&self.state)?;
        Ok(DeliveryDetail {
            id: DeliveryId(self.id),
            destination: self.destination,
            state,
            attempts: to_u32(self.attempts),
            next_attempt_at: (state == DeliveryState::Queued).then(|| from_micros(self.next_attempt_at)),
            lease_owner: self.lease_owner.filter(|_| state == DeliveryState::InFlight),
            lease_expires_at: self.lease_expires_at.filter(|_| state == DeliveryState::InFlight).map(from_micros),
            filter_rule: self.filter_rule,
            error_class: parse_class(self.error_class.as_deref())?,
            error_reason: self.error_reason,
            transformed: self.transformed,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
            attempt_log,
        })
    }
}

pub(crate) const ATTEMPT_COLUMNS: &str = "delivery_id, number, worker, started_at, finished_at, outcome, \
     error_class, reason, response_kind, response_status, response_text";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub delivery_id: i64,
    pub number: i64,
    pub worker: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: String,
    pub error_class: Option<String>,
    pub reason: Option<String>,
    pub response_kind: Option<String>,
    pub response_status: Option<i64>,
    pub response_text: Option<String>,
}

impl AttemptRow {
    pub(crate) fn into_attempt(self) -> Result<Attempt> {
        Ok(Attempt {
            number: to_u32(self.number),
            worker: self.worker,
            started_at: from_micros(self.started_at),
            finished_at: from_micros(self.finished_at),
            outcome: self.outcome,
            error_class: parse_class(self.error_class.as_deref())?,
            reason: self.reason,
            response: decode_response(self.response_kind.as_deref(), self.response_status, self.response_text),
        })
    }
}

/// Assembles a message's detail from its rows.
pub(crate) fn assemble_detail(
    message: MessageRow,
    raw: Option<Vec<u8>>,
    ack: Option<Vec<u8>>,
    patient_ids: Vec<String>,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
) -> Result<MessageDetail> {
    let mut by_delivery: HashMap<i64, Vec<Attempt>> = HashMap::new();
    for a in attempts {
        by_delivery.entry(a.delivery_id).or_default().push(a.into_attempt()?);
    }
    let mut details = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let log = by_delivery.remove(&d.id).unwrap_or_default();
        details.push(d.into_detail(log)?);
    }
    let summaries = details
        .iter()
        .map(|d| DeliverySummary { id: d.id, destination: d.destination.clone(), state: d.state, attempts: d.attempts })
        .collect();
    Ok(MessageDetail { summary: message.into_summary(summaries), raw, ack, patient_ids, deliveries: details })
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub message_id: Option<Uuid>,
    pub delivery_id: Option<i64>,
    pub detail: Option<String>,
}

impl AuditRow {
    pub(crate) fn into_event(self) -> AuditEvent {
        AuditEvent {
            id: self.id,
            at: from_micros(self.at),
            actor: self.actor,
            action: self.action,
            message_id: self.message_id.map(MessageId),
            delivery_id: self.delivery_id.map(DeliveryId),
            detail: self.detail,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CountRow {
    pub channel: String,
    pub destination: String,
    pub state: String,
    pub n: i64,
}

impl CountRow {
    pub(crate) fn into_count(self) -> Result<StateCount> {
        Ok(StateCount {
            state: parse_state(&self.state)?,
            channel: self.channel,
            destination: self.destination,
            count: u64::try_from(self.n).unwrap_or(0),
        })
    }
}

/// A claim candidate with what the claim needs to know about its previous
/// lease (to log an expired one as an attempt).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub id: i64,
    pub state: String,
    pub total_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_started_at: Option<i64>,
    pub lease_expires_at: Option<i64>,
}

/// The columns a claimed delivery is returned with (`d` deliveries joined
/// with `m` messages).
pub(crate) const CLAIMED_COLUMNS: &str = "d.id, d.attempts, d.lease_expires_at, d.message_id, d.channel, \
     d.destination, m.order_key, m.received_at, m.content_type, m.control_id, m.message_type, m.event, m.raw";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    pub id: i64,
    pub attempts: i64,
    pub lease_expires_at: Option<i64>,
    pub message_id: Uuid,
    pub channel: String,
    pub destination: String,
    pub order_key: Option<String>,
    pub received_at: i64,
    pub content_type: String,
    pub control_id: Option<String>,
    pub message_type: Option<String>,
    pub event: Option<String>,
    pub raw: Option<Vec<u8>>,
}

impl ClaimedRow {
    pub(crate) fn into_claimed(self, lease: LeaseToken) -> Result<ClaimedDelivery> {
        // Retention never removes the contents of a message with an
        // unfinished delivery, so a claimable delivery always has them.
        let raw = self.raw.ok_or_else(|| corrupt("missing contents for message", &self.message_id.to_string()))?;
        Ok(ClaimedDelivery {
            id: DeliveryId(self.id),
            lease,
            lease_expires_at: from_micros(self.lease_expires_at.unwrap_or_default()),
            attempt: to_u32(self.attempts),
            message_id: MessageId(self.message_id),
            channel: self.channel,
            destination: self.destination,
            order_key: self.order_key,
            received_at: from_micros(self.received_at),
            content_type: self.content_type,
            control_id: self.control_id,
            message_type: self.message_type,
            event: self.event,
            raw,
        })
    }
}

/// The state of a delivery as `complete` and `extend_lease` check it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub state: String,
    pub lease_token: Option<i64>,
    pub lease_expires_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_started_at: Option<i64>,
    pub attempts: i64,
    pub total_attempts: i64,
}

impl LeaseRow {
    /// Whether `lease` is this delivery's current, unexpired lease.
    pub(crate) fn holds(&self, lease: LeaseToken, now: i64) -> bool {
        self.state == "in_flight" && self.lease_token == Some(lease.0) && self.lease_expires_at.is_some_and(|t| t > now)
    }
}

/// The new state of a delivery after an outcome, and the attempt to log.
#[derive(Debug)]
pub(crate) struct Transition {
    pub state: DeliveryState,
    pub next_attempt_at: Option<i64>,
    pub filter_rule: Option<String>,
    pub error_class: Option<&'static str>,
    pub error_reason: Option<String>,
    pub transformed: Option<Vec<u8>>,
    pub attempt_outcome: &'static str,
    pub response: (Option<&'static str>, Option<i64>, Option<String>),
}

/// Applies `policy` to an outcome of attempt number `attempt`.
pub(crate) fn transition(
    outcome: Outcome,
    attempt: u32,
    policy: &RetryPolicy,
    retry_after: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Transition {
    match outcome {
        Outcome::Sent { response, transformed } => Transition {
            state: DeliveryState::Sent,
            next_attempt_at: None,
            filter_rule: None,
            error_class: None,
            error_reason: None,
            transformed,
            attempt_outcome: "sent",
            response: encode_response(response.as_ref()),
        },
        Outcome::Filtered { rule } => Transition {
            state: DeliveryState::Filtered,
            next_attempt_at: None,
            filter_rule: Some(clip_reason(&rule)),
            error_class: None,
            error_reason: None,
            transformed: None,
            attempt_outcome: "filtered",
            response: (None, None, None),
        },
        Outcome::Failed { class, reason, response } => {
            let (state, at) = crate::policy::after_failure(policy, class, attempt, now, crate::policy::jitter());
            Transition {
                state,
                next_attempt_at: at.map(|at| to_micros(crate::policy::not_before(at, now, retry_after))),
                filter_rule: None,
                error_class: Some(class.as_str()),
                error_reason: Some(clip_reason(&reason)),
                transformed: None,
                attempt_outcome: "failed",
                response: encode_response(response.as_ref()),
            }
        }
    }
}

/// Which of a message's deliveries a replay moves back to the queue.
pub(crate) fn split_replayable(rows: &[(i64, String)]) -> Result<(Vec<DeliveryId>, Vec<DeliveryId>)> {
    let mut replayed = Vec::new();
    let mut skipped = Vec::new();
    for (id, state) in rows {
        match parse_state(state)? {
            DeliveryState::Sent | DeliveryState::Error | DeliveryState::Dead => replayed.push(DeliveryId(*id)),
            _ => skipped.push(DeliveryId(*id)),
        }
    }
    Ok((replayed, skipped))
}

pub(crate) fn replay_audit(req: &ReplayRequest, replayed: &[DeliveryId]) -> NewAuditEvent {
    let ids: Vec<String> = replayed.iter().map(ToString::to_string).collect();
    let mut detail = format!("deliveries [{}]", ids.join(", "));
    if let Some(d) = &req.destination {
        detail.push_str(&format!(" of destination {d}"));
    }
    if let Some(r) = &req.reason {
        detail.push_str(": ");
        detail.push_str(r);
    }
    NewAuditEvent {
        actor: req.actor.clone(),
        action: "replay".into(),
        message_id: Some(req.message_id),
        delivery_id: (replayed.len() == 1).then(|| replayed[0]),
        detail: Some(detail),
    }
}

pub(crate) fn check_dead_letterable(state: DeliveryState) -> Result<()> {
    match state {
        DeliveryState::Error | DeliveryState::Queued => Ok(()),
        DeliveryState::InFlight => {
            Err(StoreError::invalid("delivery", "it is in flight; wait for its outcome or its lease to expire"))
        }
        s => Err(StoreError::invalid("delivery", format!("it is already final ({s})"))),
    }
}

/// The earliest future moment a delivery of one destination becomes due (a
/// retry time or a lease expiry). Binds: channel, destination, now, now.
pub(crate) const NEXT_DUE: &str = "SELECT MIN(CASE WHEN state = 'queued' THEN next_attempt_at ELSE lease_expires_at END) \
     FROM deliveries WHERE channel = ? AND destination = ? AND state IN ('queued', 'in_flight', 'error') \
     AND ((state = 'queued' AND next_attempt_at > ?) OR (state = 'in_flight' AND lease_expires_at > ?))";

/// Messages a retention batch may process: received before the cutoff, all
/// deliveries final, oldest first. Binds: cutoff, batch size.
pub(crate) fn retention_candidates(contents_only: bool, skip_locked: &str) -> String {
    format!(
        "SELECT m.id FROM messages m WHERE m.received_at < ? {extra} \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state IN {OPEN_STATES}) \
         ORDER BY m.received_at LIMIT ?{skip_locked}",
        extra = if contents_only { "AND m.contents_deleted_at IS NULL" } else { "" },
    )
}

// -------------------------------------------------------------- search ----

/// A bind value of a dynamically built query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    I64(i64),
    Text(String),
    Uuid(Uuid),
}

/// A search as SQL with `?` placeholders (PostgreSQL renumbers them) and its
/// parameters in order. The query is built from fixed fragments only: user
/// input always goes in `params`.
#[derive(Debug)]
pub(crate) struct SearchSql {
    pub sql: String,
    pub params: Vec<Param>,
    pub limit: usize,
}

pub(crate) const MAX_PAGE: u32 = 1000;

pub(crate) fn page_limit(limit: u32, default: u32) -> u32 {
    match limit {
        0 => default,
        n => n.min(MAX_PAGE),
    }
}

/// Builds the message-browser query: newest first by (received_at, id),
/// one row more than the page to know whether there is a next page.
///
/// Each filter maps onto an index: channel (channel, received_at, id),
/// control id, order key, message type, patient (message_patients), or time
/// alone (received_at, id); the delivery state is checked per candidate
/// through deliveries(message_id).
pub(crate) fn build_search(q: &SearchQuery) -> Result<SearchSql> {
    let limit = page_limit(q.limit, 50) as usize;
    let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m");
    let mut params = Vec::new();
    if let Some(p) = &q.patient_id {
        sql.push_str(" JOIN message_patients p ON p.message_id = m.id AND p.patient_id = ?");
        params.push(Param::Text(p.clone()));
    }
    sql.push_str(" WHERE 1 = 1");
    let mut eq = |col: &str, v: &Option<String>, sql: &mut String| {
        if let Some(v) = v {
            let _ = write!(sql, " AND {col} = ?");
            params.push(Param::Text(v.clone()));
        }
    };
    eq("m.channel", &q.channel, &mut sql);
    eq("m.control_id", &q.control_id, &mut sql);
    eq("m.order_key", &q.order_key, &mut sql);
    eq("m.message_type", &q.message_type, &mut sql);
    eq("m.event", &q.event, &mut sql);
    if let Some(t) = q.received_from {
        sql.push_str(" AND m.received_at >= ?");
        params.push(Param::I64(to_micros(t)));
    }
    if let Some(t) = q.received_to {
        sql.push_str(" AND m.received_at < ?");
        params.push(Param::I64(to_micros(t)));
    }
    if let Some(state) = q.state {
        sql.push_str(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state = ?)");
        params.push(Param::Text(state.as_str().to_owned()));
    }
    if let Some(c) = &q.cursor {
        let (t, id) = decode_cursor(c)?;
        sql.push_str(" AND (m.received_at < ? OR (m.received_at = ? AND m.id < ?))");
        params.extend([Param::I64(t), Param::I64(t), Param::Uuid(id)]);
    }
    let _ = write!(sql, " ORDER BY m.received_at DESC, m.id DESC LIMIT {}", limit + 1);
    Ok(SearchSql { sql, params, limit })
}

pub(crate) fn encode_cursor(received_at: DateTime<Utc>, id: MessageId) -> Cursor {
    Cursor(format!("{}.{}", to_micros(received_at), id.0.simple()))
}

fn decode_cursor(c: &Cursor) -> Result<(i64, Uuid)> {
    let (t, id) = c.0.split_once('.').ok_or(StoreError::InvalidCursor)?;
    let t = t.parse::<i64>().map_err(|_| StoreError::InvalidCursor)?;
    let id = Uuid::try_parse(id).map_err(|_| StoreError::InvalidCursor)?;
    Ok((t, id))
}

/// Turns `?` placeholders into PostgreSQL's `$1, $2 ...`. The SQL passed in
/// is this crate's own and has no `?` inside string literals.
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            let _ = write!(out, "${n}");
        } else {
            out.push(ch);
        }
    }
    out
}

/// Comma-separated `?` placeholders.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Turns a page of rows into a [`SearchPage`].
pub(crate) fn finish_page(
    mut rows: Vec<MessageRow>,
    limit: usize,
    mut deliveries: HashMap<Uuid, Vec<DeliverySummary>>,
) -> SearchPage {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next =
        if more { rows.last().map(|r| encode_cursor(from_micros(r.received_at), MessageId(r.id))) } else { None };
    let items = rows
        .into_iter()
        .map(|r| {
            let d = deliveries.remove(&r.id).unwrap_or_default();
            r.into_summary(d)
        })
        .collect();
    SearchPage { items, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, sender: &str, control_id: Option<&str>) -> NewMessage {
        NewMessage {
            channel: channel.into(),
            received_at: Utc::now(),
            peer_addr: None,
            content_type: "x-application/hl7-v2+er7".into(),
            raw: b"MSH|^~\\&|".to_vec(),
            control_id: control_id.map(Into::into),
            sender_key: sender.into(),
            message_type: None,
            event: None,
            order_key: None,
            patient_ids: vec![],
            ack: Some(format!("ACK {control_id:?}").into_bytes()),
            deliveries: vec![NewDelivery::queued("out")],
        }
    }

    #[test]
    fn duplicate_within_one_batch_points_at_the_first() {
        let a = message("c", "s", Some("1"));
        let b = message("c", "s", Some("1"));
        let other_sender = message("c", "t", Some("1"));
        let no_id = message("c", "s", None);
        let plans = plan_batch(&[&a, &b, &other_sender, &no_id, &no_id], vec![]);
        let Plan::Insert(first) = &plans[0] else { panic!("first must insert") };
        match &plans[1] {
            Plan::Duplicate(Accepted::Duplicate { original, ack }) => {
                assert_eq!(original.0, first.id);
                assert_eq!(ack.as_deref(), a.ack.as_deref());
            }
            p => panic!("expected duplicate, got {p:?}"),
        }
        assert!(matches!(plans[2], Plan::Insert(_)));
        assert!(matches!(plans[3], Plan::Insert(_)));
        assert!(matches!(plans[4], Plan::Insert(_)), "no control id never deduplicates");
    }

    #[test]
    fn stamped_plan_inserts_with_the_callers_id_and_digest() {
        let a = message("c", "s", Some("1"));
        let dup = message("c", "s", Some("1"));
        let b = message("c", "s", None);
        let stamps = [Stamp::of(&a), Stamp::of(&dup), Stamp::of(&b)];
        let mut asked = Vec::new();
        let plans = plan_stamped(&[&a, &dup, &b], vec![], |i| {
            asked.push(i);
            stamps[i].clone()
        });
        assert_eq!(asked, [0, 2], "a duplicate gets no stamp");
        let Plan::Insert(first) = &plans[0] else { panic!("first must insert") };
        assert_eq!(first.id, stamps[0].id);
        assert_eq!(first.sha256, Sha256::digest(&a.raw).to_vec());
        assert!(
            matches!(&plans[1], Plan::Duplicate(Accepted::Duplicate { original, .. }) if original.0 == stamps[0].id)
        );
        let Plan::Insert(last) = &plans[2] else { panic!("no control id inserts") };
        assert_eq!(last.id, stamps[2].id);
        assert_eq!(last.queue_key, queue_key(None, stamps[2].id), "the queue key follows the caller's id");
    }

    #[test]
    fn duplicate_of_stored_message_uses_the_oldest_original() {
        let older = Uuid::now_v7();
        let newer = Uuid::now_v7();
        let row = |id, t, ack: &str| OriginalRow {
            id,
            channel: "c".into(),
            sender_key: "s".into(),
            control_id: Some("9".into()),
            received_at: t,
            ack: Some(ack.as_bytes().to_vec()),
        };
        let m = message("c", "s", Some("9"));
        let plans = plan_batch(&[&m], vec![row(newer, 20, "second"), row(older, 10, "first")]);
        assert!(matches!(&plans[0],
            Plan::Duplicate(Accepted::Duplicate { original, ack })
                if original.0 == older && ack.as_deref() == Some(&b"first"[..])));
    }

    #[test]
    fn validation_rejects_repeated_destination_and_long_keys() {
        let mut m = message("c", "s", Some("1"));
        m.deliveries.push(NewDelivery::queued("out"));
        assert!(matches!(validate_message(&m), Err(StoreError::Invalid { field: "deliveries", .. })));
        let mut m = message("c", "s", Some("1"));
        m.order_key = Some("x".repeat(limits::ORDER_KEY + 1));
        assert!(matches!(validate_message(&m), Err(StoreError::Invalid { field: "order_key", .. })));
        let mut m = message(" ", "s", None);
        assert!(validate_message(&m).is_err());
        m.channel = "ok".into();
        assert!(validate_message(&m).is_ok());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = MessageId(Uuid::now_v7());
        let t = from_micros(1_763_700_000_000_001);
        let c = encode_cursor(t, id);
        assert_eq!(decode_cursor(&c).unwrap(), (to_micros(t), id.0));
        for bad in ["", "x", "1.zz", "abc.0190a0c4d1e07000800000000000000"] {
            assert!(matches!(decode_cursor(&Cursor(bad.into())), Err(StoreError::InvalidCursor)), "{bad}");
        }
    }

    #[test]
    fn search_sql_binds_every_user_value() {
        let q = SearchQuery {
            channel: Some("adt'; DROP TABLE messages; --".into()),
            patient_id: Some("MRN1".into()),
            state: Some(DeliveryState::Error),
            limit: 10,
            ..Default::default()
        };
        let s = build_search(&q).unwrap();
        assert!(!s.sql.contains("DROP"));
        assert_eq!(s.params.len(), 3);
        assert_eq!(s.sql.matches('?').count(), 3);
        assert!(s.sql.ends_with("LIMIT 11"));
        assert_eq!(numbered_placeholders("a = ? AND b = ?"), "a = $1 AND b = $2");
    }
}
