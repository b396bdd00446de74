//! The MariaDB (10.11+) / MySQL 8 backend.
//!
//! Same shape as the PostgreSQL backend, with MariaDB's tools:
//! - every connection runs at READ COMMITTED, so each statement of a claim
//!   sees what other claimers committed before it (and InnoDB takes no gap
//!   locks that would make concurrent accepts and claims deadlock);
//! - accepts: the group-commit writer holds a named lock (`GET_LOCK`, per
//!   database) around each batch, so two processes never both decide that
//!   the same control id is new. Batches of different processes therefore
//!   commit one after the other on MariaDB; PostgreSQL locks per key;
//! - claims: a row of `claim_locks` per (channel, destination), locked
//!   `FOR UPDATE`, serialises claimers of one queue in any process; MariaDB
//!   has no `DISTINCT ON`, so heads are found with `NOT EXISTS` (no older
//!   unfinished delivery of the same key) along the (channel, destination,
//!   state, id) index, and locked `FOR UPDATE SKIP LOCKED`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Executor, FromRow, MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::shared::{question_marks, read_side, write_side};
use super::tokens::tokens_side;
use super::writer::{self, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// How long an accept batch waits for another process's batch.
const ACCEPT_LOCK_WAIT_SECS: i64 = 10;

/// A store on MariaDB or MySQL.
#[derive(Debug)]
pub(crate) struct MySqlStore {
    pool: MySqlPool,
    ops: mpsc::Sender<Op>,
    clock: Clock,
    changed: Arc<watch::Sender<u64>>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Queues whose `claim_locks` row is known to exist.
    lock_rows: Mutex<HashSet<(String, String)>>,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    // sqlx knows the scheme as mysql://; mariadb:// is accepted as a synonym.
    let url = match url.strip_prefix("mariadb:") {
        Some(rest) => format!("mysql:{rest}"),
        None => url.to_owned(),
    };
    let connect = MySqlConnectOptions::from_str(&url)
        .map_err(|e| StoreError::InvalidUrl(format!("mysql url: {e}")))?
        .charset("utf8mb4");
    let pool_options = || MySqlPoolOptions::new().after_connect(|conn, _meta| Box::pin(session_settings(conn)));
    let writer_pool = pool_options().max_connections(1).connect_with(connect.clone()).await?;
    MIGRATOR.run(&writer_pool).await?;
    let pool = pool_options().max_connections(options.pool_size).connect_with(connect).await?;

    let (ops, rx) = mpsc::channel(options.max_batch.saturating_mul(4).max(64));
    let changed = Arc::new(watch::channel(0u64).0);
    let shutdown = Arc::new(Notify::new());
    let w = Writer {
        pool: writer_pool,
        clock: options.clock.clone(),
        window: options.duplicate_window,
        changed: changed.clone(),
    };
    let handle = tokio::spawn(w.run(rx, options.max_batch, shutdown.clone()));
    Ok(Arc::new(MySqlStore {
        pool,
        ops,
        clock: options.clock,
        changed,
        shutdown,
        writer: tokio::sync::Mutex::new(Some(handle)),
        lock_rows: Mutex::new(HashSet::new()),
    }))
}

/// Settings every connection of the store runs with.
pub(super) async fn session_settings(conn: &mut MySqlConnection) -> std::result::Result<(), sqlx::Error> {
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
    // MariaDB rewrites NOT EXISTS / EXISTS into IN and materialises the
    // subquery, which scans the whole deliveries index for every retention
    // batch and browser query; probing per row through (message_id, state)
    // reads only what it needs. MySQL 8 has no such switch and refuses the
    // setting: that is fine, it does not make the rewrite either.
    if let Err(e) = conn.execute("SET SESSION optimizer_switch = 'exists_to_in=off'").await {
        debug!(error = %e, "optimizer_switch exists_to_in not available (MySQL)");
    }
    Ok(())
}

read_side!(MySql, MySqlPool, question_marks);
tokens_side!(MySql, MySqlPool, question_marks, " FROM DUAL");
write_side!(MySql, MySqlConnection, question_marks, " FOR UPDATE", " FOR UPDATE SKIP LOCKED");

impl MySqlStore {
    fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes sure the queue's lock row exists. Done outside the claim
    /// transaction: an `INSERT IGNORE` there would take a shared lock that
    /// two claimers would then both try to upgrade (a deadlock).
    async fn ensure_lock_row(&self, channel: &str, destination: &str) -> Result<()> {
        let key = (channel.to_owned(), destination.to_owned());
        if self.lock_rows.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
            return Ok(());
        }
        sqlx::query("INSERT IGNORE INTO claim_locks (channel, destination) VALUES (?, ?)")
            .bind(channel)
            .bind(destination)
            .execute(&self.pool)
            .await?;
        self.lock_rows.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        Ok(())
    }
}

#[async_trait]
impl Store for MySqlStore {
    fn backend(&self) -> Backend {
        Backend::Mysql
    }

    fn clock(&self) -> Clock {
        self.clock.clone()
    }

    async fn try_lock(&self, name: &str) -> Result<Option<crate::ClusterLock>> {
        super::locks::mysql(&self.pool, name).await
    }

    async fn accept(&self, message: NewMessage) -> Result<Accepted> {
        validate_message(&message)?;
        writer::call(&self.ops, |r| Op::Accept(message, r)).await
    }

    async fn accept_many(&self, messages: Vec<NewMessage>) -> Vec<Result<Accepted>> {
        writer::accept_many(&self.ops, messages, validate_message, Op::Accept).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        validate_claim(request)?;
        self.ensure_lock_row(&request.channel, &request.destination).await?;
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM claim_locks WHERE channel = ? AND destination = ? FOR UPDATE")
            .bind(&request.channel)
            .bind(&request.destination)
            .execute(&mut *tx)
            .await?;
        let candidates: Vec<CandidateRow> = sqlx::query_as(CLAIM_CANDIDATES)
            .bind(&request.channel)
            .bind(&request.destination)
            .bind(to_micros(now))
            .bind(to_micros(now))
            .bind(to_micros(now))
            .bind(i64::from(request.max))
            .fetch_all(&mut *tx)
            .await?;
        let claim = or_rollback!(tx, claim_with(&mut tx, request, now, candidates).await);
        tx.commit().await?;
        Ok(claim)
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
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let done =
            or_rollback!(tx, complete(&mut tx, delivery, lease, outcome, policy.clone(), retry_after, now).await);
        tx.commit().await?;
        self.wake();
        Ok(done)
    }

    async fn extend_lease(&self, delivery: DeliveryId, lease: LeaseToken, by: Duration) -> Result<DateTime<Utc>> {
        let mut conn = self.pool.acquire().await?;
        extend(&mut conn, delivery, lease, by, self.clock.now()).await
    }

    async fn replay(&self, request: ReplayRequest) -> Result<ReplayResult> {
        validate_actor(&request.actor)?;
        let mut tx = self.pool.begin().await?;
        let done = or_rollback!(tx, replay(&mut tx, request, self.clock.now()).await);
        tx.commit().await?;
        if !done.replayed.is_empty() {
            self.wake();
        }
        Ok(done)
    }

    async fn dead_letter(&self, delivery: DeliveryId, actor: &str, reason: Option<String>) -> Result<()> {
        validate_actor(actor)?;
        let mut tx = self.pool.begin().await?;
        or_rollback!(tx, dead_letter(&mut tx, delivery, actor.to_owned(), reason, self.clock.now()).await);
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    async fn record_audit(&self, event: NewAuditEvent) -> Result<()> {
        validate_audit(&event)?;
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, &event, self.clock.now()).await
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        read_audit_events(&self.pool, query).await
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageDetail>> {
        read_message(&self.pool, id).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        read_search(&self.pool, query).await
    }

    async fn counts(&self) -> Result<Vec<StateCount>> {
        read_counts(&self.pool).await
    }

    async fn retention_batch(&self, request: &RetentionRequest) -> Result<RetentionBatch> {
        if request.batch_size == 0 {
            return Err(StoreError::invalid("batch_size", "must be at least 1"));
        }
        let mut tx = self.pool.begin().await?;
        let done = or_rollback!(tx, retention(&mut tx, request.clone(), self.clock.now()).await);
        tx.commit().await?;
        Ok(done)
    }

    async fn create_api_token(&self, token: crate::NewApiToken) -> Result<crate::ApiToken> {
        token_insert(&self.pool, &token, self.clock.now()).await
    }

    async fn api_token(&self, id: &str) -> Result<Option<crate::ApiToken>> {
        token_by_id(&self.pool, id).await
    }

    async fn api_tokens(&self) -> Result<Vec<crate::ApiToken>> {
        token_list(&self.pool).await
    }

    async fn revoke_api_token(&self, name_or_id: &str) -> Result<u64> {
        token_revoke(&self.pool, name_or_id, self.clock.now()).await
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        token_touch(&self.pool, id, at).await
    }

    async fn create_sync_job(&self, job: crate::NewSyncJob) -> Result<crate::SyncJob> {
        super::sync_jobs::mysql::create(&self.pool, job, self.clock.now()).await
    }

    async fn update_sync_job(&self, id: crate::SyncJobId, update: crate::SyncJobUpdate) -> Result<()> {
        super::sync_jobs::mysql::update(&self.pool, id, update, self.clock.now()).await
    }

    async fn sync_job(&self, id: crate::SyncJobId) -> Result<Option<crate::SyncJob>> {
        super::sync_jobs::mysql::get(&self.pool, id).await
    }

    async fn sync_jobs(&self, query: &crate::SyncJobQuery) -> Result<Vec<crate::SyncJob>> {
        super::sync_jobs::mysql::recent(&self.pool, query).await
    }

    async fn poll_checkpoint(&self, channel: &str, resource_type: &str) -> Result<Option<crate::PollCheckpoint>> {
        super::poll_checkpoints::mysql::get(&self.pool, channel, resource_type).await
    }

    async fn save_poll_checkpoint(&self, checkpoint: &crate::PollCheckpoint) -> Result<()> {
        super::poll_checkpoints::mysql::save(&self.pool, checkpoint, self.clock.now()).await
    }

    async fn poll_checkpoints(&self, channel: Option<&str>) -> Result<Vec<crate::PollCheckpoint>> {
        super::poll_checkpoints::mysql::list(&self.pool, channel).await
    }

    async fn delete_poll_checkpoints(&self, channel: &str, resource_type: Option<&str>) -> Result<u64> {
        super::poll_checkpoints::mysql::delete(&self.pool, channel, resource_type).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn close(&self) {
        let handle = self.writer.lock().await.take();
        if let Some(handle) = handle {
            self.shutdown.notify_one();
            if let Err(e) = handle.await {
                warn!(error = %e, "mysql store writer ended abnormally");
            }
        }
        self.pool.close().await;
    }
}

/// Head selection without `DISTINCT ON`: a delivery is a claimable head if
/// it is due, no older unfinished delivery shares its key, and no other
/// delivery of its key is in flight under a valid lease.
pub(super) const CLAIM_CANDIDATES: &str = "\
SELECT d.id, d.state, d.total_attempts, d.lease_owner, d.lease_started_at, d.lease_expires_at
FROM deliveries d
WHERE d.channel = ? AND d.destination = ?
  AND d.state IN ('queued', 'in_flight', 'error')
  AND ((d.state = 'queued' AND d.next_attempt_at <= ?)
       OR (d.state = 'in_flight' AND d.lease_expires_at <= ?))
  AND NOT EXISTS (SELECT 1 FROM deliveries e
                  WHERE e.channel = d.channel AND e.destination = d.destination
                    AND e.queue_key = d.queue_key AND e.state IN ('queued', 'in_flight', 'error')
                    AND e.id < d.id)
  AND NOT EXISTS (SELECT 1 FROM deliveries f
                  WHERE f.channel = d.channel AND f.destination = d.destination
                    AND f.queue_key = d.queue_key AND f.state = 'in_flight'
                    AND f.lease_expires_at > ? AND f.id <> d.id)
ORDER BY d.id
LIMIT ?
FOR UPDATE SKIP LOCKED";

/// The group-commit writer for accepts.
struct Writer {
    pool: MySqlPool,
    clock: Clock,
    window: Duration,
    changed: Arc<watch::Sender<u64>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Op>, max_batch: usize, shutdown: Arc<Notify>) {
        loop {
            tokio::select! {
                batch = writer::next_batch(&mut rx, max_batch) => match batch {
                    Some(batch) => self.run_batch(batch).await,
                    None => break,
                },
                () = shutdown.notified() => {
                    rx.close();
                    while let Some(batch) = writer::next_batch(&mut rx, max_batch).await {
                        self.run_batch(batch).await;
                    }
                    break;
                }
            }
        }
        self.pool.close().await;
        debug!("mysql store writer stopped");
    }

    async fn run_batch(&self, batch: Vec<Op>) {
        let mut accepts = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Accept(m, r) => accepts.push((m, r)),
                other => other.fail(StoreError::invalid("request", "not a group-commit request")),
            }
        }
        let now = self.clock.now();
        let messages: Vec<&NewMessage> = accepts.iter().map(|(m, _)| m).collect();
        match self.accept_tx(&messages, now).await {
            Ok((answers, queued)) => {
                // Wake the workers before answering: when an accept
                // returns, the work it queued has been announced.
                if queued {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
                for ((_, reply), answer) in accepts.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if accepts.len() == 1 => {
                if let Some((_, reply)) = accepts.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                warn!(error = %e.summary(), batch = accepts.len(), "group commit failed, retrying one by one");
                let mut queued = false;
                for (m, reply) in accepts {
                    let r = self.accept_tx(&[&m], now).await.map(|(mut v, q)| {
                        queued |= q;
                        v.remove(0)
                    });
                    let _ = reply.send(r);
                }
                if queued {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }

    async fn accept_tx(&self, messages: &[&NewMessage], now: DateTime<Utc>) -> Result<(Vec<Accepted>, bool)> {
        let mut conn = self.pool.acquire().await?;
        let needs_lock = messages.iter().any(|m| m.control_id.is_some());
        if needs_lock {
            // GET_LOCK names are server-wide: include the database.
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('plexus_accept:', DATABASE()), ?)")
                .bind(ACCEPT_LOCK_WAIT_SECS)
                .fetch_one(&mut *conn)
                .await?;
            if got != Some(1) {
                return Err(StoreError::Busy("another process held the accept lock too long"));
            }
        }
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let r = or_rollback!(tx, insert_batch(&mut tx, messages, now, self.window).await);
            tx.commit().await?;
            Ok::<_, StoreError>(r)
        }
        .await;
        if needs_lock {
            let released =
                sqlx::query("SELECT RELEASE_LOCK(CONCAT('plexus_accept:', DATABASE()))").execute(&mut *conn).await;
            if released.is_err() {
                // A connection that may still hold the lock must not go back
                // to the pool; closing it releases the lock.
                let _ = conn.detach();
            }
        }
        result
    }
}
