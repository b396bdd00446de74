//! Patient sync jobs on every backend: created queued, started, progress,
//! finished with counts and report, never changed once ended, listed newest
//! first with keyset pagination.

use std::collections::BTreeMap;
use std::time::Duration;

use store::{
    NewSyncJob, StoreError, SyncJobCounts, SyncJobId, SyncJobOutcome, SyncJobProgress, SyncJobQuery, SyncJobStatus,
    SyncJobUpdate,
};

use crate::support::{Kind, TestStore, t0};

fn new_job(patient: &str) -> NewSyncJob {
    NewSyncJob {
        source: "ehr".into(),
        target: "crm".into(),
        patient_id: patient.into(),
        resource_types: vec!["Observation".into(), "Condition".into()],
        requested_by: "dashboard".into(),
    }
}

async fn job_lifecycle_is_recorded(t: &TestStore) {
    let job = t.store.create_sync_job(new_job("pat-1")).await.unwrap();
    assert_eq!(job.status, SyncJobStatus::Queued);
    assert_eq!(job.created_at, t0());
    let read = t.store.sync_job(job.id).await.unwrap().expect("stored");
    assert_eq!(read, job);

    t.clock.advance(Duration::from_secs(1));
    t.store.update_sync_job(job.id, SyncJobUpdate::Started).await.unwrap();
    t.clock.advance(Duration::from_secs(1));
    let progress = SyncJobProgress { phase: Some("write".into()), done: 10, total: 319 };
    t.store.update_sync_job(job.id, SyncJobUpdate::Progress(progress.clone())).await.unwrap();
    let running = t.store.sync_job(job.id).await.unwrap().expect("stored");
    assert_eq!(running.status, SyncJobStatus::Running);
    assert_eq!(running.progress, progress);
    assert_eq!(running.started_at, Some(t0() + chrono::TimeDelta::seconds(1)));
    assert_eq!(running.finished_at, None);

    t.clock.advance(Duration::from_secs(1));
    let mut counts = BTreeMap::new();
    counts.insert(
        "Observation".to_owned(),
        SyncJobCounts { fetched: 5, created: 3, updated: 1, unchanged: 1, failed: 0 },
    );
    counts.insert("Patient".to_owned(), SyncJobCounts { fetched: 1, created: 1, ..SyncJobCounts::default() });
    let report = serde_json::json!({"status": "succeeded", "warnings": ["w"]});
    let outcome = SyncJobOutcome {
        status: SyncJobStatus::Succeeded,
        counts: counts.clone(),
        error: None,
        report: Some(report.clone()),
    };
    t.store.update_sync_job(job.id, SyncJobUpdate::Finished(outcome.clone())).await.unwrap();
    let done = t.store.sync_job(job.id).await.unwrap().expect("stored");
    assert_eq!(done.status, SyncJobStatus::Succeeded);
    assert_eq!(done.counts, counts);
    assert_eq!(done.report, Some(report));
    assert_eq!(done.patient_id, "pat-1");
    assert_eq!(done.resource_types, ["Observation", "Condition"]);
    assert_eq!(done.requested_by, "dashboard");
    assert_eq!(done.finished_at, Some(t0() + chrono::TimeDelta::seconds(3)));

    // An ended job never changes again.
    let late = t.store.update_sync_job(job.id, SyncJobUpdate::Progress(SyncJobProgress::default())).await;
    assert!(matches!(late, Err(StoreError::NotFound(_))), "{late:?}");
    let again = SyncJobOutcome { status: SyncJobStatus::Failed, error: Some("late".into()), ..outcome };
    assert!(t.store.update_sync_job(job.id, SyncJobUpdate::Finished(again)).await.is_err());
    assert_eq!(t.store.sync_job(job.id).await.unwrap().expect("stored").status, SyncJobStatus::Succeeded);
}

async fn failed_job_keeps_its_error_and_unknown_ids_are_absent(t: &TestStore) {
    let job = t.store.create_sync_job(new_job("pat-2")).await.unwrap();
    let outcome = SyncJobOutcome {
        status: SyncJobStatus::Failed,
        counts: BTreeMap::new(),
        error: Some(format!("transient: target unreachable {}", "x".repeat(5000))),
        report: None,
    };
    t.store.update_sync_job(job.id, SyncJobUpdate::Finished(outcome)).await.unwrap();
    let done = t.store.sync_job(job.id).await.unwrap().expect("stored");
    assert_eq!(done.status, SyncJobStatus::Failed);
    let error = done.error.expect("error kept");
    assert!(error.starts_with("transient: target unreachable") && error.len() <= 2000, "{}", error.len());
    // Finished without a start: the start time is the end time.
    assert_eq!(done.started_at, done.finished_at);

    let unknown = SyncJobId(uuid::Uuid::now_v7());
    assert_eq!(t.store.sync_job(unknown).await.unwrap(), None);
    assert!(matches!(t.store.update_sync_job(unknown, SyncJobUpdate::Started).await, Err(StoreError::NotFound(_))));
    // A finished job must carry a final status.
    let other = t.store.create_sync_job(new_job("pat-3")).await.unwrap();
    let not_final =
        SyncJobOutcome { status: SyncJobStatus::Running, counts: BTreeMap::new(), error: None, report: None };
    assert!(t.store.update_sync_job(other.id, SyncJobUpdate::Finished(not_final)).await.is_err());
    // Invalid jobs are refused before the database.
    let err = t.store.create_sync_job(NewSyncJob { source: String::new(), ..new_job("p") }).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { field: "source", .. }), "{err:?}");
}

async fn jobs_are_listed_newest_first_without_reports(t: &TestStore) {
    let mut ids = Vec::new();
    for i in 0..5 {
        t.clock.advance(Duration::from_millis(10));
        let job = t.store.create_sync_job(new_job(&format!("pat-{i}"))).await.unwrap();
        let outcome = SyncJobOutcome {
            status: SyncJobStatus::Succeeded,
            counts: BTreeMap::new(),
            error: None,
            report: Some(serde_json::json!({"n": i})),
        };
        t.store.update_sync_job(job.id, SyncJobUpdate::Finished(outcome)).await.unwrap();
        ids.push(job.id);
    }
    let page1 = t.store.sync_jobs(&SyncJobQuery { before: None, limit: 3 }).await.unwrap();
    assert_eq!(page1.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[4], ids[3], ids[2]]);
    assert!(page1.iter().all(|j| j.report.is_none() && j.status == SyncJobStatus::Succeeded));
    let page2 = t.store.sync_jobs(&SyncJobQuery { before: Some(page1[2].id), limit: 3 }).await.unwrap();
    assert_eq!(page2.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[1], ids[0]]);
}

macro_rules! sync_job_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                async fn run(kind: super::Kind, backend: &str) {
                    let suite = format!("store::sync_jobs::{backend}::{}", stringify!($name));
                    if let Some(t) = super::TestStore::open(kind, &suite).await {
                        super::$name(&t).await;
                        t.store.close().await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(super::Kind::Sqlite, "sqlite").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(super::Kind::Postgres, "postgres").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    run(super::Kind::Mysql, "mysql").await;
                }
            }
        )*
    };
}

sync_job_tests!(
    job_lifecycle_is_recorded,
    failed_job_keeps_its_error_and_unknown_ids_are_absent,
    jobs_are_listed_newest_first_without_reports,
);
