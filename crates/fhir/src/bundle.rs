//! Building batch and transaction Bundles, and reading Bundles back
//! (search pages, batch and transaction responses).

use serde_json::{Map, Value, json};

use crate::error::OperationOutcome;
use crate::resource::ResourceKey;

/// The HTTP method of a Bundle entry's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMethod {
    /// Read or search.
    Get,
    /// Create (or an operation).
    Post,
    /// Update, conditional update.
    Put,
    /// Delete.
    Delete,
}

impl EntryMethod {
    fn as_str(self) -> &'static str {
        match self {
            EntryMethod::Get => "GET",
            EntryMethod::Post => "POST",
            EntryMethod::Put => "PUT",
            EntryMethod::Delete => "DELETE",
        }
    }
}

/// One entry of a batch or transaction Bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleEntry {
    /// `fullUrl`: `urn:uuid:...` for a resource created in a transaction
    /// (other entries reference it by that URN), or the resource's absolute
    /// URL.
    pub full_url: Option<String>,
    /// The resource sent (creates and updates).
    pub resource: Option<Value>,
    /// `request.method`.
    pub method: EntryMethod,
    /// `request.url`, relative to the base: `Patient`, `Patient/1`,
    /// `Observation?identifier=s|v`.
    pub url: String,
    /// `request.ifNoneExist`: a conditional create's search query.
    pub if_none_exist: Option<String>,
    /// `request.ifMatch`: the ETag the update expects (`W/"3"`).
    pub if_match: Option<String>,
}

impl BundleEntry {
    /// A read or search entry.
    pub fn get(url: impl Into<String>) -> BundleEntry {
        BundleEntry {
            full_url: None,
            resource: None,
            method: EntryMethod::Get,
            url: url.into(),
            if_none_exist: None,
            if_match: None,
        }
    }

    /// Whether re-sending this entry cannot duplicate anything: reads,
    /// updates, deletes and conditional creates.
    pub fn is_idempotent(&self) -> bool {
        self.method != EntryMethod::Post || self.if_none_exist.is_some()
    }

    fn to_value(&self) -> Value {
        let mut request = Map::new();
        request.insert("method".into(), json!(self.method.as_str()));
        request.insert("url".into(), json!(self.url));
        if let Some(q) = &self.if_none_exist {
            request.insert("ifNoneExist".into(), json!(q));
        }
        if let Some(etag) = &self.if_match {
            request.insert("ifMatch".into(), json!(etag));
        }
        let mut entry = Map::new();
        if let Some(full_url) = &self.full_url {
            entry.insert("fullUrl".into(), json!(full_url));
        }
        if let Some(resource) = &self.resource {
            entry.insert("resource".into(), resource.clone());
        }
        entry.insert("request".into(), Value::Object(request));
        Value::Object(entry)
    }
}

/// A `batch` Bundle of `entries`.
pub fn batch(entries: &[BundleEntry]) -> Value {
    bundle("batch", entries)
}

/// A `transaction` Bundle of `entries`.
pub fn transaction(entries: &[BundleEntry]) -> Value {
    bundle("transaction", entries)
}

fn bundle(kind: &str, entries: &[BundleEntry]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "entry": entries.iter().map(BundleEntry::to_value).collect::<Vec<_>>(),
    })
}

/// The entries of a Bundle (empty when it has none).
pub fn entries(bundle: &Value) -> &[Value] {
    bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// The resources of a search page that matched the search (`search.mode`
/// `match` or absent), leaving out `include`d ones and OperationOutcomes.
pub fn search_matches(page: &Value) -> impl Iterator<Item = &Value> {
    search_resources(page, |mode| mode.is_none_or(|m| m == "match"))
}

/// The resources a search page carries because of `_include` or
/// `_revinclude` (`search.mode` = `include`).
pub fn search_includes(page: &Value) -> impl Iterator<Item = &Value> {
    search_resources(page, |mode| mode == Some("include"))
}

fn search_resources(page: &Value, keep: fn(Option<&str>) -> bool) -> impl Iterator<Item = &Value> {
    entries(page).iter().filter_map(move |e| {
        let mode = e.get("search").and_then(|s| s.get("mode")).and_then(Value::as_str);
        let resource = e.get("resource")?;
        let is_outcome = resource.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome");
        (keep(mode) && !is_outcome).then_some(resource)
    })
}

/// The `next` link of a search page.
pub fn next_link(page: &Value) -> Option<&str> {
    link(page, "next")
}

/// The link with relation `relation`.
pub fn link<'a>(page: &'a Value, relation: &str) -> Option<&'a str> {
    page.get("link")?.as_array()?.iter().find_map(|l| {
        (l.get("relation").and_then(Value::as_str) == Some(relation))
            .then(|| l.get("url").and_then(Value::as_str))
            .flatten()
    })
}

/// `Bundle.total`, when the server reported it.
pub fn total(page: &Value) -> Option<u64> {
    page.get("total").and_then(Value::as_u64)
}

/// The outcome of one entry of a batch or transaction response.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryResponse {
    /// `response.status` as a number (0 when missing or unreadable).
    pub status: u16,
    /// `response.location`, when present.
    pub location: Option<String>,
    /// `response.etag`, when present.
    pub etag: Option<String>,
    /// The entry's resource (the created or updated resource, a search page).
    pub resource: Option<Value>,
    /// The OperationOutcome in `response.outcome` or, for a failed entry, in
    /// `resource`.
    pub outcome: Option<OperationOutcome>,
}

impl EntryResponse {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The resource this entry created or updated: from `location` (the
    /// part after the last `Type/id[/_history/v]`), else from `resource`.
    pub fn written_key(&self) -> Option<ResourceKey> {
        self.location
            .as_deref()
            .and_then(key_from_location)
            .or_else(|| self.resource.as_ref().and_then(ResourceKey::of))
    }
}

/// The key in a `Location` (header or `response.location`): absolute or
/// relative, with or without `/_history/v`.
pub fn key_from_location(location: &str) -> Option<ResourceKey> {
    let path = location.split(['?', '#']).next().unwrap_or(location);
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let n = parts.len();
    if n >= 4 && parts[n - 2] == "_history" {
        ResourceKey::parse(&parts[n - 4..n - 2].join("/"))
    } else if n >= 2 {
        ResourceKey::parse(&parts[n - 2..].join("/"))
    } else {
        None
    }
}

/// The entries of a batch or transaction response, in request order.
pub fn entry_responses(response: &Value) -> Vec<EntryResponse> {
    entries(response)
        .iter()
        .map(|e| {
            let r = e.get("response");
            let text = |k: &str| r.and_then(|r| r.get(k)).and_then(Value::as_str).map(str::to_owned);
            let status = text("status")
                .and_then(|s| s.split_whitespace().next().and_then(|code| code.parse().ok()))
                .unwrap_or(0);
            let resource = e.get("resource").cloned();
            let outcome = r
                .and_then(|r| r.get("outcome"))
                .and_then(OperationOutcome::from_value)
                .or_else(|| resource.as_ref().and_then(OperationOutcome::from_value));
            let resource = resource.filter(|r| OperationOutcome::from_value(r).is_none());
            EntryResponse { status, location: text("location"), etag: text("etag"), resource, outcome }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_entries_serialise_conditional_fields() {
        let tx = transaction(&[BundleEntry {
            full_url: Some("urn:uuid:1".into()),
            resource: Some(json!({"resourceType": "Patient"})),
            method: EntryMethod::Post,
            url: "Patient".into(),
            if_none_exist: Some("identifier=s|v".into()),
            if_match: None,
        }]);
        assert_eq!(
            tx,
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
                "fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=s|v"}}]})
        );
    }

    #[test]
    fn search_page_separates_matches_includes_and_outcomes() {
        let page = json!({"resourceType": "Bundle", "type": "searchset", "total": 3,
        "link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}],
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Observation", "id": "2"}},
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
        ]});
        assert_eq!(search_matches(&page).count(), 2);
        assert_eq!(search_includes(&page).count(), 1);
        assert_eq!(next_link(&page), Some("b"));
        assert_eq!(total(&page), Some(3));
    }

    #[test]
    fn entry_responses_read_status_location_and_outcome() {
        let resp = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": "Patient/7/_history/1"}},
            {"response": {"status": "400", "outcome": {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad"}]}}}
        ]});
        let r = entry_responses(&resp);
        assert_eq!(r[0].status, 201);
        assert_eq!(r[0].written_key(), Some(ResourceKey::new("Patient", "7")));
        assert!(!r[1].is_success());
        assert_eq!(r[1].outcome.as_ref().map(|o| o.diagnostics()), Some(vec!["bad"]));
    }

    #[test]
    fn locations_absolute_relative_and_versioned() {
        for (loc, want) in [
            ("http://h/fhir/R4/Observation/5/_history/2", Some(("Observation", "5"))),
            ("Observation/5", Some(("Observation", "5"))),
            ("/fhir/R4/Observation/5", Some(("Observation", "5"))),
            ("nonsense", None),
        ] {
            assert_eq!(key_from_location(loc), want.map(|(t, i)| ResourceKey::new(t, i)), "{loc}");
        }
    }
}
