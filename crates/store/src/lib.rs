//! Plexus's durable message store and ordered delivery queue.
//!
//! A message is stored before it is acknowledged, with one *delivery* per
//! destination. Destination workers *claim* deliveries as leases, deliver
//! them, and *complete* them with an outcome; the store applies the
//! destination's retry policy. The engine talks to the store only through the
//! [`Store`] trait, opened by URL:
//!
//! | URL | backend |
//! |---|---|
//! | `sqlite://path/to/plexus.db` (created if missing) | SQLite, WAL, one process |
//! | `postgres://user@host/db` | PostgreSQL, several processes may share it |
//! | `mysql://user@host/db` | MariaDB 10.11+ / MySQL 8 |
//!
//! Each backend runs its own embedded migrations (`migrations/<backend>`)
//! when opened.
//!
//! # Guarantees
//!
//! - **Durability.** [`Store::accept`] returns only after the transaction
//!   holding the message, its deliveries and its ACK has committed (SQLite:
//!   `synchronous=FULL` by default). Concurrent accepts are *group committed*:
//!   one writer task per store drains the requests waiting at that moment into
//!   one transaction, so many messages share one fsync, and answers each
//!   caller after COMMIT.
//! - **Duplicates.** An accept with the same channel, sender key and control
//!   id as a message accepted within the duplicate window creates nothing and
//!   returns the original's id and ACK.
//! - **Order.** Within a channel and destination, deliveries with the same
//!   order key are claimable only one at a time and in acceptance order: only
//!   the *head* of a key (its oldest delivery that is not final) can be
//!   claimed, and only while no other delivery of that key is in flight.
//!   A failing head blocks its own key (or, with `on_failure = dead_letter`,
//!   moves aside); other keys flow on.
//! - **Leases.** A claim is a lease with an expiry; an expired lease can be
//!   claimed again (a crashed worker's deliveries are taken over), and a
//!   completion presenting a stale lease token is rejected.
//!
//! # Where the time comes from
//!
//! All times (lease expiry, retry times, the duplicate window) come from the
//! store's [`Clock`] and are stored as microseconds since the epoch, so the
//! backends behave the same and tests can drive time by hand.

mod backend;
mod clock;
mod error;
mod lock;
mod model;
mod policy;
mod poll_checkpoint;
mod sync_job;
mod tokens;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use clock::Clock;
pub use error::{ErrorClass, StoreError};
pub use lock::ClusterLock;
pub use model::*;
pub use policy::backoff_delay;
pub use poll_checkpoint::{MAX_SEEN_AT_CHECKPOINT, PollCheckpoint};
pub use sync_job::*;
pub use tokens::{ApiToken, NewApiToken};

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// SQLite's `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// fsync at every commit: an acknowledged message survives a power cut.
    /// The default.
    #[default]
    Full,
    /// fsync at checkpoints only (WAL): survives a process crash but a power
    /// cut may lose the last commits. Faster; a deliberate choice.
    Normal,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// SQLite only: durability of each commit.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Connections for reads and (PostgreSQL, MariaDB) claims and completions.
    /// The group-commit writer has its own connection on top.
    pub pool_size: u32,
    /// How far back an accept looks for a message with the same channel,
    /// sender key and control id.
    pub duplicate_window: Duration,
    /// The most requests one group commit takes.
    pub max_batch: usize,
    /// Where "now" comes from.
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite_synchronous: SqliteSynchronous::Full,
            pool_size: 8,
            duplicate_window: Duration::from_secs(24 * 3600),
            max_batch: 512,
            clock: Clock::system(),
        }
    }
}

/// The durable message store and ordered queue. Obtain one with [`open`];
/// share it as `Arc<dyn Store>`.
///
/// Every method is cancel-safe in the sense that dropping its future never
/// leaves a half-written transaction: a request already handed to the
/// group-commit writer is either committed or not, as a whole.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Which database this store runs on.
    fn backend(&self) -> Backend;

    /// Stores a message with its deliveries and ACK, or detects it as a
    /// duplicate. Returns after the commit is durable.
    async fn accept(&self, message: NewMessage) -> Result<Accepted>;

    /// Accepts messages that arrived in this order (the pipelined frames of
    /// one connection) and answers each, in order, once its commit is
    /// durable. They are committed in this order: a message is never stored
    /// in an earlier transaction than one before it in `messages`, so their
    /// deliveries queue in arrival order. The backends hand them to the
    /// group-commit writer together, so most often they share one
    /// transaction; the default (for test doubles) accepts them one by one.
    async fn accept_many(&self, messages: Vec<NewMessage>) -> Vec<Result<Accepted>> {
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            answers.push(self.accept(message).await);
        }
        answers
    }

    /// Leases up to `request.max` claimable deliveries of one destination:
    /// the heads of their order keys, due now, oldest first, never two of
    /// the same key and never a key that already has a delivery in flight.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim>;

    /// Records the outcome of a leased delivery's attempt and applies
    /// `policy` to failures: retry later with backoff (state `queued`),
    /// `error` (block the key) or `dead` (dead letter). Fails with
    /// [`StoreError::LeaseLost`] if `lease` is not the current, unexpired
    /// lease.
    async fn complete(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: &RetryPolicy,
    ) -> Result<Completion>;

    /// [`complete`](Self::complete) for an attempt whose destination said
    /// when to come back (HTTP `Retry-After`, a channel that is starting):
    /// when the policy retries the delivery, the retry is no earlier than
    /// `retry_after` from now (a longer backoff stays). The default, for
    /// test doubles that wrap a store, ignores the hint.
    async fn complete_with_retry_after(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: &RetryPolicy,
        retry_after: Option<Duration>,
    ) -> Result<Completion> {
        let _ = retry_after;
        self.complete(delivery, lease, outcome, policy).await
    }

    /// Extends a held lease to `now + by` (for slow destinations). Returns
    /// the new expiry, or [`StoreError::LeaseLost`].
    async fn extend_lease(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        by: Duration,
    ) -> Result<chrono::DateTime<chrono::Utc>>;

    /// Moves a message's `sent`, `error` and `dead` deliveries (optionally of
    /// one destination) back to `queued` with a fresh retry budget, and
    /// records a `replay` audit event in the same transaction. A replayed
    /// delivery keeps its place: it is the head of its key again.
    async fn replay(&self, request: ReplayRequest) -> Result<ReplayResult>;

    /// Moves a blocked (`error`) or `queued` delivery to the dead letters so
    /// its key continues, recording a `dead_letter` audit event.
    async fn dead_letter(&self, delivery: DeliveryId, actor: &str, reason: Option<String>) -> Result<()>;

    /// Records an audit event (the API calls it when someone reads message
    /// contents).
    async fn record_audit(&self, event: NewAuditEvent) -> Result<()>;

    /// Lists audit events, newest first.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;

    /// One message with its contents, deliveries and attempts.
    async fn get_message(&self, id: MessageId) -> Result<Option<MessageDetail>>;

    /// The message browser: filtered, newest first, keyset-paginated.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage>;

    /// Deliveries per channel, destination and state.
    async fn counts(&self) -> Result<Vec<StateCount>>;

    /// Runs one retention batch: removes the contents (or the whole record)
    /// of up to `batch_size` messages received before `older_than` whose
    /// deliveries are all final. Messages still queued, in flight or blocked
    /// are never touched.
    async fn retention_batch(&self, request: &RetentionRequest) -> Result<RetentionBatch>;

    /// The clock the store computes times with (scheduled retention takes
    /// its cut-off from it). The default is the system clock.
    fn clock(&self) -> Clock {
        Clock::system()
    }

    /// Takes the cluster-wide lock `name` unless another process holds it
    /// (`None`); dropping the returned lock releases it. Periodic jobs take
    /// one so that a cluster runs them once. The default (single-process
    /// stores) always succeeds.
    async fn try_lock(&self, name: &str) -> Result<Option<ClusterLock>> {
        Ok(Some(ClusterLock::local(name)))
    }

    /// Records a patient sync job as `queued` (see [`SyncJob`]).
    ///
    /// The sync job methods have default bodies that refuse, so that test
    /// doubles of the store need not implement them; the three backends do.
    async fn create_sync_job(&self, _job: NewSyncJob) -> Result<SyncJob> {
        Err(no_sync_jobs())
    }

    /// Records a job's start, progress or end. Fails with
    /// [`StoreError::NotFound`] when no job with that id is queued or
    /// running (an ended job never changes again).
    async fn update_sync_job(&self, _id: SyncJobId, _update: SyncJobUpdate) -> Result<()> {
        Err(no_sync_jobs())
    }

    /// One sync job with its report.
    async fn sync_job(&self, _id: SyncJobId) -> Result<Option<SyncJob>> {
        Err(no_sync_jobs())
    }

    /// Sync jobs, newest first, without their reports.
    async fn sync_jobs(&self, _query: &SyncJobQuery) -> Result<Vec<SyncJob>> {
        Err(no_sync_jobs())
    }

    /// The checkpoint of a channel's FHIR poll of `resource_type`, if one
    /// was saved (see [`PollCheckpoint`]).
    ///
    /// The checkpoint methods have default bodies that refuse, so that test
    /// doubles of the store need not implement them; the three backends do.
    async fn poll_checkpoint(&self, _channel: &str, _resource_type: &str) -> Result<Option<PollCheckpoint>> {
        Err(no_checkpoints())
    }

    /// Writes a checkpoint, replacing the one of its channel and resource
    /// type; `updated_at` is set from the store's clock.
    async fn save_poll_checkpoint(&self, _checkpoint: &PollCheckpoint) -> Result<()> {
        Err(no_checkpoints())
    }

    /// Every saved checkpoint (of one channel when given), ordered by
    /// channel and resource type.
    async fn poll_checkpoints(&self, _channel: Option<&str>) -> Result<Vec<PollCheckpoint>> {
        Err(no_checkpoints())
    }

    /// Removes a channel's checkpoints (of one resource type when given),
    /// so that its next poll starts again from the source's `start`.
    /// Returns how many were removed.
    async fn delete_poll_checkpoints(&self, _channel: &str, _resource_type: Option<&str>) -> Result<u64> {
        Err(no_checkpoints())
    }

    /// A counter bumped after every commit that made deliveries claimable in
    /// this process (accepts, replays): idle workers wait on it instead of
    /// polling. Other processes sharing the database do not bump it, so
    /// workers should still claim now and then.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Records a new API token. Fails with [`StoreError::Invalid`] (field
    /// `name`) if an active (not revoked) token already has its name.
    ///
    /// The token methods have default bodies that refuse, so that wrappers
    /// and test doubles of the store need not implement them; the three
    /// backends do.
    async fn create_api_token(&self, _token: NewApiToken) -> Result<ApiToken> {
        Err(no_tokens())
    }

    /// The token with this public id, revoked and expired ones included.
    async fn api_token(&self, _id: &str) -> Result<Option<ApiToken>> {
        Err(no_tokens())
    }

    /// Every token, oldest first, revoked and expired ones included.
    async fn api_tokens(&self) -> Result<Vec<ApiToken>> {
        Err(no_tokens())
    }

    /// Revokes the active token with this name or id; returns how many were
    /// revoked (0 when none matched).
    async fn revoke_api_token(&self, _name_or_id: &str) -> Result<u64> {
        Err(no_tokens())
    }

    /// Sets a token's `last_used_at` to `at` (never moving it back). The
    /// engine calls it at most once per interval per token, not per request.
    async fn touch_api_token(&self, _id: &str, _at: chrono::DateTime<chrono::Utc>) -> Result<()> {
        Err(no_tokens())
    }

    /// Stops the writer after the requests already queued, and closes the
    /// connections. Later calls fail with [`StoreError::Closed`].
    async fn close(&self);
}

/// What a store without API token support answers.
fn no_tokens() -> StoreError {
    StoreError::invalid("api_tokens", "this store does not keep API tokens")
}

/// What a store without poll checkpoint support answers.
fn no_checkpoints() -> StoreError {
    StoreError::invalid("poll_checkpoints", "this store does not keep poll checkpoints")
}

/// What a store without sync job support answers.
fn no_sync_jobs() -> StoreError {
    StoreError::invalid("sync_jobs", "this store does not keep sync jobs")
}

/// Opens (creating or migrating as needed) the store at `url`.
pub async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    backend::open(url, options).await
}

/// Runs retention batches until nothing is left, pausing `pause` between
/// batches so that ingestion always gets the database between them. Returns
/// the number of messages processed.
pub async fn run_retention(store: &dyn Store, request: &RetentionRequest, pause: Duration) -> Result<u64> {
    let mut total = 0;
    loop {
        let batch = store.retention_batch(request).await?;
        total += batch.messages;
        if !batch.more {
            return Ok(total);
        }
        tokio::time::sleep(pause).await;
    }
}
