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

use std::collections::BTreeMap;
use std::sync::Arc;

use fhir::FhirClient;
use fhir::sync::{self, ProgressEvent, SyncOptions, SyncPhase, SyncReport, SyncStatus};
use store::{
    Store, SyncJobCounts, SyncJobId, SyncJobOutcome, SyncJobProgress, SyncJobQuery, SyncJobStatus, SyncJobUpdate,
};
use tokio::sync::watch;
use tracing::{info, warn};

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
}
