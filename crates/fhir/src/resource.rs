//! Helpers on resources held as `serde_json::Value`.
//!
//! Plexus never converts a resource to a typed model: vendors put extensions
//! and elements everywhere, and a typed model would drop what it does not
//! know. These helpers read the few elements the client and the sync need
//! (`resourceType`, `id`, `meta`, `identifier`) and leave the rest alone.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A resource's logical identity on one server: `Type/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The resource type, e.g. `Observation`.
    pub resource_type: String,
    /// The logical id on that server.
    pub id: String,
}

impl ResourceKey {
    /// `Type/id`, without checking either part.
    pub fn new(resource_type: impl Into<String>, id: impl Into<String>) -> ResourceKey {
        ResourceKey { resource_type: resource_type.into(), id: id.into() }
    }

    /// The key of `resource`, when it has a `resourceType` and an `id`.
    pub fn of(resource: &Value) -> Option<ResourceKey> {
        Some(ResourceKey::new(resource_type(resource)?, id(resource)?))
    }

    /// Parses `Type/id` or `Type/id/_history/vid` (the version is dropped);
    /// `None` unless both parts are valid FHIR names.
    pub fn parse(relative: &str) -> Option<ResourceKey> {
        let mut parts = relative.split('/');
        let resource_type = parts.next()?;
        let id = parts.next()?;
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => {}
            (Some("_history"), Some(v), None) if is_valid_id(v) => {}
            _ => return None,
        }
        (is_valid_type(resource_type) && is_valid_id(id)).then(|| ResourceKey::new(resource_type, id))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// `resourceType`, when present and a string.
pub fn resource_type(resource: &Value) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
}

/// `id`, when present and a string.
pub fn id(resource: &Value) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

/// `meta.versionId`, when present.
pub fn version_id(resource: &Value) -> Option<&str> {
    resource.get("meta").and_then(|m| m.get("versionId")).and_then(Value::as_str)
}

/// True for a FHIR resource type name: an upper-case ASCII letter followed
/// by letters (at most 64 characters). Checked before a type goes into a URL
/// path, so a resource cannot steer a request elsewhere.
pub fn is_valid_type(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

/// True for a FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Whether two resources have the same content, ignoring `meta` (version,
/// lastUpdated, source, tags a server adds) and `id` (which differs between
/// servers). Element order within objects does not matter; array order does,
/// as in FHIR.
pub fn same_content(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let relevant = |(k, _): &(&String, &Value)| k.as_str() != "meta" && k.as_str() != "id";
            let a_len = a.iter().filter(relevant).count();
            let b_len = b.iter().filter(relevant).count();
            a_len == b_len && a.iter().filter(relevant).all(|(k, v)| b.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// JSON equality where numbers compare by value (`1.0` equals `1`): servers
/// may re-serialise a decimal differently from how it was sent.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// One `identifier` of a resource, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierRef {
    /// `identifier.system`.
    pub system: Option<String>,
    /// `identifier.value`.
    pub value: Option<String>,
    /// `identifier.use` (`usual`, `official`, `temp`, `secondary`, `old`).
    #[serde(rename = "use")]
    pub use_: Option<String>,
    /// The first `identifier.type.coding.code` (`MR`, `SS` ...).
    pub type_code: Option<String>,
    /// `identifier.type.text`.
    pub type_text: Option<String>,
}

/// The resource's `identifier` elements (an array in most resources, a
/// single object in a few such as Bundle and QuestionnaireResponse).
pub fn identifiers(resource: &Value) -> Vec<IdentifierRef> {
    let one = |v: &Value| {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let kind = v.get("type");
        IdentifierRef {
            system: text("system"),
            value: text("value"),
            use_: text("use"),
            type_code: kind
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find_map(|c| c.get("code").and_then(Value::as_str)))
                .map(str::to_owned),
            type_text: kind.and_then(|t| t.get("text")).and_then(Value::as_str).map(str::to_owned),
        }
    };
    match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v @ Value::Object(_)) => vec![one(v)],
        _ => Vec::new(),
    }
}

/// Escapes a token search value (`system|value` parts) as FHIR search
/// requires: `\`, `|`, `,` and `$` get a backslash.
pub fn escape_search_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_parse_accepts_plain_and_versioned_references() {
        assert_eq!(ResourceKey::parse("Patient/123"), Some(ResourceKey::new("Patient", "123")));
        assert_eq!(ResourceKey::parse("Observation/a-b.c/_history/7"), Some(ResourceKey::new("Observation", "a-b.c")));
        for bad in [
            "Patient",
            "patient/1",
            "Patient/",
            "Patient/1/x",
            "Patient/a b",
            "#x",
            "Patient?identifier=x",
            "Patient/1/_history/",
            "../etc/passwd",
        ] {
            assert_eq!(ResourceKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn same_content_ignores_meta_id_and_key_order_but_not_array_order() {
        let a = json!({"resourceType": "Observation", "id": "1", "meta": {"versionId": "1"},
                       "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1.0}});
        let b = json!({"code": {"text": "x"}, "status": "final", "resourceType": "Observation",
                       "valueQuantity": {"value": 1}, "id": "9"});
        assert!(same_content(&a, &b));
        let c = json!({"resourceType": "Observation", "status": "amended", "code": {"text": "x"},
                       "valueQuantity": {"value": 1.0}});
        assert!(!same_content(&a, &c));
        let d = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}]});
        let e = json!({"resourceType": "Patient", "name": [{"given": ["B", "A"]}]});
        assert!(!same_content(&d, &e));
        let f = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}], "gender": "male"});
        assert!(!same_content(&d, &f));
    }

    #[test]
    fn identifiers_read_system_value_use_and_type() {
        let ids = identifiers(&json!({"identifier": [
            {"system": "urn:s", "value": "1", "use": "official",
             "type": {"coding": [{"code": "MR"}], "text": "Medical record"}},
            {"value": "2"}
        ]}));
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].type_code.as_deref(), Some("MR"));
        assert_eq!(ids[0].use_.as_deref(), Some("official"));
        assert_eq!(ids[1].system, None);
        assert_eq!(identifiers(&json!({"identifier": {"value": "x"}})).len(), 1);
    }

    #[test]
    fn search_values_are_escaped() {
        assert_eq!(escape_search_value(r"a,b|c$d\e"), r"a\,b\|c\$d\\e");
    }
}
