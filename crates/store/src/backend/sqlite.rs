//! The SQLite backend: one file in WAL mode, one process.
//!
//! Every write goes through the group-commit writer ([`super::writer`]): one
//! dedicated connection runs each batch in a `BEGIN IMMEDIATE` transaction,
//! the accepts of the batch first (bulk inserts), then the other requests
//! each inside its own SAVEPOINT so that one failing request rolls back only
//! itself. Reads (message view, search, counts) use a separate pool; WAL
//! lets them run while the writer writes.
//!
//! With `synchronous=FULL` (the default) a COMMIT fsyncs the WAL, so an
//! acknowledged message survives a power cut; `NORMAL` survives a process
//! crash only.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, FromRow, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool,
};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::shared::{question_marks, read_side, write_side};
use super::tokens::tokens_side;
use super::writer::{self, Done, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, SqliteSynchronous as Sync, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store on a local SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: SqlitePool,
    clock: Clock,
    changes: watch::Receiver<u64>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        // Each pooled connection would see its own empty database.
        return Err(StoreError::InvalidUrl(
            "an in-memory SQLite store cannot be shared by the writer and readers".into(),
        ));
    }
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("sqlite url: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match options.sqlite_synchronous {
            Sync::Full => SqliteSynchronous::Full,
            Sync::Normal => SqliteSynchronous::Normal,
        })
        .foreign_keys(true)
        // Readers never block the writer in WAL mode; this only matters if
        // another process opens the file.
        .busy_timeout(Duration::from_secs(10))
        .statement_cache_capacity(512)
        // Savepoint and statement journals in memory, not in temp files.
        .pragma("temp_store", "memory");

    let mut conn = connect.connect().await.map_err(open_error)?;
    MIGRATOR.run(&mut conn).await?;
    // The checkpointer task copies the log into the database beside the
    // writer; the writer does it itself only if the log grows far past that.
    exec(&mut conn, "PRAGMA wal_autocheckpoint = 16384").await?;
    let readers =
        SqlitePoolOptions::new().max_connections(options.pool_size).connect_with(connect).await.map_err(open_error)?;

    let (ops, rx) = mpsc::channel(options.max_batch.saturating_mul(4).max(64));
    let (changed, changes) = watch::channel(0u64);
    let writer = Writer { conn, clock: options.clock.clone(), window: options.duplicate_window, changed };
    let shutdown = Arc::new(Notify::new());
    let handle = tokio::spawn(writer.run(rx, options.max_batch, shutdown.clone()));
    tokio::spawn(checkpointer(readers.clone(), changes.clone()));
    Ok(Arc::new(SqliteStore {
        ops,
        readers,
        clock: options.clock,
        changes,
        shutdown,
        writer: tokio::sync::Mutex::new(Some(handle)),
    }))
}

/// How often the checkpointer copies committed pages from the log into the
/// database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies the write-ahead log into the database file on a reader
/// connection, beside the writer. With SQLite's automatic checkpoints the
/// committing writer does it every 1000 pages (4 MB, a few thousand
/// messages), and every accept waiting for that commit also waits for the
/// copy and the database file's fsync. A PASSIVE checkpoint blocks neither
/// the writer nor the readers; once it has caught up, the writer starts the
/// log over at its next commit, so the log stays small. Stops when the
/// writer has stopped or the pool is closed.
async fn checkpointer(readers: SqlitePool, changes: watch::Receiver<u64>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if changes.has_changed().is_err() || readers.is_closed() {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&readers).await {
            if readers.is_closed() {
                break;
            }
            // The writer's own checkpoints are the fallback: nothing lost.
            debug!(error = %StoreError::from(e).summary(), "background checkpoint failed");
        }
    }
}

/// A file that cannot be opened is a configuration problem, not a busy
/// database.
fn open_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(_) | sqlx::Error::Io(_) => {
            StoreError::InvalidUrl(format!("cannot open the SQLite store: {e}"))
        }
        e => StoreError::Database(e),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn clock(&self) -> Clock {
        self.clock.clone()
    }

    async fn accept(&self, message: NewMessage) -> Result<Accepted> {
        validate_message(&message)?;
        writer::call(&self.ops, |r| Op::Accept(message, r)).await
    }

    async fn accept_many(&self, messages: Vec<NewMessage>) -> Vec<Result<Accepted>> {
        writer::accept_many(&self.ops, messages, validate_message).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        validate_claim(request)?;
        writer::call(&self.ops, |r| Op::Claim(request.clone(), r)).await
    }

    async fn complete(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: &RetryPolicy,
    ) -> Result<Completion> {
        self.complete_with_retry_after(delivery, lease, outcome, policy, None).await
    }

    async fn complete_with_retry_after(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: &RetryPolicy,
        retry_after: Option<Duration>,
    ) -> Result<Completion> {
        let policy = policy.clone();
        writer::call(&self.ops, |reply| Op::Complete { delivery, lease, outcome, policy, retry_after, reply }).await
    }

    async fn extend_lease(&self, delivery: DeliveryId, lease: LeaseToken, by: Duration) -> Result<DateTime<Utc>> {
        writer::call(&self.ops, |reply| Op::Extend { delivery, lease, by, reply }).await
    }

    async fn replay(&self, request: ReplayRequest) -> Result<ReplayResult> {
        validate_actor(&request.actor)?;
        writer::call(&self.ops, |r| Op::Replay(request, r)).await
    }

    async fn dead_letter(&self, delivery: DeliveryId, actor: &str, reason: Option<String>) -> Result<()> {
        validate_actor(actor)?;
        let actor = actor.to_owned();
        writer::call(&self.ops, |reply| Op::DeadLetter { delivery, actor, reason, reply }).await
    }

    async fn record_audit(&self, event: NewAuditEvent) -> Result<()> {
        validate_audit(&event)?;
        writer::call(&self.ops, |r| Op::Audit(event, r)).await
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        read_audit_events(&self.readers, query).await
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageDetail>> {
        read_message(&self.readers, id).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        read_search(&self.readers, query).await
    }

    async fn counts(&self) -> Result<Vec<StateCount>> {
        read_counts(&self.readers).await
    }

    async fn retention_batch(&self, request: &RetentionRequest) -> Result<RetentionBatch> {
        if request.batch_size == 0 {
            return Err(StoreError::invalid("batch_size", "must be at least 1"));
        }
        writer::call(&self.ops, |r| Op::Retention(request.clone(), r)).await
    }

    async fn create_api_token(&self, token: crate::NewApiToken) -> Result<crate::ApiToken> {
        token_insert(&self.readers, &token, self.clock.now()).await
    }

    async fn api_token(&self, id: &str) -> Result<Option<crate::ApiToken>> {
        token_by_id(&self.readers, id).await
    }

    async fn api_tokens(&self) -> Result<Vec<crate::ApiToken>> {
        token_list(&self.readers).await
    }

    async fn revoke_api_token(&self, name_or_id: &str) -> Result<u64> {
        token_revoke(&self.readers, name_or_id, self.clock.now()).await
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        token_touch(&self.readers, id, at).await
    }

    async fn create_sync_job(&self, job: crate::NewSyncJob) -> Result<crate::SyncJob> {
        super::sync_jobs::sqlite::create(&self.readers, job, self.clock.now()).await
    }

    async fn update_sync_job(&self, id: crate::SyncJobId, update: crate::SyncJobUpdate) -> Result<()> {
        super::sync_jobs::sqlite::update(&self.readers, id, update, self.clock.now()).await
    }

    async fn sync_job(&self, id: crate::SyncJobId) -> Result<Option<crate::SyncJob>> {
        super::sync_jobs::sqlite::get(&self.readers, id).await
    }

    async fn sync_jobs(&self, query: &crate::SyncJobQuery) -> Result<Vec<crate::SyncJob>> {
        super::sync_jobs::sqlite::recent(&self.readers, query).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn close(&self) {
        let handle = self.writer.lock().await.take();
        if let Some(handle) = handle {
            self.shutdown.notify_one();
            if let Err(e) = handle.await {
                warn!(error = %e, "sqlite store writer ended abnormally");
            }
        }
        self.readers.close().await;
    }
}

/// Runs `$body` (an expression using `$conn`) inside a savepoint, so that a
/// failing request of a batch undoes only its own writes.
macro_rules! savepoint {
    ($conn:expr, $body:expr) => {{
        match exec(&mut $conn, "SAVEPOINT op").await {
            Err(e) => Err(e),
            Ok(()) => {
                let result = $body;
                end_savepoint(&mut $conn, result).await
            }
        }
    }};
}

async fn end_savepoint<T>(conn: &mut SqliteConnection, result: Result<T>) -> Result<T> {
    if result.is_err() {
        exec(conn, "ROLLBACK TO op").await?;
    }
    exec(conn, "RELEASE op").await?;
    result
}

read_side!(Sqlite, SqlitePool, question_marks);
tokens_side!(Sqlite, SqlitePool, question_marks, "");
write_side!(Sqlite, SqliteConnection, question_marks, "", "");

/// The writer task's state.
struct Writer {
    conn: SqliteConnection,
    clock: Clock,
    window: Duration,
    changed: watch::Sender<u64>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>, max_batch: usize, shutdown: Arc<Notify>) {
        loop {
            tokio::select! {
                batch = writer::next_batch(&mut rx, max_batch) => match batch {
                    Some(batch) => self.run_batch(batch).await,
                    None => break,
                },
                () = shutdown.notified() => {
                    // Finish what was already sent, refuse the rest.
                    rx.close();
                    while let Some(batch) = writer::next_batch(&mut rx, max_batch).await {
                        self.run_batch(batch).await;
                    }
                    break;
                }
            }
        }
        let _ = self.conn.close().await;
        debug!("sqlite store writer stopped");
    }

    async fn run_batch(&mut self, batch: Vec<Op>) {
        let mut accepts = Vec::new();
        let mut others = Vec::new();
        for op in batch {
            match op {
                Op::Accept(m, r) => accepts.push((m, r)),
                op => others.push(op),
            }
        }
        let now = self.clock.now();
        let mut wake = false;

        // Fast path, the common case under ingestion load: a batch of
        // accepts only, as one transaction in two calls to SQLite's thread.
        if others.is_empty() {
            let messages: Vec<&NewMessage> = accepts.iter().map(|(m, _)| m).collect();
            match accept_chained(&mut self.conn, &messages, now, self.window, "BEGIN IMMEDIATE", "COMMIT").await {
                Ok((answers, queued)) => {
                    // Wake the workers before answering: when a call
                    // returns, the work it queued has been announced.
                    if queued {
                        self.changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    for ((_, reply), answer) in accepts.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                    return;
                }
                Err(e) => {
                    // Start again carefully, isolating each request.
                    warn!(error = %e.summary(), batch = messages.len(), "group commit failed, retrying one by one");
                    let _ = exec(&mut self.conn, "ROLLBACK").await;
                }
            }
        }

        if let Err(e) = exec(&mut self.conn, "BEGIN IMMEDIATE").await {
            let e = Arc::new(e);
            for (_, r) in accepts {
                let _ = r.send(Err(StoreError::Batch(e.clone())));
            }
            for op in others {
                op.fail(StoreError::Batch(e.clone()));
            }
            return;
        }
        let mut done = Vec::with_capacity(accepts.len() + others.len());

        if !accepts.is_empty() {
            let messages: Vec<&NewMessage> = accepts.iter().map(|(m, _)| m).collect();
            let bulk = accept_chained(&mut self.conn, &messages, now, self.window, "SAVEPOINT op", "RELEASE op").await;
            let bulk = match bulk {
                Ok(r) => Ok(r),
                Err(e) => end_savepoint(&mut self.conn, Err(e)).await,
            };
            match bulk {
                Ok((results, queued)) => {
                    wake |= queued;
                    for ((_, reply), result) in accepts.into_iter().zip(results) {
                        done.push(Done::new(reply, Ok(result)));
                    }
                }
                Err(e) => {
                    // Something in the bulk insert failed: retry one by one
                    // so that only the culprit gets the error.
                    warn!(error = %e.summary(), batch = messages.len(), "bulk accept failed, retrying one by one");
                    for (m, reply) in accepts {
                        let one = savepoint!(self.conn, insert_batch(&mut self.conn, &[&m], now, self.window).await);
                        done.push(Done::new(
                            reply,
                            one.map(|(mut r, q)| {
                                wake |= q;
                                r.remove(0)
                            }),
                        ));
                    }
                }
            }
        }

        for op in others {
            done.push(self.run_op(op, now, &mut wake).await);
        }

        match exec(&mut self.conn, "COMMIT").await {
            Ok(()) => {
                if wake {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
                for d in done {
                    d.send(None);
                }
            }
            Err(e) => {
                warn!(error = %e.summary(), "group commit failed");
                let _ = exec(&mut self.conn, "ROLLBACK").await;
                let e = Arc::new(e);
                for d in done {
                    d.send(Some(e.clone()));
                }
            }
        }
    }

    async fn run_op(&mut self, op: Op, now: DateTime<Utc>, wake: &mut bool) -> Done {
        let conn = &mut self.conn;
        match op {
            Op::Accept(m, reply) => {
                let r = savepoint!(*conn, insert_batch(conn, &[&m], now, self.window).await);
                Done::new(
                    reply,
                    r.map(|(mut v, q)| {
                        *wake |= q;
                        v.remove(0)
                    }),
                )
            }
            Op::Claim(req, reply) => Done::new(reply, savepoint!(*conn, claim(conn, req, now).await)),
            Op::Complete { delivery, lease, outcome, policy, retry_after, reply } => {
                let r = savepoint!(*conn, complete(conn, delivery, lease, outcome, policy, retry_after, now).await);
                *wake |= r.is_ok();
                Done::new(reply, r)
            }
            Op::Extend { delivery, lease, by, reply } => Done::new(reply, extend(conn, delivery, lease, by, now).await),
            Op::Replay(req, reply) => {
                let r = savepoint!(*conn, replay(conn, req, now).await);
                *wake |= r.as_ref().is_ok_and(|r| !r.replayed.is_empty());
                Done::new(reply, r)
            }
            Op::DeadLetter { delivery, actor, reason, reply } => {
                let r = savepoint!(*conn, dead_letter(conn, delivery, actor, reason, now).await);
                *wake |= r.is_ok();
                Done::new(reply, r)
            }
            Op::Audit(event, reply) => Done::new(reply, insert_audit(conn, &event, now).await),
            Op::Retention(req, reply) => Done::new(reply, savepoint!(*conn, retention(conn, req, now).await)),
        }
    }
}

/// The largest batch whose statements stay prepared (see `accept_chained`).
const CACHED_BATCH: usize = 2;

/// Accepts a batch in at most two calls to SQLite's worker thread (each
/// call is a round trip through a channel and a thread wake-up, which costs
/// more than the inserts themselves): `prefix; duplicate lookup`, then
/// `inserts ...; suffix` as one multi-statement execution.
/// `prefix`/`suffix` open and close the transaction or a savepoint.
async fn accept_chained(
    conn: &mut SqliteConnection,
    messages: &[&NewMessage],
    now: DateTime<Utc>,
    window: Duration,
    prefix: &'static str,
    suffix: &'static str,
) -> Result<(Vec<Accepted>, bool)> {
    // Prepared statements are cached only for the smallest batches: their
    // few texts recur (one sender waiting for each ACK sends batches of
    // one), and preparing them again would be most of such a commit's work.
    // The texts of larger batches change with their size, so a cached one
    // would rarely be used again, and hundreds of large prepared statements
    // would hold tens of megabytes.
    let cached = messages.len() <= CACHED_BATCH;
    let mut pending_prefix = Some(prefix);
    let mut existing = Vec::new();
    for chunk in control_ids(messages).chunks(IN_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("");
        if let Some(p) = pending_prefix.take() {
            qb.push(p).push("; ");
        }
        qb.push("SELECT id, channel, sender_key, control_id, received_at, ack FROM messages WHERE control_id IN (");
        let mut sep = qb.separated(", ");
        for cid in chunk {
            sep.push_bind(*cid);
        }
        qb.push(") AND received_at >= ").push_bind(window_start(now, window));
        existing.extend(qb.build_query_as::<OriginalRow>().persistent(cached).fetch_all(&mut *conn).await?);
    }
    let plans = plan_batch(messages, existing);
    let inserts: Vec<&Prepared<'_>> =
        plans.iter().filter_map(|p| if let Plan::Insert(p) = p { Some(p) } else { None }).collect();
    let mut statements = Vec::with_capacity(1);
    if let Some(p) = pending_prefix {
        next_statement(&mut statements, true, p);
    }
    push_inserts(&mut statements, true, &inserts, to_micros(now));
    next_statement(&mut statements, true, suffix);
    for mut qb in statements {
        qb.build().persistent(cached).execute(&mut *conn).await?;
    }
    let queued = inserts.iter().any(|p| p.has_queued());
    let answers = plans
        .into_iter()
        .map(|p| match p {
            Plan::Insert(p) => Accepted::Stored { id: MessageId(p.id) },
            Plan::Duplicate(d) => d,
        })
        .collect();
    Ok((answers, queued))
}

async fn exec(conn: &mut SqliteConnection, sql: &'static str) -> Result<()> {
    sqlx::query(sql).execute(conn).await?;
    Ok(())
}

/// Head selection: a delivery is claimable if it is due (queued and its
/// retry time has come, or in flight with an expired lease), no older
/// unfinished delivery shares its key, and no other delivery of its key is
/// in flight under a valid lease (a replayed older delivery must not
/// overtake one being sent).
pub(super) const CLAIM_CANDIDATES: &str = "\
SELECT d.id, d.state, d.total_attempts, d.lease_owner, d.lease_started_at, d.lease_expires_at
FROM deliveries d
WHERE d.channel = ?1 AND d.destination = ?2
  AND d.state IN ('queued', 'in_flight', 'error')
  AND ((d.state = 'queued' AND d.next_attempt_at <= ?3)
       OR (d.state = 'in_flight' AND d.lease_expires_at <= ?3))
  AND NOT EXISTS (SELECT 1 FROM deliveries e
                  WHERE e.channel = d.channel AND e.destination = d.destination
                    AND e.queue_key = d.queue_key AND e.state IN ('queued', 'in_flight', 'error')
                    AND e.id < d.id)
  AND NOT EXISTS (SELECT 1 FROM deliveries f
                  WHERE f.channel = d.channel AND f.destination = d.destination
                    AND f.queue_key = d.queue_key AND f.state IN ('queued', 'in_flight', 'error')
                    AND f.state = 'in_flight' AND f.lease_expires_at > ?3 AND f.id <> d.id)
ORDER BY d.id
LIMIT ?4";

/// The earliest future moment a delivery of this destination becomes due.
async fn claim(conn: &mut SqliteConnection, req: ClaimRequest, now: DateTime<Utc>) -> Result<Claim> {
    let candidates: Vec<CandidateRow> = sqlx::query_as(CLAIM_CANDIDATES)
        .bind(&req.channel)
        .bind(&req.destination)
        .bind(to_micros(now))
        .bind(i64::from(req.max))
        .fetch_all(&mut *conn)
        .await?;
    claim_with(conn, &req, now, candidates).await
}
