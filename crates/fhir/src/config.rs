//! Configuration of one FHIR server: `[fhir_servers.<name>]` in the engine's
//! config file.
//!
//! Parsing does no I/O and reads no environment: secrets are named, not
//! written. A config holds the *name* of the environment variable that holds
//! each secret (`password_env`, `token_env`, `client_secret_env`,
//! `private_key_env`) or, for a private key, the path of a PEM file
//! (`private_key_file`). They are read when the client is built
//! ([`FhirClient::new`](crate::FhirClient::new)), so a config file can be
//! checked, committed and shared without any secret in it.
//!
//! ```toml
//! [fhir_servers.ehr]
//! base_url = "https://ehr.example.org/fhir/R4"
//! request_timeout_secs = 30
//!
//! [fhir_servers.ehr.auth]
//! type = "smart_backend"
//! client_id = "plexus"
//! algorithm = "RS384"
//! kid = "plexus-2026"
//! private_key_env = "EHR_PRIVATE_KEY"
//! scopes = ["system/Patient.read", "system/Observation.read"]
//!
//! [fhir_servers.crm]
//! base_url = "https://crm.example.org/fhir"
//! auth = { type = "client_credentials", token_url = "https://crm.example.org/oauth/token",
//!          client_id = "plexus", client_secret_env = "CRM_CLIENT_SECRET" }
//! ```
//!
//! [`ServerConfig::validate`] reports every problem at once, each with its
//! path inside the table, so the engine's `plexus check` can print them all.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

/// One FHIR R4 server: where it is, how to authenticate, how patient the
/// client is with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The service base URL, e.g. `https://ehr.example.org/fhir/R4` (a
    /// trailing slash is optional). Only `http` and `https` are accepted.
    pub base_url: Url,

    /// How to authenticate. Default: no authentication.
    #[serde(default)]
    pub auth: AuthConfig,

    /// Seconds to wait for a TCP/TLS connection. Default 10.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,

    /// Seconds to wait for a whole answer to one request (one attempt).
    /// Default 60: a transaction Bundle of a few hundred resources can take
    /// a while on a busy EHR.
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Retries of failed requests.
    #[serde(default)]
    pub retry: RetryConfig,

    /// `_count` sent with searches: results per page. Default 200.
    #[serde(default = "defaults::page_size")]
    pub page_size: u32,

    /// The most entries put in one batch Bundle (the sync's reads and
    /// look-ups); larger sets are split. Default 500.
    #[serde(default = "defaults::max_batch_entries")]
    pub max_batch_entries: usize,

    /// Whether to write with transaction Bundles (default true). When the
    /// server rejects a transaction the sync falls back to one request per
    /// resource anyway; set false for servers known to lack transactions to
    /// save the attempt.
    #[serde(default = "defaults::yes")]
    pub transactions: bool,

    /// Whether to use batch Bundles for reads and look-ups (default true;
    /// the client falls back to single requests when a server rejects them).
    #[serde(default = "defaults::yes")]
    pub batches: bool,
}

/// How often and how patiently to retry a failed request.
///
/// Retried: 429, 502, 503, 504 and timeouts/connection failures. Requests
/// that are not idempotent (a plain create) are retried only on 429 and 503,
/// where the server says it did not process them, and on connection failures
/// before anything was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt. Default 3; 0 disables retries.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// The first backoff in milliseconds, doubled at each retry, with up to
    /// 25 % random jitter. Default 500.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest backoff in milliseconds. Default 30000.
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// The longest `Retry-After` honoured, in seconds. A server asking for a
    /// longer wait gets no retry: the error goes back to the caller (a
    /// transient one, so a job can be rescheduled). Default 120.
    #[serde(default = "defaults::max_retry_after_secs")]
    pub max_retry_after_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: defaults::max_retries(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_retry_after_secs: defaults::max_retry_after_secs(),
        }
    }
}

/// How the client authenticates to one server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No `Authorization` header.
    #[default]
    None,

    /// HTTP Basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The environment variable holding the password.
        password_env: String,
    },

    /// A static bearer token (a long-lived API key).
    Bearer {
        /// The environment variable holding the token.
        token_env: String,
    },

    /// OAuth 2.0 client credentials grant (RFC 6749 §4.4): the client gets a
    /// token from `token_url` with its id and secret, caches it, refreshes it
    /// before it expires and when the server answers 401.
    ClientCredentials {
        /// The token endpoint.
        token_url: Url,
        /// The client id.
        client_id: String,
        /// The environment variable holding the client secret.
        client_secret_env: String,
        /// How the secret is sent: `client_secret_basic` (an Authorization
        /// header, the default) or `client_secret_post` (form fields).
        #[serde(default)]
        client_auth: ClientAuthMethod,
        /// Scopes requested, sent space-separated. Default: none (the
        /// server's default scopes).
        #[serde(default)]
        scopes: Vec<String>,
        /// Refresh the token this many seconds before it expires, but at
        /// most a tenth of its lifetime before (a token living 30 s is used
        /// for 27 s, not fetched anew for every request). Default 60.
        #[serde(default = "defaults::refresh_before_expiry_secs")]
        refresh_before_expiry_secs: u64,
    },

    /// SMART Backend Services (SMART App Launch 2.x, `private_key_jwt`): the
    /// client signs a short-lived JWT assertion with its private key and
    /// trades it for an access token.
    SmartBackend {
        /// The client id registered with the server (the JWT's `iss` and
        /// `sub`).
        client_id: String,
        /// The token endpoint. When absent it is read from
        /// `<base_url>/.well-known/smart-configuration` (`token_endpoint`)
        /// at the first token request.
        #[serde(default)]
        token_url: Option<Url>,
        /// Signing algorithm: `RS384` or `ES384`.
        algorithm: JwtAlgorithm,
        /// The key id (`kid` header) of the public key registered with the
        /// server (in its JWKS).
        kid: String,
        /// The environment variable holding the private key, PEM (PKCS#8;
        /// PKCS#1 also for RSA). Exactly one of `private_key_env` and
        /// `private_key_file` is required.
        #[serde(default)]
        private_key_env: Option<String>,
        /// A PEM file holding the private key (read when the client is
        /// built).
        #[serde(default)]
        private_key_file: Option<PathBuf>,
        /// Scopes requested, e.g. `system/*.read`.
        #[serde(default)]
        scopes: Vec<String>,
        /// Lifetime of each assertion in seconds (its `exp`); at most 300, as
        /// the SMART specification requires. Default 300.
        #[serde(default = "defaults::assertion_lifetime_secs")]
        assertion_lifetime_secs: u64,
        /// Refresh the token this many seconds before it expires, but at
        /// most a tenth of its lifetime before (a token living 30 s is used
        /// for 27 s, not fetched anew for every request). Default 60.
        #[serde(default = "defaults::refresh_before_expiry_secs")]
        refresh_before_expiry_secs: u64,
    },
}

/// How an OAuth client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` as form fields.
    ClientSecretPost,
}

/// The JWT signature algorithms SMART Backend Services requires servers to
/// support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// ECDSA on P-384 with SHA-384.
    ES384,
}

/// One problem found by [`ServerConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, relative to the server's table: `auth.kid`, `page_size`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The longest SMART client assertion lifetime the specification allows.
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

impl ServerConfig {
    /// A config with every default and no authentication.
    pub fn new(base_url: Url) -> ServerConfig {
        ServerConfig {
            base_url,
            auth: AuthConfig::None,
            connect_timeout_secs: defaults::connect_timeout_secs(),
            request_timeout_secs: defaults::request_timeout_secs(),
            retry: RetryConfig::default(),
            page_size: defaults::page_size(),
            max_batch_entries: defaults::max_batch_entries(),
            transactions: true,
            batches: true,
        }
    }

    /// Every problem serde cannot see (ranges, combinations), each with its
    /// path. Pure: reads no environment and no file.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: &str| {
            problems.push(ConfigProblem { path: path.to_owned(), message: message.to_owned() })
        };
        if !matches!(self.base_url.scheme(), "http" | "https") {
            problem("base_url", "must be an http or https URL");
        }
        if self.base_url.query().is_some() || self.base_url.fragment().is_some() {
            problem("base_url", "must not have a query or fragment");
        }
        if self.connect_timeout_secs == 0 {
            problem("connect_timeout_secs", "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            problem("request_timeout_secs", "must be at least 1");
        }
        if self.page_size == 0 {
            problem("page_size", "must be at least 1");
        }
        if self.max_batch_entries == 0 {
            problem("max_batch_entries", "must be at least 1");
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            problem("retry.initial_backoff_ms", "must not exceed retry.max_backoff_ms");
        }
        let env_name_ok = |name: &str| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match &self.auth {
            AuthConfig::None => {}
            AuthConfig::Basic { username, password_env } => {
                if username.is_empty() {
                    problem("auth.username", "must not be empty");
                }
                if !env_name_ok(password_env) {
                    problem("auth.password_env", "must be an environment variable name");
                }
            }
            AuthConfig::Bearer { token_env } => {
                if !env_name_ok(token_env) {
                    problem("auth.token_env", "must be an environment variable name");
                }
            }
            AuthConfig::ClientCredentials { token_url, client_id, client_secret_env, .. } => {
                if !matches!(token_url.scheme(), "http" | "https") {
                    problem("auth.token_url", "must be an http or https URL");
                }
                if client_id.is_empty() {
                    problem("auth.client_id", "must not be empty");
                }
                if !env_name_ok(client_secret_env) {
                    problem("auth.client_secret_env", "must be an environment variable name");
                }
            }
            AuthConfig::SmartBackend {
                client_id,
                token_url,
                kid,
                private_key_env,
                private_key_file,
                assertion_lifetime_secs,
                ..
            } => {
                if client_id.is_empty() {
                    problem("auth.client_id", "must not be empty");
                }
                if token_url.as_ref().is_some_and(|u| !matches!(u.scheme(), "http" | "https")) {
                    problem("auth.token_url", "must be an http or https URL");
                }
                if kid.is_empty() {
                    problem("auth.kid", "must not be empty");
                }
                match (private_key_env, private_key_file) {
                    (Some(_), Some(_)) | (None, None) => {
                        problem("auth", "needs exactly one of private_key_env and private_key_file")
                    }
                    (Some(env), None) if !env_name_ok(env) => {
                        problem("auth.private_key_env", "must be an environment variable name")
                    }
                    _ => {}
                }
                if *assertion_lifetime_secs == 0 || *assertion_lifetime_secs > MAX_ASSERTION_LIFETIME_SECS {
                    problem("auth.assertion_lifetime_secs", "must be between 1 and 300");
                }
            }
        }
        problems
    }
}

mod defaults {
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn request_timeout_secs() -> u64 {
        60
    }
    pub fn page_size() -> u32 {
        200
    }
    pub fn max_batch_entries() -> usize {
        500
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_retries() -> u32 {
        3
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        30_000
    }
    pub fn max_retry_after_secs() -> u64 {
        120
    }
    pub fn refresh_before_expiry_secs() -> u64 {
        60
    }
    pub fn assertion_lifetime_secs() -> u64 {
        super::MAX_ASSERTION_LIFETIME_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        fhir_servers: std::collections::BTreeMap<String, ServerConfig>,
    }

    fn parse(text: &str) -> Result<File, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn minimal_server_gets_defaults() {
        let f = parse("[fhir_servers.ehr]\nbase_url = \"http://127.0.0.1:8080/fhir/R4\"\n").expect("parses");
        let ehr = &f.fhir_servers["ehr"];
        assert_eq!(ehr.auth, AuthConfig::None);
        assert_eq!(ehr.retry.max_retries, 3);
        assert_eq!(ehr.page_size, 200);
        assert!(ehr.transactions);
        assert!(ehr.validate().is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        for doc in [
            "[fhir_servers.ehr]\nbase_url = \"http://x/\"\ncolour = 1\n",
            "[fhir_servers.ehr]\nbase_url = \"http://x/\"\nretry = { max = 1 }\n",
            "[fhir_servers.ehr]\nbase_url = \"http://x/\"\n\
             auth = { type = \"bearer\", token_env = \"T\", token = \"secret\" }\n",
        ] {
            assert!(parse(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn auth_variants_parse() {
        let f = parse(
            r#"
            [fhir_servers.a]
            base_url = "http://x/"
            auth = { type = "basic", username = "u", password_env = "P" }

            [fhir_servers.b]
            base_url = "http://x/"
            [fhir_servers.b.auth]
            type = "client_credentials"
            token_url = "http://x/token"
            client_id = "c"
            client_secret_env = "S"
            client_auth = "client_secret_post"
            scopes = ["system/*.read"]

            [fhir_servers.c]
            base_url = "http://x/"
            [fhir_servers.c.auth]
            type = "smart_backend"
            client_id = "c"
            algorithm = "ES384"
            kid = "k1"
            private_key_file = "/keys/k.pem"
            "#,
        )
        .expect("parses");
        assert!(matches!(
            &f.fhir_servers["b"].auth,
            AuthConfig::ClientCredentials { client_auth: ClientAuthMethod::ClientSecretPost, .. }
        ));
        assert!(matches!(
            &f.fhir_servers["c"].auth,
            AuthConfig::SmartBackend { algorithm: JwtAlgorithm::ES384, token_url: None, .. }
        ));
        for server in f.fhir_servers.values() {
            assert!(server.validate().is_empty(), "{:?}", server.validate());
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let mut config = ServerConfig::new(Url::parse("ftp://x/?q=1").expect("url"));
        config.page_size = 0;
        config.auth = AuthConfig::SmartBackend {
            client_id: String::new(),
            token_url: None,
            algorithm: JwtAlgorithm::RS384,
            kid: "k".into(),
            private_key_env: Some("A".into()),
            private_key_file: Some("/k.pem".into()),
            scopes: vec![],
            assertion_lifetime_secs: 301,
            refresh_before_expiry_secs: 60,
        };
        let paths: Vec<String> = config.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec!["base_url", "base_url", "page_size", "auth.client_id", "auth", "auth.assertion_lifetime_secs"]
        );
    }
}
