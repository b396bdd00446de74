//! Writing a plan to the target.
//!
//! Two writers share one plan:
//!
//! - [`transaction`]: one transaction Bundle. New resources get their
//!   `urn:uuid:` placeholder as `fullUrl` (the server resolves references to
//!   them, cycles included); with `conditional`, they are written as
//!   conditional updates on their match key (`PUT Type?identifier=s|v`, so a
//!   retried or concurrent write cannot duplicate them), otherwise as plain
//!   creates. Changed resources are updated by id with `If-Match` on the
//!   version that was compared, so a change made in the target since the
//!   look-up is not overwritten unseen.
//! - [`individual`]: one request per resource, in dependency order (strongly
//!   connected components, dependencies first; independent components of
//!   the same level in parallel). Inside a cycle, a resource is first
//!   created without its references to members not yet created, then
//!   updated with them once every member has an id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt as _;
use serde_json::Value;

use crate::bundle::{self, BundleEntry, EntryMethod};
use crate::client::{FhirClient, WriteOutcome};
use crate::error::{ErrorClass, FhirError};
use crate::reference::{self, Rewrite};
use crate::resource::ResourceKey;

use super::plan::{Action, Plan, write_order};
use super::report::{ProgressEvent, ProgressSink};

/// What happened to one written resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Written {
    Created { target_id: String },
    Updated { target_id: String },
    Failed { class: ErrorClass, reason: String },
}

/// Indexes (into the plan) of the resources to write.
pub(crate) fn to_write(plan: &Plan) -> Vec<usize> {
    (0..plan.items.len()).filter(|&i| matches!(plan.items[i].action, Action::Create | Action::Update { .. })).collect()
}

/// Writes `indexes` as one transaction. `Err` when the target refused the
/// transaction as a whole (the caller falls back; a server whose
/// transactions are not atomic may have applied part of it).
pub(crate) async fn transaction(
    target: &FhirClient,
    plan: &Plan,
    indexes: &[usize],
    conditional: bool,
) -> Result<HashMap<ResourceKey, Written>, FhirError> {
    let base = target.base_url().as_str().trim_end_matches('/').to_owned();
    let entries: Vec<BundleEntry> = indexes
        .iter()
        .map(|&i| {
            let item = &plan.items[i];
            let t = &item.source.resource_type;
            match &item.action {
                Action::Update { target_id, version_id } => {
                    let mut resource = item.desired.clone();
                    set_id(&mut resource, target_id);
                    BundleEntry {
                        full_url: Some(format!("{base}/{t}/{target_id}")),
                        resource: Some(resource),
                        method: EntryMethod::Put,
                        url: format!("{t}/{target_id}"),
                        if_none_exist: None,
                        if_match: version_id.as_ref().map(|v| format!("W/\"{v}\"")),
                    }
                }
                _ => BundleEntry {
                    full_url: Some(item.placeholder.clone()),
                    resource: Some(item.desired.clone()),
                    method: if conditional { EntryMethod::Put } else { EntryMethod::Post },
                    url: if conditional {
                        format!("{t}?identifier={}", encode_query_value(&item.key.token()))
                    } else {
                        t.clone()
                    },
                    if_none_exist: None,
                    if_match: None,
                },
            }
        })
        .collect();
    let response = target.transaction(&bundle::transaction(&entries)).await?;
    let responses = bundle::entry_responses(&response);
    if responses.len() != indexes.len() {
        return Err(FhirError::InvalidResponse {
            context: crate::error::RequestContext {
                server: target.name().to_owned(),
                method: "POST".into(),
                path: String::new(),
            },
            reason: format!("transaction-response has {} entries for {} sent", responses.len(), indexes.len()),
        });
    }
    let mut out = HashMap::new();
    for (&i, r) in indexes.iter().zip(responses) {
        let item = &plan.items[i];
        let written = if r.is_success() {
            match (r.written_key(), item.action.target_id()) {
                (Some(k), _) if k.resource_type == item.source.resource_type => {
                    if r.status == 201 {
                        Written::Created { target_id: k.id }
                    } else {
                        Written::Updated { target_id: k.id }
                    }
                }
                (_, Some(id)) => Written::Updated { target_id: id.to_owned() },
                _ => Written::Failed {
                    class: ErrorClass::Permanent,
                    reason: "the transaction response gives no id for it".into(),
                },
            }
        } else {
            Written::Failed {
                class: if crate::error::is_transient_status(r.status) {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                },
                reason: format!(
                    "HTTP {}{}",
                    r.status,
                    r.outcome.map(|o| format!(": {}", o.summary())).unwrap_or_default()
                ),
            }
        };
        out.insert(item.source.clone(), written);
    }
    Ok(out)
}

/// Writes `indexes` one request each, in dependency order, `concurrency`
/// at a time. Never fails as a whole: each resource gets its outcome.
pub(crate) async fn individual(
    target: &FhirClient,
    plan: &Plan,
    indexes: &[usize],
    concurrency: usize,
    progress: &dyn ProgressSink,
) -> HashMap<ResourceKey, Written> {
    // Target references of resources that exist or have been written.
    let resolved: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let outcomes: Mutex<HashMap<ResourceKey, Written>> = Mutex::new(HashMap::new());
    let done = AtomicUsize::new(0);
    let total = indexes.len();

    let components = write_order(plan, indexes);
    // Level of each component: one more than the deepest component it
    // depends on, so each level only references earlier levels.
    let mut level_of: HashMap<usize, usize> = HashMap::new();
    let mut levels: Vec<Vec<&Vec<usize>>> = Vec::new();
    for component in &components {
        let level = component
            .iter()
            .flat_map(|&i| plan.items[i].depends_on.iter())
            .filter_map(|k| plan.index.get(k))
            .filter(|j| !component.contains(j))
            .filter_map(|j| level_of.get(j))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        for &i in component {
            level_of.insert(i, level);
        }
        if levels.len() <= level {
            levels.resize_with(level + 1, Vec::new);
        }
        levels[level].push(component);
    }

    for level in levels {
        futures::stream::iter(level)
            .for_each_concurrent(concurrency.max(1), |component| {
                let resolved = &resolved;
                let outcomes = &outcomes;
                let done = &done;
                async move {
                    write_component(target, plan, component, resolved, outcomes).await;
                    let n = done.fetch_add(component.len(), Ordering::Relaxed) + component.len();
                    progress.on_event(&ProgressEvent::Written { done: n, total });
                }
            })
            .await;
    }
    outcomes.into_inner().unwrap_or_else(|e| e.into_inner())
}

async fn write_component(
    target: &FhirClient,
    plan: &Plan,
    component: &[usize],
    resolved: &Mutex<HashMap<String, String>>,
    outcomes: &Mutex<HashMap<ResourceKey, Written>>,
) {
    // Members whose first write left out references to members created
    // later in this component: (index, version written).
    let mut pending: Vec<(usize, Option<String>)> = Vec::new();
    for &i in component {
        let item = &plan.items[i];
        if let Some(reason) = failed_dependency(plan, item, outcomes) {
            record(outcomes, item.source.clone(), Written::Failed { class: ErrorClass::Permanent, reason });
            continue;
        }
        let (content, incomplete) = finish_content(plan, &item.desired, resolved, component);
        let outcome = write_one(target, item, content).await;
        match outcome {
            Ok((written, version)) => {
                if let Written::Created { target_id } | Written::Updated { target_id } = &written {
                    lock(resolved)
                        .insert(item.placeholder.clone(), format!("{}/{target_id}", item.source.resource_type));
                    if incomplete {
                        pending.push((i, version));
                    }
                }
                record(outcomes, item.source.clone(), written);
            }
            Err(e) => record(outcomes, item.source.clone(), failure(&e)),
        }
    }
    // Second pass of create-then-update for the cycle.
    for (i, version) in pending {
        let item = &plan.items[i];
        let Some(target_id) = lock(outcomes).get(&item.source).and_then(|w| match w {
            Written::Created { target_id } | Written::Updated { target_id } => Some(target_id.clone()),
            Written::Failed { .. } => None,
        }) else {
            continue;
        };
        let (mut content, incomplete) = finish_content(plan, &item.desired, resolved, &[]);
        if incomplete {
            record(
                outcomes,
                item.source.clone(),
                Written::Failed {
                    class: ErrorClass::Permanent,
                    reason: "written without some references: a resource of its reference cycle failed".into(),
                },
            );
            continue;
        }
        set_id(&mut content, &target_id);
        let result = match &version {
            Some(v) => target.update_if_match(&content, v).await,
            None => target.update(&content).await,
        };
        if let Err(e) = result {
            record(outcomes, item.source.clone(), failure(&e));
        }
    }
}

/// Writes one resource; returns the outcome and the version written.
async fn write_one(
    target: &FhirClient,
    item: &super::plan::Planned,
    mut content: Value,
) -> Result<(Written, Option<String>), FhirError> {
    let outcome: WriteOutcome = match &item.action {
        Action::Update { target_id, version_id } => {
            set_id(&mut content, target_id);
            match version_id {
                Some(v) => target.update_if_match(&content, v).await?,
                None => target.update(&content).await?,
            }
        }
        _ => {
            let token = item.key.token();
            target.conditional_update(&content, &[("identifier", token.as_str())]).await?
        }
    };
    let target_id = outcome
        .key
        .as_ref()
        .filter(|k| k.resource_type == item.source.resource_type)
        .map(|k| k.id.clone())
        .or_else(|| item.action.target_id().map(str::to_owned));
    let Some(target_id) = target_id else {
        return Ok((
            Written::Failed {
                class: ErrorClass::Permanent,
                reason: format!("HTTP {} without the written resource's id", outcome.status),
            },
            None,
        ));
    };
    let written = if outcome.created() { Written::Created { target_id } } else { Written::Updated { target_id } };
    Ok((written, outcome.version_id))
}

/// `desired` with placeholders replaced by target references where known.
/// Placeholders of members of `component` not yet written are removed (the
/// second pass puts them back); returns whether any were.
fn finish_content(
    plan: &Plan,
    desired: &Value,
    resolved: &Mutex<HashMap<String, String>>,
    component: &[usize],
) -> (Value, bool) {
    let mut content = desired.clone();
    let resolved = lock(resolved);
    let mut incomplete = false;
    let in_component: Vec<&str> = component.iter().map(|&i| plan.items[i].placeholder.as_str()).collect();
    reference::rewrite_references(&mut content, &mut |r| {
        if !r.starts_with("urn:uuid:") {
            return Rewrite::Keep;
        }
        match resolved.get(r) {
            Some(t) => Rewrite::Replace(t.clone()),
            None => {
                incomplete = true;
                if in_component.contains(&r) { Rewrite::Remove } else { Rewrite::Keep }
            }
        }
    });
    (content, incomplete)
}

fn failed_dependency(
    plan: &Plan,
    item: &super::plan::Planned,
    outcomes: &Mutex<HashMap<ResourceKey, Written>>,
) -> Option<String> {
    let outcomes = lock(outcomes);
    item.depends_on.iter().find_map(|k| {
        let dependency_failed = matches!(outcomes.get(k), Some(Written::Failed { .. }))
            || matches!(plan.get(k).map(|p| &p.action), Some(Action::Fail { .. }));
        dependency_failed.then(|| format!("references {k}, which could not be written"))
    })
}

fn failure(e: &FhirError) -> Written {
    Written::Failed { class: e.class(), reason: e.to_string() }
}

fn record(outcomes: &Mutex<HashMap<ResourceKey, Written>>, key: ResourceKey, written: Written) {
    lock(outcomes).insert(key, written);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated
    // (each insert is one call), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_id(resource: &mut Value, id: &str) {
    if let Some(obj) = resource.as_object_mut() {
        obj.insert("id".into(), Value::String(id.to_owned()));
    }
}

/// Percent-encodes a search value for a Bundle entry's `request.url`.
fn encode_query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
