//! The ingest path: what happens to a message between a source reading it
//! and the answer going back.
//!
//! # Design
//!
//! The path is short and predictable, because the sender waits on it:
//!
//! 1. **parse** the bytes (HL7 v2) or check them (JSON);
//! 2. **validate** (structure, required fields, data types) and apply the
//!    channel's policy: `reject` answers AR, `error` answers AE, `accept`
//!    stores the message anyway and answers AA with the problems as
//!    warnings;
//! 3. **extract** the metadata the store indexes: control id (MSH-10),
//!    sender key (MSH-3/MSH-4), message type and event (MSH-9), order key
//!    (the channel's path, `PID-3-1` by default) and patient identifiers
//!    (every PID-3 repetition);
//! 4. **build the ACK** (original or enhanced mode, following MSH-15/16);
//! 5. **store** the message, its ACK and one queued delivery per destination
//!    in one commit ([`store::Store::accept`], group-committed with the
//!    other connections' messages), or learn it is a duplicate and take the
//!    original's ACK;
//! 6. only then return the ACK for the source to send.
//!
//! A message that is not stored is never acknowledged positively: a failed
//! commit answers AE (CE) with an ERR saying the message was not stored, so
//! the sender retries. Filters and transforms do not run here; the
//! destination workers run them at delivery time ([`crate::worker`]).
//!
//! Nothing here logs patient data: log lines carry the channel, the store's
//! message id, the control id, counts and error kinds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use store::{Accepted, MessageId, NewDelivery, NewMessage, Store};
use tracing::{debug, warn};

use crate::config::{AckMode, ChannelConfig, ContentKind, OrderKey, ValidationPolicy};

use crate::destinations::{ChannelInjector, InjectError, Injected, Injection};

pub use hl7v2::ack::{AckCode, Outcome as AckOutcome};

/// One message as a source received it.
#[derive(Clone)]
pub struct Received {
    /// The bytes, exactly as received (one MLLP frame's payload, one HTTP
    /// body).
    pub bytes: Vec<u8>,
    /// The sender's address.
    pub peer: Option<String>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// For JSON content: a caller-chosen key (HTTP `Idempotency-Key`) that
    /// plays the role of MSH-10 for duplicate detection.
    pub idempotency_key: Option<String>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("len", &self.bytes.len())
            .field("peer", &self.peer)
            .field("received_at", &self.received_at)
            .finish_non_exhaustive()
    }
}

impl Received {
    /// Bytes received now from `peer`.
    pub fn now(bytes: Vec<u8>, peer: Option<String>) -> Self {
        Received { bytes, peer, received_at: Utc::now(), idempotency_key: None }
    }
}

/// What the ingest path did with an HL7 v2 message: the ACK to send back.
#[derive(Debug, Clone)]
pub struct Hl7Outcome {
    /// Stored, errored or rejected, whatever the acknowledgement mode.
    pub outcome: AckOutcome,
    /// The code in MSA-1 of `ack`.
    pub code: Option<AckCode>,
    /// The whole ACK message (segments separated by `\r`), or `None` when
    /// the sender asked for no accept acknowledgement in this case
    /// (enhanced mode, MSH-15 = NE, ER or SU).
    pub ack: Option<Vec<u8>>,
    /// The store's id, when the message is stored (or a duplicate of a
    /// stored one).
    pub message_id: Option<MessageId>,
    /// True when it was a duplicate and the original ACK is replayed.
    pub duplicate: bool,
    /// True when the message was fine but the store failed: the answer is
    /// AE/CE and the sender should send it again later.
    pub store_failed: bool,
}

impl Hl7Outcome {
    fn negative(outcome: AckOutcome, ack: Option<(AckCode, Vec<u8>)>, store_failed: bool) -> Self {
        let (code, ack) = match ack {
            Some((c, a)) => (Some(c), Some(a)),
            None => (None, None),
        };
        Hl7Outcome { outcome, code, ack, message_id: None, duplicate: false, store_failed }
    }
}

/// The `Retry-After` (seconds) of a stopped channel's 503: a stop is an
/// operator's pause, typically minutes; half a minute keeps retries cheap
/// without holding messages back long once the channel is started. The
/// HTTP source also sends it with the 503 of a failed store commit, which
/// it cannot tell apart from a stop in its answer and which is as
/// transient.
pub const STOPPED_RETRY_AFTER_SECS: u64 = 30;

/// What the ingest path did with a JSON message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonOutcome {
    /// Stored (or a duplicate of a stored one).
    Stored {
        /// The store's id.
        message_id: MessageId,
        /// True for a duplicate.
        duplicate: bool,
    },
    /// Not a valid document for the channel: nothing stored.
    Invalid(String),
    /// The store failed: nothing stored, the sender should retry.
    Unavailable(String),
    /// The idempotency key was already used for a message with another
    /// body: nothing stored. Answering it as a duplicate would drop the new
    /// body silently, so the sender hears that the key was reused.
    KeyReused {
        /// The message stored first under the key.
        original: MessageId,
    },
}

/// Counters of one channel's ingest path (the metrics endpoint and the
/// end-to-end tests read them).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages stored.
    pub accepted: AtomicU64,
    /// Duplicates answered with the original ACK.
    pub duplicates: AtomicU64,
    /// Messages answered AE/CE (validation under `error`, parse errors,
    /// store failures).
    pub errors: AtomicU64,
    /// Messages answered AR/CR.
    pub rejected: AtomicU64,
    /// Stored despite validation problems (`validation = "accept"`).
    pub flagged: AtomicU64,
}

/// One channel's ingest path.
#[derive(Debug)]
pub struct ChannelIngest {
    name: String,
    content: ContentKind,
    validation: ValidationPolicy,
    ack_mode: AckMode,
    order_key: OrderKey,
    /// The channel transform's leading JSON steps, run on a JSON body before
    /// it is stored ([`crate::transform::Transform::check_json`]).
    json_check: Option<crate::transform::Transform>,
    /// The channel's filter rules, for JSON bodies: a body they stop is
    /// stored (and recorded as filtered by its deliveries) without the
    /// `json_check`, whose steps would never run on it.
    json_filter: Vec<crate::filter::Filter>,
    destinations: Vec<String>,
    store: Arc<dyn Store>,
    stats: IngestStats,
    /// Where the ACK's control ids come from: unique per process start.
    ack_ids: AckIds,
    /// Prometheus handles ([`crate::metrics`]); no-ops outside an engine.
    metrics: Arc<crate::metrics::ChannelMetrics>,
    /// Stopped from the API: new messages are refused ([`crate::api::control`]).
    switch: Arc<crate::api::control::ChannelSwitch>,
}

impl ChannelIngest {
    /// The ingest path of `channel`, storing into `store`.
    pub fn new(channel: &ChannelConfig, store: Arc<dyn Store>) -> Self {
        ChannelIngest {
            name: channel.name.clone(),
            content: channel.content,
            validation: channel.validation,
            ack_mode: channel.ack_mode,
            order_key: channel.order_key.clone(),
            json_check: (channel.content != ContentKind::Hl7v2 && channel.transform.checks_json())
                .then(|| channel.transform.clone()),
            json_filter: if channel.content == ContentKind::Hl7v2 { Vec::new() } else { channel.filter.clone() },
            destinations: channel.destinations.iter().map(|d| d.name.clone()).collect(),
            store,
            stats: IngestStats::default(),
            ack_ids: AckIds::new(),
            metrics: Arc::new(crate::metrics::ChannelMetrics::noop(&channel.name)),
            switch: Arc::new(crate::api::control::ChannelSwitch::default()),
        }
    }

    /// Records this channel's metrics into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ChannelMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The channel's stop/start switch, shared with its workers and the API.
    pub fn switch(&self) -> &Arc<crate::api::control::ChannelSwitch> {
        &self.switch
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the channel carries.
    pub fn content(&self) -> ContentKind {
        self.content
    }

    /// The channel's counters.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Parses, validates, stores and acknowledges one HL7 v2 message.
    /// Always returns an answer; the ACK is positive only if the message
    /// is durably stored.
    pub async fn ingest_hl7(&self, received: Received) -> Hl7Outcome {
        let started = std::time::Instant::now();
        let out = self.hl7_answer(received).await;
        self.metrics.hl7(&out, started.elapsed());
        out
    }

    async fn hl7_answer(&self, received: Received) -> Hl7Outcome {
        match self.prepare_hl7(received) {
            Step::Answered(out) => out,
            Step::Store(new, pending) => {
                let result = self.accept(new).await;
                self.finish_hl7(pending, result)
            }
        }
    }

    /// Parses, validates, stores and acknowledges messages that arrived in
    /// this order on one connection (pipelined frames), and answers each in
    /// the same order. The ones to store are handed to the store together
    /// ([`Store::accept_many`]): they commit in arrival order, most often in
    /// one transaction, instead of paying one commit each.
    pub async fn ingest_hl7_many(&self, batch: Vec<Received>) -> Vec<Hl7Outcome> {
        if batch.len() == 1 {
            // The common case with one message in flight: no batch to build.
            let mut batch = batch;
            return vec![self.ingest_hl7(batch.remove(0)).await];
        }
        let started = std::time::Instant::now();
        let mut answers = Vec::with_capacity(batch.len());
        let mut to_store = Vec::with_capacity(batch.len());
        for received in batch {
            match self.prepare_hl7(received) {
                Step::Answered(out) => answers.push(Err(out)),
                Step::Store(new, pending) => {
                    to_store.push(new);
                    answers.push(Ok(pending));
                }
            }
        }
        let n = to_store.len();
        let results = if n == 0 {
            Vec::new()
        } else {
            let commit = std::time::Instant::now();
            let results = self.store.accept_many(to_store).await;
            let took = commit.elapsed();
            for _ in 0..n {
                self.metrics.commit(took);
            }
            results
        };
        let mut results = results.into_iter();
        let took = started.elapsed();
        answers
            .into_iter()
            .map(|a| {
                let out = match a {
                    Err(out) => out,
                    Ok(pending) => {
                        // One answer per message handed over (the store's contract).
                        let result = results.next().unwrap_or(Err(store::StoreError::Closed));
                        self.finish_hl7(pending, result)
                    }
                };
                self.metrics.hl7(&out, took);
                out
            })
            .collect()
    }

    /// The part of the path before the store: parse, validate, extract,
    /// build the ACK. Either the answer (nothing to store) or the message
    /// to store with what [`finish_hl7`](Self::finish_hl7) needs.
    fn prepare_hl7(&self, received: Received) -> Step {
        let Received { bytes, peer, received_at, .. } = received;
        // The header line is all an answer needs when the message cannot be
        // parsed or stored; the bytes themselves become the parsed message's
        // buffer (no copy) and then the stored message.
        let header = header_segment(&bytes).to_vec();
        let message = match hl7v2::Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                let outcome = match self.validation {
                    ValidationPolicy::Reject => AckOutcome::Rejected,
                    _ => AckOutcome::Errored,
                };
                debug!(channel = %self.name, error = %e, "message does not parse");
                self.count(outcome);
                let mode = e.header().map_or(hl7v2::ack::AckMode::Original, |h| self.mode(h));
                let ack = self
                    .code(mode, outcome)
                    .map(|code| (code, ack::for_parse_error(&e, &header, code, &self.ack_ids.next())));
                return Step::Answered(Hl7Outcome::negative(outcome, ack, false));
            }
        };
        let mode = self.mode(&message);
        if self.switch.is_stopped() {
            // Like a failed commit: AE (HTTP 503), the sender keeps it and retries.
            self.count(AckOutcome::Errored);
            let ack = self
                .code(mode, AckOutcome::Errored)
                .map(|code| (code, ack::channel_stopped(&message, code, &self.ack_ids.next())));
            return Step::Answered(Hl7Outcome::negative(AckOutcome::Errored, ack, true));
        }
        let control_id = message.control_id().map(|c| c.into_owned()).filter(|c| !c.is_empty());

        let (issues, verdict) = ack::validate(&message);
        let flagged = verdict != AckOutcome::Accepted;
        if flagged && self.validation != ValidationPolicy::Accept {
            // `error` keeps the validator's verdict: content errors are AE,
            // an unsupported type, event, processing id or version is AR as
            // the standard says. `reject` answers AR to everything.
            let outcome = match self.validation {
                ValidationPolicy::Reject => AckOutcome::Rejected,
                _ => verdict,
            };
            debug!(channel = %self.name, control_id = control_id.as_deref().unwrap_or(""),
                   issues = issues.len(), "message fails validation");
            self.count(outcome);
            let ack =
                self.code(mode, outcome).map(|code| (code, ack::build(&message, code, &issues, &self.ack_ids.next())));
            return Step::Answered(Hl7Outcome::negative(outcome, ack, false));
        }

        // Accepted (with the problems as warnings under `accept`).
        let warnings = ack::as_warnings(issues);
        let code = self.code(mode, AckOutcome::Accepted);
        let ack_bytes = code.map(|code| ack::build(&message, code, &warnings, &self.ack_ids.next()));
        let new = NewMessage {
            channel: self.name.clone(),
            received_at,
            peer_addr: peer,
            content_type: self.content.media_type().to_string(),
            control_id,
            sender_key: sender_key(&message),
            message_type: message.get("MSH-9-1").map(|s| s.into_owned()).filter(|s| !s.is_empty()),
            event: message.get("MSH-9-2").map(|s| s.into_owned()).filter(|s| !s.is_empty()),
            order_key: self.order_key.of_hl7(&message),
            patient_ids: patient_ids(&message),
            ack: ack_bytes.clone(),
            deliveries: self.destinations.iter().map(NewDelivery::queued).collect(),
            raw: Vec::new(),
        };
        // Not edited: exactly the bytes received.
        let new = NewMessage { raw: message.into_bytes(), ..new };
        Step::Store(new, Pending { mode, code, ack: ack_bytes, flagged, header })
    }

    /// The answer once the store has spoken.
    fn finish_hl7(&self, pending: Pending, result: store::Result<Accepted>) -> Hl7Outcome {
        let Pending { mode, code, ack: ack_bytes, flagged, header } = pending;
        match result {
            Ok(Accepted::Stored { id }) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                if flagged {
                    self.stats.flagged.fetch_add(1, Ordering::Relaxed);
                }
                debug!(channel = %self.name, message_id = %id, "message stored");
                Hl7Outcome {
                    outcome: AckOutcome::Accepted,
                    code,
                    ack: ack_bytes,
                    message_id: Some(id),
                    duplicate: false,
                    store_failed: false,
                }
            }
            Ok(Accepted::Duplicate { original, ack: stored }) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                debug!(channel = %self.name, message_id = %original, "duplicate: replaying the original ACK");
                // The original ACK is what the sender was told the first
                // time; if retention removed it, the fresh one says the same.
                let ack = stored.or(ack_bytes);
                let code = ack.as_deref().and_then(ack::code_of).or(code);
                Hl7Outcome {
                    outcome: AckOutcome::Accepted,
                    code,
                    ack,
                    message_id: Some(original),
                    duplicate: true,
                    store_failed: false,
                }
            }
            Err(e) => {
                warn!(channel = %self.name, error = %e.summary(), class = ?e.class(), "storing a message failed; answering with an error");
                self.count(AckOutcome::Errored);
                let ack = self.code(mode, AckOutcome::Errored).and_then(|code| {
                    // The header parsed a moment ago as part of the message.
                    let message = hl7v2::Message::parse(header.as_slice()).ok()?;
                    Some((code, ack::store_failure(&message, code, &self.ack_ids.next())))
                });
                Hl7Outcome::negative(AckOutcome::Errored, ack, true)
            }
        }
    }

    /// The AR for a frame over the source's size limit, built from the
    /// start of the discarded frame (`head`).
    pub fn oversized_nak(&self, head: &[u8], max: usize) -> Vec<u8> {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.oversized();
        ack::oversized_nak(head, max, &self.ack_ids.next())
    }

    fn mode(&self, message: &hl7v2::Message) -> hl7v2::ack::AckMode {
        match self.ack_mode {
            AckMode::Auto | AckMode::Msh15 => hl7v2::ack::AckMode::of(message),
            AckMode::Original => hl7v2::ack::AckMode::Original,
        }
    }

    /// The code to answer with, or `None` for no answer (only under
    /// `ack_mode = "msh15"`, when MSH-15 asks for none in this case).
    fn code(&self, mode: hl7v2::ack::AckMode, outcome: AckOutcome) -> Option<AckCode> {
        use hl7v2::ack::AckMode as Mode;
        if self.ack_mode == AckMode::Msh15 {
            return mode.immediate(outcome);
        }
        Some(match (mode, outcome) {
            (Mode::Original, AckOutcome::Accepted) => AckCode::ApplicationAccept,
            (Mode::Original, AckOutcome::Errored) => AckCode::ApplicationError,
            (Mode::Original, AckOutcome::Rejected) => AckCode::ApplicationReject,
            (Mode::Enhanced { .. }, AckOutcome::Accepted) => AckCode::CommitAccept,
            (Mode::Enhanced { .. }, AckOutcome::Errored) => AckCode::CommitError,
            (Mode::Enhanced { .. }, AckOutcome::Rejected) => AckCode::CommitReject,
        })
    }

    /// Stores a message, timing the commit.
    async fn accept(&self, new: NewMessage) -> store::Result<Accepted> {
        let started = std::time::Instant::now();
        let result = self.store.accept(new).await;
        self.metrics.commit(started.elapsed());
        result
    }

    /// Checks and stores one JSON message (`content = "json"` or `"fhir"`).
    pub async fn ingest_json(&self, received: Received) -> JsonOutcome {
        let started = std::time::Instant::now();
        let out = self.json_answer(received).await;
        self.metrics.json(&out, started.elapsed());
        out
    }

    async fn json_answer(&self, received: Received) -> JsonOutcome {
        if self.switch.is_stopped() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return JsonOutcome::Unavailable("the channel is stopped; retry later".to_string());
        }
        let doc: serde_json::Value = match serde_json::from_slice(&received.bytes) {
            Ok(v) => v,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return JsonOutcome::Invalid(format!("the body is not JSON: {e}"));
            }
        };
        let resource_type = doc.get("resourceType").and_then(|v| v.as_str()).map(str::to_owned);
        if self.content == ContentKind::Fhir && resource_type.is_none() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return JsonOutcome::Invalid("a FHIR resource needs a string `resourceType`".to_string());
        }
        // What every delivery would fail on is answered now (the steps are
        // unconditional and deterministic): the sender learns why.
        if let Some(transform) = &self.json_check
            && crate::filter::first_rejecting_json(&self.json_filter, &doc).is_none()
            && let Err(e) = transform.check_json(&doc, Some(received.received_at))
        {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return JsonOutcome::Invalid(e.to_string());
        }
        let order_key = self.order_key.of_json(&doc);
        // FHIR bodies are searchable by patient identifier, as PID-3 makes
        // HL7 v2 messages; a plain JSON body has no known place for one.
        let patient_ids = if self.content == ContentKind::Fhir {
            indexable_ids(crate::config::fhir_patient_ids(&doc).into_iter())
        } else {
            Vec::new()
        };
        drop(doc);
        // Only a keyed message can be a duplicate: its digest tells a retry
        // (same body) from the key reused for another body. The store
        // keeps each message's SHA-256, contents retention included.
        let digest = received.idempotency_key.as_ref().map(|_| {
            use sha2::Digest as _;
            sha2::Sha256::digest(&received.bytes)
        });
        let new = NewMessage {
            channel: self.name.clone(),
            received_at: received.received_at,
            peer_addr: received.peer.clone(),
            content_type: self.content.media_type().to_string(),
            control_id: received.idempotency_key.clone(),
            sender_key: String::new(),
            message_type: resource_type,
            event: None,
            order_key,
            patient_ids,
            ack: None,
            deliveries: self.destinations.iter().map(NewDelivery::queued).collect(),
            raw: received.bytes,
        };
        match self.accept(new).await {
            Ok(Accepted::Stored { id }) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                JsonOutcome::Stored { message_id: id, duplicate: false }
            }
            Ok(Accepted::Duplicate { original, .. }) => self.duplicate_json(original, digest).await,
            Err(e) if e.class() == store::ErrorClass::Permanent => {
                // The store refuses this request as it is: retrying would
                // fail the same way, so the sender hears it as bad input.
                warn!(channel = %self.name, error = %e.summary(), "the store refused a message");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                JsonOutcome::Invalid(format!("the message cannot be stored: {}", e.summary()))
            }
            Err(e) => {
                warn!(channel = %self.name, error = %e.summary(), class = ?e.class(), "storing a message failed");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                JsonOutcome::Unavailable(format!("the message could not be stored ({}); retry later", e.summary()))
            }
        }
    }

    /// The answer to a JSON message the store found a duplicate of
    /// `original` (same channel and idempotency key): the original's answer
    /// when the body is the same (`digest`, SHA-256 of the new body),
    /// otherwise [`JsonOutcome::KeyReused`].
    async fn duplicate_json(&self, original: MessageId, digest: Option<impl AsRef<[u8]>>) -> JsonOutcome {
        let stored = match self.store.get_message(original).await {
            Ok(Some(detail)) => detail.summary.sha256,
            // Found as a duplicate a moment ago, so only a purge racing
            // this answer removes it: the body cannot be compared, and a
            // retry will be stored anew or compared then.
            Ok(None) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return JsonOutcome::Unavailable("the original message could not be read; retry later".into());
            }
            Err(e) => {
                warn!(channel = %self.name, message_id = %original, error = %e.summary(), "reading a duplicate's original failed");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return JsonOutcome::Unavailable(format!(
                    "the original message could not be read ({}); retry later",
                    e.summary()
                ));
            }
        };
        match digest {
            Some(digest) if !stored.eq_ignore_ascii_case(&hex::encode(digest.as_ref())) => {
                debug!(channel = %self.name, message_id = %original, "idempotency key reused for another body");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                JsonOutcome::KeyReused { original }
            }
            _ => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                JsonOutcome::Stored { message_id: original, duplicate: true }
            }
        }
    }

    fn count(&self, outcome: AckOutcome) {
        match outcome {
            AckOutcome::Rejected => self.stats.rejected.fetch_add(1, Ordering::Relaxed),
            AckOutcome::Errored => self.stats.errors.fetch_add(1, Ordering::Relaxed),
            AckOutcome::Accepted => self.stats.accepted.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What [`ChannelIngest::prepare_hl7`] decided for one message.
// Short-lived and moved once: boxing the message would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Answered without storing (it does not parse, or fails validation).
    Answered(Hl7Outcome),
    /// To store, with the rest of its answer.
    Store(NewMessage, Pending),
}

/// The answer of a message being stored, waiting for the commit.
struct Pending {
    mode: hl7v2::ack::AckMode,
    code: Option<AckCode>,
    ack: Option<Vec<u8>>,
    flagged: bool,
    /// The MSH segment, to build the answer to a failed commit.
    header: Vec<u8>,
}

/// The bytes up to the end of the first segment (MSH when the message
/// parses), with what the parser skips before it (a byte-order mark, blank
/// lines): enough to parse the header again for the answer to a failed
/// commit, and what [`hl7v2::ack::Ack::for_parse_error`] reads of a message
/// whose header is unreadable (its first line).
fn header_segment(bytes: &[u8]) -> &[u8] {
    let mut start = if bytes.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    while start < bytes.len() && matches!(bytes[start], b' ' | b'\t' | b'\r' | b'\n') {
        start += 1;
    }
    let end = bytes[start..].iter().position(|&b| b == b'\r' || b == b'\n').map_or(bytes.len(), |i| start + i);
    &bytes[..end]
}

/// MSH-3 and MSH-4 (their first components) joined: who sent it.
fn sender_key(message: &hl7v2::Message) -> String {
    let app = message.get("MSH-3").unwrap_or_default();
    let facility = message.get("MSH-4").unwrap_or_default();
    format!("{app}^{facility}")
}

/// The first component of every PID-3 repetition (the patient's
/// identifiers: MRN, and others the sender lists).
fn patient_ids(message: &hl7v2::Message) -> Vec<String> {
    let Some(field) = message.segment("PID").and_then(|s| s.field(3)) else {
        return Vec::new();
    };
    indexable_ids(field.repetitions().filter_map(|rep| rep.component(1)).map(|c| c.text().into_owned()))
}

/// How many identifiers a message is indexed by, and how long one may be:
/// the store's limits (it refuses a message over them).
const MAX_PATIENT_IDS: usize = 64;
const MAX_PATIENT_ID_CHARS: usize = 255;

/// The identifiers to index a message by: each once, in order, without
/// blank ones or ones longer than the store indexes, and at most as many
/// as it keeps. The index serves search; a message with more or odder
/// identifiers is still stored whole, so it is never refused for them.
fn indexable_ids(found: impl Iterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in found {
        if ids.len() == MAX_PATIENT_IDS {
            break;
        }
        let fits = !id.trim().is_empty() && id.chars().count() <= MAX_PATIENT_ID_CHARS;
        if fits && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Every channel's ingest path, by name: what sources and `channel`
/// destinations hand messages to.
#[derive(Debug, Default)]
pub struct Ingest {
    channels: HashMap<String, Arc<ChannelIngest>>,
}

impl Ingest {
    /// An empty registry.
    pub fn new() -> Self {
        Ingest::default()
    }

    /// Registers a channel's path.
    pub fn insert(&mut self, channel: Arc<ChannelIngest>) {
        self.channels.insert(channel.name.clone(), channel);
    }

    /// A channel's path.
    pub fn channel(&self, name: &str) -> Option<&Arc<ChannelIngest>> {
        self.channels.get(name)
    }

    /// Every channel's path.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<ChannelIngest>> {
        self.channels.values()
    }
}

/// The runtime's side of `channel` destinations: injecting is ingesting
/// into the target channel, exactly as its source would.
///
/// Built before the channels are known (destinations are built first), and
/// filled in once they are.
#[derive(Debug, Default)]
pub struct Injector {
    ingest: std::sync::OnceLock<Arc<Ingest>>,
}

impl Injector {
    /// An injector that fails with `Unavailable` until [`set`](Self::set).
    pub fn new() -> Self {
        Injector::default()
    }

    /// Connects the injector to the running channels.
    pub fn set(&self, ingest: Arc<Ingest>) {
        let _ = self.ingest.set(ingest);
    }
}

#[async_trait]
impl ChannelInjector for Injector {
    async fn inject(&self, message: Injected<'_>) -> Result<Injection, InjectError> {
        let Some(ingest) = self.ingest.get() else {
            return Err(InjectError::Unavailable { reason: "the engine is starting".into(), retry_after: None });
        };
        let Some(channel) = ingest.channel(message.target) else {
            return Err(InjectError::UnknownChannel(message.target.to_string()));
        };
        let received = Received {
            bytes: message.content.to_vec(),
            peer: Some(format!("channel:{}", message.origin_channel)),
            received_at: Utc::now(),
            idempotency_key: Some(format!("{}:{}", message.origin_channel, message.origin_message_id)),
        };
        match channel.content() {
            ContentKind::Hl7v2 => {
                let out = channel.ingest_hl7(received).await;
                match out.message_id {
                    Some(id) if out.outcome == AckOutcome::Accepted => Ok(Injection {
                        message_id: id.to_string(),
                        ack_code: out.code.map(|c| c.as_str().to_string()),
                        duplicate: out.duplicate,
                    }),
                    _ if out.store_failed => Err(InjectError::Unavailable {
                        reason: format!("channel {:?} could not store the message", message.target),
                        retry_after: None,
                    }),
                    _ => Err(InjectError::Rejected(format!(
                        "channel {:?} answered {}",
                        message.target,
                        out.code.map_or("no ACK", |c| c.as_str())
                    ))),
                }
            }
            ContentKind::Json | ContentKind::Fhir => match channel.ingest_json(received).await {
                JsonOutcome::Stored { message_id, duplicate } => {
                    Ok(Injection { message_id: message_id.to_string(), ack_code: None, duplicate })
                }
                JsonOutcome::Invalid(reason) => Err(InjectError::Rejected(reason)),
                JsonOutcome::Unavailable(reason) => Err(InjectError::Unavailable { reason, retry_after: None }),
                // The key is the origin message's id: a replayed delivery
                // whose transform output changed (a timestamp, say) is
                // still the same message, already injected.
                JsonOutcome::KeyReused { original } => {
                    Ok(Injection { message_id: original.to_string(), ack_code: None, duplicate: true })
                }
            },
        }
    }
}

/// Control ids for the ACKs this process sends: a per-start prefix and a
/// counter, so they are unique without a clock or coordination.
#[derive(Debug)]
struct AckIds {
    prefix: String,
    next: AtomicU64,
}

impl AckIds {
    fn new() -> Self {
        let start = uuid::Uuid::now_v7().simple().to_string();
        // The last hex digits of a v7 UUID are random; 8 of them identify a
        // process start well enough for humans reading logs.
        AckIds { prefix: start[start.len() - 8..].to_string(), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

mod ack;

#[cfg(test)]
mod tests {
    use super::header_segment;

    #[test]
    fn header_segment_is_the_first_line_after_what_the_parser_skips() {
        assert_eq!(header_segment(b"MSH|^~\\&|A\rPID|1"), b"MSH|^~\\&|A");
        assert_eq!(header_segment(b"\r\n MSH|^~\\&|A\nPID|1"), b"\r\n MSH|^~\\&|A");
        assert_eq!(header_segment(b"\xEF\xBB\xBFMSH|^~\\&|A\r\n"), b"\xEF\xBB\xBFMSH|^~\\&|A");
        assert_eq!(header_segment(b"MSH|^~\\&|A"), b"MSH|^~\\&|A");
        assert_eq!(header_segment(b"\r\r"), b"\r\r");
        // What is kept parses to the same header as the whole message.
        let whole = b"\n\nMSH|^~\\&|APP|FAC|||20261121||ADT^A01|77|P|2.5\rPID|1";
        let head = hl7v2::Message::parse(header_segment(whole)).unwrap();
        assert_eq!(head.control_id().as_deref(), Some("77"));
        assert_eq!(head.segment_count(), 1);
    }
}
