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
    pub(crate) fn of(uuid: uuid::Uuid) -> Ref {
        Ref { uuid }
    }

    /// The entry's `fullUrl`, `urn:uuid:<uuid>`.
    pub fn full_url(&self) -> String {
        urn(self.uuid)
    }

    /// A FHIR Reference to this entry.
    pub fn reference<'a>(&self) -> Json<'a> {
        Json::Reference(self.uuid)
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

/// Where the Bundle's entries go as they are added.
#[derive(Debug)]
pub(crate) enum Sink<'a> {
    /// Kept, for a `serde_json::Value` (see [`Json::into_value`]).
    Tree(Vec<Entry<'a>>),
    /// Written as JSON at once, after the Bundle's own members: an entry is
    /// complete when it is added, so its tree is dropped while still in the
    /// cache instead of the whole Bundle's at the end.
    Json {
        out: Vec<u8>,
        pretty: bool,
        /// Entries written so far.
        count: usize,
        /// Where `,"entry":[` starts (taken back when no entry comes).
        entries_at: usize,
    },
}

/// The Bundle being built.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub opts: &'a Hl7ToFhirOptions,
    sink: Sink<'a>,
    /// The uuid of each entry's fullUrl, in order (compared as 16 bytes).
    uuids: Vec<uuid::Uuid>,
    /// The Bundle's id and timestamp (members in front of its entries).
    id: uuid::Uuid,
    timestamp: Json<'a>,
}

/// The search token of a conditional update by `identifier`, if it can
/// have one: only a system-qualified identifier is safe to search by (a
/// bare value such as "1134" may belong to another authority's record).
pub(crate) fn search_token(identifier: Option<&Json<'_>>) -> Option<String> {
    identifier.filter(|i| i.get("system").and_then(Json::as_str).is_some()).and_then(identifier_token)
}

/// The deterministic uuid for `kind` + `identity`: the first 16 bytes of
/// SHA-256(kind, 0, identity) as a version-8 uuid.
pub(crate) fn stable_uuid(kind: &str, identity: &str) -> uuid::Uuid {
    let digest = sha256_prefix(kind.as_bytes(), identity.as_bytes());
    // A version-8 ("custom") uuid: valid RFC 9562 syntax, derived, not random.
    uuid::Builder::from_custom_bytes(digest).into_uuid()
}

/// The first 16 bytes of SHA-256(`kind`, 0, `identity`). A Bundle hashes a
/// dozen short identities: up to 119 bytes are padded here in one or two
/// blocks on the stack and compressed at once (no hasher and its buffer),
/// longer ones go through the hasher. Either way the standard digest.
fn sha256_prefix(kind: &[u8], identity: &[u8]) -> [u8; 16] {
    const INITIAL: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let len = kind.len() + 1 + identity.len();
    let mut out = [0u8; 16];
    if len > 119 {
        let mut h = Sha256::new();
        h.update(kind);
        h.update([0]);
        h.update(identity);
        out.copy_from_slice(&h.finalize()[..16]);
        return out;
    }
    // The message, 0x80, zeros, and its length in bits (big-endian) at the
    // end of the last block.
    let mut blocks = [[0u8; 64]; 2];
    let count = if len < 56 { 1 } else { 2 };
    {
        let flat = blocks.as_flattened_mut();
        flat[..kind.len()].copy_from_slice(kind);
        flat[kind.len() + 1..len].copy_from_slice(identity);
        flat[len] = 0x80;
        flat[count * 64 - 8..count * 64].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    }
    let mut state = INITIAL;
    sha2::block_api::compress256(&mut state, &blocks[..count]);
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

impl<'a> Ctx<'a> {
    /// A Bundle identified by `bundle_identity` (sender and control id),
    /// `timestamp` the message's own time (MSH-7), never the clock. With
    /// `json`, entries are written as they are added (`Some(pretty)`: see
    /// [`Ctx::finish_json`]); else kept for [`Ctx::finish`].
    pub fn new(
        opts: &'a Hl7ToFhirOptions,
        bundle_identity: &str,
        timestamp: Json<'a>,
        json: Option<(bool, usize)>,
    ) -> Self {
        let id = stable_uuid("Bundle", bundle_identity);
        let (sink, timestamp) = match json {
            None => (Sink::Tree(Vec::with_capacity(16)), timestamp),
            Some((pretty, capacity)) => {
                let mut out = Vec::with_capacity(capacity);
                // The Bundle's own members, then its entries as they come.
                Self::head(id, timestamp).write(&mut out, pretty);
                out.pop(); // the closing brace
                if pretty {
                    out.pop(); // and the newline before it
                }
                let entries_at = out.len();
                out.extend_from_slice(if pretty { b",\n  \"entry\": [" } else { b",\"entry\":[" });
                (Sink::Json { out, pretty, count: 0, entries_at }, Json::Null)
            }
        };
        Ctx { opts, sink, uuids: Vec::with_capacity(16), id, timestamp }
    }

    /// The Bundle's members before `entry` (never empty).
    fn head(id: uuid::Uuid, timestamp: Json<'a>) -> Json<'a> {
        obj! {
            "resourceType" => "Bundle",
            "id" => Json::Id(id),
            "type" => "transaction",
            "timestamp" => timestamp,
        }
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
        let entry = Entry { uuid, kind, token, resource };
        match &mut self.sink {
            Sink::Tree(entries) => entries.push(entry),
            Sink::Json { out, pretty, count, .. } => {
                if *count > 0 {
                    out.push(b',');
                }
                entry.write_in_bundle(out, *pretty);
                *count += 1;
            }
        }
        Ref::of(uuid)
    }

    /// Adds an entry made before the ones it must follow (see
    /// [`Ctx::add_token_as`]).
    pub fn add_entry(&mut self, entry: Entry<'a>) -> Ref {
        self.add_token_as(entry.uuid, entry.kind, entry.token, entry.resource)
    }

    /// The uuid for `kind` + `identity`, and the entry already added for
    /// it if any; pass the uuid to [`Ctx::add_as`].
    pub fn find(&self, kind: &str, identity: &str) -> (uuid::Uuid, Option<Ref>) {
        let uuid = stable_uuid(kind, identity);
        (uuid, self.uuids.contains(&uuid).then(|| Ref::of(uuid)))
    }

    /// The finished transaction Bundle, for a `serde_json::Value` (its
    /// empty elements are left out when it is turned into one). For a Ctx
    /// made with `json`, see [`Ctx::finish_json`].
    pub fn finish(self) -> Json<'a> {
        let entries = match self.sink {
            Sink::Tree(entries) => entries,
            Sink::Json { .. } => Vec::new(),
        };
        let mut bundle = Self::head(self.id, self.timestamp);
        bundle.insert("entry", Json::Entries(entries));
        bundle
    }

    /// The finished Bundle's JSON, exactly what [`Ctx::finish`]'s tree
    /// writes; None for a Ctx made without `json`.
    pub fn finish_json(self) -> Option<Vec<u8>> {
        let Sink::Json { mut out, pretty, count, entries_at } = self.sink else { return None };
        if count == 0 {
            // No entries: no `entry` member (FHIR has no empty arrays).
            out.truncate(entries_at);
        } else if pretty {
            out.extend_from_slice(b"\n  ]");
        } else {
            out.push(b']');
        }
        out.extend_from_slice(if pretty { b"\n}" } else { b"}" });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_sha256_of_kind_and_identity_at_every_length() {
        // Every padding case: one block, the length spilling into a
        // second, two blocks, and the hasher beyond.
        for len in 0..200 {
            let identity: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            for kind in ["", "Patient", "AllergyIntolerance"] {
                let mut h = Sha256::new();
                h.update(kind.as_bytes());
                h.update([0]);
                h.update(identity.as_bytes());
                let digest = h.finalize();
                assert_eq!(sha256_prefix(kind.as_bytes(), identity.as_bytes()), digest[..16], "{kind} {len}");
            }
        }
    }
}
