//! Patient synchronisation: copy one patient's record from a source FHIR
//! server (an EHR) to a target (a CRM, a data platform), references intact,
//! as often as wanted, without duplicates.
//!
//! [`search_patients`] finds the candidates; [`sync_patient`] runs one sync
//! and returns its [`SyncReport`]. A run has four phases:
//!
//! 1. **Fetch** (`collect.rs`): the Patient, the chosen clinical types
//!    (`Type?patient=Patient/id`, every page, or `Patient/$everything`), then every
//!    resource they reference, transitively, level by level up to
//!    [`SyncOptions::max_reference_depth`], each level one batch.
//! 2. **Match** (`plan.rs`): a match key per resource (business identifier
//!    or the provenance identifier `urn:plexus:source:<source>`), looked up
//!    in the target in one batch of OR-ed identifier searches.
//! 3. **Plan**: per resource create, update, unchanged (same content
//!    ignoring meta) or fail (ambiguous match, failed dependency), with
//!    references rewritten to target ids or creation placeholders.
//! 4. **Write** (`write.rs`): one transaction Bundle with conditional entries.
//!    If the target refuses it, or reports a version conflict (its copy
//!    changed since the look-up), the sync looks up again (a target whose
//!    transactions are not atomic may have applied part of it) and tries one
//!    transaction of plain creates and version-checked updates; if that
//!    fails the same way, it looks up again and writes one resource per
//!    request (conditional updates) in dependency order. Every resource
//!    written carries its match key and every attempt starts from a fresh
//!    look-up, so however a run ends, the next one converges without
//!    duplicates. (The one window left is another writer creating the same
//!    resource between a look-up and a plain create.)
//!
//! The report counts, per resource type, what was fetched, created,
//! updated, unchanged and failed, using the first plan of the run: a
//! resource the first plan meant to create and a refused-but-partly-applied
//! transaction did create counts as created, not unchanged.
//!
//! Logs carry server names, counts, statuses and error classes; never
//! names, identifiers or bodies (those go only into the report, which the
//! engine serves with authorisation).

mod collect;
mod plan;
mod report;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bundle;
use crate::client::{FhirClient, Search};
use crate::error::{ErrorClass, FhirError};
use crate::resource::{self, ResourceKey};

pub use report::{
    FetchError, NoProgress, ProgressEvent, ProgressSink, RequestCounts, ResourceFailure, RunError, SyncPhase,
    SyncReport, SyncStatus, Timings, TypeCounts, WriteMode,
};

use plan::Action;
use write::Written;

/// The clinical types synced when none are chosen: the ones a care team
/// asks for first.
pub const DEFAULT_RESOURCE_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "Encounter",
    "Immunization",
    "MedicationRequest",
    "Observation",
    "Procedure",
];

/// Every R4 resource type with a `patient` search parameter that holds a
/// patient's own data (the patient compartment, less audit and workflow
/// plumbing such as AuditEvent, Provenance and Task): what "all clinical
/// types" means.
pub const ALL_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "Invoice",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RiskAssessment",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
    "VisionPrescription",
];

/// The deepest reference depth a sync may follow. Each level can multiply
/// what is fetched (an Encounter's Practitioner's Organization's parts ...),
/// and past a few levels the references lead away from the patient into the
/// rest of the server; the CLI, the REST API and [`sync_patient`] all refuse
/// a deeper one.
pub const MAX_REFERENCE_DEPTH: usize = 10;

/// How the clinical resources are read from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClinicalFetch {
    /// One `Type?patient=id` search per type, all in one batch, every page.
    #[default]
    PerType,
    /// `Patient/id/$everything?_type=...`; falls back to per-type searches
    /// (with a warning) when the source does not support it.
    Everything,
}

/// What to sync and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOptions {
    /// The clinical resource types (beyond the Patient). Referenced
    /// resources of any type come along regardless.
    pub resource_types: Vec<String>,
    /// How many levels of references to follow from the patient and the
    /// clinical resources (1: what they reference; 2: also what those
    /// reference ...). References beyond it are removed from what is
    /// written, with a warning. Default 3, at most [`MAX_REFERENCE_DEPTH`].
    pub max_reference_depth: usize,
    /// How to read the clinical resources.
    pub fetch: ClinicalFetch,
    /// Parallel requests when writing one resource per request. Default 4.
    pub write_concurrency: usize,
    /// Target ids known from an earlier run of the same source and target
    /// ([`SyncReport::target_ids`]: source `Type/id` -> target id). Those
    /// resources are looked up by id (`Type?_id=a,b,c`, answered from an
    /// index by any server) instead of by identifier search; a copy that no
    /// longer carries its match identifier (or is gone) is searched for as
    /// usual. A duplicate someone else created is then not noticed for the
    /// hinted resources: leave this empty to check every identifier.
    #[serde(default)]
    pub known_targets: BTreeMap<String, String>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            resource_types: DEFAULT_RESOURCE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            max_reference_depth: 3,
            fetch: ClinicalFetch::PerType,
            write_concurrency: 4,
            known_targets: BTreeMap::new(),
        }
    }
}

impl SyncOptions {
    /// Options for `types` (names as in FHIR, e.g. `Observation`), every
    /// other option at its default.
    pub fn for_types<S: AsRef<str>>(types: &[S]) -> SyncOptions {
        SyncOptions { resource_types: types.iter().map(|t| t.as_ref().to_owned()).collect(), ..SyncOptions::default() }
    }

    /// Every type of [`ALL_RESOURCE_TYPES`].
    pub fn all_types() -> SyncOptions {
        SyncOptions::for_types(ALL_RESOURCE_TYPES)
    }
}

// ----- candidates ---------------------------------------------------------

/// A patient search on the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientQuery {
    /// Family name (`family=`; servers match by prefix, case-insensitively).
    pub family: String,
    /// Given name (`given=`).
    pub given: Option<String>,
    /// Birth date, `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// `male`, `female`, `other` or `unknown`.
    pub gender: Option<String>,
    /// An identifier, `value` or `system|value`.
    pub identifier: Option<String>,
}

/// One patient found by [`search_patients`]: what a user needs to pick the
/// right one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientCandidate {
    /// The id on the source (what `sync_patient` takes).
    pub id: String,
    /// The official (else usual, else first) name, as one line.
    pub name: Option<String>,
    /// `birthDate`.
    pub birth_date: Option<String>,
    /// `gender`.
    pub gender: Option<String>,
    /// Every identifier.
    pub identifiers: Vec<CandidateIdentifier>,
    /// The home (else first) address, as one line.
    pub address: Option<String>,
    /// The first phone number (home or mobile first).
    pub phone: Option<String>,
}

/// An identifier of a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateIdentifier {
    /// The type (`MR`, `SS` ... or the type's text).
    pub kind: Option<String>,
    /// The system.
    pub system: Option<String>,
    /// The value.
    pub value: Option<String>,
}

/// The result of [`search_patients`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// The candidates, in the server's order.
    pub candidates: Vec<PatientCandidate>,
    /// True when the server has more matches than were returned: narrow the
    /// search.
    pub truncated: bool,
}

/// Searches the source for patients (at most `limit` candidates, one
/// request).
pub async fn search_patients(source: &FhirClient, query: &PatientQuery, limit: usize) -> Result<Candidates, FhirError> {
    if query.family.trim().is_empty() && query.identifier.is_none() {
        return Err(FhirError::InvalidRequest("a family name or an identifier is required".into()));
    }
    let limit = limit.clamp(1, 1000);
    let mut search = Search::new("Patient");
    if !query.family.trim().is_empty() {
        search = search.param("family", query.family.trim());
    }
    if let Some(given) = query.given.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
        search = search.param("given", given);
    }
    if let Some(date) = &query.birth_date {
        NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .map_err(|_| FhirError::InvalidRequest(format!("birth date must be YYYY-MM-DD, not {date:?}")))?;
        search = search.param("birthdate", date.as_str());
    }
    if let Some(gender) = &query.gender {
        if !matches!(gender.as_str(), "male" | "female" | "other" | "unknown") {
            return Err(FhirError::InvalidRequest("gender must be male, female, other or unknown".into()));
        }
        search = search.param("gender", gender.as_str());
    }
    if let Some(identifier) = &query.identifier {
        search = search.param("identifier", identifier.as_str());
    }
    let page = source.search(&search.param("_count", limit.to_string())).await?;
    let mut found: Vec<PatientCandidate> = bundle::search_matches(&page).filter_map(candidate).collect();
    // A server that ignores `_count` sends more than asked for, maybe with
    // neither a total nor a next link: what is cut off here must show as
    // truncated too, or the right patient may be missing from a list that
    // looks complete.
    let cut_off = found.len() > limit;
    found.truncate(limit);
    let candidates = found;
    let truncated = cut_off
        || bundle::next_link(&page).is_some()
        || bundle::total(&page).is_some_and(|t| t > candidates.len() as u64);
    Ok(Candidates { candidates, truncated })
}

fn candidate(patient: &Value) -> Option<PatientCandidate> {
    if resource::resource_type(patient) != Some("Patient") {
        return None;
    }
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let strings = |v: &Value, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let preferred = |key: &str, uses: &[&str]| -> Option<Value> {
        let list = patient.get(key)?.as_array()?;
        uses.iter()
            .find_map(|u| list.iter().find(|x| x.get("use").and_then(Value::as_str) == Some(u)))
            .or_else(|| list.first())
            .cloned()
    };
    let name = preferred("name", &["official", "usual"]).and_then(|n| {
        text(&n, "text").or_else(|| {
            let mut parts = strings(&n, "prefix");
            parts.extend(strings(&n, "given"));
            parts.extend(text(&n, "family"));
            parts.extend(strings(&n, "suffix"));
            (!parts.is_empty()).then(|| parts.join(" "))
        })
    });
    let address = preferred("address", &["home"]).and_then(|a| {
        text(&a, "text").or_else(|| {
            let mut parts = strings(&a, "line");
            for k in ["city", "state", "postalCode", "country"] {
                parts.extend(text(&a, k));
            }
            (!parts.is_empty()).then(|| parts.join(", "))
        })
    });
    let phones: Vec<&Value> = patient
        .get("telecom")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter(|c| c.get("system").and_then(Value::as_str) == Some("phone")).collect())
        .unwrap_or_default();
    let phone = ["home", "mobile"]
        .iter()
        .find_map(|u| phones.iter().find(|p| p.get("use").and_then(Value::as_str) == Some(u)))
        .or(phones.first())
        .and_then(|p| text(p, "value"));
    Some(PatientCandidate {
        id: resource::id(patient)?.to_owned(),
        name,
        birth_date: text(patient, "birthDate"),
        gender: text(patient, "gender"),
        identifiers: resource::identifiers(patient)
            .into_iter()
            .map(|i| CandidateIdentifier { kind: i.type_code.or(i.type_text), system: i.system, value: i.value })
            .collect(),
        address,
        phone,
    })
}

// ----- the sync -----------------------------------------------------------

/// Syncs patient `patient_id` of `source` to `target`. Always returns a
/// report; `report.status` says how it went. Progress goes to `progress`.
pub async fn sync_patient(
    source: &FhirClient,
    target: &FhirClient,
    patient_id: &str,
    options: &SyncOptions,
    progress: &dyn ProgressSink,
) -> SyncReport {
    let started = Instant::now();
    let source = source.counted();
    let target = target.counted();
    let mut report = SyncReport::new(source.name(), target.name(), patient_id, &options.resource_types);
    tracing::info!(source_server = %source.name(), target_server = %target.name(), types = options.resource_types.len(), "patient sync started");
    if let Err(e) = run(&source, &target, patient_id, options, progress, &mut report, started).await {
        report.status = SyncStatus::Failed;
        report.error = Some(RunError::from(&e));
    } else if !report.failures.is_empty() || !report.fetch_errors.is_empty() {
        report.status = SyncStatus::PartiallyFailed;
    }
    report.requests = RequestCounts { source: source.stats(), target: target.stats() };
    report.finished_at = Utc::now();
    report.timings.total_ms = elapsed_ms(started);
    let totals = report.totals();
    tracing::info!(
        source_server = %source.name(),
        target_server = %target.name(),
        status = ?report.status,
        error_class = report.error.as_ref().map(|e| e.class.as_str()),
        fetched = totals.fetched,
        created = totals.created,
        updated = totals.updated,
        unchanged = totals.unchanged,
        failed = totals.failed,
        source_requests = report.requests.source.requests,
        target_requests = report.requests.target.requests,
        total_ms = report.timings.total_ms,
        "patient sync finished"
    );
    report
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn run(
    source: &FhirClient,
    target: &FhirClient,
    patient_id: &str,
    options: &SyncOptions,
    progress: &dyn ProgressSink,
    report: &mut SyncReport,
    started: Instant,
) -> Result<(), FhirError> {
    if !resource::is_valid_id(patient_id) {
        return Err(FhirError::InvalidRequest(format!("invalid patient id {patient_id:?}")));
    }
    if let Some(bad) = options.resource_types.iter().find(|t| !resource::is_valid_type(t)) {
        return Err(FhirError::InvalidRequest(format!("invalid resource type {bad:?}")));
    }
    if options.max_reference_depth > MAX_REFERENCE_DEPTH {
        return Err(FhirError::InvalidRequest(format!(
            "reference depth {} is over the limit of {MAX_REFERENCE_DEPTH}",
            options.max_reference_depth
        )));
    }

    // 1. Fetch.
    let collected = collect::collect(source, patient_id, options, progress).await?;
    report.timings.fetch_ms = elapsed_ms(started);
    for (key, _) in &collected.resources {
        report.counts(&key.resource_type).fetched += 1;
    }
    report.fetch_errors = collected.fetch_errors.clone();
    report.warnings.extend(collected.warnings.iter().cloned());
    if !collected.beyond_depth.is_empty() {
        report.warnings.push(format!(
            "{} referenced resources are beyond the reference depth limit ({}): references to them were left out",
            collected.beyond_depth.len(),
            options.max_reference_depth
        ));
    }
    for (key, reason) in &collected.missing {
        report.warnings.push(format!("referenced {key} was not synced ({reason}): references to it were left out"));
    }

    // 2-3. Match and plan.
    let match_started = Instant::now();
    progress.on_event(&ProgressEvent::Phase { phase: SyncPhase::Match });
    let keys = plan::match_keys(&collected, source.name());
    let lookup = plan::look_up(target, &keys, &options.known_targets).await?;
    let mut current = plan::plan(&collected, &keys, &lookup, source.base_url());
    let removed: usize = current.removed_references.values().sum();
    if removed > 0 {
        report.warnings.push(format!(
            "{removed} references in {} resources point to resources that are not synced and were left out",
            current.removed_references.len()
        ));
    }
    progress.on_event(&ProgressEvent::Planned {
        create: current.count(|a| *a == Action::Create),
        update: current.count(|a| matches!(a, Action::Update { .. })),
        unchanged: current.count(|a| matches!(a, Action::Unchanged { .. })),
        failed: current.count(|a| matches!(a, Action::Fail { .. })),
    });
    // The first plan decides how each resource is counted (module docs).
    let first: HashMap<ResourceKey, Action> =
        current.items.iter().map(|p| (p.source.clone(), p.action.clone())).collect();
    report.timings.match_ms = elapsed_ms(match_started);

    // 4. Write.
    let write_started = Instant::now();
    progress.on_event(&ProgressEvent::Phase { phase: SyncPhase::Write });
    let mut written: HashMap<ResourceKey, Written> = HashMap::new();
    let mut indexes = write::to_write(&current);
    let total = indexes.len();
    if !indexes.is_empty() {
        let mut attempts: Vec<(WriteMode, bool)> = Vec::new();
        if target.transactions_enabled() {
            attempts.push((WriteMode::Transaction, true));
            attempts.push((WriteMode::PlainTransaction, false));
        }
        let mut done = false;
        for (mode, conditional) in attempts {
            report.write_mode = mode;
            match write::transaction(target, &current, &indexes, conditional).await {
                Ok(results) => {
                    written.extend(results);
                    progress.on_event(&ProgressEvent::Written { done: total, total });
                    done = true;
                    break;
                }
                // Refused, or a version conflict (the target changed since
                // the look-up): either way look again and go on.
                Err(e) if e.class() == ErrorClass::Permanent || matches!(e.status(), Some(409 | 412)) => {
                    tracing::info!(
                        target_server = %target.name(),
                        status = e.status(),
                        "target refused the transaction; falling back"
                    );
                    report.warnings.push(format!(
                        "the target refused the {} transaction ({}); looked up again and fell back",
                        if conditional { "conditional" } else { "plain" },
                        e
                    ));
                    // It may have applied part of it: plan again from what
                    // the target holds now.
                    let lookup = plan::look_up(target, &keys, &options.known_targets).await?;
                    current = plan::plan(&collected, &keys, &lookup, source.base_url());
                    indexes = write::to_write(&current);
                    if indexes.is_empty() {
                        done = true;
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !done {
            report.write_mode = WriteMode::Individual;
            let results = write::individual(target, &current, &indexes, options.write_concurrency, progress).await;
            written.extend(results);
        }
    }
    report.timings.write_ms = elapsed_ms(write_started);

    // Counts and failures.
    for item in &current.items {
        let key = &item.source;
        let planned = first.get(key).unwrap_or(&item.action);
        let outcome = written.get(key);
        let target_id = match outcome {
            Some(Written::Created { target_id } | Written::Updated { target_id }) => Some(target_id.clone()),
            _ => item.action.target_id().map(str::to_owned),
        };
        let failure = match (outcome, &item.action) {
            (Some(Written::Failed { class, reason }), _) => Some((*class, reason.clone())),
            (_, Action::Fail { class, reason }) => Some((*class, reason.clone())),
            _ => None,
        };
        if let Some((class, reason)) = &failure {
            report.failures.push(ResourceFailure { source: key.to_string(), class: *class, reason: reason.clone() });
        }
        let counts = report.counts(&key.resource_type);
        match (failure, planned) {
            (Some(_), _) => counts.failed += 1,
            (None, Action::Create) => counts.created += 1,
            (None, Action::Update { .. }) => counts.updated += 1,
            (None, Action::Unchanged { .. }) => counts.unchanged += 1,
            // Failed in the first plan, fine in a later one: it was the
            // partial transaction that made it match; it is in place now.
            (None, Action::Fail { .. }) => match outcome {
                Some(Written::Created { .. }) => counts.created += 1,
                Some(_) => counts.updated += 1,
                None => counts.unchanged += 1,
            },
        }
        if let Some(id) = &target_id {
            report.target_ids.insert(key.to_string(), id.clone());
        }
        if Some(key) == collected.patient.as_ref() {
            report.target_patient_id = target_id;
        }
    }
    Ok(())
}
