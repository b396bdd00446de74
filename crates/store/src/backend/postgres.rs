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
//! - **Wake-ups across processes**: a commit that queues work (accepts,
//!   replays) sends `NOTIFY plexus_store_work`; every store LISTENs and
//!   bumps [`Store::changes`], so idle workers on all nodes claim at once
//!   instead of waiting for their next poll.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::shared::{read_side, write_side};
use super::tokens::tokens_side;
use super::writer::{self, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The LISTEN/NOTIFY channel announcing claimable work.
const WORK_CHANNEL: &str = "plexus_store_work";

/// A store on PostgreSQL.
#[derive(Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
    ops: mpsc::Sender<Op>,
    clock: Clock,
    changed: Arc<watch::Sender<u64>>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The LISTEN connection's own pool (closing it ends the listener).
    listener_pool: PgPool,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(format!("postgres url: {e}")))?;
    // The writer's own pool of one: accepts never wait behind claims and
    // reads for a connection, and a broken connection is replaced.
    let writer_pool = PgPoolOptions::new().max_connections(1).connect_with(connect.clone()).await?;
    // Migrations take an advisory lock: nodes starting together migrate once.
    MIGRATOR.run(&writer_pool).await?;
    let pool = PgPoolOptions::new().max_connections(options.pool_size).connect_with(connect.clone()).await?;
    let listener_pool = PgPoolOptions::new().max_connections(1).connect_with(connect).await?;

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
    let mut listener = PgListener::connect_with(&listener_pool).await?;
    listener.listen(WORK_CHANNEL).await?;
    tokio::spawn(listen(listener, changed.clone()));
    Ok(Arc::new(PgStore {
        pool,
        ops,
        clock: options.clock,
        changed,
        shutdown,
        writer: tokio::sync::Mutex::new(Some(handle)),
        listener_pool,
    }))
}

/// Bumps `changed` for every work notification, from any process, until the
/// listener's pool is closed. `recv` reconnects by itself after a network
/// failure (notifications sent meanwhile are lost: workers still poll).
async fn listen(mut listener: PgListener, changed: Arc<watch::Sender<u64>>) {
    loop {
        match listener.recv().await {
            Ok(_) => changed.send_modify(|n| *n = n.wrapping_add(1)),
            Err(sqlx::Error::PoolClosed) => break,
            Err(e) => {
                warn!(error = %StoreError::Database(e).summary(), "postgres store: LISTEN failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    debug!("postgres store listener stopped");
}

/// Announces claimable work to every process, at COMMIT.
async fn notify_work(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(conn).await?;
    Ok(())
}

read_side!(Postgres, PgPool, numbered_placeholders);
tokens_side!(Postgres, PgPool, numbered_placeholders, "");
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

    fn clock(&self) -> Clock {
        self.clock.clone()
    }

    async fn try_lock(&self, name: &str) -> Result<Option<crate::ClusterLock>> {
        super::locks::postgres(&self.pool, name).await
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
        if !done.replayed.is_empty() {
            or_rollback!(tx, notify_work(&mut tx).await);
        }
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
        or_rollback!(tx, notify_work(&mut tx).await);
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
        super::sync_jobs::postgres::create(&self.pool, job, self.clock.now()).await
    }

    async fn update_sync_job(&self, id: crate::SyncJobId, update: crate::SyncJobUpdate) -> Result<()> {
        super::sync_jobs::postgres::update(&self.pool, id, update, self.clock.now()).await
    }

    async fn sync_job(&self, id: crate::SyncJobId) -> Result<Option<crate::SyncJob>> {
        super::sync_jobs::postgres::get(&self.pool, id).await
    }

    async fn sync_jobs(&self, query: &crate::SyncJobQuery) -> Result<Vec<crate::SyncJob>> {
        super::sync_jobs::postgres::recent(&self.pool, query).await
    }

    async fn poll_checkpoint(&self, channel: &str, resource_type: &str) -> Result<Option<crate::PollCheckpoint>> {
        super::poll_checkpoints::postgres::get(&self.pool, channel, resource_type).await
    }

    async fn save_poll_checkpoint(&self, checkpoint: &crate::PollCheckpoint) -> Result<()> {
        super::poll_checkpoints::postgres::save(&self.pool, checkpoint, self.clock.now()).await
    }

    async fn poll_checkpoints(&self, channel: Option<&str>) -> Result<Vec<crate::PollCheckpoint>> {
        super::poll_checkpoints::postgres::list(&self.pool, channel).await
    }

    async fn delete_poll_checkpoints(&self, channel: &str, resource_type: Option<&str>) -> Result<u64> {
        super::poll_checkpoints::postgres::delete(&self.pool, channel, resource_type).await
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
        self.listener_pool.close().await;
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
                // Isolate the request that failed the batch (or retry them
                // all if the connection dropped): one transaction each.
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
            sqlx::query(
                "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        }
        let existing = or_rollback!(tx, originals(&mut tx, messages, window_start(now, self.window)).await);
        let plans = plan_batch(messages, existing);
        let inserts: Vec<&Prepared<'_>> =
            plans.iter().filter_map(|p| if let Plan::Insert(p) = p { Some(p) } else { None }).collect();
        let queued = inserts.iter().any(|p| p.has_queued());
        if !inserts.is_empty() {
            or_rollback!(tx, insert_unnest(&mut tx, &inserts, to_micros(now), queued).await);
        }
        tx.commit().await?;
        let answers = plans
            .into_iter()
            .map(|p| match p {
                Plan::Insert(p) => Accepted::Stored { id: MessageId(p.id) },
                Plan::Duplicate(d) => d,
            })
            .collect();
        Ok((answers, queued))
    }
}

/// Stored messages within the duplicate window sharing a control id with
/// the batch. One index lookup per control id, whatever the statistics say:
/// on a young table that autovacuum has not analysed yet, the planner takes
/// `control_id IN (32 values)` for a sixth of the table and scans it all,
/// which costs more with every message. The `OFFSET 0` keeps the lateral
/// subquery from being flattened into a join the planner could again turn
/// into a scan.
async fn originals(conn: &mut PgConnection, messages: &[&NewMessage], cutoff: i64) -> Result<Vec<OriginalRow>> {
    let ids = control_ids(messages);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as(
        "SELECT m.id, m.channel, m.sender_key, m.control_id, m.received_at, m.ack \
         FROM unnest($1::text[]) AS c (control_id) \
         CROSS JOIN LATERAL (SELECT id, channel, sender_key, control_id, received_at, ack FROM messages \
                             WHERE control_id = c.control_id AND received_at >= $2 OFFSET 0) AS m",
    )
    .bind(ids)
    .bind(cutoff)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Inserts a batch's messages, patient identifiers and deliveries, and
/// announces the work, in one statement: three INSERT ... SELECT FROM
/// UNNEST(arrays) in data-modifying CTEs. One round trip, and one statement
/// text whatever the batch size, so it is parsed and planned once per
/// connection. (Foreign keys are checked at the end of the statement, after
/// all three inserts.)
async fn insert_unnest(conn: &mut PgConnection, inserts: &[&Prepared<'_>], now: i64, notify: bool) -> Result<()> {
    let mut patient_rows: (Vec<Uuid>, Vec<&str>) = (Vec::new(), Vec::new());
    for p in inserts {
        let mut ids: Vec<&str> = p.message.patient_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        for pid in ids {
            patient_rows.0.push(p.id);
            patient_rows.1.push(pid);
        }
    }
    let deliveries: Vec<(&Prepared<'_>, &NewDelivery)> =
        inserts.iter().flat_map(|p| p.message.deliveries.iter().map(move |d| (*p, d))).collect();
    let opt =
        |f: fn(&NewMessage) -> &Option<String>| inserts.iter().map(|p| f(p.message).as_deref()).collect::<Vec<_>>();
    sqlx::query(INSERT_BATCH)
        .bind(inserts.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(inserts.iter().map(|p| p.message.channel.as_str()).collect::<Vec<_>>())
        .bind(inserts.iter().map(|p| to_micros(p.message.received_at)).collect::<Vec<_>>())
        .bind(vec![now; inserts.len()])
        .bind(opt(|m| &m.peer_addr))
        .bind(inserts.iter().map(|p| p.message.content_type.as_str()).collect::<Vec<_>>())
        .bind(inserts.iter().map(|p| p.size()).collect::<Vec<_>>())
        .bind(inserts.iter().map(|p| p.sha256.as_slice()).collect::<Vec<_>>())
        .bind(opt(|m| &m.control_id))
        .bind(inserts.iter().map(|p| p.message.sender_key.as_str()).collect::<Vec<_>>())
        .bind(opt(|m| &m.message_type))
        .bind(opt(|m| &m.event))
        .bind(opt(|m| &m.order_key))
        .bind(inserts.iter().map(|p| p.message.ack.as_deref()).collect::<Vec<_>>())
        .bind(inserts.iter().map(|p| p.message.raw.as_slice()).collect::<Vec<_>>())
        .bind(patient_rows.0)
        .bind(patient_rows.1)
        .bind(deliveries.iter().map(|(p, _)| p.id).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|(p, _)| p.message.channel.as_str()).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|(_, d)| d.destination.as_str()).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|(p, _)| p.queue_key.as_str()).collect::<Vec<_>>())
        .bind(
            deliveries
                .iter()
                .map(|(_, d)| match d.initial {
                    InitialState::Queued => "queued",
                    InitialState::Filtered { .. } => "filtered",
                })
                .collect::<Vec<_>>(),
        )
        .bind(
            deliveries
                .iter()
                .map(|(_, d)| match &d.initial {
                    InitialState::Queued => None,
                    InitialState::Filtered { rule } => Some(rule.as_str()),
                })
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(notify)
        .bind(WORK_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

const INSERT_BATCH: &str = "\
WITH m AS (
    INSERT INTO messages (id, channel, received_at, accepted_at, peer_addr, content_type, size, sha256,
                          control_id, sender_key, message_type, event, order_key, ack, raw)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                         $7::bigint[], $8::bytea[], $9::text[], $10::text[], $11::text[], $12::text[],
                         $13::text[], $14::bytea[], $15::bytea[])
), p AS (
    INSERT INTO message_patients (message_id, patient_id)
    SELECT * FROM UNNEST($16::uuid[], $17::text[])
), d AS (
    INSERT INTO deliveries (message_id, channel, destination, queue_key, state, next_attempt_at,
                            filter_rule, created_at, updated_at)
    SELECT u.message_id, u.channel, u.destination, u.queue_key, u.state, $24, u.filter_rule, $24, $24
    FROM UNNEST($18::uuid[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[])
         AS u (message_id, channel, destination, queue_key, state, filter_rule)
)
SELECT CASE WHEN $25 THEN pg_notify($26, '') END";
