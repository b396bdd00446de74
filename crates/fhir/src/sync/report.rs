//! What a sync run reports: counts per resource type, failures with their
//! reasons, warnings, timings and request counts (serde-serialisable: the
//! engine stores it as a sync job), and the progress events it emits while
//! it runs.
//!
//! Nothing here carries patient data: resources appear as `Type/id` of the
//! source server, reasons are server diagnostics and Plexus's own messages.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::client::ClientStats;
use crate::error::{ErrorClass, FhirError};

/// The outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// Every resource is in the target as in the source.
    Succeeded,
    /// The run finished but some resources (or some resource types) could
    /// not be synced: see `failures` and `fetch_errors`.
    PartiallyFailed,
    /// The run stopped: see `error`. What was written before it stopped is
    /// consistent (a later run completes it without duplicates).
    Failed,
}

/// Counts for one resource type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    /// Read from the source.
    pub fetched: u64,
    /// Created in the target.
    pub created: u64,
    /// Updated in the target (its content differed).
    pub updated: u64,
    /// Already in the target with the same content (ignoring meta): not
    /// written.
    pub unchanged: u64,
    /// Not synced: see `failures`.
    pub failed: u64,
}

/// One resource that could not be synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceFailure {
    /// `Type/id` on the source server.
    pub source: String,
    /// Retry later (transient) or fix something first (permanent).
    pub class: ErrorClass,
    /// Why, with the target's diagnostics when it gave some.
    pub reason: String,
}

/// A resource type whose search failed on the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchError {
    /// The resource type searched.
    pub resource_type: String,
    /// Retry later or not.
    pub class: ErrorClass,
    /// The source's error.
    pub reason: String,
}

/// The error that stopped a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// Retry later (transient), fix the request (permanent) or the
    /// configuration (config).
    pub class: ErrorClass,
    /// The message.
    pub message: String,
}

impl From<&FhirError> for RunError {
    fn from(e: &FhirError) -> RunError {
        RunError { class: e.class(), message: e.to_string() }
    }
}

/// How the target was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Nothing needed writing.
    Nothing,
    /// One transaction Bundle with conditional entries.
    Transaction,
    /// One transaction Bundle without conditional entries (plain creates and
    /// version-checked updates), after the target refused the conditional
    /// one.
    PlainTransaction,
    /// One request per resource, in dependency order.
    Individual,
}

/// Requests sent during the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// To the source server.
    pub source: ClientStats,
    /// To the target server.
    pub target: ClientStats,
}

/// Wall-clock phases of the run, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the patient, the clinical resources and their references.
    pub fetch_ms: u64,
    /// Looking up matches in the target and planning the writes.
    pub match_ms: u64,
    /// Writing to the target.
    pub write_ms: u64,
    /// The whole run.
    pub total_ms: u64,
}

/// The report of one patient sync run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Source server name.
    pub source: String,
    /// Target server name.
    pub target: String,
    /// The patient's id on the source.
    pub patient_id: String,
    /// The patient's id on the target, once known.
    pub target_patient_id: Option<String>,
    /// The clinical resource types requested.
    pub resource_types: Vec<String>,
    /// Overall outcome.
    pub status: SyncStatus,
    /// What stopped the run, when it stopped.
    pub error: Option<RunError>,
    /// Counts per resource type (the patient, the requested types and every
    /// referenced type).
    pub per_type: BTreeMap<String, TypeCounts>,
    /// Resources not synced, with the reason.
    pub failures: Vec<ResourceFailure>,
    /// Resource types whose search failed on the source.
    pub fetch_errors: Vec<FetchError>,
    /// Things the user should know that did not fail the run (references
    /// left out, fallbacks taken).
    pub warnings: Vec<String>,
    /// How the target was written.
    pub write_mode: WriteMode,
    /// Requests sent.
    pub requests: RequestCounts,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Phase durations.
    pub timings: Timings,
    /// Where each synced resource is in the target: source `Type/id` ->
    /// target id. Give it back as [`SyncOptions::known_targets`](super::SyncOptions::known_targets)
    /// to the next run of the same patient to look these up by id.
    #[serde(default)]
    pub target_ids: BTreeMap<String, String>,
}

impl SyncReport {
    pub(crate) fn new(source: &str, target: &str, patient_id: &str, types: &[String]) -> SyncReport {
        let now = Utc::now();
        SyncReport {
            source: source.to_owned(),
            target: target.to_owned(),
            patient_id: patient_id.to_owned(),
            target_patient_id: None,
            resource_types: types.to_vec(),
            status: SyncStatus::Succeeded,
            error: None,
            per_type: BTreeMap::new(),
            failures: Vec::new(),
            fetch_errors: Vec::new(),
            warnings: Vec::new(),
            write_mode: WriteMode::Nothing,
            requests: RequestCounts::default(),
            started_at: now,
            finished_at: now,
            timings: Timings::default(),
            target_ids: BTreeMap::new(),
        }
    }

    /// Sums over every type.
    pub fn totals(&self) -> TypeCounts {
        self.per_type.values().fold(TypeCounts::default(), |mut t, c| {
            t.fetched += c.fetched;
            t.created += c.created;
            t.updated += c.updated;
            t.unchanged += c.unchanged;
            t.failed += c.failed;
            t
        })
    }

    pub(crate) fn counts(&mut self, resource_type: &str) -> &mut TypeCounts {
        self.per_type.entry(resource_type.to_owned()).or_default()
    }
}

/// A phase of a sync run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    /// Reading the patient and the clinical resources.
    FetchClinical,
    /// Reading referenced resources (one step per depth level).
    FetchReferences,
    /// Looking up existing resources in the target.
    Match,
    /// Writing.
    Write,
}

/// Something a running sync tells its observer (the CLI's progress bar, the
/// engine's dashboard stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A phase starts.
    Phase {
        /// Which.
        phase: SyncPhase,
    },
    /// Resources read from the source so far.
    Fetched {
        /// How many.
        resources: usize,
    },
    /// The write plan is ready.
    Planned {
        /// To create.
        create: usize,
        /// To update.
        update: usize,
        /// Already up to date.
        unchanged: usize,
        /// Failed before writing (ambiguous matches, failed dependencies).
        failed: usize,
    },
    /// Writes done so far.
    Written {
        /// Done.
        done: usize,
        /// Planned.
        total: usize,
    },
}

/// Receives [`ProgressEvent`]s. Called from the sync's task: keep it quick
/// (update a bar, push to a channel).
pub trait ProgressSink: Send + Sync {
    /// One event.
    fn on_event(&self, event: &ProgressEvent);
}

impl<F: Fn(&ProgressEvent) + Send + Sync> ProgressSink for F {
    fn on_event(&self, event: &ProgressEvent) {
        self(event)
    }
}

/// A sink that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_event(&self, _: &ProgressEvent) {}
}
