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

use sha2::{Digest, Sha256};

use super::datatypes::identifier_token;
use super::json::{Entry, Json};
use crate::options::Hl7ToFhirOptions;

/// The deterministic uuid of one entry: its `fullUrl` is `urn:uuid:<uuid>`.
/// Kept as the uuid, written as text only into the JSON (a Bundle makes
/// dozens of references, each one a String otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ref {
    uuid: uuid::Uuid,
}

impl Ref {
    fn of(uuid: uuid::Uuid) -> Ref {
        Ref { uuid }
    }

    /// The entry's `fullUrl`, `urn:uuid:<uuid>`.
    pub fn full_url(&self) -> String {
        urn(self.uuid)
    }

    /// A FHIR Reference to this entry.
    pub fn reference<'a>(&self) -> Json<'a> {
        Json::Obj(vec![("reference", Json::Urn(self.uuid))])
    }

    /// The entry that a Reference made by [`Ref::reference`] points to.
    pub fn of_reference(reference: &Json<'_>) -> Option<Ref> {
        match reference.get("reference") {
            Some(Json::Urn(uuid)) => Some(Ref::of(*uuid)),
            _ => None,
        }
    }
}

/// `urn:uuid:<hyphenated uuid>` (written without the formatting machinery:
/// a Bundle makes dozens).
pub(crate) fn urn(uuid: uuid::Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let mut s = String::with_capacity(9 + buf.len());
    s.push_str("urn:uuid:");
    s.push_str(uuid.hyphenated().encode_lower(&mut buf));
    s
}

/// The uuid as 32 hex digits (a resource id).
pub(crate) fn simple(uuid: uuid::Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    uuid.simple().encode_lower(&mut buf).to_string()
}

/// The Bundle being built.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub opts: &'a Hl7ToFhirOptions,
    entries: Vec<Entry<'a>>,
    /// The uuid of each entry's fullUrl, beside it (compared as 16 bytes).
    uuids: Vec<uuid::Uuid>,
}

/// The search token of a conditional update by `identifier`, if it can
/// have one: only a system-qualified identifier is safe to search by (a
/// bare value such as "1134" may belong to another authority's record).
pub(crate) fn search_token(identifier: Option<&Json<'_>>) -> Option<String> {
    identifier.filter(|i| i.get("system").and_then(Json::as_str).is_some()).and_then(identifier_token)
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

impl<'a> Ctx<'a> {
    pub fn new(opts: &'a Hl7ToFhirOptions) -> Self {
        Ctx { opts, entries: Vec::with_capacity(16), uuids: Vec::with_capacity(16) }
    }

    /// Adds `resource` (its `resourceType` and `id` are written first). `identity` is the
    /// text of its identifying fields; `identifier` the business identifier
    /// used for a conditional update, if it has one. Adding the same type and
    /// identity twice keeps the first (a practitioner named in PV1-7 and in
    /// an OBX is one resource).
    pub fn add(
        &mut self,
        kind: &'static str,
        identity: &str,
        identifier: Option<&Json<'_>>,
        resource: Json<'a>,
    ) -> Ref {
        self.add_as(stable_uuid(kind, identity), kind, identifier, resource)
    }

    /// [`Ctx::add`] with the uuid already computed by [`Ctx::find`] (one
    /// hash, not two, for a resource checked before it is built).
    pub fn add_as(
        &mut self,
        uuid: uuid::Uuid,
        kind: &'static str,
        identifier: Option<&Json<'_>>,
        resource: Json<'a>,
    ) -> Ref {
        if self.uuids.contains(&uuid) {
            return Ref::of(uuid);
        }
        self.add_token_as(uuid, kind, search_token(identifier), resource)
    }

    /// [`Ctx::add`] with the search token already made by [`search_token`]
    /// (so the identifier can be moved into the resource, not copied).
    pub fn add_token(&mut self, kind: &'static str, identity: &str, token: Option<String>, resource: Json<'a>) -> Ref {
        self.add_token_as(stable_uuid(kind, identity), kind, token, resource)
    }

    /// [`Ctx::add_as`] with the search token already made by
    /// [`search_token`].
    pub fn add_token_as(
        &mut self,
        uuid: uuid::Uuid,
        kind: &'static str,
        token: Option<String>,
        resource: Json<'a>,
    ) -> Ref {
        if self.uuids.contains(&uuid) {
            return Ref::of(uuid);
        }
        let mut resource = resource;
        // The mappers never set these two (the entry writes them in front of
        // the members); when one does, it is replaced.
        if let Json::Obj(members) = &mut resource
            && members.iter().any(|(k, _)| *k == "resourceType" || *k == "id")
        {
            members.retain(|(k, _)| *k != "resourceType" && *k != "id");
        }
        self.uuids.push(uuid);
        self.entries.push(Entry { uuid, kind, token, resource });
        Ref::of(uuid)
    }

    /// The entry already added for `kind` + `identity`, if any (so callers
    /// can skip building a resource that would be dropped as a duplicate).
    pub fn existing(&self, kind: &str, identity: &str) -> Option<Ref> {
        let uuid = stable_uuid(kind, identity);
        self.uuids.contains(&uuid).then(|| Ref::of(uuid))
    }

    /// The uuid for `kind` + `identity`, and the entry already added for
    /// it if any; pass the uuid to [`Ctx::add_as`].
    pub fn find(&self, kind: &str, identity: &str) -> (uuid::Uuid, Option<Ref>) {
        let uuid = stable_uuid(kind, identity);
        (uuid, self.uuids.contains(&uuid).then(|| Ref::of(uuid)))
    }

    /// Mutable access to an added resource (to add results to a report).
    pub fn resource_mut(&mut self, r: &Ref) -> Option<&mut Json<'a>> {
        let at = self.uuids.iter().position(|u| *u == r.uuid)?;
        self.entries.get_mut(at).map(|e| &mut e.resource)
    }

    /// The finished transaction Bundle (its empty elements are left out when
    /// it is written or turned into a Value). `timestamp` is the message's
    /// own time (MSH-7), never the clock.
    pub fn finish(self, bundle_identity: &str, timestamp: Json<'a>) -> Json<'a> {
        obj! {
            "resourceType" => "Bundle",
            "id" => Json::Id(stable_uuid("Bundle", bundle_identity)),
            "type" => "transaction",
            "timestamp" => timestamp,
            "entry" => Json::Entries(self.entries),
        }
    }
}
