//! Fetching the announced bundle, by one of two paths:
//!
//! - **Pre-signed URL**: a plain GET through a client whose DNS resolver is
//!   the [`UrlGuard`]'s (so the checked addresses are the connected ones),
//!   with no proxy and no automatic redirects: each redirect target is
//!   checked again before it is followed (at most [`MAX_REDIRECTS`]). The
//!   body is streamed and the fetch aborts as soon as it passes
//!   `max_bundle_bytes`; the whole fetch, redirects included, must finish
//!   within `fetch_timeout`.
//! - **Object storage with temporary credentials**: [`TokenCredentials`]
//!   obtains an access key id, secret, session token and expiry from the
//!   partner's token service (client credentials), caches them until
//!   `refresh_before` ahead of expiry and lets one caller refresh at a time;
//!   `object_store`'s S3 client signs the GET with SigV4 using them. The
//!   endpoint comes from the config, not the notification, so it is not put
//!   through the URL guard.
//!
//! Either way the body must be JSON with `resourceType` `Bundle`.
//!
//! # The token service
//!
//! `POST token_url` with `grant_type=client_credentials` (form body) and
//! the client id and secret as HTTP Basic credentials (RFC 6749 2.3.1). The
//! answer is JSON with `access_key_id`, `secret_access_key`,
//! `session_token` (camelCase and AWS-style PascalCase accepted too) and
//! either `expiration` (RFC 3339) or `expires_in` (seconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::{CredentialProvider, ObjectStoreExt};
use serde::Deserialize;
use url::Url;

use super::config::{Limits, NotificationConfig, ObjectStorageConfig};
use super::guard::{GuardError, UrlGuard};
use super::parse::BundleLocation;

/// Redirects followed for one pre-signed URL before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// How a failure should be handled (the engine's error classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying later (network, timeout, 5xx, 429).
    Transient,
    /// Retrying the same notification will fail the same way.
    Permanent,
    /// Our configuration is wrong.
    Config,
}

/// Why a bundle could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL (or a redirect target) was refused by the guard.
    #[error("refused URL: {0}")]
    Guard(#[from] GuardError),
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    /// A redirect without a usable Location.
    #[error("a redirect ({0}) without a valid Location header")]
    BadRedirect(u16),
    /// The fetch took longer than `fetch_timeout`.
    #[error("the fetch did not finish within {0:?}")]
    Timeout(Duration),
    /// The bundle is larger than `max_bundle_bytes`.
    #[error("the bundle is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The server answered with an error status.
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// A network or protocol error.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The body is not JSON.
    #[error("the bundle is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not a FHIR Bundle.
    #[error("the body is not a FHIR Bundle (resourceType {0})")]
    NotBundle(String),
    /// The notification names an object but no storage is configured.
    #[error("the notification names an object, but the channel has no [storage] configured")]
    NoStorage,
    /// The token service failed.
    #[error("token service: {0}")]
    Token(#[from] TokenError),
    /// The object store failed.
    #[error("object storage: {0}")]
    ObjectStore(String),
    /// The object does not exist.
    #[error("the object does not exist")]
    ObjectNotFound,
    /// The fetch client could not be built (configuration).
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl FetchError {
    /// How this failure should be handled.
    pub fn class(&self) -> ErrorClass {
        match self {
            FetchError::Timeout(_) | FetchError::Http(_) | FetchError::ObjectStore(_) => ErrorClass::Transient,
            FetchError::Status(s) if *s >= 500 || *s == 429 || *s == 408 => ErrorClass::Transient,
            FetchError::Token(t) => t.class(),
            FetchError::NoStorage | FetchError::Client(_) => ErrorClass::Config,
            // A name that does not resolve now may resolve later.
            FetchError::Guard(GuardError::Resolve { .. }) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// A fetched bundle: the bytes as received and the parsed JSON.
#[derive(Debug, Clone)]
pub struct FetchedBundle {
    /// The body exactly as fetched (stored as the message's content).
    pub bytes: Bytes,
    /// The parsed Bundle.
    pub bundle: serde_json::Value,
}

/// Fetches bundles for one channel.
#[derive(Debug)]
pub struct BundleFetcher {
    client: reqwest::Client,
    guard: UrlGuard,
    limits: Limits,
    storage: Option<ObjectStorage>,
}

impl BundleFetcher {
    /// Builds the fetcher from a validated config. Opens no connection.
    pub fn new(config: &NotificationConfig) -> Result<Self, FetchError> {
        let guard = UrlGuard::new(&config.fetch);
        let client = reqwest::Client::builder()
            .dns_resolver(guard.resolver())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.limits.fetch_timeout.get())
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        let storage = match &config.storage {
            Some(s) => Some(ObjectStorage::new(s)?),
            None => None,
        };
        Ok(BundleFetcher { client, guard, limits: config.limits, storage })
    }

    /// Fetches the bundle at `location`, within the time limit.
    pub async fn fetch(&self, location: &BundleLocation) -> Result<FetchedBundle, FetchError> {
        let timeout = self.limits.fetch_timeout.get();
        let work = async {
            let bytes = match location {
                BundleLocation::PresignedUrl(url) => self.get_presigned(url).await?,
                BundleLocation::Object { bucket, key } => {
                    let storage = self.storage.as_ref().ok_or(FetchError::NoStorage)?;
                    storage.get(bucket, key, self.limits.max_bundle_bytes.0).await?
                }
            };
            parse_bundle(bytes)
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn get_presigned(&self, url: &Url) -> Result<Bytes, FetchError> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.guard.check_url(&current)?;
            let response = self.client.get(current.clone()).send().await.map_err(request_error)?;
            let status = response.status();
            if status.is_redirection() {
                let next = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|loc| current.join(loc).ok())
                    .ok_or(FetchError::BadRedirect(status.as_u16()))?;
                tracing::debug!(status = status.as_u16(), "following a redirect of a pre-signed URL");
                current = next;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            return read_limited(response, self.limits.max_bundle_bytes.0).await;
        }
        Err(FetchError::TooManyRedirects)
    }
}

/// The reqwest error as ours, with a guard refusal (raised inside the
/// resolver) recovered as [`FetchError::Guard`].
fn request_error(e: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(g) = s.downcast_ref::<GuardError>() {
            return FetchError::Guard(g.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Http("timed out".into());
    }
    FetchError::Http(error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_limited(response: reqwest::Response, limit: u64) -> Result<Bytes, FetchError> {
    // A declared length over the limit fails before any byte is read; the
    // streamed count below catches a lying or absent Content-Length.
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(FetchError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(request_error)?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Checks that `bytes` is a FHIR Bundle.
pub fn parse_bundle(bytes: Bytes) -> Result<FetchedBundle, FetchError> {
    let bundle: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| FetchError::NotJson(e.to_string()))?;
    match bundle.get("resourceType").and_then(|t| t.as_str()) {
        Some("Bundle") => Ok(FetchedBundle { bytes, bundle }),
        Some(other) => Err(FetchError::NotBundle(format!("`{}`", other.chars().take(64).collect::<String>()))),
        None => Err(FetchError::NotBundle("missing".into())),
    }
}

/// S3-compatible object storage read with [`TokenCredentials`].
#[derive(Debug)]
struct ObjectStorage {
    config: ObjectStorageConfig,
    credentials: Arc<TokenCredentials>,
    // One S3 client per bucket (object_store binds a client to a bucket).
    buckets: Mutex<HashMap<String, Arc<AmazonS3>>>,
}

impl ObjectStorage {
    fn new(config: &ObjectStorageConfig) -> Result<Self, FetchError> {
        Ok(ObjectStorage {
            config: config.clone(),
            credentials: Arc::new(TokenCredentials::new(config)?),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<AmazonS3>, FetchError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = buckets.get(bucket) {
            return Ok(s.clone());
        }
        let mut builder = AmazonS3Builder::new()
            .with_region(&self.config.region)
            .with_bucket_name(bucket)
            .with_credentials(self.credentials.clone());
        if let Some(endpoint) = &self.config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        let store = Arc::new(builder.build().map_err(|e| FetchError::ObjectStore(e.to_string()))?);
        buckets.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    async fn get(&self, bucket: &str, key: &str, limit: u64) -> Result<Bytes, FetchError> {
        let store = self.bucket(bucket)?;
        let path = object_store::path::Path::from(key);
        let result = store.get(&path).await.map_err(object_error)?;
        if result.meta.size > limit {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body = BytesMut::new();
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(object_error)?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

fn object_error(e: object_store::Error) -> FetchError {
    if let object_store::Error::NotFound { .. } = e {
        return FetchError::ObjectNotFound;
    }
    // A token failure surfaces through object_store as a generic error
    // wrapping our TokenError: recover it, so its class drives retries.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TokenError>() {
            return FetchError::Token(t.clone());
        }
        source = s.source();
    }
    FetchError::ObjectStore(error_chain(&e))
}

/// Why temporary credentials could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Network failure or timeout.
    #[error("request failed: {0}")]
    Http(String),
    /// The service answered with an error status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The answer is not the documented JSON.
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

impl TokenError {
    /// How this failure should be handled: a 401/403 means our client
    /// credentials are wrong (config); 5xx, 429 and network errors pass.
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::Http(_) => ErrorClass::Transient,
            TokenError::Status(s) if *s >= 500 || *s == 429 => ErrorClass::Transient,
            TokenError::Status(401 | 403) => ErrorClass::Config,
            TokenError::Status(_) | TokenError::Malformed(_) => ErrorClass::Permanent,
        }
    }
}

/// The token service's answer, see the module docs.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(alias = "accessKeyId", alias = "AccessKeyId")]
    access_key_id: String,
    #[serde(alias = "secretAccessKey", alias = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(default, alias = "sessionToken", alias = "SessionToken")]
    session_token: Option<String>,
    #[serde(default, alias = "Expiration")]
    expiration: Option<DateTime<Utc>>,
    #[serde(default, alias = "expiresIn")]
    expires_in: Option<u64>,
}

#[derive(Debug, Clone)]
struct CachedCredential {
    credential: Arc<AwsCredential>,
    /// When to fetch new ones (expiry minus `refresh_before`).
    refresh_at: DateTime<Utc>,
}

/// Temporary credentials from the partner's token service, cached until
/// shortly before they expire. Implements object_store's
/// [`CredentialProvider`].
pub struct TokenCredentials {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_before: Duration,
    // An async mutex held across the refresh: concurrent callers wait for
    // the one refresh instead of each calling the token service.
    cache: tokio::sync::Mutex<Option<CachedCredential>>,
    fetches: std::sync::atomic::AtomicU64,
}

// Hand-written so the client secret never reaches a log line.
impl std::fmt::Debug for TokenCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("refresh_before", &self.refresh_before)
            .finish_non_exhaustive()
    }
}

impl TokenCredentials {
    /// A provider for the configured token service. Opens no connection.
    pub fn new(config: &ObjectStorageConfig) -> Result<Self, FetchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(TokenCredentials {
            http,
            token_url: config.token_url.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            refresh_before: config.refresh_before.get(),
            cache: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the token service has been called (for tests and
    /// metrics).
    pub fn token_requests(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Current credentials, from the cache or a fresh token request.
    pub async fn credential(&self) -> Result<Arc<AwsCredential>, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && Utc::now() < c.refresh_at
        {
            return Ok(c.credential.clone());
        }
        let fresh = self.request().await?;
        let credential = fresh.credential.clone();
        *cache = Some(fresh);
        Ok(credential)
    }

    async fn request(&self) -> Result<CachedCredential, TokenError> {
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| TokenError::Http(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(TokenError::Status(status.as_u16()));
        }
        let body = response.bytes().await.map_err(|e| TokenError::Http(error_chain(&e)))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let now = Utc::now();
        let expires_at = match (answer.expiration, answer.expires_in) {
            (Some(at), _) => at,
            (None, Some(secs)) => now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2_000)),
            (None, None) => {
                return Err(TokenError::Malformed("neither `expiration` nor `expires_in`".into()));
            }
        };
        let refresh_before = chrono::Duration::from_std(self.refresh_before).unwrap_or(chrono::Duration::zero());
        let refresh_at = expires_at - refresh_before;
        if refresh_at <= now {
            tracing::warn!("temporary credentials expire within the refresh margin; they are used once");
        }
        Ok(CachedCredential {
            credential: Arc::new(AwsCredential {
                key_id: answer.access_key_id,
                secret_key: answer.secret_access_key,
                token: answer.session_token,
            }),
            refresh_at,
        })
    }
}

#[async_trait::async_trait]
impl CredentialProvider for TokenCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.credential().await.map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bundles_pass() {
        let ok = parse_bundle(Bytes::from_static(br#"{"resourceType":"Bundle","type":"collection"}"#)).unwrap();
        assert_eq!(ok.bundle["type"], "collection");
        assert!(matches!(
            parse_bundle(Bytes::from_static(br#"{"resourceType":"Patient"}"#)),
            Err(FetchError::NotBundle(t)) if t == "`Patient`"
        ));
        assert!(matches!(parse_bundle(Bytes::from_static(b"[]")), Err(FetchError::NotBundle(_))));
        assert!(matches!(parse_bundle(Bytes::from_static(b"MSH|^~\\&|")), Err(FetchError::NotJson(_))));
    }

    #[test]
    fn classes_drive_retries() {
        assert_eq!(FetchError::Status(503).class(), ErrorClass::Transient);
        assert_eq!(FetchError::Status(403).class(), ErrorClass::Permanent);
        assert_eq!(FetchError::TooLarge { limit: 1 }.class(), ErrorClass::Permanent);
        assert_eq!(FetchError::Timeout(Duration::from_secs(1)).class(), ErrorClass::Transient);
        assert_eq!(FetchError::Token(TokenError::Status(401)).class(), ErrorClass::Config);
        assert_eq!(FetchError::NoStorage.class(), ErrorClass::Config);
    }
}
