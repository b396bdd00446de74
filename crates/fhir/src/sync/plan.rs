//! Matching the source's resources to the target's, and planning the
//! writes.
//!
//! **Match keys.** A resource is matched by a business identifier when it
//! has a usable one: system and value present, not `use = old`, not a
//! social security number (it would go into URLs and the target's access
//! logs), and unique among the synced resources of its type (Synthea's
//! ExplanationOfBenefits all share one claim-group identifier, which would
//! match every one of them). `official` identifiers are preferred, then
//! medical record numbers (type `MR`), then `usual`, then document order.
//! A resource without one gets a provenance identifier, system
//! `urn:plexus:source:<source name>`, value `<Type>/<id>` on the source,
//! added to the resource written, so the next run finds it again.
//!
//! **The identity that persists.** Business identifiers change: an EHR
//! corrects a mistyped MRN, or replaces a temporary registration number
//! with the permanent one, on the same resource (same logical id). Matched
//! by the new MRN alone, the target's copy would not be found and a second
//! Patient would be created. So a resource matched by a business
//! identifier is written with the provenance identifier too, and looked up
//! by both: a target resource carrying either is its copy (and is updated to
//! the corrected identifier). Two different target resources, one carrying
//! each, are an ambiguous match (a possible duplicate for a person to
//! resolve), never merged silently. Types whose `identifier` is 0..1
//! cannot carry both and keep the business identifier alone. Copies written
//! before the provenance identifier was added get it at their next sync.
//!
//! **Look-up.** One search per type and identifier system, values OR-ed
//! (`identifier=s|a,s|b`), all in one batch: the target's current copies
//! come back in one or two requests. A key matching two target resources,
//! or two source resources matching one target resource, is ambiguous: the
//! resource fails rather than overwrite the wrong record.
//!
//! **Desired content.** The source resource without `id` and without the
//! server-managed parts of `meta`, with the provenance identifier when it
//! needs one, and every reference rewritten: to `Type/<target id>` when the
//! target has the resource, to the `urn:uuid:` placeholder of the resource
//! being created otherwise (the transaction resolves placeholders; the
//! one-by-one writer replaces them as targets get ids). A reference to a
//! resource that is not synced (missing on the source, beyond the depth
//! limit) is removed, keeping its display text: pointing it at the source's
//! id could name a different resource in the target. A resource referencing
//! a resource that failed fails too. The desired content is compared with
//! the target's copy ignoring `meta`, except that the copy must carry the
//! source's profiles, security labels and tags: equal means unchanged, not
//! written.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};
use url::Url;

use crate::client::{FhirClient, Search};
use crate::error::{ErrorClass, FhirError};
use crate::reference::{self, RefTarget, Rewrite};
use crate::resource::{self, ResourceKey};

use super::collect::Collected;

/// How a resource is found in the target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MatchKey {
    pub system: String,
    pub value: String,
    /// True for the provenance identifier Plexus adds.
    pub provenance: bool,
    /// For a business identifier key: the provenance identifier, carried
    /// and looked up too, so a copy is found after the business identifier
    /// changed (module docs). `None` for a provenance key and for types
    /// with a single identifier.
    pub persistent: Option<Box<MatchKey>>,
}

impl MatchKey {
    /// The token search value `system|value`, escaped.
    pub fn token(&self) -> String {
        format!("{}|{}", resource::escape_search_value(&self.system), resource::escape_search_value(&self.value))
    }

    /// This key and its persistent one: every identifier the resource is
    /// looked up by.
    pub fn all(&self) -> impl Iterator<Item = &MatchKey> {
        std::iter::once(self).chain(self.persistent.as_deref())
    }

    /// The provenance identifier among [`all`](MatchKey::all), if any.
    fn provenance_key(&self) -> Option<&MatchKey> {
        self.all().find(|k| k.provenance)
    }
}

/// The provenance identifier system for resources from `source`.
pub(crate) fn provenance_system(source: &str) -> String {
    format!("urn:plexus:source:{source}")
}

/// What to do with one resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Not in the target: create it.
    Create,
    /// In the target with other content: update it.
    Update { target_id: String, version_id: Option<String> },
    /// In the target with the same content.
    Unchanged { target_id: String },
    /// Cannot be synced.
    Fail { class: ErrorClass, reason: String },
}

impl Action {
    pub fn target_id(&self) -> Option<&str> {
        match self {
            Action::Update { target_id, .. } | Action::Unchanged { target_id } => Some(target_id),
            _ => None,
        }
    }
}

/// One resource's plan.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub source: ResourceKey,
    pub key: MatchKey,
    pub action: Action,
    /// What the target should hold (no `id`); references to resources
    /// being created are their placeholders.
    pub desired: Value,
    /// The placeholder (`urn:uuid:...`) other resources use for this one
    /// while it is being created.
    pub placeholder: String,
    /// Synced resources this one references (for ordering).
    pub depends_on: Vec<ResourceKey>,
}

/// The whole plan, in the collected order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub items: Vec<Planned>,
    pub index: HashMap<ResourceKey, usize>,
    /// References removed (to resources not synced), for the report.
    pub removed_references: BTreeMap<ResourceKey, usize>,
}

impl Plan {
    pub fn get(&self, key: &ResourceKey) -> Option<&Planned> {
        self.index.get(key).map(|&i| &self.items[i])
    }

    pub fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.items.iter().filter(|p| f(&p.action)).count()
    }
}

/// Chooses each resource's match key.
pub(crate) fn match_keys(collected: &Collected, source_name: &str) -> HashMap<ResourceKey, MatchKey> {
    // (type, system, value) -> how many synced resources carry it.
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for (key, r) in &collected.resources {
        let mut once = HashSet::new();
        for id in resource::identifiers(r) {
            if let (Some(s), Some(v)) = (id.system, id.value)
                && once.insert((s.clone(), v.clone()))
            {
                *seen.entry((key.resource_type.clone(), s, v)).or_default() += 1;
            }
        }
    }
    let provenance = provenance_system(source_name);
    collected
        .resources
        .iter()
        .map(|(key, r)| {
            let best = resource::identifiers(r)
                .into_iter()
                .enumerate()
                .filter_map(|(pos, id)| {
                    let system = id.system.clone().filter(|s| !s.is_empty())?;
                    let value = id.value.clone().filter(|v| !v.is_empty())?;
                    if id.use_.as_deref() == Some("old")
                        || id.type_code.as_deref() == Some("SS")
                        || system == "http://hl7.org/fhir/sid/us-ssn"
                        || system == provenance
                    {
                        return None;
                    }
                    if seen.get(&(key.resource_type.clone(), system.clone(), value.clone())) != Some(&1) {
                        return None;
                    }
                    let rank = match (id.use_.as_deref(), id.type_code.as_deref()) {
                        (Some("official"), _) => 0,
                        (_, Some("MR")) => 1,
                        (Some("usual"), _) => 2,
                        _ => 3,
                    };
                    Some((rank, pos, system, value))
                })
                .min_by_key(|(rank, pos, _, _)| (*rank, *pos));
            let source_identity =
                MatchKey { system: provenance.clone(), value: key.to_string(), provenance: true, persistent: None };
            let chosen = match best {
                Some((_, _, system, value)) => MatchKey {
                    system,
                    value,
                    provenance: false,
                    persistent: (!SINGLE_IDENTIFIER_TYPES.contains(&key.resource_type.as_str()))
                        .then(|| Box::new(source_identity)),
                },
                None => source_identity,
            };
            (key.clone(), chosen)
        })
        .collect()
}

/// A target resource found by the look-up.
#[derive(Debug, Clone)]
pub(crate) struct TargetCopy {
    pub id: String,
    pub resource: Value,
}

/// What the target holds for the match keys.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// For each (type, match token), the target resources carrying it.
    pub found: HashMap<(String, String), Vec<TargetCopy>>,
    /// Types the target refused to search (no `identifier` search
    /// parameter, say), with its error: their resources cannot be matched.
    pub failed_types: HashMap<String, String>,
}

/// Searches the target for every key: one search per (type, system), values
/// OR-ed, all through `get_many` (one batch when it can).
///
/// A search costs a server about the same whatever the number of values
/// (it scans or probes an index per resource, not per value), so values go
/// into as few searches as a URL allows: long ones inside a batch Bundle,
/// where the URL travels in the body, short ones when each search is its
/// own GET (servers refuse request lines over about 8 KB).
pub(crate) async fn look_up(
    target: &FhirClient,
    keys: &HashMap<ResourceKey, MatchKey>,
    hints: &BTreeMap<String, String>,
) -> Result<Lookup, FhirError> {
    const IN_BATCH: usize = 16 * 1024;
    const ALONE: usize = 4 * 1024;
    let mut lookup = Lookup::default();
    let confirmed =
        if hints.is_empty() { HashSet::new() } else { look_up_by_id(target, keys, hints, &mut lookup).await? };
    let rest: HashMap<ResourceKey, MatchKey> =
        keys.iter().filter(|(source, _)| !confirmed.contains(*source)).map(|(s, k)| (s.clone(), k.clone())).collect();
    if rest.is_empty() {
        return Ok(lookup);
    }
    let searched = if target.batches_active() {
        match look_up_with(target, &rest, IN_BATCH).await {
            // The server refused the batch on this very call and the long
            // searches went out one by one: shorten them.
            Err(_) if !target.batches_active() => look_up_with(target, &rest, ALONE).await,
            result => result,
        }
    } else {
        look_up_with(target, &rest, ALONE).await
    }?;
    for (k, copies) in searched.found {
        let mine = lookup.found.entry(k).or_default();
        for copy in copies {
            if !mine.iter().any(|c| c.id == copy.id) {
                mine.push(copy);
            }
        }
    }
    lookup.failed_types.extend(searched.failed_types);
    Ok(lookup)
}

/// Reads the hinted target ids (`Type?_id=a,b,c`, one batch) and keeps each
/// copy that still carries its source's match identifier. Returns the
/// source keys so confirmed; the others are left to the identifier search.
async fn look_up_by_id(
    target: &FhirClient,
    keys: &HashMap<ResourceKey, MatchKey>,
    hints: &BTreeMap<String, String>,
    lookup: &mut Lookup,
) -> Result<HashSet<ResourceKey>, FhirError> {
    /// Ids per search: short enough for any URL.
    const IDS_PER_SEARCH: usize = 100;
    type Hinted<'a> = (&'a ResourceKey, &'a MatchKey, &'a str);
    let mut by_type: BTreeMap<&str, Vec<Hinted<'_>>> = BTreeMap::new();
    for (source, key) in keys {
        if let Some(id) = hints.get(&source.to_string()).filter(|id| resource::is_valid_id(id)) {
            by_type.entry(source.resource_type.as_str()).or_default().push((source, key, id.as_str()));
        }
    }
    let mut searches: Vec<(Search, Vec<Hinted<'_>>)> = Vec::new();
    for (resource_type, mut hinted) in by_type {
        hinted.sort_by(|a, b| a.2.cmp(b.2));
        for chunk in hinted.chunks(IDS_PER_SEARCH) {
            let ids: Vec<&str> = chunk.iter().map(|h| h.2).collect();
            let search =
                Search::new(resource_type).param("_id", ids.join(",")).param("_count", (ids.len() + 10).to_string());
            searches.push((search, chunk.to_vec()));
        }
    }
    let urls: Vec<String> = searches.iter().map(|(s, _)| s.relative_url()).collect();
    let answers = target.get_many(&urls).await?;
    let mut confirmed = HashSet::new();
    for ((search, hinted), answer) in searches.iter().zip(answers) {
        let results = match answer {
            Ok(page) => target.remaining_pages(Some(search), page).await,
            Err(e) => Err(e),
        };
        let results = match results {
            Ok(r) => r,
            Err(e) if e.class() == ErrorClass::Transient => return Err(e),
            // Refused: these go to the identifier search.
            Err(_) => continue,
        };
        for r in results.resources {
            let (Some(t), Some(id)) = (resource::resource_type(&r), resource::id(&r)) else {
                continue;
            };
            if t != search.resource_type() {
                continue;
            }
            let carried: HashSet<(String, String)> =
                resource::identifiers(&r).into_iter().filter_map(|i| Some((i.system?, i.value?))).collect();
            for (source, key, _) in hinted.iter().filter(|h| h.2 == id) {
                if key.all().any(|k| carried.contains(&(k.system.clone(), k.value.clone()))) {
                    let copies = lookup.found.entry((t.to_owned(), key.token())).or_default();
                    if !copies.iter().any(|c| c.id == id) {
                        copies.push(TargetCopy { id: id.to_owned(), resource: r.clone() });
                    }
                    confirmed.insert((*source).clone());
                }
            }
        }
    }
    Ok(confirmed)
}

async fn look_up_with(
    target: &FhirClient,
    keys: &HashMap<ResourceKey, MatchKey>,
    url_budget: usize,
) -> Result<Lookup, FhirError> {
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (source, key) in keys {
        for k in key.all() {
            groups.entry((source.resource_type.clone(), k.system.clone())).or_default().push(k.value.clone());
        }
    }
    let mut searches = Vec::new();
    for ((resource_type, system), mut values) in groups {
        values.sort();
        values.dedup();
        let mut tokens: Vec<String> = Vec::new();
        let mut length = 0;
        let flush = |tokens: &mut Vec<String>, searches: &mut Vec<Search>| {
            if !tokens.is_empty() {
                searches.push(
                    Search::new(resource_type.clone())
                        .param("identifier", tokens.join(","))
                        .param("_count", (tokens.len() * 2 + 10).to_string()),
                );
                tokens.clear();
            }
        };
        for v in values {
            let token = token_of(&system, &v);
            // Its length in the URL, percent-encoded, plus the comma.
            let cost = url::form_urlencoded::byte_serialize(token.as_bytes()).map(str::len).sum::<usize>() + 3;
            if length + cost > url_budget {
                flush(&mut tokens, &mut searches);
                length = 0;
            }
            length += cost;
            tokens.push(token);
        }
        flush(&mut tokens, &mut searches);
    }
    let urls: Vec<String> = searches.iter().map(Search::relative_url).collect();
    let answers = target.get_many(&urls).await?;
    let wanted: HashSet<(String, String, String)> = keys
        .iter()
        .flat_map(|(s, key)| key.all().map(|k| (s.resource_type.clone(), k.system.clone(), k.value.clone())))
        .collect();
    let mut lookup = Lookup::default();
    for (search, answer) in searches.iter().zip(answers) {
        let results = match answer {
            Ok(page) => target.remaining_pages(Some(search), page).await,
            Err(e) => Err(e),
        };
        let results = match results {
            Ok(r) => r,
            Err(e) if e.class() == ErrorClass::Transient => return Err(e),
            Err(e) => {
                lookup.failed_types.insert(search.resource_type().to_owned(), e.to_string());
                continue;
            }
        };
        for r in results.resources {
            let (Some(t), Some(id)) = (resource::resource_type(&r), resource::id(&r)) else {
                continue;
            };
            if t != search.resource_type() {
                continue;
            }
            let mut once = HashSet::new();
            for ident in resource::identifiers(&r) {
                let (Some(s), Some(v)) = (ident.system, ident.value) else {
                    continue;
                };
                let k = (t.to_owned(), s, v);
                if wanted.contains(&k) && once.insert(k.clone()) {
                    let copies = lookup.found.entry((k.0.clone(), token_of(&k.1, &k.2))).or_default();
                    if !copies.iter().any(|c| c.id == id) {
                        copies.push(TargetCopy { id: id.to_owned(), resource: r.clone() });
                    }
                }
            }
        }
    }
    Ok(lookup)
}

fn token_of(system: &str, value: &str) -> String {
    MatchKey { system: system.to_owned(), value: value.to_owned(), provenance: false, persistent: None }.token()
}

/// The target resources carrying any identifier of `key`, each once.
fn copies_of(lookup: &Lookup, resource_type: &str, key: &MatchKey) -> Vec<TargetCopy> {
    let mut copies: Vec<TargetCopy> = Vec::new();
    for k in key.all() {
        for copy in lookup.found.get(&(resource_type.to_owned(), k.token())).map(Vec::as_slice).unwrap_or(&[]) {
            if !copies.iter().any(|c| c.id == copy.id) {
                copies.push(copy.clone());
            }
        }
    }
    copies
}

/// Types whose `identifier` is a single element (0..1) in R4.
const SINGLE_IDENTIFIER_TYPES: &[&str] = &["Bundle", "Composition", "QuestionnaireResponse"];

/// Builds the plan from what was read, the match keys and the look-up.
pub(crate) fn plan(
    collected: &Collected,
    keys: &HashMap<ResourceKey, MatchKey>,
    lookup: &Lookup,
    source_base: &Url,
) -> Plan {
    let mut plan = Plan::default();

    // 1. Match: which target resource is each source resource?
    let mut claimed: HashMap<(String, String), Vec<ResourceKey>> = HashMap::new();
    let mut matched: HashMap<ResourceKey, Result<Option<TargetCopy>, String>> = HashMap::new();
    for (source, _) in &collected.resources {
        let Some(key) = keys.get(source) else {
            continue;
        };
        if let Some(reason) = lookup.failed_types.get(&source.resource_type) {
            matched.insert(source.clone(), Err(format!("the target cannot be searched for it: {reason}")));
            continue;
        }
        let copies = copies_of(lookup, &source.resource_type, key);
        let m = match copies.as_slice() {
            [] => Ok(None),
            [one] => {
                claimed.entry((source.resource_type.clone(), one.id.clone())).or_default().push(source.clone());
                Ok(Some(one.clone()))
            }
            many => Err(format!(
                "ambiguous match: {} {} resources in the target carry its identifier ({})",
                many.len(),
                source.resource_type,
                match (key.provenance, key.persistent.is_some()) {
                    (true, _) => "provenance identifier",
                    (false, true) => "business or provenance identifier",
                    (false, false) => "business identifier",
                },
            )),
        };
        matched.insert(source.clone(), m);
    }
    for ((t, id), sources) in &claimed {
        if sources.len() > 1 {
            for s in sources {
                matched.insert(
                    s.clone(),
                    Err(format!(
                        "ambiguous match: {t}/{id} in the target carries the identifiers of {} source resources",
                        sources.len()
                    )),
                );
            }
        }
    }

    // 2. Failures propagate to every resource that references a failed one.
    let deps: HashMap<ResourceKey, Vec<ResourceKey>> = collected
        .resources
        .iter()
        .map(|(k, r)| {
            let d = reference::local_targets(r, source_base)
                .into_iter()
                .filter(|t| collected.index.contains_key(t) && t != k)
                .collect();
            (k.clone(), d)
        })
        .collect();
    let mut failed: HashMap<ResourceKey, String> =
        matched.iter().filter_map(|(k, m)| m.as_ref().err().map(|e| (k.clone(), e.clone()))).collect();
    loop {
        let newly: Vec<(ResourceKey, String)> = deps
            .iter()
            .filter(|(k, _)| !failed.contains_key(*k))
            .filter_map(|(k, d)| {
                d.iter()
                    .find(|t| failed.contains_key(*t))
                    .map(|t| (k.clone(), format!("references {t}, which cannot be synced")))
            })
            .collect();
        if newly.is_empty() {
            break;
        }
        failed.extend(newly);
    }

    // 3. Placeholders for everything that will be created.
    let placeholders: HashMap<ResourceKey, String> =
        collected.resources.iter().map(|(k, _)| (k.clone(), format!("urn:uuid:{}", uuid::Uuid::new_v4()))).collect();
    let target_ref = |k: &ResourceKey| -> Option<String> {
        match matched.get(k) {
            Some(Ok(Some(copy))) => Some(format!("{}/{}", k.resource_type, copy.id)),
            Some(Ok(None)) => placeholders.get(k).cloned(),
            _ => None,
        }
    };

    // 4. Desired content and action.
    for (source, r) in &collected.resources {
        let Some(key) = keys.get(source) else {
            continue;
        };
        let placeholder = placeholders.get(source).cloned().unwrap_or_default();
        let mut desired = r.clone();
        let mut removed = 0;
        if let Some(obj) = desired.as_object_mut() {
            obj.remove("id");
            strip_server_meta(obj);
            if let Some(provenance) = key.provenance_key() {
                add_identifier(obj, &source.resource_type, provenance);
            }
        }
        reference::rewrite_references(&mut desired, &mut |reference| {
            match reference::classify(reference, source_base) {
                RefTarget::Local(k) if collected.index.contains_key(&k) => match target_ref(&k) {
                    Some(t) => Rewrite::Replace(t),
                    None => Rewrite::Keep, // the resource fails anyway (step 2)
                },
                RefTarget::Local(_) => {
                    removed += 1;
                    Rewrite::Remove
                }
                _ => Rewrite::Keep,
            }
        });
        if removed > 0 {
            plan.removed_references.insert(source.clone(), removed);
        }
        let action = if let Some(reason) = failed.get(source) {
            Action::Fail { class: ErrorClass::Permanent, reason: reason.clone() }
        } else {
            match matched.get(source) {
                Some(Ok(Some(copy)))
                    if resource::same_content(&desired, &copy.resource)
                        && meta_labels_kept(&desired, &copy.resource) =>
                {
                    Action::Unchanged { target_id: copy.id.clone() }
                }
                Some(Ok(Some(copy))) => Action::Update {
                    target_id: copy.id.clone(),
                    version_id: resource::version_id(&copy.resource).map(str::to_owned),
                },
                _ => Action::Create,
            }
        };
        plan.index.insert(source.clone(), plan.items.len());
        plan.items.push(Planned {
            source: source.clone(),
            key: key.clone(),
            action,
            desired,
            placeholder,
            depends_on: deps.get(source).cloned().unwrap_or_default(),
        });
    }
    plan
}

/// Whether `copy` carries every profile, security label and tag of
/// `desired`'s `meta`. [`resource::same_content`] ignores `meta` (servers
/// add their own tags and versions), but these three come from the source
/// and mean something: a resource the EHR has just labelled restricted
/// (`meta.security` R) must not be left unlabelled in the target as
/// "unchanged". Labels the target added on its own do not count as a change.
fn meta_labels_kept(desired: &Value, copy: &Value) -> bool {
    let list = |r: &Value, k: &str| -> Vec<Value> {
        r.get("meta").and_then(|m| m.get(k)).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    // A Coding is the same label when its system and code are.
    let coding = |c: &Value| (c.get("system").cloned(), c.get("code").cloned());
    let codings_kept = |k: &str| {
        let have: Vec<_> = list(copy, k).iter().map(coding).collect();
        list(desired, k).iter().all(|c| have.contains(&coding(c)))
    };
    let profiles = list(copy, "profile");
    list(desired, "profile").iter().all(|p| profiles.contains(p)) && codings_kept("security") && codings_kept("tag")
}

/// Drops what a server manages in `meta` (version, lastUpdated, source);
/// profiles, tags and security labels stay. An emptied `meta` goes.
fn strip_server_meta(obj: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = obj.get_mut("meta") {
        for k in ["versionId", "lastUpdated", "source"] {
            meta.remove(k);
        }
        if meta.is_empty() {
            obj.remove("meta");
        }
    }
}

fn add_identifier(obj: &mut Map<String, Value>, resource_type: &str, key: &MatchKey) {
    let ident = json!({"system": key.system, "value": key.value});
    if SINGLE_IDENTIFIER_TYPES.contains(&resource_type) {
        obj.entry("identifier").or_insert(ident);
        return;
    }
    match obj.get_mut("identifier") {
        Some(Value::Array(list)) => {
            let present = list.iter().any(|i| {
                i.get("system").and_then(Value::as_str) == Some(key.system.as_str())
                    && i.get("value").and_then(Value::as_str) == Some(key.value.as_str())
            });
            if !present {
                list.push(ident);
            }
        }
        _ => {
            obj.insert("identifier".into(), Value::Array(vec![ident]));
        }
    }
}

/// Strongly connected components of the resources to write, dependencies
/// first (Tarjan's algorithm emits them in that order). Edges go from a
/// resource to the resources it references that are being created: only
/// those constrain the order, as the others already have target ids.
pub(crate) fn write_order(plan: &Plan, to_write: &[usize]) -> Vec<Vec<usize>> {
    let in_set: HashSet<usize> = to_write.iter().copied().collect();
    let edges: HashMap<usize, Vec<usize>> = to_write
        .iter()
        .map(|&i| {
            let targets = plan.items[i]
                .depends_on
                .iter()
                .filter_map(|k| plan.index.get(k).copied())
                .filter(|j| in_set.contains(j) && plan.items[*j].action == Action::Create)
                .collect();
            (i, targets)
        })
        .collect();
    Tarjan::run(to_write, &edges)
}

struct Tarjan<'a> {
    edges: &'a HashMap<usize, Vec<usize>>,
    index: HashMap<usize, usize>,
    low: HashMap<usize, usize>,
    on_stack: HashSet<usize>,
    stack: Vec<usize>,
    next: usize,
    out: Vec<Vec<usize>>,
}

impl<'a> Tarjan<'a> {
    fn run(nodes: &[usize], edges: &'a HashMap<usize, Vec<usize>>) -> Vec<Vec<usize>> {
        let mut t = Tarjan {
            edges,
            index: HashMap::new(),
            low: HashMap::new(),
            on_stack: HashSet::new(),
            stack: Vec::new(),
            next: 0,
            out: Vec::new(),
        };
        for &n in nodes {
            if !t.index.contains_key(&n) {
                t.visit(n);
            }
        }
        t.out
    }

    /// Iterative, so a long reference chain cannot overflow the stack.
    fn visit(&mut self, root: usize) {
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        self.open(root);
        while let Some(&mut (node, ref mut pos)) = work.last_mut() {
            let succ = self.edges.get(&node).and_then(|e| e.get(*pos)).copied();
            if let Some(next) = succ {
                *pos += 1;
                if !self.index.contains_key(&next) {
                    self.open(next);
                    work.push((next, 0));
                } else if self.on_stack.contains(&next) {
                    let l = self.low[&node].min(self.index[&next]);
                    self.low.insert(node, l);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                let l = self.low[&parent].min(self.low[&node]);
                self.low.insert(parent, l);
            }
            if self.low[&node] == self.index[&node] {
                let mut component = Vec::new();
                while let Some(m) = self.stack.pop() {
                    self.on_stack.remove(&m);
                    component.push(m);
                    if m == node {
                        break;
                    }
                }
                component.reverse();
                self.out.push(component);
            }
        }
    }

    fn open(&mut self, n: usize) {
        self.index.insert(n, self.next);
        self.low.insert(n, self.next);
        self.next += 1;
        self.stack.push(n);
        self.on_stack.insert(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(resources: Vec<Value>) -> Collected {
        let mut c = Collected::default();
        for r in resources {
            let k = ResourceKey::of(&r).expect("key");
            c.index.insert(k.clone(), c.resources.len());
            c.resources.push((k, r));
        }
        c
    }

    fn base() -> Url {
        Url::parse("http://ehr/fhir").expect("url")
    }

    #[test]
    fn match_key_prefers_official_then_mr_and_skips_shared_ssn_and_old() {
        let c = collected(vec![
            json!({"resourceType": "Patient", "id": "p", "identifier": [
                {"system": "urn:synthea", "value": "1"},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999", "type": {"coding": [{"code": "SS"}]}},
                {"system": "urn:mrn", "value": "M1", "type": {"coding": [{"code": "MR"}]}},
                {"system": "urn:old", "value": "O", "use": "old"}]}),
            json!({"resourceType": "ExplanationOfBenefit", "id": "e1", "identifier": [
                {"system": "urn:group", "value": "9"}, {"system": "urn:claim", "value": "a"}]}),
            json!({"resourceType": "ExplanationOfBenefit", "id": "e2", "identifier": [
                {"system": "urn:group", "value": "9"}, {"system": "urn:claim", "value": "b"}]}),
            json!({"resourceType": "Observation", "id": "o1"}),
        ]);
        let keys = match_keys(&c, "ehr");
        let get = |t: &str, id: &str| keys[&ResourceKey::new(t, id)].clone();
        assert_eq!(get("Patient", "p").value, "M1");
        assert_eq!(get("ExplanationOfBenefit", "e1").value, "a");
        assert_eq!(get("ExplanationOfBenefit", "e2").value, "b");
        let o = get("Observation", "o1");
        assert!(o.provenance);
        assert_eq!((o.system.as_str(), o.value.as_str()), ("urn:plexus:source:ehr", "Observation/o1"));
    }

    #[test]
    fn plan_rewrites_references_removes_unsynced_ones_and_detects_unchanged() {
        let c = collected(vec![
            json!({"resourceType": "Patient", "id": "p", "identifier": [{"system": "urn:mrn", "value": "1"}]}),
            json!({"resourceType": "Observation", "id": "o", "meta": {"versionId": "3", "profile": ["x"]},
                   "subject": {"reference": "http://ehr/fhir/Patient/p"},
                   "performer": [{"reference": "Practitioner/gone", "display": "Dr"}]}),
        ]);
        let keys = match_keys(&c, "ehr");
        let mut lookup = Lookup::default();
        lookup.found.insert(
            ("Patient".into(), "urn:mrn|1".into()),
            vec![TargetCopy {
                id: "T1".into(),
                resource: json!({"resourceType": "Patient", "id": "T1", "meta": {"versionId": "8"},
                                 "identifier": [{"system": "urn:mrn", "value": "1"},
                                                {"system": "urn:plexus:source:ehr", "value": "Patient/p"}]}),
            }],
        );
        let p = plan(&c, &keys, &lookup, &base());
        let patient = p.get(&ResourceKey::new("Patient", "p")).expect("planned");
        assert_eq!(patient.action, Action::Unchanged { target_id: "T1".into() });
        let obs = p.get(&ResourceKey::new("Observation", "o")).expect("planned");
        assert_eq!(obs.action, Action::Create);
        assert_eq!(
            obs.desired,
            json!({"resourceType": "Observation", "meta": {"profile": ["x"]},
                   "subject": {"reference": "Patient/T1"},
                   "performer": [{"display": "Dr"}],
                   "identifier": [{"system": "urn:plexus:source:ehr", "value": "Observation/o"}]})
        );
        assert_eq!(p.removed_references.get(&ResourceKey::new("Observation", "o")), Some(&1));
    }

    #[test]
    fn a_security_label_or_profile_added_on_the_source_is_an_update_not_unchanged() {
        let source = |meta: Value| {
            collected(vec![json!({"resourceType": "Condition", "id": "c", "meta": meta,
                                  "identifier": [{"system": "urn:cond", "value": "1"}], "code": {"text": "x"}})])
        };
        let copy = |meta: Value| TargetCopy {
            id: "T".into(),
            resource: json!({"resourceType": "Condition", "id": "T", "meta": meta,
                             "identifier": [{"system": "urn:cond", "value": "1"},
                                            {"system": "urn:plexus:source:ehr", "value": "Condition/c"}],
                             "code": {"text": "x"}}),
        };
        let action = |source_meta: Value, target_meta: Value| {
            let c = source(source_meta);
            let keys = match_keys(&c, "ehr");
            let mut lookup = Lookup::default();
            lookup.found.insert(("Condition".into(), "urn:cond|1".into()), vec![copy(target_meta)]);
            plan(&c, &keys, &lookup, &base()).items[0].action.clone()
        };
        let restricted = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"});
        // The EHR labelled it restricted since the last sync: the target's
        // copy must get the label.
        assert!(matches!(
            action(json!({"versionId": "2", "security": [restricted]}), json!({"versionId": "1"})),
            Action::Update { .. }
        ));
        assert!(matches!(
            action(json!({"profile": ["http://x/StructureDefinition/c"]}), json!({"versionId": "1"})),
            Action::Update { .. }
        ));
        assert!(matches!(action(json!({"tag": [{"system": "urn:t", "code": "a"}]}), json!({})), Action::Update { .. }));
        // The target holds the label (with a display of its own), and tags
        // of its own: unchanged.
        let with_display = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                  "code": "R", "display": "restricted"});
        assert_eq!(
            action(
                json!({"versionId": "2", "security": [restricted]}),
                json!({"versionId": "7", "security": [with_display], "tag": [{"system": "urn:crm", "code": "imported"}]})
            ),
            Action::Unchanged { target_id: "T".into() }
        );
    }

    #[test]
    fn a_corrected_mrn_finds_the_copy_by_its_source_id_and_updates_it() {
        // The EHR corrected the MRN (M1 -> M2) on the same Patient p.
        let c = collected(vec![json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "urn:mrn", "value": "M2", "type": {"coding": [{"code": "MR"}]}}]})]);
        let keys = match_keys(&c, "ehr");
        let key = &keys[&ResourceKey::new("Patient", "p")];
        assert_eq!(key.value, "M2");
        let tokens: Vec<String> = key.all().map(MatchKey::token).collect();
        assert_eq!(tokens, vec!["urn:mrn|M2", "urn:plexus:source:ehr|Patient/p"], "looked up by both");
        let copy = |id: &str, mrn: &str| TargetCopy {
            id: id.into(),
            resource: json!({"resourceType": "Patient", "id": id, "meta": {"versionId": "4"}, "identifier": [
                {"system": "urn:mrn", "value": mrn, "type": {"coding": [{"code": "MR"}]}},
                {"system": "urn:plexus:source:ehr", "value": "Patient/p"}]}),
        };
        // The look-up finds the copy written under M1 by its provenance
        // identifier only.
        let mut lookup = Lookup::default();
        lookup.found.insert(("Patient".into(), "urn:plexus:source:ehr|Patient/p".into()), vec![copy("T1", "M1")]);
        let p = plan(&c, &keys, &lookup, &base());
        let item = &p.items[0];
        assert_eq!(item.action, Action::Update { target_id: "T1".into(), version_id: Some("4".into()) });
        assert_eq!(
            item.desired["identifier"],
            json!([{"system": "urn:mrn", "value": "M2", "type": {"coding": [{"code": "MR"}]}},
                   {"system": "urn:plexus:source:ehr", "value": "Patient/p"}]),
            "the corrected MRN replaces the old one, the source id stays"
        );

        // Another target Patient already carries M2: two records claim to be
        // this patient; a person decides, nothing is merged or created.
        let other = TargetCopy {
            id: "T9".into(),
            resource: json!({"resourceType": "Patient", "id": "T9", "identifier": [{"system": "urn:mrn", "value": "M2"}]}),
        };
        lookup.found.insert(("Patient".into(), "urn:mrn|M2".into()), vec![other]);
        let p = plan(&c, &keys, &lookup, &base());
        assert!(
            matches!(&p.items[0].action, Action::Fail { reason, .. } if reason.contains("business or provenance")),
            "{:?}",
            p.items[0].action
        );

        // Both identifiers on one copy: one match.
        let mut lookup = Lookup::default();
        for token in ["urn:mrn|M2", "urn:plexus:source:ehr|Patient/p"] {
            lookup.found.insert(("Patient".into(), token.into()), vec![copy("T1", "M2")]);
        }
        let p = plan(&c, &keys, &lookup, &base());
        assert_eq!(p.items[0].action, Action::Unchanged { target_id: "T1".into() });
    }

    #[test]
    fn a_single_identifier_type_keeps_its_business_identifier_alone() {
        let c = collected(vec![json!({"resourceType": "Composition", "id": "d",
                                      "identifier": {"system": "urn:doc", "value": "1"}})]);
        let keys = match_keys(&c, "ehr");
        assert_eq!(keys[&ResourceKey::new("Composition", "d")].all().count(), 1);
        let p = plan(&c, &keys, &Lookup::default(), &base());
        assert_eq!(p.items[0].desired["identifier"], json!({"system": "urn:doc", "value": "1"}));
    }

    #[test]
    fn ambiguous_match_fails_the_resource_and_its_dependents() {
        let c = collected(vec![
            json!({"resourceType": "Practitioner", "id": "dr", "identifier": [{"system": "urn:npi", "value": "5"}]}),
            json!({"resourceType": "Encounter", "id": "e", "participant": [{"individual": {"reference": "Practitioner/dr"}}]}),
            json!({"resourceType": "Observation", "id": "o", "encounter": {"reference": "Encounter/e"}}),
            json!({"resourceType": "Observation", "id": "free"}),
        ]);
        let keys = match_keys(&c, "ehr");
        let copy = |id: &str| TargetCopy { id: id.into(), resource: json!({"resourceType": "Practitioner", "id": id}) };
        let mut lookup = Lookup::default();
        lookup.found.insert(("Practitioner".into(), "urn:npi|5".into()), vec![copy("a"), copy("b")]);
        let p = plan(&c, &keys, &lookup, &base());
        for id in [("Practitioner", "dr"), ("Encounter", "e"), ("Observation", "o")] {
            let item = p.get(&ResourceKey::new(id.0, id.1)).expect("planned");
            assert!(matches!(item.action, Action::Fail { .. }), "{id:?}: {:?}", item.action);
        }
        assert_eq!(p.get(&ResourceKey::new("Observation", "free")).map(|i| &i.action), Some(&Action::Create));
    }

    #[test]
    fn a_type_the_target_cannot_search_fails_with_its_dependents_only() {
        let c = collected(vec![
            json!({"resourceType": "Linkage", "id": "l"}),
            json!({"resourceType": "Observation", "id": "o", "focus": [{"reference": "Linkage/l"}]}),
            json!({"resourceType": "Observation", "id": "free"}),
        ]);
        let keys = match_keys(&c, "ehr");
        let mut lookup = Lookup::default();
        lookup.failed_types.insert("Linkage".into(), "HTTP 400: unknown parameter identifier".into());
        let p = plan(&c, &keys, &lookup, &base());
        let action = |t: &str, id: &str| p.get(&ResourceKey::new(t, id)).map(|i| i.action.clone());
        assert!(
            matches!(action("Linkage", "l"), Some(Action::Fail { reason, .. }) if reason.contains("unknown parameter"))
        );
        assert!(matches!(action("Observation", "o"), Some(Action::Fail { .. })));
        assert_eq!(action("Observation", "free"), Some(Action::Create));
    }

    #[test]
    fn write_order_puts_dependencies_first_and_groups_cycles() {
        // a -> b -> c -> b (cycle b,c), d independent; all created.
        let c = collected(vec![
            json!({"resourceType": "Observation", "id": "a", "hasMember": [{"reference": "Observation/b"}]}),
            json!({"resourceType": "Observation", "id": "b", "hasMember": [{"reference": "Observation/c"}]}),
            json!({"resourceType": "Observation", "id": "c", "hasMember": [{"reference": "Observation/b"}]}),
            json!({"resourceType": "Observation", "id": "d"}),
        ]);
        let keys = match_keys(&c, "ehr");
        let p = plan(&c, &keys, &Lookup::default(), &base());
        let order = write_order(&p, &[0, 1, 2, 3]);
        let pos = |i: usize| order.iter().position(|scc| scc.contains(&i)).expect("in order");
        assert_eq!(order.len(), 3);
        assert_eq!(pos(1), pos(2), "b and c form one component");
        assert!(pos(1) < pos(0), "b before a");
        assert_eq!(order[pos(1)].len(), 2);
    }
}
