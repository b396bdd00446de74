//! Reading a patient's record from the source.
//!
//! Requests to the source are what an EHR rations, so reads are batched:
//! the Patient and one `Type?patient=id` search per chosen type go in one
//! batch Bundle; further pages follow each search's links; then each level
//! of references is one more batch of `Type/id` reads (the patient and the
//! clinical resources are level 0, what they reference level 1, and so on
//! up to the depth limit). A resource already read is never read again, so
//! cycles and shared references (every Observation's Encounter) cost
//! nothing. With `$everything`, the patient and its compartment come from
//! the operation instead, and the reference levels follow as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::client::{FhirClient, Search};
use crate::error::FhirError;
use crate::reference;
use crate::resource::ResourceKey;

use super::report::{FetchError, ProgressEvent, ProgressSink, SyncPhase};
use super::{ClinicalFetch, SyncOptions};

/// A patient's record as read from the source.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// The patient.
    pub patient: Option<ResourceKey>,
    /// Every resource read, in reading order.
    pub resources: Vec<(ResourceKey, Value)>,
    /// Position of each key in `resources`.
    pub index: HashMap<ResourceKey, usize>,
    /// Referenced resources the source could not give (404, 410, errors),
    /// with the reason.
    pub missing: BTreeMap<ResourceKey, String>,
    /// Referenced resources beyond the depth limit, not read.
    pub beyond_depth: BTreeSet<ResourceKey>,
    /// Types whose search failed.
    pub fetch_errors: Vec<FetchError>,
    /// Notes for the report.
    pub warnings: Vec<String>,
}

impl Collected {
    fn add(&mut self, resource: Value) -> Option<ResourceKey> {
        let key = ResourceKey::of(&resource)?;
        if self.index.contains_key(&key) {
            return None;
        }
        self.index.insert(key.clone(), self.resources.len());
        self.resources.push((key.clone(), resource));
        Some(key)
    }
}

/// Reads the patient, the chosen types and their references. Errors only
/// when the patient itself cannot be read (or the source is down).
pub(crate) async fn collect(
    source: &FhirClient,
    patient_id: &str,
    options: &SyncOptions,
    progress: &dyn ProgressSink,
) -> Result<Collected, FhirError> {
    let mut collected = Collected::default();
    progress.on_event(&ProgressEvent::Phase { phase: SyncPhase::FetchClinical });
    let types: Vec<&str> = options.resource_types.iter().map(String::as_str).filter(|t| *t != "Patient").collect();

    let mut use_searches = true;
    if options.fetch == ClinicalFetch::Everything {
        let type_list = std::iter::once("Patient").chain(types.iter().copied()).collect::<Vec<_>>().join(",");
        let count = source.page_size().to_string();
        match source.patient_everything(patient_id, &[("_type", &type_list), ("_count", &count)]).await {
            Ok(results) => {
                for r in results.resources.into_iter().chain(results.included) {
                    collected.add(r);
                }
                let key = ResourceKey::new("Patient", patient_id);
                if collected.index.contains_key(&key) {
                    collected.patient = Some(key);
                    use_searches = false;
                } else {
                    collected.warnings.push(
                        "Patient/$everything did not return the patient; read it and searched by type instead".into(),
                    );
                }
            }
            Err(e) if e.is_unsupported() || e.status() == Some(400) => {
                collected.warnings.push(format!(
                    "the source does not support Patient/$everything (HTTP {}); searched by type instead",
                    e.status().unwrap_or(0)
                ));
            }
            Err(e) => return Err(e),
        }
    }

    if use_searches {
        let searches: Vec<Search> = types
            .iter()
            .map(|t| {
                // `Patient/id` rather than the bare id: both are valid FHIR,
                // and some servers (the Medplum-based peer) match only the
                // typed form.
                Search::new(*t)
                    .param("patient", format!("Patient/{patient_id}"))
                    .param("_count", source.page_size().to_string())
            })
            .collect();
        let mut urls = vec![format!("Patient/{patient_id}")];
        urls.extend(searches.iter().map(Search::relative_url));
        let mut answers = source.get_many(&urls).await?.into_iter();
        let patient =
            answers.next().unwrap_or_else(|| Err(FhirError::InvalidRequest("no answer for the patient".into())))?;
        if crate::resource::resource_type(&patient) != Some("Patient") {
            return Err(FhirError::InvalidRequest(format!("Patient/{patient_id} answered with another resource type")));
        }
        collected.patient = collected.add(patient);
        let patient_key = ResourceKey::new("Patient", patient_id);
        for (search, answer) in searches.iter().zip(answers) {
            let pages = match answer {
                Ok(page) => source.remaining_pages(Some(search), page).await,
                Err(e) => Err(e),
            };
            match pages {
                Ok(results) => {
                    // A server may ignore a search parameter it does not
                    // support for a type (FHIR lets it) and answer with every
                    // resource of the type: other patients' records, which
                    // must not reach the target. A resource in the patient's
                    // compartment references the patient; the others are
                    // left out and the type reported.
                    let (mine, others): (Vec<Value>, Vec<Value>) = results
                        .resources
                        .into_iter()
                        .partition(|r| reference::local_targets(r, source.base_url()).contains(&patient_key));
                    if !others.is_empty() {
                        collected.fetch_errors.push(FetchError {
                            resource_type: search.resource_type().to_owned(),
                            class: crate::ErrorClass::Permanent,
                            reason: format!(
                                "the source answered the search for the patient's {t} resources with {n} that do \
                                 not reference the patient (does it support the `patient` search parameter for \
                                 {t}?): they were left out",
                                t = search.resource_type(),
                                n = others.len()
                            ),
                        });
                    }
                    for r in mine.into_iter().chain(results.included) {
                        collected.add(r);
                    }
                }
                Err(e) if e.class() == crate::ErrorClass::Transient => return Err(e),
                Err(e) => collected.fetch_errors.push(FetchError {
                    resource_type: search.resource_type().to_owned(),
                    class: e.class(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    progress.on_event(&ProgressEvent::Fetched { resources: collected.resources.len() });

    // Reference levels.
    let base = source.base_url().clone();
    let mut frontier: Vec<usize> = (0..collected.resources.len()).collect();
    let mut depth = 0;
    loop {
        let mut wanted = BTreeSet::new();
        for &i in &frontier {
            for key in reference::local_targets(&collected.resources[i].1, &base) {
                if !collected.index.contains_key(&key) && !collected.missing.contains_key(&key) {
                    wanted.insert(key);
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        if depth >= options.max_reference_depth {
            collected.beyond_depth.extend(wanted);
            break;
        }
        depth += 1;
        progress.on_event(&ProgressEvent::Phase { phase: SyncPhase::FetchReferences });
        let wanted: Vec<ResourceKey> = wanted.into_iter().collect();
        let urls: Vec<String> = wanted.iter().map(ResourceKey::to_string).collect();
        let answers = source.get_many(&urls).await?;
        frontier.clear();
        for (key, answer) in wanted.into_iter().zip(answers) {
            match answer {
                Ok(resource) if ResourceKey::of(&resource).as_ref() == Some(&key) => {
                    if collected.add(resource).is_some() {
                        frontier.push(collected.resources.len() - 1);
                    }
                }
                Ok(_) => {
                    collected.missing.insert(key, "the source answered with a different resource".into());
                }
                Err(e) if e.class() == crate::ErrorClass::Transient => return Err(e),
                Err(e) => {
                    let reason = match e.status() {
                        Some(404) => "not found on the source".to_owned(),
                        Some(410) => "deleted on the source".to_owned(),
                        _ => e.to_string(),
                    };
                    collected.missing.insert(key, reason);
                }
            }
        }
        progress.on_event(&ProgressEvent::Fetched { resources: collected.resources.len() });
    }
    Ok(collected)
}
