//! Authentication per server: none, Basic, a static bearer token, OAuth 2.0
//! client credentials, and SMART Backend Services.
//!
//! Token-based schemes share one [`TokenSource`]: a cache behind an async
//! mutex. The mutex is held while a token is fetched, so concurrent requests
//! that find the cache stale wait for the one fetch in progress and then use
//! its token: the token endpoint is never asked twice at once. A token is
//! refreshed `refresh_before_expiry_secs` before its `expires_in` runs out
//! (at most a tenth of its lifetime before, so a short-lived token is still
//! fetched once per lifetime, not once per request), and when the FHIR server answers 401 to it (the server may have revoked it
//! early); a 401 only discards the token that was actually used, so forty
//! requests failing with the same old token cause one refresh, not forty.
//!
//! Secrets live in [`Secret`] and in sensitive `HeaderValue`s; neither
//! prints its content, and nothing here logs a token, a secret or a signed
//! assertion.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;
use url::Url;

use crate::config::{AuthConfig, ClientAuthMethod, JwtAlgorithm};
use crate::error::FhirError;

/// A secret read from the environment: its `Debug` shows only its length
/// class, never its content.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the client reads secrets named in the config: the process
/// environment, or a closure in tests and embedders.
pub(crate) type SecretLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The runtime of one server's [`AuthConfig`].
#[derive(Debug)]
pub(crate) enum Authorizer {
    /// No header.
    None,
    /// A header that never changes (Basic, static bearer).
    Static(HeaderValue),
    /// Tokens fetched and cached.
    Token(Arc<TokenSource>),
}

impl Authorizer {
    /// Resolves secrets and keys (the build step's I/O: environment, key
    /// file); fetches nothing yet.
    pub(crate) fn build(
        server: &str,
        config: &AuthConfig,
        base_url: &Url,
        http: reqwest::Client,
        secrets: SecretLookup<'_>,
    ) -> Result<Authorizer, FhirError> {
        let config_error = |reason: String| FhirError::Config { server: server.to_owned(), reason };
        let secret = |var: &str, what: &str| -> Result<Secret, FhirError> {
            match secrets(var) {
                Some(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(config_error(format!("environment variable {var} ({what}) is not set or empty"))),
            }
        };
        match config {
            AuthConfig::None => Ok(Authorizer::None),
            AuthConfig::Basic { username, password_env } => {
                let password = secret(password_env, "the Basic auth password")?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                Ok(Authorizer::Static(sensitive_header(&format!("Basic {encoded}")).ok_or_else(|| {
                    config_error("the Basic auth user name or password has characters not allowed in a header".into())
                })?))
            }
            AuthConfig::Bearer { token_env } => {
                let token = secret(token_env, "the bearer token")?;
                Ok(Authorizer::Static(sensitive_header(&format!("Bearer {}", token.expose())).ok_or_else(|| {
                    config_error(format!("the token in {token_env} has characters not allowed in a header"))
                })?))
            }
            AuthConfig::ClientCredentials {
                token_url,
                client_id,
                client_secret_env,
                client_auth,
                scopes,
                refresh_before_expiry_secs,
            } => {
                let client_secret = secret(client_secret_env, "the OAuth client secret")?;
                Ok(Authorizer::Token(Arc::new(TokenSource::new(
                    server,
                    http,
                    base_url.clone(),
                    Grant::ClientCredentials {
                        token_url: token_url.clone(),
                        client_id: client_id.clone(),
                        client_secret,
                        client_auth: *client_auth,
                        scopes: scopes.join(" "),
                    },
                    Duration::from_secs(*refresh_before_expiry_secs),
                ))))
            }
            AuthConfig::SmartBackend {
                client_id,
                token_url,
                algorithm,
                kid,
                private_key_env,
                private_key_file,
                scopes,
                assertion_lifetime_secs,
                refresh_before_expiry_secs,
            } => {
                let pem =
                    match (private_key_env, private_key_file) {
                        (Some(var), None) => secret(var, "the SMART private key")?,
                        (None, Some(path)) => Secret(std::fs::read_to_string(path).map_err(|e| {
                            config_error(format!("cannot read private_key_file {}: {e}", path.display()))
                        })?),
                        _ => {
                            return Err(config_error(
                                "auth needs exactly one of private_key_env and private_key_file".into(),
                            ));
                        }
                    };
                let key = match algorithm {
                    JwtAlgorithm::RS384 => EncodingKey::from_rsa_pem(pem.expose().as_bytes()),
                    JwtAlgorithm::ES384 => EncodingKey::from_ec_pem(pem.expose().as_bytes()),
                }
                .map_err(|e| config_error(format!("the private key is not a valid {algorithm:?} PEM key: {e}")))?;
                let lifetime = (*assertion_lifetime_secs).clamp(1, crate::config::MAX_ASSERTION_LIFETIME_SECS);
                Ok(Authorizer::Token(Arc::new(TokenSource::new(
                    server,
                    http,
                    base_url.clone(),
                    Grant::SmartBackend {
                        client_id: client_id.clone(),
                        token_url: token_url.clone(),
                        algorithm: match algorithm {
                            JwtAlgorithm::RS384 => Algorithm::RS384,
                            JwtAlgorithm::ES384 => Algorithm::ES384,
                        },
                        kid: kid.clone(),
                        key: Box::new(key),
                        scopes: scopes.join(" "),
                        assertion_lifetime: Duration::from_secs(lifetime),
                    },
                    Duration::from_secs(*refresh_before_expiry_secs),
                ))))
            }
        }
    }

    /// The `Authorization` header for the next request, fetching a token if
    /// the cache has none fresh.
    pub(crate) async fn header(&self) -> Result<Option<HeaderValue>, FhirError> {
        match self {
            Authorizer::None => Ok(None),
            Authorizer::Static(h) => Ok(Some(h.clone())),
            Authorizer::Token(source) => source.header().await.map(Some),
        }
    }

    /// The server answered 401 to a request sent with `used`: forget that
    /// token. True when a retry with a new token may help.
    pub(crate) async fn rejected(&self, used: Option<&HeaderValue>) -> bool {
        match (self, used) {
            (Authorizer::Token(source), Some(used)) => {
                source.discard(used).await;
                true
            }
            _ => false,
        }
    }
}

fn sensitive_header(value: &str) -> Option<HeaderValue> {
    let mut h = HeaderValue::from_str(value).ok()?;
    h.set_sensitive(true);
    Some(h)
}

enum Grant {
    ClientCredentials {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        client_auth: ClientAuthMethod,
        scopes: String,
    },
    SmartBackend {
        client_id: String,
        token_url: Option<Url>,
        algorithm: Algorithm,
        kid: String,
        key: Box<EncodingKey>,
        scopes: String,
        assertion_lifetime: Duration,
    },
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ClientCredentials { token_url, client_id, client_auth, .. } => f
                .debug_struct("ClientCredentials")
                .field("token_url", &token_url.as_str())
                .field("client_id", client_id)
                .field("client_auth", client_auth)
                .finish_non_exhaustive(),
            Grant::SmartBackend { client_id, token_url, algorithm, kid, .. } => f
                .debug_struct("SmartBackend")
                .field("client_id", client_id)
                .field("token_url", &token_url.as_ref().map(Url::as_str))
                .field("algorithm", algorithm)
                .field("kid", kid)
                .finish_non_exhaustive(),
        }
    }
}

/// A cached access token.
struct CachedToken {
    header: HeaderValue,
    /// When to stop using it (expiry minus the refresh margin); `None` when
    /// the server gave no `expires_in`: used until a 401.
    refresh_at: Option<Instant>,
}

/// Fetches and caches the access tokens of one server.
pub(crate) struct TokenSource {
    server: String,
    http: reqwest::Client,
    base_url: Url,
    grant: Grant,
    refresh_before: Duration,
    cache: Mutex<Option<CachedToken>>,
    /// The SMART token endpoint, discovered once.
    discovered_token_url: OnceCell<Url>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource").field("server", &self.server).field("grant", &self.grant).finish_non_exhaustive()
    }
}

/// The JWT claims of a SMART Backend Services client assertion.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AssertionClaims {
    /// The client id.
    pub(crate) iss: String,
    /// The client id again.
    pub(crate) sub: String,
    /// The token endpoint URL.
    pub(crate) aud: String,
    /// Expiry, seconds since the epoch; at most five minutes ahead.
    pub(crate) exp: u64,
    /// A fresh random id, so the server can refuse a replayed assertion.
    pub(crate) jti: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

impl TokenSource {
    fn new(server: &str, http: reqwest::Client, base_url: Url, grant: Grant, refresh_before: Duration) -> TokenSource {
        TokenSource {
            server: server.to_owned(),
            http,
            base_url,
            grant,
            refresh_before,
            cache: Mutex::new(None),
            discovered_token_url: OnceCell::new(),
        }
    }

    async fn header(&self) -> Result<HeaderValue, FhirError> {
        // Held across the fetch on purpose: see the module docs.
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.as_ref()
            && token.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.header.clone());
        }
        let token = self.fetch().await?;
        let header = token.header.clone();
        *cache = Some(token);
        Ok(header)
    }

    async fn discard(&self, used: &HeaderValue) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|t| t.header == used) {
            *cache = None;
        }
    }

    fn auth_error(&self, reason: String, status: Option<u16>, transient: bool) -> FhirError {
        FhirError::Auth { server: self.server.clone(), reason, status, transient }
    }

    async fn fetch(&self) -> Result<CachedToken, FhirError> {
        let (token_url, form): (Url, Vec<(&str, String)>) = match &self.grant {
            Grant::ClientCredentials { token_url, client_id, client_secret, client_auth, scopes } => {
                let mut form = vec![("grant_type", "client_credentials".to_owned())];
                if !scopes.is_empty() {
                    form.push(("scope", scopes.clone()));
                }
                if *client_auth == ClientAuthMethod::ClientSecretPost {
                    form.push(("client_id", client_id.clone()));
                    form.push(("client_secret", client_secret.expose().to_owned()));
                }
                (token_url.clone(), form)
            }
            Grant::SmartBackend { scopes, .. } => {
                let token_url = self.smart_token_url().await?;
                let assertion = self.assertion(&token_url)?;
                let mut form = vec![("grant_type", "client_credentials".to_owned())];
                if !scopes.is_empty() {
                    form.push(("scope", scopes.clone()));
                }
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
                (token_url, form)
            }
        };
        let mut request = self.http.post(token_url).header(http::header::ACCEPT, "application/json").form(&form);
        if let Grant::ClientCredentials {
            client_id,
            client_secret,
            client_auth: ClientAuthMethod::ClientSecretBasic,
            ..
        } = &self.grant
        {
            // RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
            let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(client_id),
                encode(client_secret.expose())
            ));
            let header = sensitive_header(&format!("Basic {credentials}"))
                .ok_or_else(|| self.auth_error("client credentials not usable in a header".into(), None, false))?;
            request = request.header(http::header::AUTHORIZATION, header);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.auth_error(format!("token endpoint unreachable: {}", without_url(&e)), None, true))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            self.auth_error(format!("reading the token response: {}", without_url(&e)), Some(status), true)
        })?;
        if !(200..300).contains(&status) {
            // RFC 6749 §5.2 error response: error and error_description only.
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .map(|v| {
                    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    let (e, d) = (text("error"), text("error_description"));
                    if d.is_empty() { e } else { format!("{e}: {d}") }
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "no error detail".to_owned());
            let transient = status == 429 || status >= 500;
            return Err(self.auth_error(
                format!("token endpoint answered HTTP {status}: {detail}"),
                Some(status),
                transient,
            ));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| self.auth_error("token endpoint answer has no access_token".into(), Some(status), false))?;
        if let Some(kind) = &parsed.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(self.auth_error(
                format!("token endpoint issued a {kind} token; only Bearer is supported"),
                Some(status),
                false,
            ));
        }
        let header = sensitive_header(&format!("Bearer {}", parsed.access_token)).ok_or_else(|| {
            self.auth_error("the access token has characters not allowed in a header".into(), Some(status), false)
        })?;
        let expires_in = parsed
            .expires_in
            .as_ref()
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())));
        let refresh_at =
            expires_in.map(|secs| Instant::now() + usable_for(Duration::from_secs(secs), self.refresh_before));
        tracing::debug!(server = %self.server, expires_in, "obtained an access token");
        Ok(CachedToken { header, refresh_at })
    }

    async fn smart_token_url(&self) -> Result<Url, FhirError> {
        let Grant::SmartBackend { token_url, .. } = &self.grant else {
            return Err(self.auth_error("not a SMART grant".into(), None, false));
        };
        if let Some(url) = token_url {
            return Ok(url.clone());
        }
        self.discovered_token_url
            .get_or_try_init(|| async {
                let mut url = self.base_url.clone();
                url.path_segments_mut()
                    .map_err(|_| self.auth_error("base_url cannot have a path".into(), None, false))?
                    .pop_if_empty()
                    .extend([".well-known", "smart-configuration"]);
                let response =
                    self.http.get(url).header(http::header::ACCEPT, "application/json").send().await.map_err(|e| {
                        self.auth_error(format!("smart-configuration unreachable: {}", without_url(&e)), None, true)
                    })?;
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    return Err(self.auth_error(
                        format!("GET .well-known/smart-configuration answered HTTP {status}"),
                        Some(status),
                        status == 429 || status >= 500,
                    ));
                }
                let doc: Value = response
                    .json()
                    .await
                    .map_err(|_| self.auth_error("smart-configuration is not JSON".into(), Some(status), false))?;
                doc.get("token_endpoint").and_then(Value::as_str).and_then(|s| Url::parse(s).ok()).ok_or_else(|| {
                    self.auth_error("smart-configuration has no valid token_endpoint".into(), Some(status), false)
                })
            })
            .await
            .cloned()
    }

    fn assertion(&self, token_url: &Url) -> Result<String, FhirError> {
        let Grant::SmartBackend { client_id, algorithm, kid, key, assertion_lifetime, .. } = &self.grant else {
            return Err(self.auth_error("not a SMART grant".into(), None, false));
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = AssertionClaims {
            iss: client_id.clone(),
            sub: client_id.clone(),
            aud: token_url.as_str().to_owned(),
            exp: (now + *assertion_lifetime).as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(*algorithm);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| self.auth_error(format!("signing the client assertion: {e}"), None, false))
    }
}

/// How long a token that `expires_in` may be used: until `refresh_before`
/// its expiry, but never less than nine tenths of its lifetime. The margin
/// alone would make a token shorter-lived than it (a 30 s token with the
/// default 60 s margin) due at once, and then every request would fetch a
/// new one; a tenth of the lifetime still covers the request's travel time
/// and clock differences, and a token refused anyway gets the 401 refresh.
fn usable_for(expires_in: Duration, refresh_before: Duration) -> Duration {
    expires_in.saturating_sub(refresh_before.min(expires_in / 10))
}

/// A reqwest error's message without its URL (a token URL may carry a
/// tenant id; keep error text short and free of anything sensitive).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<token endpoint>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_margin_is_at_most_a_tenth_of_the_lifetime() {
        let secs = Duration::from_secs;
        assert_eq!(usable_for(secs(3600), secs(60)), secs(3540));
        assert_eq!(usable_for(secs(300), secs(60)), secs(270));
        assert_eq!(usable_for(secs(30), secs(60)), secs(27));
        assert_eq!(usable_for(secs(30), secs(0)), secs(30));
        assert_eq!(usable_for(secs(0), secs(60)), secs(0));
    }
}
