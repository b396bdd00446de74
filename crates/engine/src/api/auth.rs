//! API tokens and scopes: who may call `/api`.
//!
//! A token is `plx_<id>_<secret>`: `<id>` (16 hex digits) is public and names
//! the stored record, `<secret>` is 32 random bytes in hex. The store keeps
//! only the SHA-256 of the secret; because the secret is high-entropy, a plain
//! hash is as good as a slow password hash here and costs microseconds per
//! request. The comparison is constant-time (`subtle`).
//!
//! Callers send `Authorization: Bearer plx_...`. [`Auth::authorize`] answers
//! [`AuthError::Missing`] (no header) or [`AuthError::Invalid`] (malformed,
//! unknown, wrong secret, revoked, expired; all alike, so a caller learns
//! nothing about which tokens exist) as 401, and [`AuthError::Forbidden`] as
//! 403 when the token lacks the scope.
//!
//! # Cache and `last_used_at`
//!
//! Token records are cached for [`CACHE_TTL`] so a busy dashboard does not
//! read the store on every request: a revoked token stops working within that
//! time. The secret is still checked against the cached hash on every request.
//! `last_used_at` is written at most once per [`TOUCH_INTERVAL`] per token, in
//! the background, so that requests never wait for a write.
//!
//! # Use on routes
//!
//! [`require`] is a layer for `Router::route_layer`: it authorizes each
//! request for one scope, answers a JSON problem when refused, and otherwise
//! puts the [`Caller`] into the request's extensions (`Extension<Caller>`),
//! whose `token_name` audit events record.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use store::{ApiToken, NewApiToken, Store, StoreError};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};
use tracing::{debug, warn};

use super::problem::Problem;

/// How long a token record is trusted without reading the store again: the
/// longest a revoked token keeps working.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// How often `last_used_at` is written per token at most.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Cached records kept at most; the cache is emptied when full (only valid
/// tokens are cached, so this bounds memory, not correctness).
const CACHE_MAX: usize = 1024;

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "plx_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Search messages, read their contents, list dead letters (reads of
    /// contents are audited).
    MessagesRead,
    /// Replay messages.
    MessagesReplay,
    /// List channels with counts, start and stop them.
    ChannelsAdmin,
    /// Patient sync jobs.
    Sync,
    /// FHIR `CommunicationRequest` submissions (send to EHR).
    SendToEhr,
    /// Prometheus metrics.
    Metrics,
}

impl Scope {
    /// Every scope, in a stable order (`--scopes all`).
    pub const ALL: [Scope; 6] = [
        Scope::MessagesRead,
        Scope::MessagesReplay,
        Scope::ChannelsAdmin,
        Scope::Sync,
        Scope::SendToEhr,
        Scope::Metrics,
    ];

    /// The scope's name as written in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MessagesRead => "messages:read",
            Scope::MessagesReplay => "messages:replay",
            Scope::ChannelsAdmin => "channels:admin",
            Scope::Sync => "sync",
            Scope::SendToEhr => "SEND_TO_EHR",
            Scope::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}, expected one of messages:read, messages:replay, channels:admin, sync, SEND_TO_EHR, metrics"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// Parses a comma-separated scope list; `all` means every scope. Duplicates
/// are dropped; the result is sorted.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, UnknownScope> {
    let mut scopes = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            scopes.extend(Scope::ALL);
        } else {
            scopes.push(name.parse()?);
        }
    }
    if scopes.is_empty() {
        return Err(UnknownScope(String::new()));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Who is calling: the token that authorized the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; what audit events record as the actor.
    pub token_name: String,
    /// The token's public id (empty when authentication is off).
    pub token_id: String,
}

/// The actor recorded when `api.auth = "none"`.
pub const ANONYMOUS: &str = "anonymous";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("an API token is required (Authorization: Bearer plx_...)")]
    Missing,
    /// A malformed, unknown, revoked or expired token, or a wrong secret.
    #[error("the API token is invalid, revoked or expired")]
    Invalid,
    /// A valid token without the scope.
    #[error("the API token lacks the scope {scope}")]
    Forbidden {
        /// The scope the route needs.
        scope: Scope,
    },
    /// The token store could not be read; nothing is known about the token.
    #[error("the token store is unavailable, try again")]
    Unavailable,
}

impl AuthError {
    /// 401 (missing, invalid), 403 (forbidden), 503 (unavailable).
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON problem answered for this refusal, with the RFC 6750
    /// `WWW-Authenticate` challenge on 401 and 403.
    pub fn problem(&self) -> Problem {
        let (kind, title, challenge) = match self {
            AuthError::Missing => ("unauthorized", "Unauthorized", Some("Bearer realm=\"plexus\"".to_owned())),
            AuthError::Invalid => {
                ("unauthorized", "Unauthorized", Some("Bearer realm=\"plexus\", error=\"invalid_token\"".to_owned()))
            }
            AuthError::Forbidden { scope } => (
                "forbidden",
                "Forbidden",
                Some(format!("Bearer realm=\"plexus\", error=\"insufficient_scope\", scope=\"{scope}\"")),
            ),
            AuthError::Unavailable => ("unavailable", "Service unavailable", None),
        };
        let problem = Problem::new(self.status(), kind, title, self.to_string());
        match challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            Some(value) => problem.with_header(header::WWW_AUTHENTICATE, value),
            None => problem,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

/// Checks API tokens. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Auth {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    token: ApiToken,
    fetched: Instant,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("enabled", &self.inner.is_some()).finish_non_exhaustive()
    }
}

impl Auth {
    /// Checks tokens against `store`.
    pub fn new(store: Arc<dyn Store>) -> Auth {
        Auth { inner: Some(Arc::new(Inner { store, cache: Mutex::new(HashMap::new()) })) }
    }

    /// Lets every request in as [`ANONYMOUS`] (`api.auth = "none"`, tests).
    pub fn disabled() -> Auth {
        Auth { inner: None }
    }

    /// Whether tokens are checked.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The caller of a request needing `scope`, or why it is refused.
    pub async fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, AuthError> {
        let Some(inner) = &self.inner else {
            return Ok(Caller { token_name: ANONYMOUS.to_owned(), token_id: String::new() });
        };
        let value = headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
        let presented = bearer(value).and_then(parse_token).ok_or(AuthError::Invalid)?;
        let token = inner.lookup(presented.id).await?;
        let hash = Sha256::digest(presented.secret.as_bytes());
        if !bool::from(hash.as_slice().ct_eq(&token.secret_sha256)) {
            return Err(AuthError::Invalid);
        }
        let now = Utc::now();
        if !token.is_active(now) {
            return Err(AuthError::Invalid);
        }
        if !token.scopes.iter().any(|s| s == scope.as_str()) {
            return Err(AuthError::Forbidden { scope });
        }
        inner.touch(&token, now);
        Ok(Caller { token_name: token.name, token_id: token.id })
    }
}

impl Inner {
    /// The token cache. Its critical sections are single map operations,
    /// so a panic elsewhere while it was held cannot leave it inconsistent;
    /// a poisoned lock is used rather than failing every later request.
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token's record, from the cache while fresh.
    async fn lookup(&self, id: &str) -> Result<ApiToken, AuthError> {
        if let Some(c) = self.cache().get(id)
            && c.fetched.elapsed() < CACHE_TTL
        {
            return Ok(c.token.clone());
        }
        let token = match self.store.api_token(id).await {
            Ok(Some(token)) => token,
            Ok(None) => return Err(AuthError::Invalid),
            Err(e) => {
                warn!(error = %e.summary(), "api: cannot read API tokens");
                return Err(AuthError::Unavailable);
            }
        };
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), Cached { token: token.clone(), fetched: Instant::now() });
        Ok(token)
    }

    /// Records the use in the background when the stored `last_used_at` is
    /// older than [`TOUCH_INTERVAL`]; the cached copy is updated at once so
    /// later requests do not write again.
    fn touch(&self, token: &ApiToken, now: DateTime<Utc>) {
        let interval = chrono::Duration::from_std(TOUCH_INTERVAL).unwrap_or_default();
        if token.last_used_at.is_some_and(|at| now - at < interval) {
            return;
        }
        if let Some(c) = self.cache().get_mut(&token.id) {
            c.token.last_used_at = Some(now);
        }
        let store = Arc::clone(&self.store);
        let id = token.id.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_token(&id, now).await {
                debug!(error = %e.summary(), "api: cannot record a token's last use");
            }
        });
    }
}

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The two parts of a presented token.
#[derive(Debug, PartialEq, Eq)]
struct Presented<'a> {
    id: &'a str,
    secret: &'a str,
}

/// Splits `plx_<id>_<secret>`; `None` if it is not shaped like a token.
fn parse_token(token: &str) -> Option<Presented<'_>> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX_LEN) && hex(secret, SECRET_BYTES * 2)).then_some(Presented { id, secret })
}

/// Random bytes of a token's id.
const ID_BYTES: usize = 8;
const ID_HEX_LEN: usize = ID_BYTES * 2;
/// Random bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// A token just created: the only time its full text exists.
pub struct IssuedToken {
    /// The stored record.
    pub token: ApiToken,
    /// `plx_<id>_<secret>`, to hand to the user once.
    pub bearer: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken").field("token", &self.token).field("bearer", &"<redacted>").finish()
    }
}

/// Creates a token named `name` with `scopes` in `store`. The secret comes
/// from the operating system's CSPRNG (via `rand`'s thread RNG, reseeded
/// from it) and is returned once; only its hash is stored.
pub async fn issue_token(
    store: &dyn Store,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedToken, StoreError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let new = NewApiToken {
        id: id.clone(),
        name: name.to_owned(),
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        expires_at,
    };
    let token = store.create_api_token(new).await?;
    Ok(IssuedToken { token, bearer: format!("{TOKEN_PREFIX}{id}_{secret}") })
}

/// A layer for `Router::route_layer` that lets a request through only with
/// a token holding `scope`, and hands the [`Caller`] to the handler as an
/// extension.
pub fn require(auth: Auth, scope: Scope) -> RequireScope {
    RequireScope { auth, scope }
}

/// See [`require`].
#[derive(Debug, Clone)]
pub struct RequireScope {
    auth: Auth,
    scope: Scope,
}

impl<S> Layer<S> for RequireScope {
    type Service = RequireScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService { inner, auth: self.auth.clone(), scope: self.scope }
    }
}

/// The service [`RequireScope`] wraps around a route.
#[derive(Debug, Clone)]
pub struct RequireScopeService<S> {
    inner: S,
    auth: Auth,
    scope: Scope,
}

impl<S> Service<Request> for RequireScopeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (auth, scope) = (self.auth.clone(), self.scope);
        Box::pin(async move {
            match auth.authorize(request.headers(), scope).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(refused) => Ok(refused.into_response()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_all_expands() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert_eq!(scope.to_string(), scope.as_str());
        }
        assert_eq!(parse_scopes("all").unwrap(), Scope::ALL.to_vec());
        assert_eq!(parse_scopes("metrics, messages:read,metrics").unwrap(), [Scope::MessagesRead, Scope::Metrics]);
        assert_eq!(parse_scopes("messages:write"), Err(UnknownScope("messages:write".into())));
        assert!(parse_scopes(" , ").is_err());
        // Scope names are exact: the EHR scope is upper case by convention.
        assert!("send_to_ehr".parse::<Scope>().is_err());
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        let good = format!("plx_{id}_{secret}");
        assert_eq!(parse_token(&good), Some(Presented { id, secret: &secret }));
        for bad in [
            format!("plx_{id}{secret}"),
            format!("pl_{id}_{secret}"),
            format!("plx_{id}_{}", &secret[1..]),
            format!("plx_{id}x_{secret}"),
            format!("plx_{id}_{secret}00"),
            format!("plx_{id}_{}zz", &secret[2..]),
            String::new(),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(&HeaderValue::from_static("bearer abc")), Some("abc"));
        assert_eq!(bearer(&HeaderValue::from_static("Bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer")), None);
    }

    #[test]
    fn refusals_carry_status_and_challenge() {
        assert_eq!(AuthError::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthError::Invalid.status(), StatusCode::UNAUTHORIZED);
        let forbidden = AuthError::Forbidden { scope: Scope::MessagesReplay };
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        let response = forbidden.into_response();
        assert_eq!(response.headers()[header::CONTENT_TYPE], super::super::problem::PROBLEM_JSON);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("insufficient_scope") && challenge.contains("messages:replay"), "{challenge}");
    }

    #[test]
    fn issued_token_debug_hides_the_secret() {
        let token = ApiToken {
            id: "0123456789abcdef".into(),
            name: "ci".into(),
            secret_sha256: vec![0; 32],
            scopes: vec!["metrics".into()],
            created_at: Utc::now(),
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
        };
        let issued = IssuedToken { token, bearer: "plx_0123456789abcdef_deadbeef".into() };
        assert!(!format!("{issued:?}").contains("deadbeef"));
    }
}
