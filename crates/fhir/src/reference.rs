//! The reference graph: every `Reference` anywhere in a resource, and
//! rewriting them.
//!
//! A Reference is recognised structurally, as FHIR defines it: a JSON object
//! whose `reference` element is a string. That finds references in every
//! element of every resource type, in extensions (`valueReference`), in
//! nested backbone elements and in contained resources, without a table of
//! which elements are References (a table would miss vendor extensions).
//!
//! A reference string is then classified against the base URL of the server
//! the resource came from ([`classify`]): a contained reference (`#id`), a
//! reference to a resource on the same server (`Type/id`, absolute URLs
//! under the base, versioned or not), a bundle-local URN, or something that
//! cannot be followed (another server, a conditional reference).

use serde_json::Value;
use url::Url;

use crate::resource::ResourceKey;

/// One Reference found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSite {
    /// Where it is, FHIRPath-like: `Observation.subject`,
    /// `ExplanationOfBenefit.contained[0].requester`, `Patient.extension[2].valueReference`.
    pub path: String,
    /// The `reference` string as written.
    pub reference: String,
}

/// What a reference string points at, seen from the server the resource
/// came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefTarget {
    /// `#id`: a resource contained in the same resource (`#` alone is the
    /// container itself).
    Contained(String),
    /// A resource on the same server: relative `Type/id`, or an absolute URL
    /// under the server's base; a version (`/_history/n`) is dropped.
    Local(ResourceKey),
    /// `urn:uuid:` or `urn:oid:`: resolvable only inside a Bundle.
    Urn(String),
    /// An absolute URL on another server.
    External(String),
    /// Anything else: a conditional reference (`Patient?identifier=...`),
    /// a malformed string.
    Unresolvable(String),
}

/// Classifies `reference` as seen from the server at `base` (its service
/// base URL, e.g. `https://ehr.example.org/fhir/R4`).
pub fn classify(reference: &str, base: &Url) -> RefTarget {
    if let Some(id) = reference.strip_prefix('#') {
        return RefTarget::Contained(id.to_owned());
    }
    if reference.starts_with("urn:") {
        return RefTarget::Urn(reference.to_owned());
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        let base = base.as_str().trim_end_matches('/');
        return match reference.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')) {
            Some(rest) => match ResourceKey::parse(rest) {
                Some(key) => RefTarget::Local(key),
                None => RefTarget::Unresolvable(reference.to_owned()),
            },
            None => RefTarget::External(reference.to_owned()),
        };
    }
    match ResourceKey::parse(reference) {
        Some(key) => RefTarget::Local(key),
        None => RefTarget::Unresolvable(reference.to_owned()),
    }
}

/// Every Reference in `resource` (including contained resources and
/// extensions), in document order, with its path.
pub fn references(resource: &Value) -> Vec<ReferenceSite> {
    let mut out = Vec::new();
    let root = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
    let mut path = root.to_owned();
    collect(resource, &mut path, &mut out);
    out
}

fn collect(value: &Value, path: &mut String, out: &mut Vec<ReferenceSite>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                out.push(ReferenceSite { path: path.clone(), reference: reference.clone() });
            }
            for (key, child) in map {
                if !(child.is_object() || child.is_array()) {
                    continue;
                }
                let len = path.len();
                path.push('.');
                path.push_str(key);
                collect(child, path, out);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                collect(item, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The distinct same-server resources `resource` references, in first-seen
/// order (contained, URN, external and unresolvable references left out).
pub fn local_targets(resource: &Value, base: &Url) -> Vec<ResourceKey> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for_each_reference(resource, &mut |reference| {
        if let RefTarget::Local(key) = classify(reference, base)
            && seen.insert(key.clone())
        {
            out.push(key);
        }
    });
    out
}

/// Calls `f` with every reference string in `resource` (no paths: the fast
/// walk for building the graph).
pub fn for_each_reference(resource: &Value, f: &mut dyn FnMut(&str)) {
    match resource {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                f(reference);
            }
            for child in map.values() {
                if child.is_object() || child.is_array() {
                    for_each_reference(child, f);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| for_each_reference(item, f)),
        _ => {}
    }
}

/// What to do with one reference during [`rewrite_references`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Leave it as it is.
    Keep,
    /// Put this string in `reference`.
    Replace(String),
    /// Drop the `reference` element. The rest of the Reference (`display`,
    /// `identifier`, `type`) stays; a Reference left with nothing but `type`
    /// (or nothing at all) is removed from its parent, and from its array.
    Remove,
}

/// Rewrites every Reference in `resource` (contained resources and
/// extensions included) by asking `decide` about each reference string.
/// Returns how many were replaced or removed.
///
/// ```
/// use fhir::reference::{rewrite_references, Rewrite};
/// use serde_json::json;
///
/// let mut obs = json!({
///     "resourceType": "Observation",
///     "subject": {"reference": "Patient/1"},
///     "extension": [{"url": "urn:x", "valueReference": {"reference": "Device/7", "display": "pump"}}]
/// });
/// let n = rewrite_references(&mut obs, &mut |r| match r {
///     "Patient/1" => Rewrite::Replace("Patient/900".into()),
///     _ => Rewrite::Remove,
/// });
/// assert_eq!(n, 2);
/// assert_eq!(obs["subject"]["reference"], "Patient/900");
/// assert_eq!(obs["extension"][0]["valueReference"], json!({"display": "pump"}));
/// ```
pub fn rewrite_references(resource: &mut Value, decide: &mut dyn FnMut(&str) -> Rewrite) -> usize {
    let mut changed = 0;
    rewrite(resource, decide, &mut changed);
    changed
}

/// Returns true when `value` became an empty Reference its parent should drop.
fn rewrite(value: &mut Value, decide: &mut dyn FnMut(&str) -> Rewrite, changed: &mut usize) -> bool {
    match value {
        Value::Object(map) => {
            let mut emptied = false;
            if let Some(Value::String(reference)) = map.get("reference") {
                match decide(reference) {
                    Rewrite::Keep => {}
                    Rewrite::Replace(new) => {
                        map.insert("reference".to_owned(), Value::String(new));
                        *changed += 1;
                    }
                    Rewrite::Remove => {
                        map.remove("reference");
                        *changed += 1;
                        emptied = map.keys().all(|k| k == "type");
                    }
                }
            }
            if emptied {
                return true;
            }
            let mut drop_keys = Vec::new();
            for (key, child) in map.iter_mut() {
                if (child.is_object() || child.is_array()) && rewrite(child, decide, changed) {
                    drop_keys.push(key.clone());
                }
            }
            let dropped = !drop_keys.is_empty();
            for key in drop_keys {
                map.remove(&key);
            }
            // An element left empty by the removals is invalid FHIR too.
            dropped && map.is_empty()
        }
        Value::Array(items) => {
            let had_items = !items.is_empty();
            let mut keep = Vec::with_capacity(items.len());
            for mut item in std::mem::take(items) {
                if !rewrite(&mut item, decide, changed) {
                    keep.push(item);
                }
            }
            let now_empty = keep.is_empty();
            *items = keep;
            // An array emptied by removals would be invalid FHIR (arrays are
            // never empty): the parent drops it.
            had_items && now_empty
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("https://ehr.example.org/fhir/R4").expect("url")
    }

    #[test]
    fn classify_every_kind_of_reference() {
        let b = base();
        assert_eq!(classify("#cov", &b), RefTarget::Contained("cov".into()));
        assert_eq!(classify("Patient/1", &b), RefTarget::Local(ResourceKey::new("Patient", "1")));
        assert_eq!(
            classify("https://ehr.example.org/fhir/R4/Practitioner/9/_history/2", &b),
            RefTarget::Local(ResourceKey::new("Practitioner", "9"))
        );
        assert!(matches!(classify("https://other.org/fhir/Patient/1", &b), RefTarget::External(_)));
        assert!(matches!(classify("urn:uuid:0f0e", &b), RefTarget::Urn(_)));
        assert!(matches!(classify("Patient?identifier=a|b", &b), RefTarget::Unresolvable(_)));
        // A base that is only a prefix of another path is not our server.
        assert!(matches!(classify("https://ehr.example.org/fhir/R4x/Patient/1", &b), RefTarget::External(_)));
    }

    #[test]
    fn references_found_in_extensions_contained_and_nested_elements() {
        let eob = json!({
            "resourceType": "ExplanationOfBenefit",
            "contained": [{"resourceType": "ServiceRequest", "id": "referral",
                           "requester": {"reference": "Practitioner/7"}}],
            "extension": [{"url": "x", "valueReference": {"reference": "Organization/3"}},
                          {"url": "y", "extension": [{"url": "z", "valueReference": {"reference": "Device/4"}}]}],
            "patient": {"reference": "Patient/1", "display": "someone"},
            "referral": {"reference": "#referral"},
            "item": [{"encounter": [{"reference": "Encounter/5"}, {"reference": "Encounter/6"}]}],
            "identifier": [{"system": "s", "value": "v"}]
        });
        let sites = references(&eob);
        let paths: Vec<(&str, &str)> = sites.iter().map(|s| (s.path.as_str(), s.reference.as_str())).collect();
        assert_eq!(
            paths,
            vec![
                ("ExplanationOfBenefit.contained[0].requester", "Practitioner/7"),
                ("ExplanationOfBenefit.extension[0].valueReference", "Organization/3"),
                ("ExplanationOfBenefit.extension[1].extension[0].valueReference", "Device/4"),
                ("ExplanationOfBenefit.patient", "Patient/1"),
                ("ExplanationOfBenefit.referral", "#referral"),
                ("ExplanationOfBenefit.item[0].encounter[0]", "Encounter/5"),
                ("ExplanationOfBenefit.item[0].encounter[1]", "Encounter/6"),
            ]
        );
        let targets = local_targets(&eob, &base());
        assert_eq!(targets.len(), 6);
        assert!(!targets.iter().any(|k| k.resource_type == "ServiceRequest"));
    }

    #[test]
    fn rewrite_replaces_and_removes_and_prunes_empty_references() {
        let mut obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/1"},
            "performer": [{"reference": "Practitioner/2"}, {"reference": "Organization/3", "display": "Lab"}],
            "focus": [{"reference": "Device/9", "type": "Device"}],
            "extension": [{"url": "u", "valueReference": {"reference": "#c"}}]
        });
        let n = rewrite_references(&mut obs, &mut |r| match r {
            "Patient/1" => Rewrite::Replace("Patient/100".into()),
            "Practitioner/2" | "Organization/3" | "Device/9" => Rewrite::Remove,
            _ => Rewrite::Keep,
        });
        assert_eq!(n, 4);
        assert_eq!(
            obs,
            json!({
                "resourceType": "Observation",
                "subject": {"reference": "Patient/100"},
                "performer": [{"display": "Lab"}],
                "extension": [{"url": "u", "valueReference": {"reference": "#c"}}]
            })
        );
    }
}
