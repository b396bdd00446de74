//! The FHIR R4 REST client.
//!
//! One [`FhirClient`] per configured server. It is cheap to clone (the
//! connection pool, the token cache and the configuration are shared) and
//! safe to use from many tasks at once.
//!
//! Every interaction goes through one loop ([`FhirClient::execute`]) that
//! adds the `Authorization` header, retries what the retry policy allows
//! (429/502/503/504, timeouts, connection failures; `Retry-After` honoured up
//! to a cap; a 401 answered once by fetching a new token), and turns error
//! answers into [`FhirError::Status`] with the parsed OperationOutcome.
//! Requests that may not be idempotent (a plain create, a batch holding one)
//! are retried only where the server says it did not process them (429, 503)
//! or the connection failed before anything was sent.
//!
//! Searches page through `next` links. Some servers (the Medplum-based test
//! peer among them) report `Bundle.total` but send no links; when a page has
//! no `next` link and fewer matches than `total` have arrived, the client
//! continues with `_offset`, and fails rather than return a silently
//! truncated result if the server ignores it. A `next` link to another host
//! or port is never followed: it would carry this server's credentials
//! elsewhere. An `http` link to the host of an `https` base (a server
//! behind a TLS-terminating proxy) is followed over `https` on the base's
//! port, never in clear text.
//!
//! Logs: request method, path (never the query string: searches carry
//! names and birth dates), status and attempt, at debug; retries at warn,
//! with the resource type instead of the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use crate::auth::Authorizer;
use crate::bundle;
use crate::config::{RetryConfig, ServerConfig};
use crate::error::{FhirError, OperationOutcome, RequestContext};
use crate::resource::{self, ResourceKey};

const FHIR_JSON: &str = "application/fhir+json";

/// A client for one FHIR R4 server.
#[derive(Debug, Clone)]
pub struct FhirClient {
    inner: Arc<Inner>,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// The service base, always ending with `/` so `join` appends.
    base: Url,
    http: reqwest::Client,
    auth: Authorizer,
    retry: RetryConfig,
    page_size: u32,
    max_batch_entries: usize,
    transactions: bool,
    batches: bool,
    /// Set when the server rejected a batch Bundle: later reads go one by
    /// one without trying again.
    batches_rejected: AtomicBool,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    paging: AtomicU64,
    retries: AtomicU64,
}

/// Requests a client (or a [`counted`](FhirClient::counted) clone of it)
/// has sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientStats {
    /// HTTP requests sent to the FHIR server, every attempt counted
    /// (token endpoint requests are not).
    pub requests: u64,
    /// Of those, requests for the second and later pages of a search.
    pub paging_requests: u64,
    /// Of those, retries after a failed attempt.
    pub retries: u64,
}

/// A search: a resource type and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    resource_type: String,
    params: Vec<(String, String)>,
}

impl Search {
    /// A search of `resource_type` with no parameters yet.
    pub fn new(resource_type: impl Into<String>) -> Search {
        Search { resource_type: resource_type.into(), params: Vec::new() }
    }

    /// Adds a parameter (repeat a name for AND, use commas for OR).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Search {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sets `name` to `value`, replacing every earlier value of `name`.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Search {
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_owned(), value.into()));
        self
    }

    /// The resource type searched.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The parameters, in order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Whether the search has parameter `name`.
    pub fn has(&self, name: &str) -> bool {
        self.params.iter().any(|(n, _)| n == name)
    }

    /// The parameters form-urlencoded (`a=1&b=x%7Cy`).
    pub fn query_string(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&self.params).finish()
    }

    /// `Type?query`, relative to the base (a batch entry's `request.url`).
    pub fn relative_url(&self) -> String {
        if self.params.is_empty() {
            self.resource_type.clone()
        } else {
            format!("{}?{}", self.resource_type, self.query_string())
        }
    }
}

/// Every resource of a search, across its pages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResults {
    /// The matches, in server order, each `Type/id` once.
    pub resources: Vec<Value>,
    /// Resources added by `_include` / `_revinclude`, each once.
    pub included: Vec<Value>,
    /// Pages read.
    pub pages: u32,
}

impl SearchResults {
    /// Adds a page; returns how many new matches it brought.
    fn add_page(&mut self, page: &Value, seen: &mut std::collections::HashSet<ResourceKey>) -> usize {
        self.pages += 1;
        let mut added = 0;
        for r in bundle::search_matches(page) {
            let new = ResourceKey::of(r).is_none_or(|k| seen.insert(k));
            if new {
                self.resources.push(r.clone());
                added += 1;
            }
        }
        for r in bundle::search_includes(page) {
            if ResourceKey::of(r).is_none_or(|k| seen.insert(k)) {
                self.included.push(r.clone());
            }
        }
        added
    }
}

/// The result of a create or update.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The HTTP status: 201 created, 200 updated (or, for a conditional
    /// create, already there).
    pub status: u16,
    /// The written resource's key, from the returned resource or the
    /// `Location` header.
    pub key: Option<ResourceKey>,
    /// The new `meta.versionId` (or the ETag's version), when known.
    pub version_id: Option<String>,
    /// The resource as the server stored it, when it returned it.
    pub resource: Option<Value>,
}

impl WriteOutcome {
    /// True when the server created a new resource (201).
    pub fn created(&self) -> bool {
        self.status == 201
    }
}

/// What a server says it supports, from its CapabilityStatement.
///
/// Servers often list less than they do (and some have no `/metadata`):
/// treat [`Support::NotListed`] as a hint, not a refusal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Capabilities {
    statement: Option<Value>,
}

/// Whether a CapabilityStatement lists something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Listed.
    Listed,
    /// The statement exists and does not list it.
    NotListed,
    /// No usable CapabilityStatement.
    Unknown,
}

impl Capabilities {
    /// The CapabilityStatement, when the server has one.
    pub fn statement(&self) -> Option<&Value> {
        self.statement.as_ref()
    }

    /// `fhirVersion` (`4.0.1`).
    pub fn fhir_version(&self) -> Option<&str> {
        self.statement.as_ref()?.get("fhirVersion")?.as_str()
    }

    fn server_rest(&self) -> Option<impl Iterator<Item = &Value>> {
        let rest = self.statement.as_ref()?.get("rest")?.as_array()?;
        Some(rest.iter().filter(|r| r.get("mode").and_then(Value::as_str) != Some("client")))
    }

    fn listed(found: bool, known: bool) -> Support {
        match (known, found) {
            (false, _) => Support::Unknown,
            (true, true) => Support::Listed,
            (true, false) => Support::NotListed,
        }
    }

    /// A whole-system interaction: `transaction`, `batch`, `search-system`,
    /// `history-system`.
    pub fn system_interaction(&self, code: &str) -> Support {
        let Some(mut rest) = self.server_rest() else {
            return Support::Unknown;
        };
        let found = rest.any(|r| has_code(r.get("interaction"), code));
        Self::listed(found, true)
    }

    /// A type-level interaction: `read`, `search-type`, `create`, `update`,
    /// `delete`, `vread` ...
    pub fn interaction(&self, resource_type: &str, code: &str) -> Support {
        let Some(mut rest) = self.server_rest() else {
            return Support::Unknown;
        };
        let found = rest.any(|r| {
            r.get("resource").and_then(Value::as_array).is_some_and(|rs| {
                rs.iter().any(|res| {
                    res.get("type").and_then(Value::as_str) == Some(resource_type)
                        && has_code(res.get("interaction"), code)
                })
            })
        });
        Self::listed(found, true)
    }

    /// An operation by name (`everything`, `validate`), at any level.
    pub fn operation(&self, name: &str) -> Support {
        let Some(mut rest) = self.server_rest() else {
            return Support::Unknown;
        };
        let named = |ops: Option<&Value>| {
            ops.and_then(Value::as_array)
                .is_some_and(|ops| ops.iter().any(|o| o.get("name").and_then(Value::as_str) == Some(name)))
        };
        let found = rest.any(|r| {
            named(r.get("operation"))
                || r.get("resource")
                    .and_then(Value::as_array)
                    .is_some_and(|rs| rs.iter().any(|res| named(res.get("operation"))))
        });
        Self::listed(found, true)
    }
}

fn has_code(interactions: Option<&Value>, code: &str) -> bool {
    interactions
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|i| i.get("code").and_then(Value::as_str) == Some(code)))
}

/// One HTTP exchange to run through the retry loop.
struct Call {
    method: Method,
    /// Relative path without query, for error context and logs.
    path: String,
    url: Url,
    body: Option<Bytes>,
    content_type: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Safe to send twice.
    idempotent: bool,
    /// A second or later page of a search.
    paging: bool,
}

/// A successful answer.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Option<Value>,
}

impl FhirClient {
    /// Builds the client for server `name`, reading secrets named in the
    /// config from the process environment (and a key file, when
    /// configured). Sends nothing.
    pub fn new(name: &str, config: &ServerConfig) -> Result<FhirClient, FhirError> {
        FhirClient::with_secrets(name, config, &|var| std::env::var(var).ok())
    }

    /// Like [`new`](FhirClient::new) with secrets from `secrets` instead of
    /// the environment (embedders with a secret store; tests).
    pub fn with_secrets(
        name: &str,
        config: &ServerConfig,
        secrets: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FhirClient, FhirError> {
        let config_error = |reason: String| FhirError::Config { server: name.to_owned(), reason };
        if let Some(problem) = config.validate().into_iter().next() {
            return Err(config_error(problem.to_string()));
        }
        let mut base = config.base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .gzip(true)
            .user_agent(concat!("plexus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config_error(format!("building the HTTP client: {e}")))?;
        let auth = Authorizer::build(name, &config.auth, &config.base_url, http.clone(), secrets)?;
        Ok(FhirClient {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                base,
                http,
                auth,
                retry: config.retry.clone(),
                page_size: config.page_size,
                max_batch_entries: config.max_batch_entries,
                transactions: config.transactions,
                batches: config.batches,
                batches_rejected: AtomicBool::new(false),
            }),
            counters: Arc::default(),
        })
    }

    /// The configured server name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The service base URL (ending with `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The configured `_count` for searches.
    pub fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// The configured largest batch.
    pub fn max_batch_entries(&self) -> usize {
        self.inner.max_batch_entries
    }

    /// Whether writes should try transaction Bundles.
    pub fn transactions_enabled(&self) -> bool {
        self.inner.transactions
    }

    /// Whether [`get_many`](FhirClient::get_many) will use batch Bundles:
    /// enabled in the config and not refused by the server so far.
    pub fn batches_active(&self) -> bool {
        self.inner.batches && !self.inner.batches_rejected.load(Ordering::Relaxed)
    }

    /// A clone sharing this client's connections, token cache and
    /// configuration, with its own request counters starting at zero: give
    /// one to each job to count its requests alone.
    pub fn counted(&self) -> FhirClient {
        FhirClient { inner: Arc::clone(&self.inner), counters: Arc::default() }
    }

    /// Requests sent through this client (or this counted clone).
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            paging_requests: self.counters.paging.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
        }
    }

    // ----- interactions -------------------------------------------------

    /// `GET /metadata`. A server without one (404, an error, or an answer
    /// that is not a CapabilityStatement) gives empty [`Capabilities`];
    /// only a transient failure is an error.
    pub async fn capabilities(&self) -> Result<Capabilities, FhirError> {
        let call = self.get_call("metadata", false)?;
        match self.execute(call).await {
            Ok(reply) => Ok(Capabilities {
                statement: reply.body.filter(|b| resource::resource_type(b) == Some("CapabilityStatement")),
            }),
            Err(e) if e.class() == crate::ErrorClass::Transient => Err(e),
            Err(e) => {
                tracing::debug!(server = %self.inner.name, error = %e, "no usable /metadata");
                Ok(Capabilities::default())
            }
        }
    }

    /// `GET Type/id`.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Value, FhirError> {
        let path = instance_path(resource_type, id)?;
        let reply = self.execute(self.get_call(&path, false)?).await?;
        self.expect_resource(reply, "GET", &path)
    }

    /// `GET Type/id/_history/vid`.
    pub async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<Value, FhirError> {
        if !resource::is_valid_id(version_id) {
            return Err(FhirError::InvalidRequest(format!("invalid version id {version_id:?}")));
        }
        let path = format!("{}/_history/{version_id}", instance_path(resource_type, id)?);
        let reply = self.execute(self.get_call(&path, false)?).await?;
        self.expect_resource(reply, "GET", &path)
    }

    /// One page of a search by GET (`_count` added from the config unless
    /// the search sets it).
    pub async fn search(&self, search: &Search) -> Result<Value, FhirError> {
        self.search_page(search, false).await
    }

    /// One page of a search by `POST Type/_search` with the parameters as a
    /// form body: for long parameter lists, and to keep search values out
    /// of URLs and access logs.
    pub async fn search_post(&self, search: &Search) -> Result<Value, FhirError> {
        check_type(search.resource_type())?;
        let search = self.with_count(search);
        let path = format!("{}/_search", search.resource_type());
        let call = Call {
            method: Method::POST,
            url: self.url(&path)?,
            path,
            body: Some(Bytes::from(search.query_string())),
            content_type: "application/x-www-form-urlencoded",
            headers: Vec::new(),
            idempotent: true,
            paging: false,
        };
        let reply = self.execute(call).await?;
        self.expect_bundle(reply, &format!("{}/_search", search.resource_type()), &["searchset"])
    }

    /// Every page of a search, following `next` links (or `_offset`, see the
    /// module docs).
    pub async fn search_all(&self, search: &Search) -> Result<SearchResults, FhirError> {
        let first = self.search(search).await?;
        self.remaining_pages(Some(search), first).await
    }

    /// Reads the pages after `first_page` (for a first page that came some
    /// other way, e.g. inside a batch response). `search` enables the
    /// `_offset` fallback; pass `None` for an operation's result.
    pub async fn remaining_pages(
        &self,
        search: Option<&Search>,
        first_page: Value,
    ) -> Result<SearchResults, FhirError> {
        let mut results = SearchResults::default();
        let mut seen = std::collections::HashSet::new();
        let mut returned = results.add_page(&first_page, &mut seen) as u64;
        let mut page = first_page;
        // Every link followed: a server whose links lead back to any earlier
        // page (not only the one just read) would otherwise be paged forever.
        let mut followed: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            if let Some(next) = bundle::next_link(&page) {
                if !followed.insert(next.to_owned()) {
                    return Err(self.invalid("GET", "(next page)", "next link leads back to an earlier page"));
                }
                let url = self.link_url(next)?;
                page = self.get_page(url).await?;
                returned += bundle::search_matches(&page).count() as u64;
                results.add_page(&page, &mut seen);
                continue;
            }
            let (Some(search), Some(total)) = (search, bundle::total(&page)) else {
                break;
            };
            if returned >= total || bundle::search_matches(&page).next().is_none() {
                break;
            }
            // No link, but the server says there are more: page by offset.
            let next = search.clone().set("_offset", returned.to_string());
            page = self.search_page(&next, true).await?;
            let on_page = bundle::search_matches(&page).count() as u64;
            if on_page == 0 {
                break;
            }
            returned += on_page;
            if results.add_page(&page, &mut seen) == 0 {
                return Err(self.invalid(
                    "GET",
                    search.resource_type(),
                    &format!(
                        "the server reports {total} matches but sends no next link and ignores \
                         _offset; refusing a truncated result"
                    ),
                ));
            }
        }
        Ok(results)
    }

    /// The page after `page` of `search`, or `None` after the last: the
    /// page's `next` link when it has one (on this server's origin only, as
    /// [`search_all`](Self::search_all) follows them), else, when the server
    /// reports more matches than `returned` (the matches read so far, this
    /// page's included) and this page was not empty, `search` again from
    /// `_offset=returned`. For a caller that must act on each page before
    /// reading the next (a scheduled poll commits a page before it moves its
    /// checkpoint); bounding the walk (a server whose links loop) is the
    /// caller's.
    pub async fn next_page(&self, search: &Search, page: &Value, returned: u64) -> Result<Option<Value>, FhirError> {
        if let Some(next) = bundle::next_link(page) {
            let url = self.link_url(next)?;
            return self.get_page(url).await.map(Some);
        }
        match bundle::total(page) {
            Some(total) if returned < total && bundle::search_matches(page).next().is_some() => {
                let next = search.clone().set("_offset", returned.to_string());
                self.search_page(&next, true).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// `GET Patient/id/$everything` with `params` (`_type`, `_count`,
    /// `_since` ...), every page. Servers without the operation answer 404,
    /// 400 or 501: see [`FhirError::is_unsupported`].
    pub async fn patient_everything(
        &self,
        patient_id: &str,
        params: &[(&str, &str)],
    ) -> Result<SearchResults, FhirError> {
        let path = format!("{}/$everything", instance_path("Patient", patient_id)?);
        let mut url = self.url(&path)?;
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        let call = Call { url, ..self.get_call(&path, false)? };
        let reply = self.execute(call).await?;
        let first = self.expect_bundle(reply, &path, &["searchset", "collection"])?;
        self.remaining_pages(None, first).await
    }

    /// `POST Type`: create, the server assigns the id.
    pub async fn create(&self, resource: &Value) -> Result<WriteOutcome, FhirError> {
        let resource_type = body_type(resource)?;
        self.write(Method::POST, resource_type.to_owned(), resource, Vec::new(), false).await
    }

    /// `POST Type` with `If-None-Exist: condition`: creates unless a
    /// resource matches the condition (then 200 with the existing one).
    pub async fn create_if_none_exist(
        &self,
        resource: &Value,
        condition: &[(&str, &str)],
    ) -> Result<WriteOutcome, FhirError> {
        let resource_type = body_type(resource)?;
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(condition).finish();
        let header = HeaderValue::from_str(&query)
            .map_err(|_| FhirError::InvalidRequest("condition not usable in a header".into()))?;
        let headers = vec![(HeaderName::from_static("if-none-exist"), header)];
        self.write(Method::POST, resource_type.to_owned(), resource, headers, true).await
    }

    /// `PUT Type/id` with the resource's own `id`.
    pub async fn update(&self, resource: &Value) -> Result<WriteOutcome, FhirError> {
        let path = body_instance_path(resource)?;
        self.write(Method::PUT, path, resource, Vec::new(), true).await
    }

    /// `PUT Type/id` with `If-Match: W/"version_id"`: fails with 409 or 412
    /// when someone else changed the resource since that version.
    pub async fn update_if_match(&self, resource: &Value, version_id: &str) -> Result<WriteOutcome, FhirError> {
        let path = body_instance_path(resource)?;
        let etag = HeaderValue::from_str(&format!("W/\"{version_id}\""))
            .map_err(|_| FhirError::InvalidRequest("version id not usable in a header".into()))?;
        let headers = vec![(http::header::IF_MATCH, etag)];
        self.write(Method::PUT, path, resource, headers, true).await
    }

    /// `PUT Type?condition`: updates the one resource matching the condition
    /// (usually `identifier=system|value`), creates it when none matches,
    /// fails (412) when several do.
    pub async fn conditional_update(
        &self,
        resource: &Value,
        condition: &[(&str, &str)],
    ) -> Result<WriteOutcome, FhirError> {
        let resource_type = body_type(resource)?.to_owned();
        let mut url = self.url(&resource_type)?;
        url.query_pairs_mut().extend_pairs(condition);
        self.write_to(Method::PUT, resource_type, url, resource, Vec::new(), true).await
    }

    /// `DELETE Type/id`. Deleting a resource that is already gone succeeds.
    pub async fn delete(&self, resource_type: &str, id: &str) -> Result<(), FhirError> {
        let path = instance_path(resource_type, id)?;
        let call = Call { method: Method::DELETE, ..self.get_call(&path, false)? };
        match self.execute(call).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /` with a `batch` Bundle; returns the `batch-response`. Entries
    /// succeed or fail one by one: read them with
    /// [`bundle::entry_responses`](crate::bundle::entry_responses).
    pub async fn batch(&self, batch: &Value) -> Result<Value, FhirError> {
        self.post_bundle(batch, "batch-response").await
    }

    /// `POST /` with a `transaction` Bundle; returns the
    /// `transaction-response`. All or nothing on a conforming server (not on
    /// every server: the sync copes with partial application).
    pub async fn transaction(&self, transaction: &Value) -> Result<Value, FhirError> {
        self.post_bundle(transaction, "transaction-response").await
    }

    /// Runs reads and searches (relative URLs: `Patient/1`,
    /// `Observation?patient=1`) as batch Bundles of at most
    /// `max_batch_entries`, or one request each when batches are disabled or
    /// the server rejects them. One result per URL, in order: the resource
    /// or search page, or that entry's error.
    pub async fn get_many(&self, urls: &[String]) -> Result<Vec<Result<Value, FhirError>>, FhirError> {
        let mut results = Vec::with_capacity(urls.len());
        let mut chunks = urls.chunks(self.inner.max_batch_entries.max(1));
        while self.batches_active() {
            let Some(chunk) = chunks.next() else {
                return Ok(results);
            };
            let entries: Vec<_> = chunk.iter().map(|u| bundle::BundleEntry::get(u.clone())).collect();
            match self.batch(&bundle::batch(&entries)).await {
                Ok(response) => {
                    let responses = bundle::entry_responses(&response);
                    if responses.len() != chunk.len() {
                        return Err(self.invalid(
                            "POST",
                            "",
                            &format!("{} entries answered for {} sent", responses.len(), chunk.len()),
                        ));
                    }
                    let mut answers: Vec<_> =
                        chunk.iter().zip(responses).map(|(url, r)| self.entry_result(url, r)).collect();
                    // An entry the server could not answer this time (429,
                    // 503 inside a 200 batch-response) gets the retry policy
                    // like any request, read on its own: failing the whole
                    // sync for it, or skipping it, would be wrong.
                    let again: Vec<usize> = (0..answers.len())
                        .filter(|&i| answers[i].as_ref().is_err_and(|e| e.class() == crate::ErrorClass::Transient))
                        .collect();
                    if !again.is_empty() {
                        let urls: Vec<String> = again.iter().map(|&i| chunk[i].clone()).collect();
                        for (i, answer) in again.into_iter().zip(self.get_each(&urls).await) {
                            answers[i] = answer;
                        }
                    }
                    results.extend(answers);
                }
                Err(e) if e.class() == crate::ErrorClass::Permanent => {
                    tracing::info!(
                        server = %self.inner.name,
                        status = e.status(),
                        "server rejected a batch of reads; reading one by one"
                    );
                    self.inner.batches_rejected.store(true, Ordering::Relaxed);
                    results.extend(self.get_each(chunk).await);
                }
                Err(e) => return Err(e),
            }
        }
        for chunk in chunks {
            results.extend(self.get_each(chunk).await);
        }
        Ok(results)
    }

    async fn get_each(&self, urls: &[String]) -> Vec<Result<Value, FhirError>> {
        // The futures are built first: a closure mapping `&String` inside
        // the stream would make the caller's future fail the higher-ranked
        // `Send` check that `tokio::spawn` needs.
        let reads: Vec<_> = urls.iter().map(|u| self.get_relative(u)).collect();
        futures::stream::iter(reads).buffered(4).collect().await
    }

    /// `GET` a relative URL (`Type/id` or `Type?query`).
    pub async fn get_relative(&self, relative: &str) -> Result<Value, FhirError> {
        let path = relative.split('?').next().unwrap_or(relative).to_owned();
        let url = self.url(relative)?;
        let call = Call { url, ..self.get_call(&path, false)? };
        let reply = self.execute(call).await?;
        reply.body.ok_or_else(|| self.invalid("GET", &path, "empty body"))
    }

    // ----- plumbing ------------------------------------------------------

    fn entry_result(&self, url: &str, r: bundle::EntryResponse) -> Result<Value, FhirError> {
        let path = url.split('?').next().unwrap_or(url).to_owned();
        if r.is_success() {
            r.resource.ok_or_else(|| self.invalid("GET", &path, "batch entry without a resource"))
        } else {
            Err(FhirError::Status {
                context: self.context("GET", &path),
                status: r.status,
                outcome: r.outcome,
                retry_after: None,
            })
        }
    }

    async fn post_bundle(&self, bundle_value: &Value, expected: &str) -> Result<Value, FhirError> {
        if resource::resource_type(bundle_value) != Some("Bundle") {
            return Err(FhirError::InvalidRequest("not a Bundle".into()));
        }
        let idempotent = bundle::entries(bundle_value).iter().all(|e| {
            let request = e.get("request");
            let method = request.and_then(|r| r.get("method")).and_then(Value::as_str);
            method != Some("POST") || request.and_then(|r| r.get("ifNoneExist")).is_some()
        });
        let body = serde_json::to_vec(bundle_value)
            .map_err(|e| FhirError::InvalidRequest(format!("serialising the Bundle: {e}")))?;
        let call = Call {
            method: Method::POST,
            path: String::new(),
            url: self.inner.base.clone(),
            body: Some(Bytes::from(body)),
            content_type: FHIR_JSON,
            headers: vec![prefer_representation()],
            idempotent,
            paging: false,
        };
        let reply = self.execute(call).await?;
        self.expect_bundle(reply, "", &[expected])
    }

    async fn write(
        &self,
        method: Method,
        path: String,
        resource: &Value,
        headers: Vec<(HeaderName, HeaderValue)>,
        idempotent: bool,
    ) -> Result<WriteOutcome, FhirError> {
        let url = self.url(&path)?;
        self.write_to(method, path, url, resource, headers, idempotent).await
    }

    async fn write_to(
        &self,
        method: Method,
        path: String,
        url: Url,
        resource: &Value,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        idempotent: bool,
    ) -> Result<WriteOutcome, FhirError> {
        headers.push(prefer_representation());
        let body = serde_json::to_vec(resource)
            .map_err(|e| FhirError::InvalidRequest(format!("serialising the resource: {e}")))?;
        let call = Call {
            method,
            path,
            url,
            body: Some(Bytes::from(body)),
            content_type: FHIR_JSON,
            headers,
            idempotent,
            paging: false,
        };
        let reply = self.execute(call).await?;
        let location = reply
            .headers
            .get(http::header::LOCATION)
            .or_else(|| reply.headers.get(http::header::CONTENT_LOCATION))
            .and_then(|v| v.to_str().ok());
        let etag_version = reply
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned());
        let resource = reply.body.filter(|b| OperationOutcome::from_value(b).is_none());
        Ok(WriteOutcome {
            status: reply.status,
            key: resource.as_ref().and_then(ResourceKey::of).or_else(|| location.and_then(bundle::key_from_location)),
            version_id: resource.as_ref().and_then(resource::version_id).map(str::to_owned).or(etag_version),
            resource,
        })
    }

    async fn search_page(&self, search: &Search, paging: bool) -> Result<Value, FhirError> {
        check_type(search.resource_type())?;
        let search = self.with_count(search);
        let path = search.resource_type().to_owned();
        let mut url = self.url(&path)?;
        url.set_query(Some(&search.query_string()));
        let call = Call { url, ..self.get_call(&path, paging)? };
        let reply = self.execute(call).await?;
        self.expect_bundle(reply, &path, &["searchset"])
    }

    async fn get_page(&self, url: Url) -> Result<Value, FhirError> {
        let path = url.path().strip_prefix(self.inner.base.path()).unwrap_or(url.path()).to_owned();
        let call = Call { url, ..self.get_call(&path, true)? };
        let reply = self.execute(call).await?;
        self.expect_bundle(reply, &path, &["searchset", "collection"])
    }

    fn with_count(&self, search: &Search) -> Search {
        if search.has("_count") {
            search.clone()
        } else {
            search.clone().param("_count", self.inner.page_size.to_string())
        }
    }

    fn get_call(&self, path: &str, paging: bool) -> Result<Call, FhirError> {
        Ok(Call {
            method: Method::GET,
            path: path.to_owned(),
            url: self.url(path)?,
            body: None,
            content_type: FHIR_JSON,
            headers: Vec::new(),
            idempotent: true,
            paging,
        })
    }

    /// `relative` resolved against the base; refuses anything that would
    /// leave it (absolute URLs, `/`-rooted paths, `..`).
    fn url(&self, relative: &str) -> Result<Url, FhirError> {
        let path_part = relative.split('?').next().unwrap_or(relative);
        if relative.contains("://")
            || relative.starts_with('/')
            || path_part.split('/').any(|seg| seg == ".." || seg == ".")
        {
            return Err(FhirError::InvalidRequest(format!("request path must be relative to the base: {path_part:?}")));
        }
        self.inner
            .base
            .join(relative)
            .map_err(|e| FhirError::InvalidRequest(format!("bad request path {path_part:?}: {e}")))
    }

    /// A `next` link resolved against the base, refused unless it stays on
    /// the base's host and port (see [`same_origin_link`]).
    fn link_url(&self, link: &str) -> Result<Url, FhirError> {
        let url =
            self.inner.base.join(link).map_err(|_| self.invalid("GET", "(next page)", "unparseable next link"))?;
        same_origin_link(url, &self.inner.base).ok_or_else(|| {
            self.invalid(
                "GET",
                "(next page)",
                "next link points to another server; not followed (it would receive this \
                 server's credentials)",
            )
        })
    }

    fn context(&self, method: &str, path: &str) -> RequestContext {
        RequestContext { server: self.inner.name.clone(), method: method.to_owned(), path: path.to_owned() }
    }

    fn invalid(&self, method: &str, path: &str, reason: &str) -> FhirError {
        FhirError::InvalidResponse { context: self.context(method, path), reason: reason.to_owned() }
    }

    fn expect_resource(&self, reply: Reply, method: &str, path: &str) -> Result<Value, FhirError> {
        match reply.body {
            Some(v) if resource::resource_type(&v).is_some() => Ok(v),
            _ => Err(self.invalid(method, path, "the answer is not a FHIR resource")),
        }
    }

    fn expect_bundle(&self, reply: Reply, path: &str, types: &[&str]) -> Result<Value, FhirError> {
        let method = if path.is_empty() || path.ends_with("_search") { "POST" } else { "GET" };
        match reply.body {
            Some(v)
                if resource::resource_type(&v) == Some("Bundle")
                    && v.get("type").and_then(Value::as_str).is_some_and(|t| types.contains(&t)) =>
            {
                Ok(v)
            }
            _ => Err(self.invalid(method, path, &format!("expected a {} Bundle", types.join(" or ")))),
        }
    }

    /// Sends `call`, retrying as the policy allows; see the module docs.
    async fn execute(&self, call: Call) -> Result<Reply, FhirError> {
        let policy = &self.inner.retry;
        let max_retry_after = Duration::from_secs(policy.max_retry_after_secs);
        let method = call.method.as_str().to_owned();
        let mut attempts: u32 = 0;
        let mut retries: u32 = 0;
        let mut reauthorized = false;
        if call.paging {
            self.counters.paging.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let authorization = match self.inner.auth.header().await {
                Ok(h) => h,
                Err(e) if e.class() == crate::ErrorClass::Transient && retries < policy.max_retries => {
                    retries += 1;
                    self.pause(&method, &call.path, None, retries, backoff_delay(policy, retries, jitter())).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            attempts += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let mut request = self.inner.http.request(call.method.clone(), call.url.clone()).header(ACCEPT, FHIR_JSON);
            if let Some(body) = &call.body {
                request = request.header(CONTENT_TYPE, call.content_type).body(body.clone());
            }
            for (name, value) in &call.headers {
                request = request.header(name, value.clone());
            }
            if let Some(h) = &authorization {
                request = request.header(AUTHORIZATION, h.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    crate::telemetry::record(&self.inner.name, crate::telemetry::Answer::Transport);
                    // A connection that never opened sent nothing: safe to
                    // retry even a create.
                    if retries < policy.max_retries && (e.is_connect() || call.idempotent) {
                        retries += 1;
                        self.pause(&method, &call.path, None, retries, backoff_delay(policy, retries, jitter())).await;
                        continue;
                    }
                    return Err(self.transport_error(&method, &call.path, attempts, e));
                }
            };
            let status = response.status().as_u16();
            crate::telemetry::record(&self.inner.name, crate::telemetry::Answer::Status(status));
            tracing::debug!(server = %self.inner.name, method = %method, path = %call.path, status, attempts, "FHIR response");
            if status == 401 && !reauthorized && self.inner.auth.rejected(authorization.as_ref()).await {
                reauthorized = true;
                continue;
            }
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let retryable = matches!(status, 429 | 502 | 503 | 504) && (call.idempotent || matches!(status, 429 | 503));
            if retryable && retries < policy.max_retries {
                let delay = match retry_after {
                    Some(d) if d > max_retry_after => None,
                    Some(d) => Some(d),
                    None => Some(backoff_delay(policy, retries + 1, jitter())),
                };
                if let Some(delay) = delay {
                    retries += 1;
                    self.pause(&method, &call.path, Some(status), retries, delay).await;
                    continue;
                }
            }
            let headers = response.headers().clone();
            let body = match response.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    if retries < policy.max_retries && call.idempotent {
                        retries += 1;
                        self.pause(&method, &call.path, None, retries, backoff_delay(policy, retries, jitter())).await;
                        continue;
                    }
                    return Err(self.transport_error(&method, &call.path, attempts, e));
                }
            };
            return self.finish(&method, &call.path, status, headers, &body, retry_after);
        }
    }

    async fn pause(&self, method: &str, path: &str, status: Option<u16>, retry: u32, delay: Duration) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        // The resource type only: some servers use a medical record number
        // as the logical id, and warn is above the patient-data line.
        let resource_type = path.split('/').next().unwrap_or("");
        tracing::warn!(
            server = %self.inner.name,
            method,
            resource_type,
            status,
            retry,
            delay_ms = delay.as_millis() as u64,
            "FHIR request failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }

    fn transport_error(&self, method: &str, path: &str, attempts: u32, e: reqwest::Error) -> FhirError {
        let context = self.context(method, path);
        if e.is_timeout() {
            FhirError::Timeout { context, attempts }
        } else {
            FhirError::Transport { context, attempts, source: e.without_url() }
        }
    }

    fn finish(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: HeaderMap,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Result<Reply, FhirError> {
        let parsed =
            if body.iter().all(u8::is_ascii_whitespace) { None } else { serde_json::from_slice::<Value>(body).ok() };
        if (200..300).contains(&status) {
            if parsed.is_none() && !body.iter().all(u8::is_ascii_whitespace) {
                return Err(self.invalid(method, path, "the body is not JSON"));
            }
            return Ok(Reply { status, headers, body: parsed });
        }
        Err(FhirError::Status {
            context: self.context(method, path),
            status,
            outcome: parsed.as_ref().and_then(OperationOutcome::from_value),
            retry_after,
        })
    }
}

/// `link` if it names `base`'s origin (scheme, host, port), else `None`.
///
/// One exception: a server behind a TLS-terminating proxy often builds its
/// links from the plain-HTTP request the proxy forwarded, so an `https`
/// base gets `http://same-host/...` links (with no port, or the base's). Such
/// a link is fetched over `https` on the base's port: the origin that was
/// configured, so nothing (credentials included) goes anywhere else or in
/// clear text. The reverse, an `https` link behind an `http` base, and any
/// other host or port are refused: this is the configured server's
/// allow-list of one origin, and a link cannot widen it.
fn same_origin_link(mut link: Url, base: &Url) -> Option<Url> {
    if link.host_str() != base.host_str() {
        return None;
    }
    if link.scheme() == base.scheme() && link.port_or_known_default() == base.port_or_known_default() {
        return Some(link);
    }
    let proxied_http =
        link.scheme() == "http" && base.scheme() == "https" && (link.port().is_none() || link.port() == base.port());
    if !proxied_http {
        return None;
    }
    link.set_scheme("https").ok()?;
    link.set_port(base.port()).ok()?;
    Some(link)
}

fn prefer_representation() -> (HeaderName, HeaderValue) {
    (HeaderName::from_static("prefer"), HeaderValue::from_static("return=representation"))
}

fn check_type(resource_type: &str) -> Result<(), FhirError> {
    if resource::is_valid_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::InvalidRequest(format!("invalid resource type {resource_type:?}")))
    }
}

fn instance_path(resource_type: &str, id: &str) -> Result<String, FhirError> {
    check_type(resource_type)?;
    if !resource::is_valid_id(id) {
        return Err(FhirError::InvalidRequest(format!("invalid id {id:?}")));
    }
    Ok(format!("{resource_type}/{id}"))
}

fn body_type(resource: &Value) -> Result<&str, FhirError> {
    let t = resource::resource_type(resource)
        .ok_or_else(|| FhirError::InvalidRequest("resource without resourceType".into()))?;
    check_type(t)?;
    Ok(t)
}

fn body_instance_path(resource: &Value) -> Result<String, FhirError> {
    let t = body_type(resource)?;
    let id =
        resource::id(resource).ok_or_else(|| FhirError::InvalidRequest("update of a resource without id".into()))?;
    instance_path(t, id)
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// The wait before retry number `retry` (1-based) without a Retry-After:
/// `initial_backoff_ms * 2^(retry-1)` plus up to 25 % jitter (`jitter` in
/// `[0, 1)`), never more than `max_backoff_ms`.
pub fn backoff_delay(policy: &RetryConfig, retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(32);
    let base = policy.initial_backoff_ms.saturating_mul(1u64 << exp).min(policy.max_backoff_ms);
    let extra = (base as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(base.saturating_add(extra).min(policy.max_backoff_ms))
}

/// A `Retry-After` value: delay-seconds, or an HTTP-date (a date in the past
/// means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(when.timestamp()).ok()?);
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        let p = RetryConfig { max_retries: 5, initial_backoff_ms: 100, max_backoff_ms: 1000, max_retry_after_secs: 1 };
        assert_eq!(backoff_delay(&p, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&p, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(&p, 3, 0.999), Duration::from_millis(499));
        assert_eq!(backoff_delay(&p, 10, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff_delay(&p, 60, 0.0), Duration::from_millis(1000));
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn search_urls_are_encoded() {
        let s = Search::new("Observation").param("identifier", "urn:s|a,b").param("_count", "5");
        assert_eq!(s.relative_url(), "Observation?identifier=urn%3As%7Ca%2Cb&_count=5");
        assert_eq!(s.clone().set("_count", "9").params().len(), 2);
    }

    #[test]
    fn capabilities_distinguish_listed_not_listed_and_unknown() {
        let caps = Capabilities {
            statement: Some(serde_json::json!({
                "resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
                "rest": [{"mode": "server", "interaction": [{"code": "transaction"}],
                          "resource": [{"type": "Patient", "interaction": [{"code": "read"}],
                                        "operation": [{"name": "everything"}]}]}]
            })),
        };
        assert_eq!(caps.system_interaction("transaction"), Support::Listed);
        assert_eq!(caps.system_interaction("batch"), Support::NotListed);
        assert_eq!(caps.interaction("Patient", "read"), Support::Listed);
        assert_eq!(caps.operation("everything"), Support::Listed);
        assert_eq!(Capabilities::default().system_interaction("batch"), Support::Unknown);
    }

    #[test]
    fn request_paths_cannot_leave_the_base() {
        let client = FhirClient::new("t", &ServerConfig::new(Url::parse("http://127.0.0.1:1/fhir/R4").expect("url")))
            .expect("client");
        assert_eq!(client.url("Patient/1").expect("ok").as_str(), "http://127.0.0.1:1/fhir/R4/Patient/1");
        for bad in ["/Patient/1", "http://evil/x", "../admin", "Patient/../../x"] {
            assert!(client.url(bad).is_err(), "{bad}");
        }
        assert!(client.link_url("http://127.0.0.1:1/fhir/R4/Patient?page=2").is_ok());
        assert!(client.link_url("http://127.0.0.2:1/fhir/R4/Patient?page=2").is_err());
        assert!(client.link_url("https://127.0.0.1:1/fhir/R4/Patient?page=2").is_err());
    }

    #[test]
    fn an_http_next_link_behind_an_https_base_is_followed_over_https_on_the_same_host_only() {
        let base = Url::parse("https://ehr.example.org/fhir/R4/").expect("url");
        let link = |s: &str| same_origin_link(Url::parse(s).expect("url"), &base).map(String::from);
        // The proxy case: the server saw plain HTTP and built its link from it.
        assert_eq!(
            link("http://ehr.example.org/fhir/R4?_getpages=a&page=2").as_deref(),
            Some("https://ehr.example.org/fhir/R4?_getpages=a&page=2")
        );
        assert_eq!(link("https://ehr.example.org:443/fhir/R4/x").as_deref(), Some("https://ehr.example.org/fhir/R4/x"));
        // Another host, another port (the proxied server's own, say), another
        // scheme: refused.
        assert_eq!(link("http://evil.example.org/fhir/R4/x"), None);
        assert_eq!(link("https://evil.example.org/fhir/R4/x"), None);
        assert_eq!(link("http://ehr.example.org:8080/fhir/R4/x"), None);
        assert_eq!(link("https://ehr.example.org:8443/fhir/R4/x"), None);
        assert_eq!(link("ftp://ehr.example.org/fhir/R4/x"), None);

        // A base on its own port: an http link naming that port is upgraded.
        let base = Url::parse("https://ehr.example.org:8443/fhir/").expect("url");
        assert_eq!(
            same_origin_link(Url::parse("http://ehr.example.org:8443/fhir/p2").expect("url"), &base).map(String::from),
            Some("https://ehr.example.org:8443/fhir/p2".to_owned())
        );
        assert_eq!(
            same_origin_link(Url::parse("http://ehr.example.org/fhir/p2").expect("url"), &base).map(String::from),
            Some("https://ehr.example.org:8443/fhir/p2".to_owned())
        );
        // Through the client, as a search follows it.
        let client = FhirClient::new("t", &ServerConfig::new(Url::parse("https://127.0.0.1:1/fhir").expect("url")))
            .expect("client");
        assert_eq!(
            client.link_url("http://127.0.0.1:1/fhir/Patient?page=2").expect("followed").as_str(),
            "https://127.0.0.1:1/fhir/Patient?page=2"
        );
        assert!(client.link_url("http://127.0.0.2:1/fhir/Patient?page=2").is_err());
        // Never a downgrade: an https link behind an http base is another
        // origin.
        let base = Url::parse("http://ehr.example.org/fhir/").expect("url");
        assert_eq!(same_origin_link(Url::parse("https://ehr.example.org/fhir/p2").expect("url"), &base), None);
    }
}
