//! The PostgreSQL backend: several Plexus processes may share one database.
//!
//! - **Accepts** go through this process's group-commit writer (one
//!   connection of its own). Before looking for duplicates, a batch takes a
//!   transaction-scoped advisory lock per duplicate key (channel, sender,
//!   control id), in sorted order: a sender that resends to another node
//!   while the first node is still committing waits for that commit and then
//!   sees the original.
//! - **Claims** run on the pool. Each claim first takes a transaction-scoped
//!   advisory lock on its (channel, destination), so claimers of one queue,
//!   in any process, choose key heads one after the other, each on a fresh
//!   snapshot; then heads are picked with `DISTINCT ON (queue_key)` over the
//!   partial index of unfinished deliveries, locked `FOR UPDATE SKIP LOCKED`
//!   (a row a completion or replay is changing is passed over, not waited
//!   for) and leased. Without the queue lock, two claimers on stale
//!   snapshots could lease two different deliveries of one key (after a
//!   replay, or when a lower delivery id commits late on another node).
//! - **Completions, replays, retention** run in their own transactions on
//!   the pool, locking the rows they change.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::shared::{read_side, write_side};
use super::writer::{self, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A store on PostgreSQL.
#[derive(Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
    ops: mpsc::Sender<Op>,
    clock: Clock,
    changed: Arc<watch::Sender<u64>>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(format!("postgres url: {e}")))?;
    // The writer's own pool of one: accepts never wait behind claims and
    // reads for a connection, and a broken connection is replaced.
    let writer_pool = PgPoolOptions::new().max_connections(1).connect_with(connect.clone()).await?;
    // Migrations take an advisory lock: nodes starting together migrate once.
    MIGRATOR.run(&writer_pool).await?;
    let pool = PgPoolOptions::new().max_connections(options.pool_size).connect_with(connect).await?;

    let (ops, rx) = mpsc::channel(options.max_batch.saturating_mul(4).max(64));
    let changed = Arc::new(watch::channel(0u64).0);
    let shutdown = Arc::new(Notify::new());
    let w = Writer { pool: writer_pool, clock: options.clock.clone(), window: options.duplicate_window, changed: changed.clone() };
    let handle = tokio::spawn(w.run(rx, options.max_batch, shutdown.clone()));
    Ok(Arc::new(PgStore {
        pool,
        ops,
        clock: options.clock,
        changed,
        shutdown,
        writer: tokio::sync::Mutex::new(Some(handle)),
    }))
}

read_side!(Postgres, PgPool, numbered_placeholders);
write_side!(Postgres, PgConnection, numbered_placeholders, " FOR UPDATE", " FOR UPDATE SKIP LOCKED");

impl PgStore {
    fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn accept(&self, message: NewMessage) -> Result<Accepted> {
        validate_message(&message)?;
        writer::call(&self.ops, |r| Op::Accept(message, r)).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        validate_claim(request)?;
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        // A claimer stuck behind a dead session's lock gives up (transient)
        // instead of hanging its worker.
        sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(&request.channel)
            .bind(&request.destination)
            .execute(&mut *tx)
            .await?;
        let candidates: Vec<CandidateRow> = sqlx::query_as(CLAIM_CANDIDATES)
            .bind(&request.channel)
            .bind(&request.destination)
            .bind(to_micros(now))
            .bind(i64::from(request.max))
            .fetch_all(&mut *tx)
            .await?;
        let claim = claim_with(&mut tx, request, now, candidates).await?;
        tx.commit().await?;
        Ok(claim)
    }

    async fn complete(&self, delivery: DeliveryId, lease: LeaseToken, outcome: Outcome, policy: &RetryPolicy) -> Result<Completion> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let done = complete(&mut tx, delivery, lease, outcome, policy.clone(), now).await?;
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
        let done = replay(&mut tx, request, self.clock.now()).await?;
        tx.commit().await?;
        if !done.replayed.is_empty() {
            self.wake();
        }
        Ok(done)
    }

    async fn dead_letter(&self, delivery: DeliveryId, actor: &str, reason: Option<String>) -> Result<()> {
        validate_actor(actor)?;
        let mut tx = self.pool.begin().await?;
        dead_letter(&mut tx, delivery, actor.to_owned(), reason, self.clock.now()).await?;
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
        let done = retention(&mut tx, request.clone(), self.clock.now()).await?;
        tx.commit().await?;
        Ok(done)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn close(&self) {
        let handle = self.writer.lock().await.take();
        if let Some(handle) = handle {
            self.shutdown.notify_one();
            if let Err(e) = handle.await {
                warn!(error = %e, "postgres store writer ended abnormally");
            }
        }
        self.pool.close().await;
    }
}

/// Head selection with `DISTINCT ON`: the oldest unfinished delivery of each
/// key (read in order from the partial queue index), kept if it is due
/// (queued and its retry time has come, or in flight under an expired lease)
/// and no other delivery of its key is in flight under a valid lease (a
/// replayed older delivery must not overtake one being sent). The due heads
/// are handed over as an id array so that the rows are fetched and locked by
/// primary key, whatever the table's size; the conditions are checked again
/// on the locked row, which may have changed since the heads were read.
pub(super) const CLAIM_CANDIDATES: &str = "\
WITH heads AS (
    SELECT DISTINCT ON (queue_key) id, state, next_attempt_at, lease_expires_at
    FROM deliveries
    WHERE channel = $1 AND destination = $2 AND state IN ('queued', 'in_flight', 'error')
    ORDER BY queue_key, id
)
SELECT d.id, d.state, d.total_attempts, d.lease_owner, d.lease_started_at, d.lease_expires_at
FROM deliveries d
WHERE d.id = ANY (ARRAY(SELECT id FROM heads h
                        WHERE (h.state = 'queued' AND h.next_attempt_at <= $3)
                           OR (h.state = 'in_flight' AND h.lease_expires_at <= $3)))
  AND ((d.state = 'queued' AND d.next_attempt_at <= $3)
       OR (d.state = 'in_flight' AND d.lease_expires_at <= $3))
  AND NOT EXISTS (SELECT 1 FROM deliveries f
                  WHERE f.channel = d.channel AND f.destination = d.destination
                    AND f.queue_key = d.queue_key AND f.state IN ('queued', 'in_flight', 'error')
                    AND f.state = 'in_flight' AND f.lease_expires_at > $3 AND f.id <> d.id)
ORDER BY d.id
LIMIT $4
FOR UPDATE OF d SKIP LOCKED";

/// The group-commit writer for accepts.
struct Writer {
    pool: PgPool,
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
        debug!("postgres store writer stopped");
    }

    async fn run_batch(&self, batch: Vec<Op>) {
        let mut accepts = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Accept(m, r) => accepts.push((m, r)),
                // Only accepts are sent to this writer.
                other => other.fail(StoreError::invalid("request", "not a group-commit request")),
            }
        }
        let now = self.clock.now();
        let messages: Vec<&NewMessage> = accepts.iter().map(|(m, _)| m).collect();
        match self.accept_tx(&messages, now).await {
            Ok((answers, queued)) => {
                for ((_, reply), answer) in accepts.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
                if queued {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) if accepts.len() == 1 => {
                if let Some((_, reply)) = accepts.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                // Isolate the request that failed the batch (or retry them
                // all if the connection dropped): one transaction each.
                warn!(error = %e, batch = accepts.len(), "group commit failed, retrying one by one");
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
        let mut tx = self.pool.begin().await?;
        let mut keys: Vec<i64> = messages
            .iter()
            .filter_map(|m| m.control_id.as_deref().map(|c| dedup_lock_key(&m.channel, &m.sender_key, c)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if !keys.is_empty() {
            // In array order (sorted), so two nodes never wait on each other
            // in a cycle.
            sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, n) ORDER BY n")
                .bind(&keys)
                .execute(&mut *tx)
                .await?;
        }
        let result = insert_batch(&mut tx, messages, now, self.window).await?;
        tx.commit().await?;
        Ok(result)
    }
}
