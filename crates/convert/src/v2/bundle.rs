//! The transaction Bundle under construction, with deterministic ids.
//!
//! Re-sending a message must update, not duplicate. Every resource gets a
//! `fullUrl` of `urn:uuid:<uuid>` where the uuid is a hash of the resource
//! type and its identifying fields (the patient's identifier, the order
//! number, the observation code ...), so the same message always yields the
//! same Bundle and references between entries stay stable. The request is
//! conditional where the resource has a business identifier
//! (`PUT Patient?identifier=system|value`: the server finds the existing
//! resource by identifier), and an update by id otherwise
//! (`PUT Observation/<hash>`: the id itself is derived from identifying
//! fields). Resources updated conditionally carry no `id`, because a server
//! must reject a body whose id differs from the one it found.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::datatypes::identifier_token;
use crate::options::Hl7ToFhirOptions;

/// A resource type and the deterministic uuid of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ref {
    pub full_url: String,
}

impl Ref {
    /// A FHIR Reference to this entry.
    pub fn reference(&self) -> Value {
        obj! {"reference" => self.full_url.as_str()}
    }
}

/// The Bundle being built.
#[derive(Debug)]
pub(crate) struct Ctx<'o> {
    pub opts: &'o Hl7ToFhirOptions,
    entries: Vec<Value>,
    /// The fullUrl of each entry, beside it: looking one up in the entry
    /// itself would hash a map key per entry per addition.
    urls: Vec<String>,
}

/// The deterministic uuid for `kind` + `identity`.
pub(crate) fn stable_uuid(kind: &str, identity: &str) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(identity.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A version-8 ("custom") uuid: valid RFC 9562 syntax, derived, not random.
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl<'o> Ctx<'o> {
    pub fn new(opts: &'o Hl7ToFhirOptions) -> Self {
        Ctx { opts, entries: Vec::with_capacity(16), urls: Vec::with_capacity(16) }
    }

    /// Adds `resource` (its `resourceType` set first). `identity` is the
    /// text of its identifying fields; `identifier` the business identifier
    /// used for a conditional update, if it has one. Adding the same type and
    /// identity twice keeps the first (a practitioner named in PV1-7 and in
    /// an OBX is one resource).
    pub fn add(&mut self, kind: &str, identity: &str, identifier: Option<&Value>, resource: Value) -> Ref {
        let uuid = stable_uuid(kind, identity);
        let full_url = format!("urn:uuid:{uuid}");
        if self.urls.contains(&full_url) {
            return Ref { full_url };
        }
        // Only a system-qualified identifier is safe to search by: a bare
        // value ("1134") may belong to another authority's record.
        let token = identifier.filter(|i| i.get("system").is_some_and(Value::is_string)).and_then(identifier_token);
        // The resource keeps its own map; resourceType (and id) go in front
        // with shift_insert rather than by copying every member into a new map.
        let mut body = match resource {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        body.shift_remove("resourceType");
        body.shift_remove("id");
        let url = match &token {
            Some(t) => format!("{kind}?identifier={t}"),
            None => {
                let id = uuid.simple().to_string();
                body.shift_insert(0, "id".into(), Value::String(id.clone()));
                format!("{kind}/{id}")
            }
        };
        body.shift_insert(0, "resourceType".into(), Value::String(kind.to_string()));
        self.urls.push(full_url.clone());
        self.entries.push(obj! {
            "fullUrl" => full_url.as_str(),
            "resource" => Value::Object(body),
            "request" => obj!{"method" => "PUT", "url" => url},
        });
        Ref { full_url }
    }

    /// The entry already added for `kind` + `identity`, if any (so callers
    /// can skip building a resource that would be dropped as a duplicate).
    pub fn existing(&self, kind: &str, identity: &str) -> Option<Ref> {
        let full_url = format!("urn:uuid:{}", stable_uuid(kind, identity));
        self.urls.contains(&full_url).then_some(Ref { full_url })
    }

    /// Mutable access to an added resource (to add results to a report).
    pub fn resource_mut(&mut self, r: &Ref) -> Option<&mut Value> {
        let at = self.urls.iter().position(|u| *u == r.full_url)?;
        self.entries.get_mut(at).and_then(|e| e.get_mut("resource"))
    }

    /// The finished transaction Bundle, empty elements pruned. `timestamp`
    /// is the message's own time (MSH-7), never the clock.
    pub fn finish(self, bundle_identity: &str, timestamp: Value) -> Value {
        let mut bundle = obj! {
            "resourceType" => "Bundle",
            "id" => stable_uuid("Bundle", bundle_identity).simple().to_string(),
            "type" => "transaction",
            "timestamp" => timestamp,
            "entry" => self.entries,
        };
        crate::rules::prune(&mut bundle);
        bundle
    }
}
