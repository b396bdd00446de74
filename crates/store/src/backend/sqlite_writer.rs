//! The SQLite store's group-commit writer: one OS thread that owns one
//! rusqlite connection and runs every write of the store.
//!
//! Why a thread of its own: a SQLite database has one writer at a time, and
//! each of its calls is a short blocking call into the C library. sqlx's
//! SQLite driver runs each statement on a worker thread behind a channel, so
//! every statement was a cross-thread round trip, and batches had to be sent
//! as big multi-row SQL texts, prepared again whenever the batch size
//! changed. Here the thread calls SQLite directly: it takes every request
//! waiting in the channel ([`writer::next_batch`]), runs them in one
//! `BEGIN IMMEDIATE ... COMMIT`, and answers each caller only after COMMIT
//! returned (with `synchronous=FULL`, after the write-ahead log's fsync).
//!
//! Why rusqlite here and sqlx elsewhere: the writer only needs a handful of
//! fixed statements, and rusqlite keeps them prepared (`prepare_cached`),
//! one row per execution, so no SQL text depends on the batch size. The
//! migrations, the readers (message view, search, counts), API tokens and
//! sync jobs stay on sqlx's pool: WAL lets them read beside this writer, and
//! they are async. Both crates link the same `libsqlite3-sys`.
//!
//! The SQL mirrors the shared `write_side!` of the server backends
//! (duplicate window, queue keys, head-of-key claims, retries, dead letters,
//! replay with its audit event, retention), and the database-agnostic
//! decisions come from [`super::common`] (`plan_batch`, `transition`,
//! `split_replayable` ...), so the three backends behave alike.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::wal_vfs;
use super::writer::{self, Done, Op};
use crate::clock::{from_micros, to_delta, to_micros};
use crate::model::*;
use crate::{Clock, Result, SqliteSynchronous, StoreError};

/// Prepared statements kept per connection: the writer uses about twenty.
const STATEMENT_CACHE: usize = 64;

/// Opens the writer's connection on a database that the migrations have
/// already set up. Blocking: call it off the async runtime.
///
/// With `synchronous=FULL` the connection writes its log through
/// [`wal_vfs`] ("plexus-wal"), which writes a commit's frames with one
/// system call instead of two per frame. That VFS is correct only when
/// every commit syncs the log (see its module doc), so `NORMAL` keeps the
/// default VFS.
pub(super) fn open_connection(path: &Path, synchronous: SqliteSynchronous) -> Result<Connection> {
    let open_error =
        |e: rusqlite::Error| StoreError::InvalidUrl(format!("cannot open the SQLite store: {}", rusqlite_summary(&e)));
    let (conn, sync) = match synchronous {
        SqliteSynchronous::Full => {
            wal_vfs::register().map_err(|rc| {
                StoreError::InvalidUrl(format!(
                    "cannot open the SQLite store: registering its log writer failed (database error {rc})"
                ))
            })?;
            let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), wal_vfs::VFS_NAME)
                .map_err(open_error)?;
            (conn, 2)
        }
        SqliteSynchronous::Normal => (Connection::open(path).map_err(open_error)?, 1),
    };
    // Before anything is written: the log VFS relies on it.
    conn.pragma_update(None, "synchronous", sync)?;
    let set: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if set != sync {
        return Err(StoreError::InvalidUrl(format!("the SQLite store kept synchronous={set}, expected {sync}")));
    }
    // Readers never block the writer in WAL mode; this only matters if
    // another process opens the file.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::InvalidUrl(format!("the SQLite store needs WAL mode, the file is in {mode} mode")));
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoint and statement journals in memory, not in temp files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The checkpointer task copies the log into the database beside the
    // writer; the writer does it itself only if the log grows far past that.
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    Ok(conn)
}

/// The writer thread's state.
pub(super) struct Writer {
    pub conn: Connection,
    pub clock: Clock,
    pub window: Duration,
    pub changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("window", &self.window).finish_non_exhaustive()
    }
}

/// The writer and what its thread and the callers share. The connection
/// sits behind a mutex so that, when the writer is idle, a caller can run
/// its own accept's commit on its thread instead of waking the writer
/// thread and being woken by it (see [`Shared::commit_here`]).
#[derive(Debug)]
pub(super) struct Shared {
    /// `None` once the writer thread has stopped and closed the connection.
    writer: Mutex<Option<Writer>>,
    /// How many requests the last commit held. More than one means callers
    /// are queueing: they are better served by one shared commit on the
    /// writer thread than by each committing alone.
    last_batch: AtomicUsize,
    /// The writer thread holds a batch and waits for the connection: no
    /// caller may take it first (it would overtake the batch and, repeated,
    /// starve it).
    thread_waiting: AtomicBool,
    /// Commits run by `commit_here`.
    #[cfg(test)]
    committed_here: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(super) fn new(writer: Writer) -> Arc<Shared> {
        Arc::new(Shared {
            writer: Mutex::new(Some(writer)),
            last_batch: AtomicUsize::new(0),
            thread_waiting: AtomicBool::new(false),
            #[cfg(test)]
            committed_here: std::sync::atomic::AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    pub(super) fn committed_here(&self) -> u64 {
        self.committed_here.load(Ordering::Relaxed)
    }

    /// Commits `op` on the calling thread if nothing is waiting for the
    /// writer (`queue_empty`), the last commit held one request and no one
    /// holds the connection; gives `op` back otherwise, to be sent to the
    /// writer thread. Only on a multi-thread tokio runtime (the commit
    /// blocks: `block_in_place` moves the worker's other tasks to another
    /// thread meanwhile).
    ///
    /// Order: a caller commits here only its own single request, only when
    /// no request is queued and the writer thread is not waiting with a
    /// batch, so a request sent earlier through the channel can be
    /// overtaken only in the instant between the thread taking it and
    /// raising `thread_waiting`; such a request was sent concurrently with
    /// this one (one caller never has two accepts in flight except through
    /// `accept_many`, which always goes through the channel).
    pub(super) fn commit_here(&self, op: Op, queue_empty: impl FnOnce() -> bool) -> Option<Op> {
        if self.last_batch.load(Ordering::Relaxed) > 1 || self.thread_waiting.load(Ordering::Acquire) || !queue_empty()
        {
            return Some(op);
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            return Some(op);
        }
        let Ok(mut guard) = self.writer.try_lock() else { return Some(op) };
        let Some(writer) = guard.as_mut() else { return Some(op) };
        tokio::task::block_in_place(|| writer.run_batch(vec![op]));
        self.last_batch.store(1, Ordering::Relaxed);
        #[cfg(test)]
        self.committed_here.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Starts the writer thread. It stops when every sender of `rx` is gone
    /// or when `shutdown` is notified; then it finishes what was already
    /// sent, refuses the rest and closes the connection.
    pub(super) fn spawn(
        self: &Arc<Self>,
        rx: mpsc::Receiver<Op>,
        max_batch: usize,
        shutdown: Arc<Notify>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let shared = self.clone();
        std::thread::Builder::new()
            .name("plexus-sqlite-writer".into())
            .spawn(move || shared.run(rx, max_batch, shutdown))
    }

    fn run_batch(&self, batch: Vec<Op>) {
        let n = batch.len();
        // A caller committing here holds the connection: wait for it, and
        // let no other caller go first.
        self.thread_waiting.store(true, Ordering::Release);
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.thread_waiting.store(false, Ordering::Release);
        match guard.as_mut() {
            Some(writer) => writer.run_batch(batch),
            None => {
                for op in batch {
                    op.fail(StoreError::Closed);
                }
            }
        }
        self.last_batch.store(n, Ordering::Relaxed);
    }

    fn run(&self, mut rx: mpsc::Receiver<Op>, max_batch: usize, shutdown: Arc<Notify>) {
        // The channel and the notification are runtime-agnostic, so the
        // thread waits on them with a plain executor: it parks until a
        // request or the shutdown arrives.
        loop {
            let next = futures::executor::block_on(async {
                tokio::select! {
                    biased;
                    () = shutdown.notified() => None,
                    batch = writer::next_batch(&mut rx, max_batch) => Some(batch),
                }
            });
            match next {
                Some(Some(batch)) => self.run_batch(batch),
                Some(None) => break,
                None => {
                    // Finish what was already sent, refuse the rest.
                    rx.close();
                    while let Some(batch) = futures::executor::block_on(writer::next_batch(&mut rx, max_batch)) {
                        self.run_batch(batch);
                    }
                    break;
                }
            }
        }
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer
            && let Err((_, e)) = writer.conn.close()
        {
            warn!(error = %rusqlite_summary(&e), "closing the sqlite store writer's connection failed");
        }
        debug!("sqlite store writer stopped");
    }
}

impl Writer {
    fn announce(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn run_batch(&mut self, batch: Vec<Op>) {
        let mut accepts = Vec::new();
        let mut others = Vec::new();
        for op in batch {
            match op {
                Op::AcceptStamped(m, stamp, r) => accepts.push((m, stamp, r)),
                Op::Accept(m, r) => {
                    let stamp = Stamp::of(&m);
                    accepts.push((m, stamp, r));
                }
                op => others.push(op),
            }
        }
        let now = self.clock.now();
        let mut wake = false;
        let mut bulk_failed = false;

        // Fast path, the common case under ingestion load: a batch of
        // accepts only, as one transaction without savepoints.
        if others.is_empty() {
            let messages: Vec<(&NewMessage, &Stamp)> = accepts.iter().map(|(m, s, _)| (m, s)).collect();
            let result = self.exec("BEGIN IMMEDIATE").and_then(|()| {
                let r = self.accept_batch(&messages, now)?;
                self.exec("COMMIT")?;
                Ok(r)
            });
            match result {
                Ok((answers, queued)) => {
                    // Wake the workers before answering: when a call
                    // returns, the work it queued has been announced.
                    if queued {
                        self.announce();
                    }
                    for ((_, _, reply), answer) in accepts.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                    return;
                }
                Err(e) => {
                    // Start again carefully, isolating each request.
                    warn!(error = %e.summary(), batch = messages.len(), "group commit failed, retrying one by one");
                    self.rollback();
                    bulk_failed = true;
                }
            }
        }

        if let Err(e) = self.exec("BEGIN IMMEDIATE") {
            let e = Arc::new(e);
            for (_, _, r) in accepts {
                let _ = r.send(Err(StoreError::Batch(e.clone())));
            }
            for op in others {
                op.fail(StoreError::Batch(e.clone()));
            }
            return;
        }
        let mut done = Vec::with_capacity(accepts.len() + others.len());

        if !accepts.is_empty() {
            let messages: Vec<(&NewMessage, &Stamp)> = accepts.iter().map(|(m, s, _)| (m, s)).collect();
            // After a failed fast path the same bulk insert would fail the
            // same way: go one by one at once.
            let bulk = if bulk_failed { None } else { Some(self.savepoint(|w| w.accept_batch(&messages, now))) };
            match bulk {
                Some(Ok((results, queued))) => {
                    wake |= queued;
                    for ((_, _, reply), result) in accepts.into_iter().zip(results) {
                        done.push(Done::new(reply, Ok(result)));
                    }
                }
                failed => {
                    // Something in the bulk insert failed: retry one by one
                    // so that only the culprit gets the error.
                    if let Some(Err(e)) = failed {
                        warn!(error = %e.summary(), batch = messages.len(), "bulk accept failed, retrying one by one");
                    }
                    for (m, stamp, reply) in accepts {
                        if self.conn.is_autocommit() {
                            let _ = reply.send(Err(transaction_lost()));
                            continue;
                        }
                        let one = self.savepoint(|w| w.accept_batch(&[(&m, &stamp)], now));
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
            // Once SQLite has ended the transaction, a request run now
            // would commit on its own (a SAVEPOINT outside a transaction
            // starts one, and its RELEASE commits it).
            if self.conn.is_autocommit() {
                op.fail(transaction_lost());
                continue;
            }
            done.push(self.run_op(op, now, &mut wake));
        }

        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (disk full, an I/O
            // error, out of memory): nothing of this batch is stored. The
            // request that hit it keeps its own error; the others get this.
            warn!("the batch's transaction was rolled back by SQLite; every request of it fails");
            let lost = Arc::new(transaction_lost());
            for d in done {
                d.send(Some(lost.clone()));
            }
            return;
        }

        match self.exec("COMMIT") {
            Ok(()) => {
                if wake {
                    self.announce();
                }
                for d in done {
                    d.send(None);
                }
            }
            Err(e) => {
                warn!(error = %e.summary(), "group commit failed");
                self.rollback();
                let e = Arc::new(e);
                for d in done {
                    d.send(Some(e.clone()));
                }
            }
        }
    }

    fn run_op(&mut self, op: Op, now: DateTime<Utc>, wake: &mut bool) -> Done {
        match op {
            Op::Accept(m, reply) => {
                let stamp = Stamp::of(&m);
                let r = self.savepoint(|w| w.accept_batch(&[(&m, &stamp)], now));
                Done::new(
                    reply,
                    r.map(|(mut v, q)| {
                        *wake |= q;
                        v.remove(0)
                    }),
                )
            }
            Op::AcceptStamped(m, stamp, reply) => {
                let r = self.savepoint(|w| w.accept_batch(&[(&m, &stamp)], now));
                Done::new(
                    reply,
                    r.map(|(mut v, q)| {
                        *wake |= q;
                        v.remove(0)
                    }),
                )
            }
            Op::Claim(req, reply) => Done::new(reply, self.savepoint(|w| w.claim(&req, now))),
            Op::Complete { delivery, lease, outcome, policy, retry_after, reply } => {
                let r = self.savepoint(|w| w.complete(delivery, lease, outcome, &policy, retry_after, now));
                *wake |= r.is_ok();
                Done::new(reply, r)
            }
            Op::Extend { delivery, lease, by, reply } => Done::new(reply, self.extend(delivery, lease, by, now)),
            Op::Replay(req, reply) => {
                let r = self.savepoint(|w| w.replay(&req, now));
                *wake |= r.as_ref().is_ok_and(|r| !r.replayed.is_empty());
                Done::new(reply, r)
            }
            Op::DeadLetter { delivery, actor, reason, reply } => {
                let r = self.savepoint(|w| w.dead_letter(delivery, actor, reason, now));
                *wake |= r.is_ok();
                Done::new(reply, r)
            }
            Op::Audit(event, reply) => Done::new(reply, self.insert_audit(&event, now)),
            Op::Retention(req, reply) => Done::new(reply, self.savepoint(|w| w.retention(&req, now))),
        }
    }

    /// Runs a statement without parameters (transaction control).
    fn exec(&self, sql: &str) -> Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Ends a transaction that failed. SQLite may have rolled it back
    /// already (then there is nothing to do).
    fn rollback(&self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.exec("ROLLBACK")
        {
            // Every later BEGIN would fail: say why once, loudly.
            warn!(error = %e.summary(), "rolling back the failed batch failed");
        }
    }

    /// Runs `work` inside a savepoint, so that a failing request of a batch
    /// undoes only its own writes.
    ///
    /// If the savepoint cannot be undone or released (SQLite ended the whole
    /// transaction on disk full or an I/O error, so there is no savepoint
    /// left), the whole transaction is rolled back, so nothing of the batch
    /// commits half done, and the request keeps its own error (its class,
    /// e.g. transient for a full disk, is the one that matters).
    fn savepoint<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.exec("SAVEPOINT op")?;
        let result = work(self);
        let ended = match result {
            Err(_) => self.exec("ROLLBACK TO op").and_then(|()| self.exec("RELEASE op")),
            Ok(_) => self.exec("RELEASE op"),
        };
        if let Err(e) = ended {
            self.rollback();
            return Err(match result {
                Err(own) => own,
                Ok(_) => e,
            });
        }
        result
    }

    // ------------------------------------------------------- accepts ----

    /// Plans a batch of accepts against the stored messages of the
    /// duplicate window and inserts the new ones with their patient
    /// identifiers and deliveries, one row per execution of a prepared
    /// statement. Returns each message's answer and whether a queued
    /// delivery was created.
    fn accept_batch(&self, batch: &[(&NewMessage, &Stamp)], now: DateTime<Utc>) -> Result<(Vec<Accepted>, bool)> {
        let messages: Vec<&NewMessage> = batch.iter().map(|(m, _)| *m).collect();
        let cutoff = window_start(now, self.window);
        let mut existing = Vec::new();
        {
            let mut lookup = self.conn.prepare_cached(
                "SELECT id, channel, sender_key, control_id, received_at, ack FROM messages \
                 WHERE control_id = ?1 AND received_at >= ?2",
            )?;
            for cid in control_ids(&messages) {
                let rows = lookup.query_map(params![cid, cutoff], |r| {
                    Ok(OriginalRow {
                        id: uuid_at(r, 0)?,
                        channel: r.get(1)?,
                        sender_key: r.get(2)?,
                        control_id: r.get(3)?,
                        received_at: r.get(4)?,
                        ack: r.get(5)?,
                    })
                })?;
                for row in rows {
                    existing.push(row?);
                }
            }
        }
        let plans = plan_stamped(&messages, existing, |i| batch[i].1.clone());
        let now_us = to_micros(now);
        let mut queued = false;
        {
            let mut insert_message = self.conn.prepare_cached(
                "INSERT INTO messages (id, channel, received_at, accepted_at, peer_addr, content_type, size, sha256, \
                 control_id, sender_key, message_type, event, order_key, ack, raw) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            let mut insert_patient =
                self.conn.prepare_cached("INSERT INTO message_patients (message_id, patient_id) VALUES (?1, ?2)")?;
            let mut insert_delivery = self.conn.prepare_cached(
                "INSERT INTO deliveries (message_id, channel, destination, queue_key, state, next_attempt_at, \
                 filter_rule, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?6)",
            )?;
            for plan in &plans {
                let Plan::Insert(p) = plan else { continue };
                let m = p.message;
                let id = &p.id.as_bytes()[..];
                insert_message.execute(params![
                    id,
                    m.channel,
                    to_micros(m.received_at),
                    now_us,
                    m.peer_addr,
                    m.content_type,
                    p.size(),
                    p.sha256,
                    m.control_id,
                    m.sender_key,
                    m.message_type,
                    m.event,
                    m.order_key,
                    m.ack,
                    m.raw,
                ])?;
                let mut patients: Vec<&str> = m.patient_ids.iter().map(String::as_str).collect();
                patients.sort_unstable();
                patients.dedup();
                for patient in patients {
                    insert_patient.execute(params![id, patient])?;
                }
                for d in &m.deliveries {
                    let (state, rule) = match &d.initial {
                        InitialState::Queued => ("queued", None),
                        InitialState::Filtered { rule } => ("filtered", Some(rule.as_str())),
                    };
                    insert_delivery.execute(params![id, m.channel, d.destination, p.queue_key, state, now_us, rule])?;
                }
                queued |= p.has_queued();
            }
        }
        let answers = plans
            .into_iter()
            .map(|p| match p {
                Plan::Insert(p) => Accepted::Stored { id: MessageId(p.id) },
                Plan::Duplicate(d) => d,
            })
            .collect();
        Ok((answers, queued))
    }

    // -------------------------------------------------------- claims ----

    /// Leases the heads of up to `req.max` order keys of one destination.
    fn claim(&self, req: &ClaimRequest, now: DateTime<Utc>) -> Result<Claim> {
        let now_us = to_micros(now);
        let candidates: Vec<CandidateRow> = {
            let mut stmt = self.conn.prepare_cached(super::sqlite::CLAIM_CANDIDATES)?;
            let rows = stmt.query_map(params![req.channel, req.destination, now_us, i64::from(req.max)], |r| {
                Ok(CandidateRow {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    total_attempts: r.get(2)?,
                    lease_owner: r.get(3)?,
                    lease_started_at: r.get(4)?,
                    lease_expires_at: r.get(5)?,
                })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let next_due = if candidates.len() < req.max as usize {
            let t: Option<i64> = self
                .conn
                .prepare_cached(NEXT_DUE)?
                .query_row(params![req.channel, req.destination, now_us, now_us], |r| r.get(0))?;
            t.map(from_micros)
        } else {
            None
        };
        if candidates.is_empty() {
            return Ok(Claim { deliveries: Vec::new(), next_due });
        }

        // A lease that ran out is an attempt that ended without an outcome:
        // log it so the operator sees the crashed or stuck worker.
        for c in candidates.iter().filter(|c| c.state == "in_flight") {
            self.conn
                .prepare_cached(
                    "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, reason) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'lease_expired', 'lease expired without an outcome')",
                )?
                .execute(params![
                    c.id,
                    c.total_attempts,
                    c.lease_owner.as_deref().unwrap_or(""),
                    c.lease_started_at.unwrap_or(now_us),
                    c.lease_expires_at.unwrap_or(now_us),
                ])?;
        }

        let lease = LeaseToken(rand::random::<i64>());
        let expires = to_micros(now + to_delta(req.lease));
        let mut deliveries = Vec::with_capacity(candidates.len());
        let mut take = self.conn.prepare_cached(
            "UPDATE deliveries SET state = 'in_flight', lease_token = ?1, lease_owner = ?2, lease_started_at = ?3, \
             lease_expires_at = ?4, attempts = attempts + 1, total_attempts = total_attempts + 1, updated_at = ?3 \
             WHERE id = ?5",
        )?;
        let mut read = self.conn.prepare_cached(&format!(
            "SELECT {CLAIMED_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id = ?1"
        ))?;
        // Candidates come in delivery id order, the order a claim answers in.
        for c in &candidates {
            take.execute(params![lease.0, req.worker, now_us, expires, c.id])?;
            let row = read.query_row([c.id], |r| {
                Ok(ClaimedRow {
                    id: r.get(0)?,
                    attempts: r.get(1)?,
                    lease_expires_at: r.get(2)?,
                    message_id: uuid_at(r, 3)?,
                    channel: r.get(4)?,
                    destination: r.get(5)?,
                    order_key: r.get(6)?,
                    received_at: r.get(7)?,
                    content_type: r.get(8)?,
                    control_id: r.get(9)?,
                    message_type: r.get(10)?,
                    event: r.get(11)?,
                    raw: r.get(12)?,
                })
            })?;
            deliveries.push(row.into_claimed(lease)?);
        }
        Ok(Claim { deliveries, next_due })
    }

    fn complete(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: &RetryPolicy,
        retry_after: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Completion> {
        let now_us = to_micros(now);
        let row = self
            .conn
            .prepare_cached(
                "SELECT state, lease_token, lease_expires_at, lease_owner, lease_started_at, attempts, \
                 total_attempts FROM deliveries WHERE id = ?1",
            )?
            .query_row([delivery.0], |r| {
                Ok(LeaseRow {
                    state: r.get(0)?,
                    lease_token: r.get(1)?,
                    lease_expires_at: r.get(2)?,
                    lease_owner: r.get(3)?,
                    lease_started_at: r.get(4)?,
                    attempts: r.get(5)?,
                    total_attempts: r.get(6)?,
                })
            })
            .optional()?;
        let row = match row {
            Some(r) if r.holds(lease, now_us) => r,
            Some(_) => return Err(StoreError::LeaseLost(delivery)),
            None => return Err(StoreError::NotFound(format!("delivery {delivery}"))),
        };
        let attempt = u32::try_from(row.attempts.max(1)).unwrap_or(u32::MAX);
        let t = transition(outcome, attempt, policy, retry_after, now);
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = ?1, next_attempt_at = COALESCE(?2, next_attempt_at), lease_token = NULL, \
                 lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, filter_rule = ?3, \
                 error_class = ?4, error_reason = ?5, transformed = ?6, updated_at = ?7 WHERE id = ?8",
            )?
            .execute(params![
                t.state.as_str(),
                t.next_attempt_at,
                t.filter_rule,
                t.error_class,
                t.error_reason,
                t.transformed,
                now_us,
                delivery.0,
            ])?;
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, error_class, \
                 reason, response_kind, response_status, response_text) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                delivery.0,
                row.total_attempts,
                row.lease_owner.as_deref().unwrap_or(""),
                row.lease_started_at.unwrap_or(now_us),
                now_us,
                t.attempt_outcome,
                t.error_class,
                t.error_reason.as_ref().or(t.filter_rule.as_ref()),
                t.response.0,
                t.response.1,
                t.response.2,
            ])?;
        Ok(Completion { state: t.state, next_attempt_at: t.next_attempt_at.map(from_micros) })
    }

    fn extend(
        &self,
        delivery: DeliveryId,
        lease: LeaseToken,
        by: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>> {
        let expires = now + to_delta(by);
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET lease_expires_at = ?1, updated_at = ?2 \
                 WHERE id = ?3 AND state = 'in_flight' AND lease_token = ?4 AND lease_expires_at > ?2",
            )?
            .execute(params![to_micros(expires), to_micros(now), delivery.0, lease.0])?;
        if changed == 1 { Ok(expires) } else { Err(StoreError::LeaseLost(delivery)) }
    }

    // ------------------------------------------------ manual changes ----

    fn replay(&self, req: &ReplayRequest, now: DateTime<Utc>) -> Result<ReplayResult> {
        let now_us = to_micros(now);
        let message = &req.message_id.0.as_bytes()[..];
        let deleted: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT contents_deleted_at FROM messages WHERE id = ?1")?
            .query_row([message], |r| r.get(0))
            .optional()?;
        match deleted {
            None => return Err(StoreError::NotFound(format!("message {}", req.message_id))),
            Some(Some(_)) => return Err(StoreError::invalid("message_id", "its contents were removed by retention")),
            Some(None) => {}
        }
        let map = |r: &Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
        let rows: Vec<(i64, String)> = match &req.destination {
            Some(d) => self
                .conn
                .prepare_cached(
                    "SELECT id, state FROM deliveries WHERE message_id = ?1 AND destination = ?2 ORDER BY id",
                )?
                .query_map(params![message, d], map)?
                .collect::<rusqlite::Result<_>>()?,
            None => self
                .conn
                .prepare_cached("SELECT id, state FROM deliveries WHERE message_id = ?1 ORDER BY id")?
                .query_map([message], map)?
                .collect::<rusqlite::Result<_>>()?,
        };
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!("deliveries of message {}", req.message_id)));
        }
        let (replayed, skipped) = split_replayable(&rows)?;
        {
            let mut requeue = self.conn.prepare_cached(
                "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = ?1, lease_token = NULL, \
                 lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, error_class = NULL, \
                 error_reason = NULL, updated_at = ?1 WHERE id = ?2",
            )?;
            for id in &replayed {
                requeue.execute(params![now_us, id.0])?;
            }
        }
        self.insert_audit(&replay_audit(req, &replayed), now)?;
        Ok(ReplayResult { replayed, skipped })
    }

    fn dead_letter(
        &self,
        delivery: DeliveryId,
        actor: String,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let row: Option<(String, Uuid)> = self
            .conn
            .prepare_cached("SELECT state, message_id FROM deliveries WHERE id = ?1")?
            .query_row([delivery.0], |r| Ok((r.get(0)?, uuid_at(r, 1)?)))
            .optional()?;
        let Some((state, message_id)) = row else {
            return Err(StoreError::NotFound(format!("delivery {delivery}")));
        };
        check_dead_letterable(parse_state(&state)?)?;
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'dead', error_reason = COALESCE(?1, error_reason), updated_at = ?2 \
                 WHERE id = ?3",
            )?
            .execute(params![reason.as_deref().map(clip_reason), to_micros(now), delivery.0])?;
        let event = NewAuditEvent {
            actor,
            action: "dead_letter".into(),
            message_id: Some(MessageId(message_id)),
            delivery_id: Some(delivery),
            detail: reason,
        };
        validate_audit(&event)?;
        self.insert_audit(&event, now)
    }

    fn insert_audit(&self, e: &NewAuditEvent, now: DateTime<Utc>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit_events (at, actor, action, message_id, delivery_id, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                to_micros(now),
                e.actor,
                e.action,
                e.message_id.map(|m| m.0.as_bytes().to_vec()),
                e.delivery_id.map(|d| d.0),
                e.detail.as_deref().map(clip_reason),
            ])?;
        Ok(())
    }

    // ----------------------------------------------------- retention ----

    fn retention(&self, req: &RetentionRequest, now: DateTime<Utc>) -> Result<RetentionBatch> {
        let contents_only = req.mode == RetentionMode::Contents;
        let ids: Vec<Uuid> = self
            .conn
            .prepare_cached(&retention_candidates(contents_only, ""))?
            .query_map(params![to_micros(req.older_than), i64::from(req.batch_size)], |r| uuid_at(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        if ids.is_empty() {
            return Ok(RetentionBatch { messages: 0, more: false });
        }
        let statements: &[&str] = if contents_only {
            &[
                "UPDATE attempts SET response_text = NULL \
                 WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id = ?1)",
                "UPDATE deliveries SET transformed = NULL WHERE message_id = ?1",
                "UPDATE messages SET raw = NULL, ack = NULL, contents_deleted_at = ?2 WHERE id = ?1",
            ]
        } else {
            &[
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id = ?1)",
                "DELETE FROM deliveries WHERE message_id = ?1",
                "DELETE FROM message_patients WHERE message_id = ?1",
                "DELETE FROM messages WHERE id = ?1",
            ]
        };
        let now_us = to_micros(now);
        for sql in statements {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let with_time = stmt.parameter_count() == 2;
            for id in &ids {
                let id = &id.as_bytes()[..];
                if with_time {
                    stmt.execute(params![id, now_us])?;
                } else {
                    stmt.execute([id])?;
                }
            }
        }
        let n = ids.len() as u64;
        Ok(RetentionBatch { messages: n, more: n == u64::from(req.batch_size) })
    }
}

/// A UUID column (a 16-byte BLOB, as sqlx writes it).
fn uuid_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    row.get::<_, [u8; 16]>(index).map(Uuid::from_bytes)
}

/// A description of a writer error that never quotes stored values.
fn rusqlite_summary(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => format!("database error {}", f.extended_code),
        _ => "database error".to_owned(),
    }
}

/// The answer for the requests of a batch whose transaction SQLite rolled
/// back by itself: nothing of theirs is stored, and retrying later may work.
fn transaction_lost() -> StoreError {
    StoreError::Busy("the batch's transaction was rolled back by the database (disk full or I/O error)")
}
