//! The `fhir` destination: delivers a FHIR resource or Bundle to a FHIR R4
//! server through the `fhir` crate's client (authentication, token cache,
//! error classification).
//!
//! ```toml
//! type = "fhir"
//! server = "ehr"            # a [fhir_servers.ehr] table (URL, auth, timeouts)
//! # url = "https://ehr.example.org/fhir/R4"   # or a base URL, without auth
//! ```
//!
//! # What is sent
//!
//! The content must be FHIR JSON (a channel whose content is FHIR, a
//! notification channel with output `fhir`, a channel with an `hl7_to_fhir`
//! step); anything else fails permanently with the reason.
//!
//! - A Bundle of type `transaction` or `batch` is POSTed to the base as it
//!   is (what `hl7_to_fhir` makes: conditional and by-id updates, safe to
//!   send twice).
//! - A `collection` or `searchset` Bundle (what a partner puts in object
//!   storage) is rewritten into a transaction whose entries are all
//!   idempotent, so a re-delivery (a retry, a replay, a duplicate
//!   notification) does not duplicate anything ([`to_transaction`]): a
//!   resource with an `id` is `PUT Type/id`; one without an id but with a
//!   system-qualified identifier is written by that identifier as
//!   `by_identifier` says ([`ByIdentifier`]): `POST Type` with
//!   `ifNoneExist: identifier=system|value` (`create`, the default), or the
//!   conditional update `PUT Type?identifier=system|value` (`update`,
//!   FHIR R4 3.1.0.4.3); one with neither gets an id
//!   derived from its content (`PUT Type/plx<hash>`). References to the
//!   `fullUrl` of an entry updated by id are rewritten to `Type/id` here, so
//!   they do not depend on the server resolving `urn:uuid:` placeholders;
//!   references to conditionally created entries are left to the server, as
//!   FHIR specifies.
//! - Any other resource is written on its own the same way (`PUT` by id,
//!   conditional create or update by identifier, or `PUT` with a
//!   content-derived id).
//!
//! # Answers
//!
//! Every entry of the transaction (or batch) response is checked: some
//! servers, the Medplum-based test peer among them, apply transactions
//! entry by entry and answer 200 with failed entries inside. The first
//! failed entry fails the delivery, named by its position, method and
//! resource type (not its id: some servers use a record number as id); its
//! class is the `fhir` crate's ([`fhir::FhirError::class`]): 5xx, 429,
//! timeouts, connection failures and version conflicts (409, 412) are
//! transient and retried by the destination's policy, other 4xx are
//! permanent. A partly applied transaction is simply sent again: its
//! entries are idempotent. The response (status and the start of the
//! response Bundle or OperationOutcome) is kept with the delivery.
//!
//! The client does not retry by itself here (`retry.max_retries` of the
//! named server is set to 0 for the destination): retrying is the store's
//! job, with the destination's `retry` policy, like every destination.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    BuildContext, DeliveryError, DeliveryResponse, DestinationError, Outbound, RESPONSE_EXCERPT_MAX, ResponseKind,
};
use crate::config::{ChannelConfig, ConfigErrors};

/// Configuration of a `fhir` destination: exactly one of `server` and `url`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConfig {
    /// The name of a `[fhir_servers.<name>]` table: its base URL,
    /// authentication (basic, bearer, OAuth2 client credentials, SMART
    /// backend services) and timeouts are used.
    #[serde(default)]
    pub server: Option<String>,
    /// A base URL (`https://ehr.example.org/fhir/R4`), for a server without
    /// authentication; use `server` for anything else.
    #[serde(default)]
    pub url: Option<String>,
    /// How a resource without an `id` but with a system-qualified
    /// identifier is written: `create` (conditional create, the default)
    /// or `update` (conditional update). See [`ByIdentifier`].
    #[serde(default)]
    pub by_identifier: ByIdentifier,
    /// The named server's configuration, filled in when the whole file is
    /// compiled ([`resolve_servers`]).
    #[serde(skip)]
    pub resolved: Option<fhir::ServerConfig>,
}

/// How a resource is written by its identifier (see
/// [`FhirConfig::by_identifier`]). Both are idempotent: sending the same
/// resource again (a retry, a replay, a notification sent twice) never
/// adds a second one. They differ for a *changed* resource with the same
/// identifier (an ADT^A08 after the A01, a PMS record edited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByIdentifier {
    /// `POST Type` with `If-None-Exist: identifier=system|value`: created
    /// when no resource has the identifier, otherwise the server's one is
    /// left as it is (the delivery succeeds, answered 200). For content
    /// that must not overwrite what the receiver holds (a partner's
    /// minimal Patient next to the EHR's full record).
    #[default]
    Create,
    /// `PUT Type?identifier=system|value`: the resource with the
    /// identifier is replaced by this one (created when there is none), so
    /// the receiver holds the latest version. Several matches fail the
    /// delivery (412, permanent): the receiver has duplicates to merge.
    Update,
}

impl FhirConfig {
    /// Checks the fields (no I/O). That `server` names a configured server
    /// is checked with the whole file ([`resolve_servers`]).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        match (&self.server, &self.url) {
            (None, None) => errors.push(
                path.to_string(),
                "set `server` (a [fhir_servers] name) or `url` (a FHIR base URL) to say where to deliver",
            ),
            (Some(_), Some(_)) => {
                errors.push(format!("{path}.url"), "set `server` or `url`, not both (the server has the URL)")
            }
            (Some(name), None) if name.trim().is_empty() => errors.push(format!("{path}.server"), "is empty"),
            (Some(_), None) => {}
            (None, Some(url)) => match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(u) => errors.push(format!("{path}.url"), format!("scheme {:?} is not http or https", u.scheme())),
                Err(e) => errors.push(format!("{path}.url"), format!("not a URL: {e}")),
            },
        }
    }

    /// Builds the client (reads the named server's secrets from the
    /// environment).
    pub fn build(&self, ctx: &BuildContext) -> Result<FhirDestination, DestinationError> {
        let invalid = |field: &str, message: String| {
            let mut errors = ConfigErrors::default();
            errors.push(field, message);
            DestinationError::Invalid(errors)
        };
        let (name, mut server) = match (&self.server, &self.url, &self.resolved) {
            (Some(name), _, Some(server)) => (name.clone(), server.clone()),
            (Some(name), _, None) => {
                return Err(invalid(
                    "server",
                    format!("[fhir_servers.{name}] was not resolved (compile the whole file)"),
                ));
            }
            (None, Some(url), _) => {
                let base = url::Url::parse(url).map_err(|e| invalid("url", e.to_string()))?;
                (format!("{}/{}", ctx.channel, ctx.destination), fhir::ServerConfig::new(base))
            }
            (None, None, _) => return Err(invalid("server", "set `server` or `url`".into())),
        };
        // The store retries with the destination's policy.
        server.retry.max_retries = 0;
        let client = fhir::FhirClient::new(&name, &server).map_err(|e| DestinationError::HttpClient(e.to_string()))?;
        Ok(FhirDestination { client, by_identifier: self.by_identifier })
    }
}

/// Resolves the `server` of every `fhir` destination against the file's
/// `[fhir_servers]`, reporting a name that is not there at its path.
pub(crate) fn resolve_servers(
    servers: &BTreeMap<String, fhir::ServerConfig>,
    channels: &mut [ChannelConfig],
    errors: &mut ConfigErrors,
) {
    for channel in channels {
        let path = channel.path();
        for (i, d) in channel.destinations.iter_mut().enumerate() {
            let super::DestinationConfig::Fhir(config) = &mut d.connector else { continue };
            let Some(name) = &config.server else { continue };
            match servers.get(name) {
                Some(server) => config.resolved = Some(server.clone()),
                None => {
                    let known: Vec<&str> = servers.keys().map(String::as_str).collect();
                    errors.push(
                        format!("{path}.destination[{i}].server"),
                        format!(
                            "no [fhir_servers.{name}] in this file (configured: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    );
                }
            }
        }
    }
}

/// A built `fhir` destination (one client, shared by the workers).
#[derive(Debug)]
pub struct FhirDestination {
    client: fhir::FhirClient,
    by_identifier: ByIdentifier,
}

impl FhirDestination {
    /// Delivers one resource or Bundle (one attempt).
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        let content: Value = serde_json::from_slice(out.content)
            .map_err(|e| DeliveryError::Content { reason: format!("not FHIR JSON ({}): {e}", out.content_type) })?;
        let Some(resource_type) = fhir::resource::resource_type(&content) else {
            return Err(DeliveryError::Content {
                reason: format!("not a FHIR resource (no resourceType; content type {})", out.content_type),
            });
        };
        if resource_type != "Bundle" {
            return self.write_one(content).await;
        }
        let kind = content.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        let (request, batch) = match kind.as_str() {
            "transaction" => (content, false),
            "batch" => (content, true),
            "collection" | "searchset" => {
                let transaction = to_transaction(&content, self.by_identifier);
                (transaction.map_err(|reason| DeliveryError::Content { reason })?, false)
            }
            other => {
                return Err(DeliveryError::Content {
                    reason: format!(
                        "a Bundle of type {other:?} is not delivered (transaction, batch, collection or searchset)"
                    ),
                });
            }
        };
        let sent = fhir::bundle::entries(&request).len();
        let answer = if batch { self.client.batch(&request).await } else { self.client.transaction(&request).await }
            .map_err(fhir_failure)?;
        let body = excerpt_json(&answer);
        let summary = check_entries(&request, &answer).map_err(|failure| failure.into_error(body.clone()))?;
        Ok(DeliveryResponse {
            kind: ResponseKind::Http(200),
            summary: format!("HTTP 200: {summary} ({sent} sent)"),
            body: Some(body),
        })
    }

    async fn write_one(&self, mut resource: Value) -> Result<DeliveryResponse, DeliveryError> {
        let written = match plan(&mut resource, &mut HashSet::new()) {
            Plan::Put { .. } => self.client.update(&resource).await,
            Plan::ByIdentifier { token, .. } => match self.by_identifier {
                ByIdentifier::Create => {
                    self.client.create_if_none_exist(&resource, &[("identifier", token.as_str())]).await
                }
                ByIdentifier::Update => {
                    self.client.conditional_update(&resource, &[("identifier", token.as_str())]).await
                }
            },
        }
        .map_err(fhir_failure)?;
        let key = written.key.as_ref().map_or_else(String::new, |k| format!(" {}", k.resource_type));
        Ok(DeliveryResponse {
            kind: ResponseKind::Http(written.status),
            summary: format!("HTTP {}:{key} {}", written.status, if written.created() { "created" } else { "written" }),
            body: written.resource.as_ref().map(excerpt_json),
        })
    }
}

/// How one resource is written idempotently.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// `PUT Type/id` (the resource's own id, or one derived from its content).
    Put { url: String },
    /// By its identifier (`token`: the search for it, `system|value`
    /// escaped), as [`ByIdentifier`] says.
    ByIdentifier { url: String, token: String },
}

/// Chooses the request for `resource` (setting a derived id when it has no
/// id nor identifier). `used` holds the ids derived so far in this Bundle:
/// two identical resources get different ids.
fn plan(resource: &mut Value, used: &mut HashSet<String>) -> Plan {
    let resource_type = fhir::resource::resource_type(resource).unwrap_or_default().to_string();
    if let Some(id) = fhir::resource::id(resource).filter(|id| fhir::resource::is_valid_id(id)) {
        return Plan::Put { url: format!("{resource_type}/{id}") };
    }
    let identifier = fhir::resource::identifiers(resource).into_iter().find_map(|i| match (i.system, i.value) {
        (Some(system), Some(value)) if !system.is_empty() && !value.is_empty() => Some((system, value)),
        _ => None,
    });
    if let Some((system, value)) = identifier {
        let token =
            format!("{}|{}", fhir::resource::escape_search_value(&system), fhir::resource::escape_search_value(&value));
        return Plan::ByIdentifier { url: resource_type, token };
    }
    // Neither: an id from the content, so the same resource sent again
    // updates itself instead of adding a copy.
    if let Some(map) = resource.as_object_mut() {
        map.remove("id");
    }
    let digest = Sha256::new()
        .chain_update(resource_type.as_bytes())
        .chain_update([0])
        .chain_update(serde_json::to_vec(resource).unwrap_or_default())
        .finalize();
    let base = format!("plx{}", &hex::encode(digest)[..32]);
    let mut id = base.clone();
    let mut n = 1;
    while !used.insert(id.clone()) {
        n += 1;
        id = format!("{base}-{n}");
    }
    if let Some(map) = resource.as_object_mut() {
        let mut with_id = serde_json::Map::with_capacity(map.len() + 1);
        with_id.insert("resourceType".into(), Value::String(resource_type.clone()));
        with_id.insert("id".into(), Value::String(id.clone()));
        for (k, v) in std::mem::take(map) {
            if k != "resourceType" {
                with_id.insert(k, v);
            }
        }
        *map = with_id;
    }
    Plan::Put { url: format!("{resource_type}/{id}") }
}

/// Rewrites a `collection` or `searchset` Bundle into a transaction of
/// idempotent entries (see the module docs). Entries without a resource and
/// OperationOutcomes (a search's messages) are left out; resources with an
/// identifier are written `by_identifier`. `Err` says why the Bundle cannot
/// be sent.
pub fn to_transaction(bundle: &Value, by_identifier: ByIdentifier) -> Result<Value, String> {
    let mut used = HashSet::new();
    let mut entries = Vec::new();
    // fullUrl -> Type/id of the entries updated by id.
    let mut local: HashMap<String, String> = HashMap::new();
    for (i, entry) in fhir::bundle::entries(bundle).iter().enumerate() {
        let Some(resource) = entry.get("resource") else { continue };
        let Some(resource_type) = fhir::resource::resource_type(resource) else {
            return Err(format!("entry {i}: a resource without resourceType"));
        };
        if resource_type == "OperationOutcome" {
            continue;
        }
        if !fhir::resource::is_valid_type(resource_type) {
            return Err(format!("entry {i}: {resource_type:?} is not a resource type"));
        }
        let mut resource = resource.clone();
        let plan = plan(&mut resource, &mut used);
        let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
        let request = match &plan {
            Plan::Put { url } => {
                if let Some(f) = &full_url {
                    local.insert(f.clone(), url.clone());
                }
                serde_json::json!({"method": "PUT", "url": url})
            }
            Plan::ByIdentifier { url, token } => {
                let condition =
                    url::form_urlencoded::Serializer::new(String::new()).append_pair("identifier", token).finish();
                match by_identifier {
                    ByIdentifier::Create => serde_json::json!({"method": "POST", "url": url, "ifNoneExist": condition}),
                    ByIdentifier::Update => serde_json::json!({"method": "PUT", "url": format!("{url}?{condition}")}),
                }
            }
        };
        let mut out = serde_json::Map::new();
        if let Some(f) = full_url {
            out.insert("fullUrl".into(), Value::String(f));
        }
        out.insert("resource".into(), resource);
        out.insert("request".into(), request);
        entries.push(Value::Object(out));
    }
    if entries.is_empty() {
        return Err("the Bundle holds no resource to deliver".into());
    }
    if !local.is_empty() {
        for entry in &mut entries {
            if let Some(resource) = entry.get_mut("resource") {
                fhir::reference::rewrite_references(resource, &mut |r| match local.get(r) {
                    Some(to) => fhir::reference::Rewrite::Replace(to.clone()),
                    None => fhir::reference::Rewrite::Keep,
                });
            }
        }
    }
    Ok(serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
}

/// The first failed entry of a transaction or batch response.
#[derive(Debug)]
struct EntryFailure {
    reason: String,
    error: Option<Box<fhir::FhirError>>,
}

impl EntryFailure {
    fn into_error(self, body: String) -> DeliveryError {
        let (class, status, retry_after) = match &self.error {
            Some(e) => (class_of(e.class()), e.status(), None),
            None => (super::ErrorClass::Permanent, None, None),
        };
        DeliveryError::Fhir { reason: self.reason, class, status, retry_after, body }
    }
}

/// Checks every entry of `answer` (for `request`); `Ok` sums them up
/// (`3 created, 2 updated`).
fn check_entries(request: &Value, answer: &Value) -> Result<String, EntryFailure> {
    let sent = fhir::bundle::entries(request);
    let answers = fhir::bundle::entry_responses(answer);
    if answers.len() != sent.len() {
        return Err(EntryFailure {
            reason: format!("the server answered {} entries for {} sent", answers.len(), sent.len()),
            error: None,
        });
    }
    let failed: Vec<usize> = answers.iter().enumerate().filter(|(_, r)| !r.is_success()).map(|(i, _)| i).collect();
    if let Some(&first) = failed.first() {
        let entry = &sent[first];
        let method = entry.pointer("/request/method").and_then(Value::as_str).unwrap_or("?");
        let resource_type = entry
            .pointer("/resource/resourceType")
            .and_then(Value::as_str)
            .or_else(|| {
                entry.pointer("/request/url").and_then(Value::as_str).map(|u| u.split(['/', '?']).next().unwrap_or(u))
            })
            .unwrap_or("?");
        let r = &answers[first];
        let error = fhir::FhirError::Status {
            context: fhir::RequestContext {
                server: String::new(),
                method: method.to_string(),
                path: resource_type.to_string(),
            },
            status: r.status,
            outcome: r.outcome.clone(),
            retry_after: None,
        };
        let more = if failed.len() > 1 { format!(" ({} entries failed in all)", failed.len()) } else { String::new() };
        return Err(EntryFailure {
            reason: format!(
                "entry {first} ({method} {resource_type}) answered {} ({}){more}",
                if r.status == 0 { "no status".to_string() } else { format!("HTTP {}", r.status) },
                error.class()
            ),
            error: Some(Box::new(error)),
        });
    }
    let created = answers.iter().filter(|r| r.status == 201).count();
    Ok(format!("{created} created, {} updated or unchanged", answers.len() - created))
}

/// A failed request as the delivery's error: the class is the `fhir`
/// crate's; the OperationOutcome (which may quote content) goes with the
/// response, not into the reason.
fn fhir_failure(e: fhir::FhirError) -> DeliveryError {
    let class = class_of(e.class());
    let status = e.status();
    let retry_after = match &e {
        fhir::FhirError::Status { retry_after, .. } => *retry_after,
        _ => None,
    };
    let body = e.outcome().map(|o| o.summary()).unwrap_or_default();
    let reason = match &e {
        fhir::FhirError::Status { context, status, .. } => format!("{context}: HTTP {status}"),
        other => other.to_string(),
    };
    DeliveryError::Fhir { reason, class, status, retry_after, body }
}

/// The `fhir` crate's class as the store's (the same three classes).
fn class_of(class: fhir::ErrorClass) -> super::ErrorClass {
    match class {
        fhir::ErrorClass::Transient => super::ErrorClass::Transient,
        fhir::ErrorClass::Permanent => super::ErrorClass::Permanent,
        fhir::ErrorClass::Config => super::ErrorClass::Config,
    }
}

fn excerpt_json(value: &Value) -> String {
    super::excerpt(&serde_json::to_vec(value).unwrap_or_default(), RESPONSE_EXCERPT_MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(text: &str) -> FhirConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn validate_wants_exactly_one_of_server_and_url() {
        let paths = |c: FhirConfig| {
            let mut errors = ConfigErrors::default();
            c.validate("d", &mut errors);
            errors.0.into_iter().map(|e| e.path).collect::<Vec<_>>()
        };
        assert_eq!(paths(config("")), ["d"]);
        assert_eq!(paths(config("server = \"ehr\"\nurl = \"https://x/fhir\"")), ["d.url"]);
        assert_eq!(paths(config("url = \"ftp://x/fhir\"")), ["d.url"]);
        assert_eq!(paths(config("url = \"not a url\"")), ["d.url"]);
        assert_eq!(paths(config("server = \" \"")), ["d.server"]);
        assert!(paths(config("server = \"ehr\"")).is_empty());
        assert!(paths(config("url = \"http://127.0.0.1:8080/fhir/R4\"")).is_empty());
        assert!(toml::from_str::<FhirConfig>("server = \"ehr\"\nretries = 3").is_err());
    }

    #[test]
    fn a_named_server_must_be_resolved_before_build() {
        let err = config("server = \"ehr\"").build(&BuildContext::new("c", "d")).unwrap_err();
        assert!(err.to_string().contains("not resolved"), "{err}");
        assert!(config("url = \"http://127.0.0.1:1/fhir\"").build(&BuildContext::new("c", "d")).is_ok());
    }

    #[test]
    fn a_collection_becomes_a_transaction_of_idempotent_entries() {
        let pid = "urn:uuid:4f1c2e1a-0000-4000-8000-000000000001";
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": pid, "resource": {"resourceType": "Patient",
                "identifier": [{"value": "no-system"}, {"system": "urn:oid:1.2.3", "value": "P|1"}]}},
            {"fullUrl": "urn:uuid:dev", "resource": {"resourceType": "Device", "id": "meter"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "subject": {"reference": pid}, "device": {"reference": "urn:uuid:dev"}}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "subject": {"reference": pid}, "device": {"reference": "urn:uuid:dev"}}},
            {"resource": {"resourceType": "OperationOutcome"}},
            {"fullUrl": "urn:uuid:nothing"}
        ]});
        let tx = to_transaction(&bundle, ByIdentifier::Create).unwrap();
        assert_eq!(tx["type"], "transaction");
        let entries = tx["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[0]["request"],
            json!({"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn%3Aoid%3A1.2.3%7CP%5C%7C1"})
        );
        assert_eq!(entries[0]["fullUrl"], pid);
        assert_eq!(entries[1]["request"], json!({"method": "PUT", "url": "Device/meter"}));
        // No id, no identifier: an id from the content, the same each time,
        // different for the twin.
        let url = entries[2]["request"]["url"].as_str().unwrap();
        assert!(url.starts_with("Observation/plx"), "{url}");
        assert_eq!(format!("Observation/{}", entries[2]["resource"]["id"].as_str().unwrap()), url);
        assert_eq!(entries[3]["request"]["url"].as_str().unwrap(), format!("{url}-2"));
        assert_eq!(to_transaction(&bundle, ByIdentifier::Create).unwrap(), tx, "not deterministic");
        // References to an entry updated by id point at it; those to a
        // conditionally created one are the server's to resolve.
        assert_eq!(entries[2]["resource"]["device"]["reference"], "Device/meter");
        assert_eq!(entries[2]["resource"]["subject"]["reference"], pid);
        // by_identifier = "update": the conditional update, the rest alike.
        let updating = to_transaction(&bundle, ByIdentifier::Update).unwrap();
        assert_eq!(
            updating["entry"][0]["request"],
            json!({"method": "PUT", "url": "Patient?identifier=urn%3Aoid%3A1.2.3%7CP%5C%7C1"})
        );
        assert_eq!(updating["entry"].as_array().unwrap()[1..], entries[1..]);
        assert_eq!(config("url = \"http://x/fhir\"\nby_identifier = \"update\"").by_identifier, ByIdentifier::Update);
        assert_eq!(config("url = \"http://x/fhir\"").by_identifier, ByIdentifier::Create);
        assert!(toml::from_str::<FhirConfig>("url = \"http://x/fhir\"\nby_identifier = \"upsert\"").is_err());
    }

    #[test]
    fn a_bundle_without_resources_or_with_a_bad_type_is_refused() {
        let empty = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:x"}]});
        assert!(to_transaction(&empty, ByIdentifier::Create).unwrap_err().contains("no resource"));
        let bad = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "patient"}}]});
        assert!(to_transaction(&bad, ByIdentifier::Create).unwrap_err().contains("entry 0"));
    }

    #[test]
    fn entry_failures_name_the_entry_and_carry_the_class() {
        let request = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "1"}, "request": {"method": "PUT", "url": "Patient/1"}},
            {"resource": {"resourceType": "Observation", "id": "2"}, "request": {"method": "PUT", "url": "Observation/2"}}
        ]});
        let answer = |second: &str| {
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"response": {"status": "201 Created"}},
                {"response": {"status": second, "outcome": {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad value"}]}}}
            ]})
        };
        assert_eq!(check_entries(&request, &answer("200 OK")).unwrap(), "1 created, 1 updated or unchanged");
        let failure = check_entries(&request, &answer("400 Bad Request")).unwrap_err();
        assert!(failure.reason.contains("entry 1 (PUT Observation) answered HTTP 400"), "{}", failure.reason);
        assert!(!failure.reason.contains("bad value"), "the outcome goes with the response");
        let error = failure.into_error(String::new());
        assert_eq!(error.class(), super::super::ErrorClass::Permanent);
        let error = check_entries(&request, &answer("503")).unwrap_err().into_error(String::new());
        assert_eq!(error.class(), super::super::ErrorClass::Transient);
        let short = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": []});
        assert!(check_entries(&request, &short).unwrap_err().reason.contains("0 entries for 2"));
    }

    #[test]
    fn a_single_resource_is_planned_like_an_entry() {
        let mut with_id = json!({"resourceType": "Patient", "id": "7"});
        assert_eq!(plan(&mut with_id, &mut HashSet::new()), Plan::Put { url: "Patient/7".into() });
        let mut bare = json!({"resourceType": "Observation", "status": "final"});
        let Plan::Put { url } = plan(&mut bare, &mut HashSet::new()) else { panic!("a put") };
        assert_eq!(bare["id"].as_str().map(|id| format!("Observation/{id}")), Some(url));
        assert_eq!(bare.as_object().unwrap().keys().next().map(String::as_str), Some("resourceType"));
    }
}
