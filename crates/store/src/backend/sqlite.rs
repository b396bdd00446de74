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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, FromRow, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::writer::{self, Done, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, SqliteSynchronous as Sync, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT: 64 rows of at most 16 columns stay far below
/// SQLite's 32,766 bound variables.
const INSERT_CHUNK: usize = 64;
/// Values per `IN (...)` list.
const IN_CHUNK: usize = 500;

/// A store on a local SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: SqlitePool,
    changes: watch::Receiver<u64>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        // Each pooled connection would see its own empty database.
        return Err(StoreError::InvalidUrl("an in-memory SQLite store cannot be shared by the writer and readers".into()));
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
        .statement_cache_capacity(512);

    let mut conn = connect.connect().await.map_err(open_error)?;
    MIGRATOR.run(&mut conn).await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(options.pool_size)
        .connect_with(connect)
        .await
        .map_err(open_error)?;

    let (ops, rx) = mpsc::channel(options.max_batch.saturating_mul(4).max(64));
    let (changed, changes) = watch::channel(0u64);
    let writer = Writer { conn, clock: options.clock.clone(), window: options.duplicate_window, changed };
    let shutdown = Arc::new(Notify::new());
    let handle = tokio::spawn(writer.run(rx, options.max_batch, shutdown.clone()));
    Ok(Arc::new(SqliteStore { ops, readers, changes, shutdown, writer: tokio::sync::Mutex::new(Some(handle)) }))
}

/// A file that cannot be opened is a configuration problem, not a busy
/// database.
fn open_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(_) | sqlx::Error::Io(_) => StoreError::InvalidUrl(format!("cannot open the SQLite store: {e}")),
        e => StoreError::Database(e),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn accept(&self, message: NewMessage) -> Result<Accepted> {
        validate_message(&message)?;
        writer::call(&self.ops, |r| Op::Accept(message, r)).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        validate_claim(request)?;
        writer::call(&self.ops, |r| Op::Claim(request.clone(), r)).await
    }

    async fn complete(&self, delivery: DeliveryId, lease: LeaseToken, outcome: Outcome, policy: &RetryPolicy) -> Result<Completion> {
        let policy = policy.clone();
        writer::call(&self.ops, |reply| Op::Complete { delivery, lease, outcome, policy, reply }).await
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, at, actor, action, message_id, delivery_id, detail FROM audit_events WHERE 1 = 1",
        );
        if let Some(m) = query.message_id {
            qb.push(" AND message_id = ").push_bind(m.0);
        }
        if let Some(before) = query.before_id {
            qb.push(" AND id < ").push_bind(before);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(page_limit(query.limit, 100)));
        let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(&self.readers).await?;
        Ok(rows.into_iter().map(AuditRow::into_event).collect())
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageDetail>> {
        // One read transaction: a consistent snapshot of message, deliveries
        // and attempts even while the writer commits.
        let mut tx = self.readers.begin().await?;
        let row: Option<SqliteRow> = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}, m.raw, m.ack FROM messages m WHERE m.id = ?"
        )))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let message = MessageRow::from_row(&row)?;
        let raw: Option<Vec<u8>> = row.try_get("raw")?;
        let ack: Option<Vec<u8>> = row.try_get("ack")?;
        let patient_ids: Vec<String> =
            sqlx::query_scalar("SELECT patient_id FROM message_patients WHERE message_id = ? ORDER BY patient_id")
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?;
        let deliveries: Vec<DeliveryRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ? ORDER BY id"
        )))
        .bind(id.0)
        .fetch_all(&mut *tx)
        .await?;
        let attempts: Vec<AttemptRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id IN \
             (SELECT id FROM deliveries WHERE message_id = ?) ORDER BY delivery_id, number"
        )))
        .bind(id.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        assemble_detail(message, raw, ack, patient_ids, deliveries, attempts).map(Some)
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        let s = build_search(query)?;
        let mut q = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(s.sql));
        for p in s.params {
            q = match p {
                Param::I64(v) => q.bind(v),
                Param::Text(v) => q.bind(v),
                Param::Uuid(v) => q.bind(v),
            };
        }
        let mut conn = self.readers.acquire().await?;
        let rows = q.fetch_all(&mut *conn).await?;
        let ids: Vec<Uuid> = rows.iter().take(s.limit).map(|r| r.id).collect();
        let summaries = if ids.is_empty() {
            Vec::new()
        } else {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT id, message_id, destination, state, attempts FROM deliveries WHERE message_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") ORDER BY id");
            qb.build_query_as::<DeliverySummaryRow>().fetch_all(&mut *conn).await?
        };
        Ok(finish_page(rows, s.limit, group_summaries(summaries)?))
    }

    async fn counts(&self) -> Result<Vec<StateCount>> {
        let rows: Vec<CountRow> = sqlx::query_as(
            "SELECT channel, destination, state, COUNT(*) AS n FROM deliveries \
             GROUP BY channel, destination, state ORDER BY channel, destination, state",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(CountRow::into_count).collect()
    }

    async fn retention_batch(&self, request: &RetentionRequest) -> Result<RetentionBatch> {
        if request.batch_size == 0 {
            return Err(StoreError::invalid("batch_size", "must be at least 1"));
        }
        writer::call(&self.ops, |r| Op::Retention(request.clone(), r)).await
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
        let now = self.clock.now();
        let mut done = Vec::with_capacity(accepts.len() + others.len());
        let mut wake = false;

        if !accepts.is_empty() {
            let messages: Vec<&NewMessage> = accepts.iter().map(|(m, _)| m).collect();
            let bulk = savepoint!(self.conn, accept_all(&mut self.conn, &messages, now, self.window).await);
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
                    warn!(error = %e, batch = messages.len(), "bulk accept failed, retrying one by one");
                    for (m, reply) in accepts {
                        let one = savepoint!(self.conn, accept_all(&mut self.conn, &[&m], now, self.window).await);
                        done.push(Done::new(reply, one.map(|(mut r, q)| {
                            wake |= q;
                            r.remove(0)
                        })));
                    }
                }
            }
        }

        for op in others {
            done.push(self.run_op(op, now, &mut wake).await);
        }

        match exec(&mut self.conn, "COMMIT").await {
            Ok(()) => {
                for d in done {
                    d.send(None);
                }
                if wake {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                warn!(error = %e, "group commit failed");
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
                let r = savepoint!(*conn, accept_all(conn, &[&m], now, self.window).await);
                Done::new(reply, r.map(|(mut v, q)| {
                    *wake |= q;
                    v.remove(0)
                }))
            }
            Op::Claim(req, reply) => Done::new(reply, savepoint!(*conn, claim(conn, req, now).await)),
            Op::Complete { delivery, lease, outcome, policy, reply } => {
                let r = savepoint!(*conn, complete(conn, delivery, lease, outcome, policy, now).await);
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

/// Inserts a batch of messages (duplicates excluded) with bulk INSERTs.
/// Returns each message's answer and whether any queued delivery was
/// created.
async fn accept_all(
    conn: &mut SqliteConnection,
    messages: &[&NewMessage],
    now: DateTime<Utc>,
    window: Duration,
) -> Result<(Vec<Accepted>, bool)> {
    let cutoff = window_start(now, window);
    let mut existing = Vec::new();
    for chunk in control_ids(messages).chunks(IN_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, channel, sender_key, control_id, received_at, ack FROM messages WHERE control_id IN (",
        );
        let mut sep = qb.separated(", ");
        for cid in chunk {
            sep.push_bind(*cid);
        }
        qb.push(") AND received_at >= ").push_bind(cutoff);
        existing.extend(qb.build_query_as::<OriginalRow>().fetch_all(&mut *conn).await?);
    }
    let plans = plan_batch(messages, existing);
    let inserts: Vec<&Prepared<'_>> =
        plans.iter().filter_map(|p| if let Plan::Insert(p) = p { Some(p) } else { None }).collect();
    insert_messages(conn, &inserts, to_micros(now)).await?;
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

async fn insert_messages(conn: &mut SqliteConnection, inserts: &[&Prepared<'_>], now: i64) -> Result<()> {
    for chunk in inserts.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, channel, received_at, accepted_at, peer_addr, content_type, size, sha256, \
             control_id, sender_key, message_type, event, order_key, ack, raw) ",
        );
        qb.push_values(chunk, |mut b, p| {
            let m = p.message;
            b.push_bind(p.id)
                .push_bind(&m.channel)
                .push_bind(to_micros(m.received_at))
                .push_bind(now)
                .push_bind(&m.peer_addr)
                .push_bind(&m.content_type)
                .push_bind(p.size())
                .push_bind(&p.sha256)
                .push_bind(&m.control_id)
                .push_bind(&m.sender_key)
                .push_bind(&m.message_type)
                .push_bind(&m.event)
                .push_bind(&m.order_key)
                .push_bind(&m.ack)
                .push_bind(&m.raw);
        });
        qb.build().execute(&mut *conn).await?;
    }

    let patients: Vec<(Uuid, &str)> = inserts
        .iter()
        .flat_map(|p| {
            let mut ids: Vec<&str> = p.message.patient_ids.iter().map(String::as_str).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter().map(move |pid| (p.id, pid))
        })
        .collect();
    for chunk in patients.chunks(INSERT_CHUNK * 4) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO message_patients (message_id, patient_id) ");
        qb.push_values(chunk, |mut b, (id, pid)| {
            b.push_bind(*id).push_bind(*pid);
        });
        qb.build().execute(&mut *conn).await?;
    }

    let deliveries: Vec<(&Prepared<'_>, &NewDelivery)> =
        inserts.iter().flat_map(|p| p.message.deliveries.iter().map(move |d| (*p, d))).collect();
    for chunk in deliveries.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries (message_id, channel, destination, queue_key, state, next_attempt_at, \
             filter_rule, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, (p, d)| {
            let (state, rule) = match &d.initial {
                InitialState::Queued => ("queued", None),
                InitialState::Filtered { rule } => ("filtered", Some(rule.as_str())),
            };
            b.push_bind(p.id)
                .push_bind(&p.message.channel)
                .push_bind(&d.destination)
                .push_bind(&p.queue_key)
                .push_bind(state)
                .push_bind(now)
                .push_bind(rule)
                .push_bind(now)
                .push_bind(now);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Head selection: a delivery is claimable if it is due (queued and its
/// retry time has come, or in flight with an expired lease), no older
/// unfinished delivery shares its key, and no other delivery of its key is
/// in flight under a valid lease (a replayed older delivery must not
/// overtake one being sent).
const CLAIM_CANDIDATES: &str = "\
SELECT d.id, d.state, d.total_attempts, d.lease_owner, d.lease_started_at, d.lease_expires_at
FROM deliveries d INDEXED BY deliveries_queue
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
const NEXT_DUE: &str = "\
SELECT MIN(CASE WHEN state = 'queued' THEN next_attempt_at ELSE lease_expires_at END)
FROM deliveries INDEXED BY deliveries_queue
WHERE channel = ?1 AND destination = ?2 AND state IN ('queued', 'in_flight', 'error')
  AND ((state = 'queued' AND next_attempt_at > ?3) OR (state = 'in_flight' AND lease_expires_at > ?3))";

async fn claim(conn: &mut SqliteConnection, req: ClaimRequest, now: DateTime<Utc>) -> Result<Claim> {
    let now_us = to_micros(now);
    let candidates: Vec<CandidateRow> = sqlx::query_as(CLAIM_CANDIDATES)
        .bind(&req.channel)
        .bind(&req.destination)
        .bind(now_us)
        .bind(i64::from(req.max))
        .fetch_all(&mut *conn)
        .await?;
    let next_due = if candidates.len() < req.max as usize {
        let t: Option<i64> = sqlx::query_scalar(NEXT_DUE)
            .bind(&req.channel)
            .bind(&req.destination)
            .bind(now_us)
            .fetch_one(&mut *conn)
            .await?;
        t.map(from_micros)
    } else {
        None
    };
    if candidates.is_empty() {
        return Ok(Claim { deliveries: Vec::new(), next_due });
    }

    // A lease that ran out is an attempt that ended without an outcome: log
    // it so the operator sees the crashed or stuck worker.
    for c in candidates.iter().filter(|c| c.state == "in_flight") {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, reason) \
             VALUES (?, ?, ?, ?, ?, 'lease_expired', 'lease expired without an outcome')",
        )
        .bind(c.id)
        .bind(c.total_attempts)
        .bind(c.lease_owner.as_deref().unwrap_or(""))
        .bind(c.lease_started_at.unwrap_or(now_us))
        .bind(c.lease_expires_at.unwrap_or(now_us))
        .execute(&mut *conn)
        .await?;
    }

    let lease = LeaseToken(rand::random::<i64>());
    let expires = to_micros(now + to_delta(req.lease));
    let mut qb = QueryBuilder::<Sqlite>::new("UPDATE deliveries SET state = 'in_flight', lease_token = ");
    qb.push_bind(lease.0)
        .push(", lease_owner = ")
        .push_bind(&req.worker)
        .push(", lease_started_at = ")
        .push_bind(now_us)
        .push(", lease_expires_at = ")
        .push_bind(expires)
        .push(", attempts = attempts + 1, total_attempts = total_attempts + 1, updated_at = ")
        .push_bind(now_us)
        .push(" WHERE id IN (");
    let mut sep = qb.separated(", ");
    for c in &candidates {
        sep.push_bind(c.id);
    }
    qb.push(")");
    qb.build().execute(&mut *conn).await?;

    let mut qb = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {CLAIMED_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id IN ("
    ));
    let mut sep = qb.separated(", ");
    for c in &candidates {
        sep.push_bind(c.id);
    }
    qb.push(") ORDER BY d.id");
    let rows: Vec<ClaimedRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
    let deliveries = rows.into_iter().map(|r| r.into_claimed(lease)).collect::<Result<Vec<_>>>()?;
    Ok(Claim { deliveries, next_due })
}

const LEASE_ROW: &str = "SELECT state, lease_token, lease_expires_at, lease_owner, lease_started_at, attempts, \
     total_attempts FROM deliveries WHERE id = ?";

async fn complete(
    conn: &mut SqliteConnection,
    delivery: DeliveryId,
    lease: LeaseToken,
    outcome: Outcome,
    policy: RetryPolicy,
    now: DateTime<Utc>,
) -> Result<Completion> {
    let now_us = to_micros(now);
    let row: Option<LeaseRow> = sqlx::query_as(LEASE_ROW).bind(delivery.0).fetch_optional(&mut *conn).await?;
    let row = match row {
        Some(r) if r.holds(lease, now_us) => r,
        Some(_) => return Err(StoreError::LeaseLost(delivery)),
        None => return Err(StoreError::NotFound(format!("delivery {delivery}"))),
    };
    let attempt = u32::try_from(row.attempts.max(1)).unwrap_or(u32::MAX);
    let t = transition(outcome, attempt, &policy, now);
    sqlx::query(
        "UPDATE deliveries SET state = ?, next_attempt_at = COALESCE(?, next_attempt_at), lease_token = NULL, \
         lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, filter_rule = ?, error_class = ?, \
         error_reason = ?, transformed = ?, updated_at = ? WHERE id = ?",
    )
    .bind(t.state.as_str())
    .bind(t.next_attempt_at)
    .bind(&t.filter_rule)
    .bind(t.error_class)
    .bind(&t.error_reason)
    .bind(&t.transformed)
    .bind(now_us)
    .bind(delivery.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, error_class, reason, \
         response_kind, response_status, response_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(delivery.0)
    .bind(row.total_attempts)
    .bind(row.lease_owner.as_deref().unwrap_or(""))
    .bind(row.lease_started_at.unwrap_or(now_us))
    .bind(now_us)
    .bind(t.attempt_outcome)
    .bind(t.error_class)
    .bind(t.error_reason.as_ref().or(t.filter_rule.as_ref()))
    .bind(t.response.0)
    .bind(t.response.1)
    .bind(&t.response.2)
    .execute(&mut *conn)
    .await?;
    Ok(Completion { state: t.state, next_attempt_at: t.next_attempt_at.map(from_micros) })
}

async fn extend(
    conn: &mut SqliteConnection,
    delivery: DeliveryId,
    lease: LeaseToken,
    by: Duration,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    let expires = now + to_delta(by);
    let done = sqlx::query(
        "UPDATE deliveries SET lease_expires_at = ?, updated_at = ? \
         WHERE id = ? AND state = 'in_flight' AND lease_token = ? AND lease_expires_at > ?",
    )
    .bind(to_micros(expires))
    .bind(to_micros(now))
    .bind(delivery.0)
    .bind(lease.0)
    .bind(to_micros(now))
    .execute(conn)
    .await?;
    if done.rows_affected() == 1 { Ok(expires) } else { Err(StoreError::LeaseLost(delivery)) }
}

async fn replay(conn: &mut SqliteConnection, req: ReplayRequest, now: DateTime<Utc>) -> Result<ReplayResult> {
    let now_us = to_micros(now);
    let deleted: Option<Option<i64>> = sqlx::query_scalar("SELECT contents_deleted_at FROM messages WHERE id = ?")
        .bind(req.message_id.0)
        .fetch_optional(&mut *conn)
        .await?;
    match deleted {
        None => return Err(StoreError::NotFound(format!("message {}", req.message_id))),
        Some(Some(_)) => return Err(StoreError::invalid("message_id", "its contents were removed by retention")),
        Some(None) => {}
    }
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT id, state FROM deliveries WHERE message_id = ");
    qb.push_bind(req.message_id.0);
    if let Some(d) = &req.destination {
        qb.push(" AND destination = ").push_bind(d);
    }
    qb.push(" ORDER BY id");
    let rows: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Err(StoreError::NotFound(format!("deliveries of message {}", req.message_id)));
    }
    let (replayed, skipped) = split_replayable(&rows)?;
    for id in &replayed {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = ?, lease_token = NULL, \
             lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, error_class = NULL, \
             error_reason = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(now_us)
        .bind(now_us)
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    }
    let event = replay_audit(&req, &replayed);
    insert_audit(conn, &event, now).await?;
    Ok(ReplayResult { replayed, skipped })
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

async fn dead_letter(
    conn: &mut SqliteConnection,
    delivery: DeliveryId,
    actor: String,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<()> {
    let row: Option<(String, Uuid)> = sqlx::query_as("SELECT state, message_id FROM deliveries WHERE id = ?")
        .bind(delivery.0)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((state, message_id)) = row else {
        return Err(StoreError::NotFound(format!("delivery {delivery}")));
    };
    check_dead_letterable(parse_state(&state)?)?;
    sqlx::query(
        "UPDATE deliveries SET state = 'dead', error_reason = COALESCE(?, error_reason), updated_at = ? WHERE id = ?",
    )
    .bind(reason.as_deref().map(clip_reason))
    .bind(to_micros(now))
    .bind(delivery.0)
    .execute(&mut *conn)
    .await?;
    let event = NewAuditEvent {
        actor,
        action: "dead_letter".into(),
        message_id: Some(MessageId(message_id)),
        delivery_id: Some(delivery),
        detail: reason,
    };
    validate_audit(&event)?;
    insert_audit(conn, &event, now).await
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

async fn insert_audit(conn: &mut SqliteConnection, e: &NewAuditEvent, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("INSERT INTO audit_events (at, actor, action, message_id, delivery_id, detail) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(to_micros(now))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(e.message_id.map(|m| m.0))
        .bind(e.delivery_id.map(|d| d.0))
        .bind(e.detail.as_deref().map(clip_reason))
        .execute(conn)
        .await?;
    Ok(())
}

async fn retention(conn: &mut SqliteConnection, req: RetentionRequest, now: DateTime<Utc>) -> Result<RetentionBatch> {
    let contents_only = req.mode == RetentionMode::Contents;
    let sql = format!(
        "SELECT m.id FROM messages m {index} WHERE m.received_at < ? {extra} \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state IN {OPEN_STATES}) \
         ORDER BY m.received_at LIMIT ?",
        index = if contents_only { "INDEXED BY messages_contents_time" } else { "INDEXED BY messages_time" },
        extra = if contents_only { "AND m.contents_deleted_at IS NULL" } else { "" },
    );
    let ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(to_micros(req.older_than))
        .bind(i64::from(req.batch_size))
        .fetch_all(&mut *conn)
        .await?;
    if ids.is_empty() {
        return Ok(RetentionBatch { messages: 0, more: false });
    }
    let list = placeholders(ids.len());
    let statements: Vec<String> = if contents_only {
        vec![
            format!("UPDATE attempts SET response_text = NULL WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id IN ({list}))"),
            format!("UPDATE deliveries SET transformed = NULL WHERE message_id IN ({list})"),
            format!("UPDATE messages SET raw = NULL, ack = NULL, contents_deleted_at = {} WHERE id IN ({list})", to_micros(now)),
        ]
    } else {
        vec![
            format!("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id IN ({list}))"),
            format!("DELETE FROM deliveries WHERE message_id IN ({list})"),
            format!("DELETE FROM message_patients WHERE message_id IN ({list})"),
            format!("DELETE FROM messages WHERE id IN ({list})"),
        ]
    };
    for sql in statements {
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(*id);
        }
        q.execute(&mut *conn).await?;
    }
    let n = ids.len() as u64;
    Ok(RetentionBatch { messages: n, more: n == u64::from(req.batch_size) })
}
