//! Configuration: one TOML file (`version = 1`), read raw with serde, then
//! compiled into typed, validated structs. Compiling collects every error
//! with its path before failing, and does no I/O (sockets, files and
//! databases are opened later by each component's `build`).
//!
//! # How a file is compiled
//!
//! 1. The text is parsed into a TOML tree (a syntax error stops here, with
//!    its line and column).
//! 2. `${VAR}` references in every string are expanded from the environment
//!    ([`env`]); an unset variable is an error at the path that uses it.
//! 3. The tree is cut into components (the store table, each channel's
//!    source, each filter expression, each transform step, each
//!    destination) and each is deserialised on its own, so the errors of one
//!    do not hide those of the next ([`de`]). Every struct denies unknown
//!    fields: a misspelt option is an error, not a silent default.
//! 4. Cross-checks run on the typed values: names, duplicate listen
//!    addresses, channel destinations that name no channel, filters and
//!    transforms compiled by their modules.
//!
//! ```
//! let config = engine::config::Config::from_toml_str(r#"
//!     version = 1
//!     [channels.adt-in.source]
//!     type = "mllp"
//!     listen = "127.0.0.1:2575"
//!     [[channels.adt-in.destinations]]
//!     name = "archive"
//!     type = "file"
//!     directory = "out"
//! "#).unwrap();
//! assert_eq!(config.channels[0].name, "adt-in");
//! ```
//!
//! Relative paths in the file (the SQLite database, TLS files, output
//! folders) are relative to the folder of the config file, so a config
//! behaves the same whatever the working directory of the process.

mod channel;
pub mod de;
mod env;
mod error;
mod operations;
mod units;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use channel::{
    AckMode, ChannelConfig, ContentKind, DestinationEntry, OnFailure, OrderKey, RetryConfig, ValidationPolicy,
    fhir_patient_ids, fhir_patient_key,
};
pub use error::{ConfigError, ConfigErrors};
pub use operations::{AlertCondition, AlertRule, HealthConfig, RetentionConfig, RetentionSchedule};
pub use units::{ByteSize, Duration};

use de::PathBuf as CfgPath;

/// The only configuration format version this build reads.
pub const CONFIG_VERSION: i64 = 1;

/// A compiled, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The message store.
    pub store: StoreConfig,
    /// The HTTP listener: health checks, HTTP ingest, later the REST API.
    pub api: ApiConfig,
    /// Named FHIR servers (for FHIR destinations, polling and patient sync),
    /// by name: `[fhir_servers.<name>]`, read and validated by
    /// [`fhir::ServerConfig`].
    pub fhir_servers: BTreeMap<String, fhir::ServerConfig>,
    /// The channels, in file order.
    pub channels: Vec<ChannelConfig>,
    /// `[health]`: the health states' window and the watch interval.
    pub health: HealthConfig,
    /// `[[alerts]]`: alert rules, in file order.
    pub alerts: Vec<AlertRule>,
    /// `[retention]`: scheduled retention, off when absent.
    pub retention: Option<RetentionConfig>,
    /// The folder relative paths are resolved against: the config file's
    /// folder (`.` when compiled from a string).
    pub base_dir: PathBuf,
}

/// `[store]`: where messages and queues live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://plexus-data/plexus.db` (the default; the file and its folder
    /// are created), `postgres://user:${PGPASSWORD}@host/db` or
    /// `mysql://user:${MYSQL_PASSWORD}@host/db`. A relative SQLite path is
    /// relative to the config file's folder.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// SQLite only: `full` (the default: every acknowledged message survives
    /// a power cut) or `normal` (survives a process crash; faster).
    #[serde(default)]
    pub synchronous: Synchronous,
    /// How long a sender's control id (MSH-10) is remembered: a message with
    /// the same channel, sender (MSH-3/MSH-4) and control id within this
    /// window gets the original ACK back and is not processed again.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// Database connections for workers and reads (the writer has its own).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

/// SQLite's durability setting, see [`StoreConfig::synchronous`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync at every commit.
    #[default]
    Full,
    /// fsync at WAL checkpoints only.
    Normal,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            synchronous: Synchronous::Full,
            duplicate_window: default_duplicate_window(),
            pool_size: default_pool_size(),
        }
    }
}

impl StoreConfig {
    /// The URL's scheme (`sqlite`, `postgres`, `mysql`), for logs: the URL
    /// itself may carry a password.
    pub fn backend_name(&self) -> &str {
        self.url.split_once("://").map(|(s, _)| s).unwrap_or("?")
    }

    /// The URL to open, with a relative SQLite path resolved against
    /// `base_dir`.
    pub fn resolved_url(&self, base_dir: &Path) -> String {
        match self.url.strip_prefix("sqlite://") {
            Some(rest) => {
                let (path, query) = match rest.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (rest, None),
                };
                if path.is_empty() || path == ":memory:" || Path::new(path).is_absolute() {
                    return self.url.clone();
                }
                let full = base_dir.join(path);
                match query {
                    Some(q) => format!("sqlite://{}?{q}", full.display()),
                    None => format!("sqlite://{}", full.display()),
                }
            }
            None => self.url.clone(),
        }
    }

    fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("sqlite") => {
                if self.url.len() <= "sqlite://".len() {
                    errors.push(path.key("url").to_string(), "sqlite:// needs a file path");
                }
            }
            Some("postgres" | "postgresql" | "mysql" | "mariadb") => {
                if url::Url::parse(&self.url).is_err() {
                    errors.push(path.key("url").to_string(), "not a valid database URL");
                }
            }
            // The URL may hold a password: never echo it.
            _ => errors.push(path.key("url").to_string(), "must start with sqlite://, postgres:// or mysql://"),
        }
        if self.pool_size == 0 {
            errors.push(path.key("pool_size").to_string(), "must be at least 1");
        }
    }
}

fn default_store_url() -> String {
    "sqlite://plexus-data/plexus.db".to_string()
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_pool_size() -> u32 {
    8
}

/// `[api]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port, `127.0.0.1:8080` by default. It serves `/healthz`,
    /// `/readyz` and `POST /channels/{name}/messages` for `http` sources.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Serve `/metrics` without a token (for a Prometheus on a trusted
    /// network); by default it needs a token with scope `metrics`.
    #[serde(default)]
    pub metrics_public: bool,
    /// `token` (the default): `/api` routes need an API token with the
    /// route's scope (`plexus token create`); `none`: no checks, for a
    /// listener only trusted clients can reach.
    #[serde(default)]
    pub auth: ApiAuth,
    /// HTTPS on the API listener: `tls = { cert_file = "...", key_file =
    /// "..." }` (the same keys as an MLLP source's `tls`).
    #[serde(default)]
    pub tls: Option<crate::sources::tls::TlsServerConfig>,
}

/// See [`ApiConfig::auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiAuth {
    /// API tokens with scopes.
    #[default]
    Token,
    /// Everyone is let in (recorded as `anonymous` in audit events).
    None,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: default_api_listen(), metrics_public: false, auth: ApiAuth::Token, tls: None }
    }
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

impl Config {
    /// Compiles a configuration from its text, expanding `${VAR}` from the
    /// process environment. Relative paths will resolve against `.`.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_toml_str_with_env(text, &|name| std::env::var(name).ok())
    }

    /// As [`from_toml_str`](Self::from_toml_str), reading variables through
    /// `lookup` instead of the process environment.
    pub fn from_toml_str_with_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        Self::compile_text(text, lookup, None)
    }

    /// The compiler. `base_dir` is the config file's folder when there is a
    /// file: JavaScript steps' script files are then read relative to it.
    fn compile_text(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        base_dir: Option<&Path>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                errors.push("(syntax)", e.to_string().trim_end().to_string());
                return Err(errors);
            }
        };
        let mut root = toml::Value::Table(table);
        env::expand_tree(&mut root, &mut Vec::new(), lookup, &mut errors);
        let toml::Value::Table(table) = root else { unreachable!("the root stays a table") };
        let mut config = compile(table, base_dir, &mut errors);
        if let Some(dir) = base_dir {
            config.base_dir = dir.to_path_buf();
        }
        errors.into_result(config)
    }

    /// Reads and compiles the file at `path`; relative paths in it resolve
    /// against its folder, and JavaScript steps' script files are read from
    /// there too (the only I/O besides reading the file itself).
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.to_path_buf(), error })?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::compile_text(&text, &|name| std::env::var(name).ok(), Some(&base_dir)).map_err(LoadError::Invalid)
    }

    /// A channel by name.
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// `path` as given when absolute, else relative to the config's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir.join(path) }
    }
}

/// A one-paragraph description of what the config sets up, for
/// `plexus check` and the start-up log (no secrets: the store is named by
/// its backend only).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "store: {} (duplicate window {}); api: http://{}",
            self.store.backend_name(),
            self.store.duplicate_window,
            self.api.listen
        )?;
        if !self.fhir_servers.is_empty() {
            let names: Vec<&str> = self.fhir_servers.keys().map(String::as_str).collect();
            writeln!(f, "fhir servers: {}", names.join(", "))?;
        }
        writeln!(f, "{} channel(s):", self.channels.len())?;
        for c in &self.channels {
            let dests: Vec<String> =
                c.destinations.iter().map(|d| format!("{} ({})", d.name, d.connector.kind())).collect();
            writeln!(
                f,
                "  {}{}: {} -> {}",
                c.name,
                if c.enabled { "" } else { " (disabled)" },
                c.source.describe(),
                if dests.is_empty() { "no destination".to_string() } else { dests.join(", ") }
            )?;
        }
        Ok(())
    }
}

fn compile(mut table: toml::Table, base_dir: Option<&Path>, errors: &mut ConfigErrors) -> Config {
    let root = CfgPath::root();
    match table.remove("version") {
        Some(toml::Value::Integer(CONFIG_VERSION)) => {}
        Some(toml::Value::Integer(v)) => {
            errors.push("version", format!("version {v} is not supported (this build reads version 1)"))
        }
        Some(other) => errors.push("version", format!("must be the integer 1, found {}", de::type_name(&other))),
        None => errors.push("version", "required: write `version = 1` at the top of the file"),
    }

    let store = match table.remove("store") {
        Some(v) => de::component::<StoreConfig>(v, &root.key("store"), errors).unwrap_or_default(),
        None => StoreConfig::default(),
    };
    store.validate(&root.key("store"), errors);

    let api = match table.remove("api") {
        Some(v) => de::component::<ApiConfig>(v, &root.key("api"), errors).unwrap_or_default(),
        None => ApiConfig::default(),
    };
    if let Some(tls) = &api.tls {
        tls.validate(&root.key("api").key("tls"), errors);
    }

    let mut fhir_servers = BTreeMap::new();
    match table.remove("fhir_servers") {
        Some(toml::Value::Table(servers)) => {
            for (name, value) in servers {
                let path = root.key("fhir_servers").key(&name);
                if let Some(server) = de::component::<fhir::ServerConfig>(value, &path, errors) {
                    for problem in server.validate() {
                        errors.push(format!("{path}.{}", problem.path), problem.message);
                    }
                    fhir_servers.insert(name, server);
                }
            }
        }
        Some(other) => errors.push("fhir_servers", format!("must be a table, found {}", de::type_name(&other))),
        None => {}
    }

    let mut channels = Vec::new();
    match table.remove("channels") {
        Some(toml::Value::Table(raw)) => {
            for (name, value) in raw {
                if let Some(c) = channel::compile(name, value, base_dir, errors) {
                    channels.push(c);
                }
            }
        }
        Some(other) => errors.push(
            "channels",
            format!("must be a table of channels ([channels.NAME]), found {}", de::type_name(&other)),
        ),
        None => {}
    }

    let health = match table.remove("health") {
        Some(v) => de::component::<HealthConfig>(v, &root.key("health"), errors).unwrap_or_default(),
        None => HealthConfig::default(),
    };
    let alerts = table.remove("alerts").map(|v| operations::compile_alerts(v, &channels, errors)).unwrap_or_default();
    let retention = table.remove("retention").and_then(|v| operations::compile_retention(v, errors));

    for key in table.keys() {
        errors.push(
            root.key(key).to_string(),
            "unknown field, expected one of `version`, `store`, `api`, `fhir_servers`, `channels`, `health`, `alerts`, `retention`",
        );
    }

    cross_check(&api, &channels, errors);
    crate::sources::send_to_ehr::cross_check(&fhir_servers, &channels, errors);
    crate::sources::fhir_poll::cross_check(&fhir_servers, &channels, errors);
    crate::destinations::fhir::resolve_servers(&fhir_servers, &mut channels, errors);
    crate::sources::notification::cross_check(&mut channels, base_dir, errors);
    Config { store, api, fhir_servers, channels, health, alerts, retention, base_dir: PathBuf::from(".") }
}

/// Checks that need several components at once.
fn cross_check(api: &ApiConfig, channels: &[ChannelConfig], errors: &mut ConfigErrors) {
    // Two listeners on one address would fail at start-up; say so now, with
    // both paths.
    let mut listeners: HashMap<SocketAddr, String> = HashMap::new();
    listeners.insert(api.listen, "api.listen".to_string());
    for c in channels {
        // Port 0 asks the system for a free port: never a clash.
        if let Some(addr) = c.source.own_listener().filter(|a| a.port() != 0) {
            let path = format!("{}.source.listen", c.path());
            if let Some(other) = listeners.get(&addr) {
                errors.push(path, format!("{addr} is already used by {other}"));
            } else {
                listeners.insert(addr, path);
            }
        }
    }
    for c in channels {
        for (i, d) in c.destinations.iter().enumerate() {
            if let Some(target) = d.injects_into() {
                let path = format!("{}.destination[{i}].channel", c.path());
                match channels.iter().find(|t| t.name == target) {
                    None => errors.push(path, format!("no channel is named {target:?}")),
                    Some(t) if t.name == c.name => errors.push(path, "a channel cannot deliver into itself"),
                    Some(t) if c.enabled && !t.enabled => {
                        errors.push(path, format!("channel {target:?} is disabled (enabled = false)"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
