//! The patient sync flow inside the engine: a sync job recorded in the
//! store, run by [`fhir::sync::sync_patient`], with its progress written to
//! the job as it goes and its counts and report at the end. The REST API
//! (`/api/sync/jobs`) runs jobs in background tasks; `plexus sync patient
//! --record` runs one in the foreground.
//!
//! Progress events are coalesced: the sync's progress sink only replaces the
//! latest progress in a watch channel, and a writer task stores it whenever
//! it changed, so a slow store slows the progress display, never the sync.
//! Logs carry the job id, server names and the status; never the patient.
//!
//! A job of a patient synced before (same source and target) starts from
//! the target ids the last finished job recorded ([`known_targets`]), so its
//! look-up reads those resources by id instead of searching by identifier.
//!
//! # Jobs cut off by a stop
//!
//! A job runs in the process that accepted it, and only that process records
//! its end. So that no job stays `running` after its process is gone:
//!
//! - [`JobRunner`] keeps the jobs this process runs. A graceful stop gives
//!   them the grace period, then stops the rest and records them `failed`
//!   with [`INTERRUPTED_BY_STOP`]. It also cuts off a job that runs longer
//!   than [`MAX_RUN_TIME`].
//! - At start-up, [`fail_abandoned_jobs`] records as `failed`
//!   ([`INTERRUPTED_FOUND_AT_START`]) the jobs a crashed (or killed) process
//!   left `queued` or `running`. On SQLite, which one process uses, that is
//!   every such job. On PostgreSQL and MariaDB several processes may run
//!   jobs at once and a job record carries no heartbeat, only when it was
//!   created and started: a job counts as abandoned when the later of the
//!   two is more than [`STALE_AFTER`] ago. As every process cuts its own
//!   jobs off after [`MAX_RUN_TIME`], a job older than that cannot still be
//!   running anywhere (the margin covers clocks that differ between hosts).
//!
//! An interrupted job may have written part of the record to the target; a
//! new job for the patient completes it without duplicates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fhir::FhirClient;
use fhir::sync::{self, ProgressEvent, SyncOptions, SyncPhase, SyncReport, SyncStatus};
use store::{
    Backend, Store, StoreError, SyncJob, SyncJobCounts, SyncJobId, SyncJobOutcome, SyncJobProgress, SyncJobQuery,
    SyncJobStatus, SyncJobUpdate,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The error recorded for a job that a graceful stop of the server cut off.
pub const INTERRUPTED_BY_STOP: &str = "interrupted: the server stopped";

/// The error recorded at start-up for a job a server that is gone left
/// unfinished.
pub const INTERRUPTED_FOUND_AT_START: &str = "interrupted: the server running it stopped before it ended";

/// How long one job may run; a job still running then is stopped and
/// recorded as failed (a new job completes it).
pub const MAX_RUN_TIME: Duration = Duration::from_secs(60 * 60);

/// On a store several processes share: how long after its last record
/// (created, started) an unfinished job counts as abandoned.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 60 * 60);

/// The progress a [`ProgressEvent`] leaves the job in, given where it was.
pub fn progress_after(previous: &SyncJobProgress, event: &ProgressEvent) -> SyncJobProgress {
    let phase = |p: SyncPhase| match p {
        SyncPhase::FetchClinical => "fetch_clinical",
        SyncPhase::FetchReferences => "fetch_references",
        SyncPhase::Match => "match",
        SyncPhase::Write => "write",
    };
    match event {
        ProgressEvent::Phase { phase: p } => {
            // Entering the write phase keeps the planned total.
            let total = if *p == SyncPhase::Write { previous.total } else { 0 };
            SyncJobProgress { phase: Some(phase(*p).to_owned()), done: 0, total }
        }
        ProgressEvent::Fetched { resources } => {
            SyncJobProgress { phase: previous.phase.clone(), done: *resources as u64, total: previous.total }
        }
        ProgressEvent::Planned { create, update, .. } => {
            SyncJobProgress { phase: previous.phase.clone(), done: 0, total: (create + update) as u64 }
        }
        ProgressEvent::Written { done, total } => {
            SyncJobProgress { phase: previous.phase.clone(), done: *done as u64, total: *total as u64 }
        }
    }
}

/// The stored outcome of a finished run.
pub fn outcome_of(report: &SyncReport) -> SyncJobOutcome {
    let status = match report.status {
        SyncStatus::Succeeded => SyncJobStatus::Succeeded,
        SyncStatus::PartiallyFailed => SyncJobStatus::PartiallyFailed,
        SyncStatus::Failed => SyncJobStatus::Failed,
    };
    let counts = report
        .per_type
        .iter()
        .map(|(t, c)| {
            let counts = SyncJobCounts {
                fetched: c.fetched,
                created: c.created,
                updated: c.updated,
                unchanged: c.unchanged,
                failed: c.failed,
            };
            (t.clone(), counts)
        })
        .collect();
    let error = match (&report.error, report.status) {
        (Some(e), _) => Some(format!("{}: {}", e.class, e.message)),
        (None, SyncStatus::PartiallyFailed) => Some(format!(
            "{} resources failed, {} resource types could not be read",
            report.failures.len(),
            report.fetch_errors.len()
        )),
        _ => None,
    };
    SyncJobOutcome { status, counts, error, report: serde_json::to_value(report).ok() }
}

/// Runs recorded job `id`: marks it running, syncs `patient_id` from
/// `source` to `target` writing progress to the job as it goes, and records
/// the outcome. Returns the run's report. A failure to write progress is
/// logged and does not stop the sync; a failure to record the outcome is
/// logged (the job then stays `running`).
pub async fn run_job(
    store: Arc<dyn Store>,
    source: FhirClient,
    target: FhirClient,
    id: SyncJobId,
    patient_id: String,
    options: SyncOptions,
) -> SyncReport {
    run_job_observed(store, source, target, id, patient_id, options, &|_: &ProgressEvent| {}).await
}

/// [`run_job`] that also hands every progress event to `also` (the CLI's
/// progress bar).
pub async fn run_job_observed(
    store: Arc<dyn Store>,
    source: FhirClient,
    target: FhirClient,
    id: SyncJobId,
    patient_id: String,
    mut options: SyncOptions,
    also: &(dyn Fn(&ProgressEvent) + Send + Sync),
) -> SyncReport {
    if let Err(e) = store.update_sync_job(id, SyncJobUpdate::Started).await {
        warn!(job = %id, error = %e.summary(), "sync job: start not recorded");
    }
    if options.known_targets.is_empty() {
        options.known_targets = known_targets(store.as_ref(), source.name(), target.name(), &patient_id).await;
    }
    // The sink only records the latest progress; a writer task stores it
    // whenever it changes, so the sync never waits for the store.
    let (latest, mut changes) = watch::channel(SyncJobProgress::default());
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let progress = changes.borrow_and_update().clone();
                if let Err(e) = store.update_sync_job(id, SyncJobUpdate::Progress(progress)).await {
                    warn!(job = %id, error = %e.summary(), "sync job: progress not recorded");
                }
            }
        })
    };
    let sink = |event: &ProgressEvent| {
        latest.send_modify(|p| *p = progress_after(p, event));
        also(event);
    };
    info!(job = %id, source_server = %source.name(), target_server = %target.name(), "sync job started");
    let report = sync::sync_patient(&source, &target, &patient_id, &options, &sink).await;
    drop(latest);
    // The last progress write lands before the outcome, never after it.
    let _ = writer.await;
    let outcome = outcome_of(&report);
    let status = outcome.status;
    if let Err(e) = store.update_sync_job(id, SyncJobUpdate::Finished(outcome)).await {
        warn!(job = %id, error = %e.summary(), "sync job: outcome not recorded");
    }
    info!(job = %id, status = status.as_str(), "sync job finished");
    report
}

/// How many recent jobs are searched for an earlier run of the same patient.
const EARLIER_JOBS: u32 = 500;

/// The target ids an earlier finished job of the same source, target and
/// patient recorded (its report's `target_ids`), so that this run looks
/// those resources up by id; empty when there is none or the store cannot
/// say (the run then searches by identifier, as always).
pub async fn known_targets(
    store: &dyn Store,
    source: &str,
    target: &str,
    patient_id: &str,
) -> BTreeMap<String, String> {
    let recent = match store.sync_jobs(&SyncJobQuery { before: None, limit: EARLIER_JOBS }).await {
        Ok(jobs) => jobs,
        Err(e) => {
            warn!(error = %e.summary(), "sync job: earlier jobs not readable; matching by identifier");
            return BTreeMap::new();
        }
    };
    let earlier = recent.into_iter().find(|j| {
        matches!(j.status, SyncJobStatus::Succeeded | SyncJobStatus::PartiallyFailed)
            && j.source == source
            && j.target == target
            && j.patient_id == patient_id
    });
    let Some(earlier) = earlier else { return BTreeMap::new() };
    match store.sync_job(earlier.id).await {
        Ok(Some(job)) => job
            .report
            .and_then(|r| r.get("target_ids").cloned())
            .and_then(|ids| serde_json::from_value(ids).ok())
            .unwrap_or_default(),
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            warn!(error = %e.summary(), "sync job: earlier job not readable; matching by identifier");
            BTreeMap::new()
        }
    }
}

/// Which unfinished jobs found at start-up were left by a process that is
/// gone (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Every `queued` or `running` job (a store only this process uses).
    Every,
    /// Those whose last record (started, else created) is older than this.
    OlderThan(Duration),
}

impl Abandoned {
    /// The rule for a store of `backend`: SQLite has one process, the
    /// others may be shared.
    pub fn for_backend(backend: Backend) -> Abandoned {
        match backend {
            Backend::Sqlite => Abandoned::Every,
            Backend::Postgres | Backend::Mysql => Abandoned::OlderThan(STALE_AFTER),
        }
    }

    /// Whether `job` counts as abandoned at `now` (the store's clock).
    pub fn applies(self, job: &SyncJob, now: DateTime<Utc>) -> bool {
        if job.status.is_final() {
            return false;
        }
        match self {
            Abandoned::Every => true,
            Abandoned::OlderThan(age) => {
                let last = job.started_at.unwrap_or(job.created_at);
                chrono::TimeDelta::from_std(age).is_ok_and(|age| last + age < now)
            }
        }
    }
}

/// Records every job `rule` finds abandoned as failed with
/// [`INTERRUPTED_FOUND_AT_START`]; returns how many. Call it before this
/// process starts jobs of its own.
pub async fn fail_abandoned_jobs(store: &dyn Store, rule: Abandoned) -> Result<u64, StoreError> {
    const PAGE: u32 = 1000;
    let now = store.clock().now();
    let mut abandoned = Vec::new();
    let mut before = None;
    loop {
        let page = store.sync_jobs(&SyncJobQuery { before, limit: PAGE }).await?;
        abandoned.extend(page.iter().filter(|j| rule.applies(j, now)).map(|j| j.id));
        match page.last() {
            Some(last) if page.len() == PAGE as usize => before = Some(last.id),
            _ => break,
        }
    }
    let mut failed = 0;
    for id in abandoned {
        if record_failed(store, id, INTERRUPTED_FOUND_AT_START).await? {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Records job `id` as failed with `error`: `false` when it had ended
/// already (it finished meanwhile).
async fn record_failed(store: &dyn Store, id: SyncJobId, error: &str) -> Result<bool, StoreError> {
    let outcome = SyncJobOutcome {
        status: SyncJobStatus::Failed,
        counts: BTreeMap::new(),
        error: Some(error.to_owned()),
        report: None,
    };
    match store.update_sync_job(id, SyncJobUpdate::Finished(outcome)).await {
        Ok(()) => {
            info!(job = %id, error, "sync job recorded as failed");
            Ok(true)
        }
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The sync jobs this process runs in the background (those started over
/// the API), so that they end recorded: cut off after [`MAX_RUN_TIME`], and
/// recorded as interrupted when the server stops ([`JobRunner::stop`]).
#[derive(Debug, Clone)]
pub struct JobRunner {
    store: Arc<dyn Store>,
    running: Arc<Mutex<HashMap<SyncJobId, JoinHandle<()>>>>,
    max_run_time: Duration,
}

impl JobRunner {
    /// A runner recording its jobs in `store`.
    pub fn new(store: Arc<dyn Store>) -> JobRunner {
        JobRunner { store, running: Arc::default(), max_run_time: MAX_RUN_TIME }
    }

    /// The store the jobs are recorded in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Fails the jobs that a process which is gone left unfinished
    /// ([`fail_abandoned_jobs`] with the rule of the store's backend). A
    /// store that cannot answer is logged: the server starts anyway.
    pub async fn fail_abandoned(&self) {
        let rule = Abandoned::for_backend(self.store.backend());
        match fail_abandoned_jobs(self.store.as_ref(), rule).await {
            Ok(0) => {}
            Ok(n) => warn!(jobs = n, "sync jobs left unfinished by a stopped server recorded as failed (interrupted)"),
            Err(e) => warn!(error = %e.summary(), "sync jobs: unfinished jobs of a stopped server not checked"),
        }
    }

    /// Runs recorded job `id` ([`run_job`]) in the background.
    pub fn spawn(
        &self,
        source: FhirClient,
        target: FhirClient,
        id: SyncJobId,
        patient_id: String,
        options: SyncOptions,
    ) {
        let (store, running, limit) = (Arc::clone(&self.store), Arc::clone(&self.running), self.max_run_time);
        // Held while the task is spawned and registered, so that its own
        // removal at the end cannot come first.
        let mut jobs = self.running.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|_, task| !task.is_finished());
        let task = tokio::spawn(async move {
            let run = run_job(Arc::clone(&store), source, target, id, patient_id, options);
            if tokio::time::timeout(limit, run).await.is_err() {
                let error = format!("timed out: the job ran longer than {} s", limit.as_secs());
                if let Err(e) = record_failed(store.as_ref(), id, &error).await {
                    warn!(job = %id, error = %e.summary(), "sync job: time-out not recorded");
                }
            }
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        jobs.insert(id, task);
    }

    /// How many jobs are running.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|t| !t.is_finished()).count()
    }

    /// Gives the running jobs `grace` to end, then stops the others and
    /// records them as failed with [`INTERRUPTED_BY_STOP`]. Call it once
    /// nothing can start new jobs (the API listener has stopped).
    pub async fn stop(&self, grace: Duration) {
        let jobs: Vec<_> =
            std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        let deadline = tokio::time::Instant::now() + grace;
        for (id, mut task) in jobs {
            if tokio::time::timeout_at(deadline, &mut task).await.is_ok() {
                continue;
            }
            task.abort();
            let _ = task.await;
            if let Err(e) = record_failed(self.store.as_ref(), id, INTERRUPTED_BY_STOP).await {
                warn!(job = %id, error = %e.summary(), "sync job: interruption not recorded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_the_phases_and_keeps_the_planned_total() {
        let mut p = SyncJobProgress::default();
        let events = [
            ProgressEvent::Phase { phase: SyncPhase::FetchClinical },
            ProgressEvent::Fetched { resources: 315 },
            ProgressEvent::Phase { phase: SyncPhase::Match },
            ProgressEvent::Planned { create: 300, update: 19, unchanged: 0, failed: 0 },
            ProgressEvent::Phase { phase: SyncPhase::Write },
            ProgressEvent::Written { done: 100, total: 319 },
        ];
        let mut seen = Vec::new();
        for e in &events {
            p = progress_after(&p, e);
            seen.push((p.phase.clone().unwrap_or_default(), p.done, p.total));
        }
        let expected = [
            ("fetch_clinical", 0, 0),
            ("fetch_clinical", 315, 0),
            ("match", 0, 0),
            ("match", 0, 319),
            ("write", 0, 319),
            ("write", 100, 319),
        ];
        let expected: Vec<_> = expected.iter().map(|(a, b, c)| ((*a).to_owned(), *b, *c)).collect();
        assert_eq!(seen, expected);
    }

    fn job(status: SyncJobStatus, created: DateTime<Utc>, started: Option<DateTime<Utc>>) -> SyncJob {
        SyncJob {
            id: SyncJobId(uuid::Uuid::now_v7()),
            source: "ehr".into(),
            target: "crm".into(),
            patient_id: "p1".into(),
            resource_types: vec![],
            status,
            progress: SyncJobProgress::default(),
            counts: BTreeMap::new(),
            error: None,
            report: None,
            requested_by: "test".into(),
            created_at: created,
            started_at: started,
            finished_at: None,
        }
    }

    #[test]
    fn abandoned_jobs_are_the_unfinished_ones_by_the_backends_rule() {
        let now = Utc::now();
        let ago = |minutes: i64| now - chrono::TimeDelta::minutes(minutes);
        let shared = Abandoned::for_backend(Backend::Postgres);
        assert_eq!(shared, Abandoned::OlderThan(STALE_AFTER));
        assert_eq!(Abandoned::for_backend(Backend::Mysql), shared);
        assert_eq!(Abandoned::for_backend(Backend::Sqlite), Abandoned::Every);
        assert!(STALE_AFTER > MAX_RUN_TIME, "a job older than the threshold cannot still run anywhere");

        // A final job is never touched, however old.
        for status in [SyncJobStatus::Succeeded, SyncJobStatus::PartiallyFailed, SyncJobStatus::Failed] {
            assert!(!Abandoned::Every.applies(&job(status, ago(600), Some(ago(600))), now), "{status:?}");
            assert!(!shared.applies(&job(status, ago(600), Some(ago(600))), now), "{status:?}");
        }
        // One process: every unfinished job, even one of a second ago.
        assert!(Abandoned::Every.applies(&job(SyncJobStatus::Queued, now, None), now));
        assert!(Abandoned::Every.applies(&job(SyncJobStatus::Running, now, Some(now)), now));
        // Shared: by the start, else the creation, against the threshold.
        assert!(shared.applies(&job(SyncJobStatus::Running, ago(300), Some(ago(121))), now));
        assert!(!shared.applies(&job(SyncJobStatus::Running, ago(300), Some(ago(119))), now), "started recently");
        assert!(shared.applies(&job(SyncJobStatus::Queued, ago(121), None), now));
        assert!(!shared.applies(&job(SyncJobStatus::Queued, ago(119), None), now));
    }
}
