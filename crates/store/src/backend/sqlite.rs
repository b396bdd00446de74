//! The SQLite backend: one file in WAL mode, one process.
//!
//! Every write goes through the group-commit writer, a dedicated OS thread
//! with its own rusqlite connection ([`super::sqlite_writer`]): it runs each
//! batch in one `BEGIN IMMEDIATE` transaction, the accepts of the batch
//! first, then the other requests each inside its own SAVEPOINT so that one
//! failing request rolls back only itself, and answers the callers after
//! COMMIT. Its statements stay prepared and insert one row per execution.
//! When the writer is idle (nothing queued, the last commit held one
//! request), a single `accept` on a multi-thread runtime runs its commit on
//! its own thread with the writer's connection instead (same transaction,
//! answered after COMMIT): one producer then pays no wake-up of the writer
//! thread and none back. Under load the callers queue and share the writer
//! thread's commits as before ([`sqlite_writer::Shared::commit_here`]).
//!
//! Migrations, reads (message view, search, counts), API tokens and sync
//! jobs use sqlx: the migrations run on a connection of their own before the
//! writer opens the file, the rest on a pool of readers that WAL lets read
//! while the writer writes.
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
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, FromRow, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::common::*;
use super::shared::{question_marks, read_side};
use super::sqlite_writer::{self, Shared, Writer};
use super::tokens::tokens_side;
use super::writer::{self, Op};
use crate::clock::to_micros;
use crate::model::*;
use crate::{Clock, Result, SqliteSynchronous as Sync, Store, StoreError, StoreOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The page size of a new store file, in bytes (SQLite's default is 4096).
///
/// An accept touches about 16 B-trees (the message, its patient and
/// delivery rows and their indexes), and a commit writes every page it
/// changed to the write-ahead log and flushes it: a one-message commit wrote
/// about 20 pages, 78 KiB with 4 KiB pages, 45 KiB with 2 KiB pages (a few
/// more pages, each half the size). Measured in docs/benchmarks.md (helper A,
/// session 5): the writer's CPU per one-message commit fell by about 14%,
/// and the log bytes per message by 35 to 42%; with 32 producers the CPU per
/// message did not change. A message larger than about 2 KiB goes to
/// overflow pages either way.
///
/// SQLite fixes the page size when it creates the file (a WAL database
/// cannot change it afterwards), so an existing store keeps its own.
pub(crate) const PAGE_SIZE: u32 = 2048;

/// A store on a local SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: SqlitePool,
    clock: Clock,
    changes: watch::Receiver<u64>,
    shutdown: Arc<Notify>,
    shared: Arc<Shared>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(open_store(url, options).await?))
}

async fn open_store(url: &str, options: StoreOptions) -> Result<SqliteStore> {
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
        .pragma("temp_store", "memory")
        // Only takes effect when this creates the file; see PAGE_SIZE.
        .page_size(PAGE_SIZE);

    // Creates the file and its schema; the writer opens it afterwards.
    let mut conn = connect.connect().await.map_err(open_error)?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await.map_err(open_error)?;

    let path = connect.get_filename().to_owned();
    let synchronous = options.sqlite_synchronous;
    let writer_conn = tokio::task::spawn_blocking(move || sqlite_writer::open_connection(&path, synchronous))
        .await
        .map_err(|e| StoreError::InvalidUrl(format!("cannot open the SQLite store: {e}")))??;
    let readers =
        SqlitePoolOptions::new().max_connections(options.pool_size).connect_with(connect).await.map_err(open_error)?;

    let (ops, rx) = mpsc::channel(options.max_batch.saturating_mul(4).max(64));
    let (changed, changes) = watch::channel(0u64);
    let writer = Writer { conn: writer_conn, clock: options.clock.clone(), window: options.duplicate_window, changed };
    let shutdown = Arc::new(Notify::new());
    let shared = Shared::new(writer);
    let handle = shared
        .spawn(rx, options.max_batch, shutdown.clone())
        .map_err(|e| StoreError::InvalidUrl(format!("cannot start the SQLite store writer: {e}")))?;
    tokio::spawn(checkpointer(readers.clone(), changes.clone()));
    Ok(SqliteStore {
        ops,
        readers,
        clock: options.clock,
        changes,
        shutdown,
        shared,
        writer: std::sync::Mutex::new(Some(handle)),
    })
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
        // Here, on the caller's task, not on the writer thread.
        let stamp = Stamp::of(&message);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = Op::AcceptStamped(message, stamp, reply);
        // When the writer is idle, commit here: one producer then pays no
        // wake-up of the writer thread and no wake-up back.
        if let Some(op) = self.shared.commit_here(op, || self.ops.capacity() == self.ops.max_capacity()) {
            self.ops.send(op).await.map_err(|_| StoreError::Closed)?;
        }
        // See `writer::call` for a dropped reply.
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    async fn accept_many(&self, messages: Vec<NewMessage>) -> Vec<Result<Accepted>> {
        writer::accept_many(&self.ops, messages, validate_message, |m, r| {
            let stamp = Stamp::of(&m);
            Op::AcceptStamped(m, stamp, r)
        })
        .await
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

    async fn poll_checkpoint(&self, channel: &str, resource_type: &str) -> Result<Option<crate::PollCheckpoint>> {
        super::poll_checkpoints::sqlite::get(&self.readers, channel, resource_type).await
    }

    async fn save_poll_checkpoint(&self, checkpoint: &crate::PollCheckpoint) -> Result<()> {
        super::poll_checkpoints::sqlite::save(&self.readers, checkpoint, self.clock.now()).await
    }

    async fn poll_checkpoints(&self, channel: Option<&str>) -> Result<Vec<crate::PollCheckpoint>> {
        super::poll_checkpoints::sqlite::list(&self.readers, channel).await
    }

    async fn delete_poll_checkpoints(&self, channel: &str, resource_type: Option<&str>) -> Result<u64> {
        super::poll_checkpoints::sqlite::delete(&self.readers, channel, resource_type).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(handle) = handle {
            self.shutdown.notify_one();
            // The thread finishes what was sent and closes its connection.
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => warn!("sqlite store writer ended abnormally (panicked)"),
                Err(e) => warn!(error = %e, "waiting for the sqlite store writer failed"),
            }
        }
        self.readers.close().await;
    }
}

read_side!(Sqlite, SqlitePool, question_marks);
tokens_side!(Sqlite, SqlitePool, question_marks, "");

/// Head selection: a delivery is claimable if it is due (queued and its
/// retry time has come, or in flight with an expired lease), no older
/// unfinished delivery shares its key, and no other delivery of its key is
/// in flight under a valid lease (a replayed older delivery must not
/// overtake one being sent).
///
/// "Unfinished" is written as the queue indexes' condition is (migration
/// 0004: three comparisons, not an IN list, which SQLite would evaluate
/// through a temporary B-tree on every write of a delivery); SQLite uses a
/// partial index only for a query that contains its condition as written.
pub(super) const CLAIM_CANDIDATES: &str = "\
SELECT d.id, d.state, d.total_attempts, d.lease_owner, d.lease_started_at, d.lease_expires_at
FROM deliveries d
WHERE d.channel = ?1 AND d.destination = ?2
  AND (d.state = 'queued' OR d.state = 'in_flight' OR d.state = 'error')
  AND ((d.state = 'queued' AND d.next_attempt_at <= ?3)
       OR (d.state = 'in_flight' AND d.lease_expires_at <= ?3))
  AND NOT EXISTS (SELECT 1 FROM deliveries e
                  WHERE e.channel = d.channel AND e.destination = d.destination
                    AND e.queue_key = d.queue_key AND (e.state = 'queued' OR e.state = 'in_flight' OR e.state = 'error')
                    AND e.id < d.id)
  AND NOT EXISTS (SELECT 1 FROM deliveries f
                  WHERE f.channel = d.channel AND f.destination = d.destination
                    AND f.queue_key = d.queue_key AND (f.state = 'queued' OR f.state = 'in_flight' OR f.state = 'error')
                    AND f.state = 'in_flight' AND f.lease_expires_at > ?3 AND f.id <> d.id)
ORDER BY d.id
LIMIT ?4";

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize, raw_len: usize) -> NewMessage {
        NewMessage {
            channel: "c".into(),
            received_at: chrono::Utc::now(),
            peer_addr: None,
            content_type: "x-application/hl7-v2+er7".into(),
            // Larger than a 2 KiB page: the row spills to overflow pages.
            raw: (0..raw_len).map(|i| b'A' + (i % 26) as u8).collect(),
            control_id: Some(format!("C{n}")),
            sender_key: "S".into(),
            message_type: None,
            event: None,
            order_key: Some("K".into()),
            patient_ids: vec!["MRN1".into()],
            ack: None,
            deliveries: vec![NewDelivery::queued("out")],
        }
    }

    async fn page_size(url: &str) -> i64 {
        let mut c = SqliteConnectOptions::from_str(url).expect("url").connect().await.expect("connect");
        let n = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut c).await.expect("page_size");
        c.close().await.expect("close");
        n
    }

    /// Stores and reads back messages larger and smaller than a page.
    async fn round_trip(url: &str, first: usize) {
        let store = crate::open(url, StoreOptions::default()).await.expect("open");
        for (n, len) in [(first, 100), (first + 1, 3000), (first + 2, 9000)] {
            let m = message(n, len);
            let raw = m.raw.clone();
            let Accepted::Stored { id } = store.accept(m).await.expect("accept") else { panic!("duplicate") };
            let detail = store.get_message(id).await.expect("get").expect("stored");
            assert_eq!(detail.raw.as_deref(), Some(&raw[..]), "raw of {len} bytes read back");
        }
        store.close().await;
    }

    /// The writer's log goes through "plexus-wal" (synchronous FULL): a
    /// write that fails when the commit flushes it is an error for the
    /// caller, never an ACK, and nothing of it is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_flush_is_an_error_not_an_ack() {
        use super::super::wal_vfs::hooks;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().canonicalize().expect("canonical temp dir").join("flush.db");
        let key = path.display().to_string();
        hooks::watch(&key);
        let url = format!("sqlite://{key}");
        let store = crate::open(&url, StoreOptions::default()).await.expect("open");
        store.accept(message(1, 100)).await.expect("accept before the failure");
        assert!(hooks::stats(&key).syncs > 0, "the writer's log goes through plexus-wal");

        hooks::fail_flushes(&key, true);
        let failed = store.accept(message(2, 100)).await;
        hooks::fail_flushes(&key, false);
        assert!(failed.is_err(), "a commit whose log write failed answered {failed:?}");

        store.accept(message(3, 100)).await.expect("accept after the failure");
        store.close().await;

        // Reopened: the failed message is not there (the same control id
        // is stored anew, not answered as a duplicate); the others are.
        let store = crate::open(&url, StoreOptions::default()).await.expect("reopen");
        assert!(matches!(store.accept(message(2, 100)).await.expect("accept again"), Accepted::Stored { .. }));
        for n in [1, 3] {
            assert!(
                matches!(store.accept(message(n, 100)).await.expect("duplicate"), Accepted::Duplicate { .. }),
                "message {n} was stored"
            );
        }
        store.close().await;
    }

    /// One producer on a multi-thread runtime commits on its own thread
    /// (no wake-up of the writer thread and back); on a current-thread
    /// runtime, where a commit cannot step aside from the runtime, accepts
    /// go through the writer thread. Either way each is stored and
    /// answered after its commit.
    async fn accepts_committed_here(url: &str) -> u64 {
        let store = open_store(url, StoreOptions::default()).await.expect("open");
        for n in 0..5 {
            let Accepted::Stored { id } = store.accept(message(n, 100)).await.expect("accept") else {
                panic!("duplicate")
            };
            assert!(store.get_message(id).await.expect("read").is_some(), "answered after its commit");
        }
        let here = store.shared.committed_here();
        store.close().await;
        here
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_producer_commits_on_its_own_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("here.db").display());
        assert_eq!(accepts_committed_here(&url).await, 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_commits_on_the_writer_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("there.db").display());
        assert_eq!(accepts_committed_here(&url).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_store_file_gets_the_store_page_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        round_trip(&url, 1).await;
        assert_eq!(page_size(&url).await, i64::from(PAGE_SIZE));
        assert_ne!(PAGE_SIZE, 4096, "the test below needs a file whose page size differs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_store_file_keeps_its_page_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        // A file made before PAGE_SIZE existed: 4 KiB pages, WAL, a table.
        let mut c = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .page_size(4096)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .expect("create");
        sqlx::query("CREATE TABLE before_page_size (x INTEGER)").execute(&mut c).await.expect("create table");
        c.close().await.expect("close");
        round_trip(&url, 1).await;
        // Reopened: the migrations and the page size pragma again.
        round_trip(&url, 10).await;
        assert_eq!(page_size(&url).await, 4096);
    }
}
