//! Patient sync jobs: one row per requested sync of one patient from a
//! source FHIR server to a target, with its progress while it runs and its
//! counts, error and report once it ends.
//!
//! The store keeps them so that the API can answer "how did that sync go"
//! after the request that started it, and so that the dashboard can poll a
//! running one. The patient id is patient data: the store never logs it and
//! the API serves it only to callers with the `sync` scope.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A sync job's id: a UUID v7 chosen by the store, so ids sort by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SyncJobId(pub Uuid);

impl fmt::Display for SyncJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SyncJobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(SyncJobId)
    }
}

/// Where a sync job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncJobStatus {
    /// Recorded, not started yet.
    Queued,
    /// Running: `progress` says where.
    Running,
    /// Every resource is in the target as in the source.
    Succeeded,
    /// Finished, but some resources or resource types could not be synced
    /// (the report lists them).
    PartiallyFailed,
    /// Stopped: `error` says why. A later run completes it without
    /// duplicates.
    Failed,
}

impl SyncJobStatus {
    /// The stored spelling (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncJobStatus::Queued => "queued",
            SyncJobStatus::Running => "running",
            SyncJobStatus::Succeeded => "succeeded",
            SyncJobStatus::PartiallyFailed => "partially_failed",
            SyncJobStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<SyncJobStatus> {
        Some(match s {
            "queued" => SyncJobStatus::Queued,
            "running" => SyncJobStatus::Running,
            "succeeded" => SyncJobStatus::Succeeded,
            "partially_failed" => SyncJobStatus::PartiallyFailed,
            "failed" => SyncJobStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the job has ended (no further change will be recorded).
    pub fn is_final(self) -> bool {
        !matches!(self, SyncJobStatus::Queued | SyncJobStatus::Running)
    }
}

/// A sync job to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSyncJob {
    /// The source server's name in the config.
    pub source: String,
    /// The target server's name in the config.
    pub target: String,
    /// The patient's id on the source (patient data: never logged).
    pub patient_id: String,
    /// The clinical resource types requested.
    pub resource_types: Vec<String>,
    /// Who asked: the API token's name, or `cli`.
    pub requested_by: String,
}

/// Where a running job is: the phase and, within it, resources done of
/// total (both 0 while the total is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJobProgress {
    /// `fetch_clinical`, `fetch_references`, `match` or `write`; `None`
    /// before the first phase.
    pub phase: Option<String>,
    /// Resources done in this phase.
    pub done: u64,
    /// Resources this phase will handle.
    pub total: u64,
}

/// What happened to one resource type in a finished job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJobCounts {
    /// Read from the source.
    pub fetched: u64,
    /// Created in the target.
    pub created: u64,
    /// Updated in the target.
    pub updated: u64,
    /// Already up to date, not written.
    pub unchanged: u64,
    /// Not synced.
    pub failed: u64,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobOutcome {
    /// `Succeeded`, `PartiallyFailed` or `Failed` (others are refused).
    pub status: SyncJobStatus,
    /// Counts per resource type.
    pub counts: BTreeMap<String, SyncJobCounts>,
    /// A one-line summary of what went wrong, if anything.
    pub error: Option<String>,
    /// The full run report (failures, warnings, requests, timings), as the
    /// sync produced it.
    pub report: Option<serde_json::Value>,
}

/// A recorded sync job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJob {
    /// Id.
    pub id: SyncJobId,
    /// Source server name.
    pub source: String,
    /// Target server name.
    pub target: String,
    /// The patient's id on the source.
    pub patient_id: String,
    /// The clinical resource types requested.
    pub resource_types: Vec<String>,
    /// Where it is in its life.
    pub status: SyncJobStatus,
    /// Where a running job is (the last progress recorded).
    pub progress: SyncJobProgress,
    /// Counts per resource type, once finished.
    pub counts: BTreeMap<String, SyncJobCounts>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The run report, once finished.
    pub report: Option<serde_json::Value>,
    /// Who asked.
    pub requested_by: String,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which sync jobs to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncJobQuery {
    /// Only jobs older than this one (keyset pagination).
    pub before: Option<SyncJobId>,
    /// At most this many (capped at 1,000; 0 means 100).
    pub limit: u32,
}

/// A change to a recorded job that has not ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncJobUpdate {
    /// It starts running (records `started_at`).
    Started,
    /// Where it is now.
    Progress(SyncJobProgress),
    /// It ended.
    Finished(SyncJobOutcome),
}
