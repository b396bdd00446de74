//! Destinations: where a channel delivers (one file per connector).
//!
//! # Design
//!
//! Each connector follows the component model used across the engine:
//!
//! - a serde `XxxConfig` (`deny_unknown_fields`, every field documented),
//!   gathered in the closed enum [`DestinationConfig`] tagged by `type`;
//! - [`DestinationConfig::validate`] checks a config without any I/O and
//!   records every problem with its path, so `plexus check` prints them all;
//! - [`DestinationConfig::build`] does the I/O (reads TLS files, creates the
//!   output folder, builds HTTP clients) and returns a [`Destination`], the
//!   runtime, dispatched by `match`.
//!
//! A [`Destination`] is shared by every worker of its destination (it is
//! `Send + Sync`, `send` takes `&self`): the MLLP sender keeps a small pool
//! of connections, the HTTP sender one connection-pooling client.
//!
//! The worker hands each delivery over as an [`Outbound`] (the content after
//! filters and transforms, plus the metadata a file name or a template may
//! use) and gets either a [`DeliveryResponse`] (stored with the delivery) or a
//! [`DeliveryError`] whose [`ErrorClass`] tells the store what to do:
//! [`ErrorClass::Transient`] is retried with backoff, [`ErrorClass::Permanent`]
//! is dead-lettered at once. Retrying is the store's job: a destination makes
//! one delivery attempt per `send` (the MLLP sender's connection backoff
//! aside, see [`mllp`]), so the retry policy stays in one place.
//!
//! Every destination is at-least-once: a crash or a lost answer after the
//! receiver took the message leads to a second delivery. Receivers that
//! deduplicate on MSH-10 (as Plexus does) and file names built from stable
//! ids make that harmless.
//!
//! # Logging
//!
//! Destinations log message ids, channel and destination names, addresses,
//! and error kinds ([`DeliveryError::kind`]), never content. The `Display` of
//! a [`DeliveryError`] is the reason stored with a failed attempt and is
//! free of message content: the receiver's answer, which may echo patient
//! data (an ACK's MSA-3 text, an HTTP body), is kept apart, in
//! [`DeliveryError::to_store_response`].

pub mod channel;
pub mod fhir;
pub mod file;
pub mod http;
pub mod mllp;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::ConfigErrors;

pub use self::fhir::{ByIdentifier, FhirConfig, FhirDestination};
pub use channel::{ChannelConfig, ChannelDestination, ChannelInjector, InjectError, Injected, Injection};
pub use file::{FileConfig, FileDestination, IfExists};
pub use http::{HttpAuth, HttpConfig, HttpDestination, HttpMethod};
pub use mllp::{MllpConfig, MllpDestination, OnNak};

/// Configuration of one destination, tagged by `type` in the file:
///
/// ```toml
/// type = "mllp"
/// address = "10.1.2.3:2575"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationConfig {
    /// HL7 v2 over MLLP (TCP, optional TLS), waiting for each ACK.
    Mllp(MllpConfig),
    /// An HTTP request per message.
    Http(HttpConfig),
    /// One file per message in a folder, written atomically.
    File(FileConfig),
    /// Into another channel of this engine.
    Channel(ChannelConfig),
    /// A FHIR resource or Bundle to a FHIR R4 server.
    Fhir(FhirConfig),
}

impl DestinationConfig {
    /// The connector's name as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationConfig::Mllp(_) => "mllp",
            DestinationConfig::Http(_) => "http",
            DestinationConfig::File(_) => "file",
            DestinationConfig::Channel(_) => "channel",
            DestinationConfig::Fhir(_) => "fhir",
        }
    }

    /// Checks the configuration without any I/O, recording each problem in
    /// `errors` at `path` plus the field name (for example
    /// `channel "adt-in".destination[1].url`).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        match self {
            DestinationConfig::Mllp(c) => c.validate(path, errors),
            DestinationConfig::Http(c) => c.validate(path, errors),
            DestinationConfig::File(c) => c.validate(path, errors),
            DestinationConfig::Channel(c) => c.validate(path, errors),
            DestinationConfig::Fhir(c) => c.validate(path, errors),
        }
    }

    /// Builds the runtime: reads TLS files, creates the output folder,
    /// builds clients. Call [`validate`](Self::validate) first; `build`
    /// assumes a valid configuration and reports what only I/O can find.
    pub async fn build(&self, ctx: &BuildContext) -> Result<Destination, DestinationError> {
        Ok(match self {
            DestinationConfig::Mllp(c) => Destination::Mllp(Box::new(c.build(ctx)?)),
            DestinationConfig::Http(c) => Destination::Http(Box::new(c.build(ctx)?)),
            DestinationConfig::File(c) => Destination::File(c.build(ctx).await?),
            DestinationConfig::Channel(c) => Destination::Channel(c.build(ctx)?),
            DestinationConfig::Fhir(c) => Destination::Fhir(Box::new(c.build(ctx)?)),
        })
    }
}

/// What [`DestinationConfig::build`] needs from the runtime.
#[derive(Clone)]
pub struct BuildContext {
    /// The channel that owns the destination (for logs and file names).
    pub channel: String,
    /// The destination's name within its channel (for logs).
    pub destination: String,
    /// Relative paths in the configuration (TLS files, output folders)
    /// resolve against this folder, normally the config file's folder.
    pub base_dir: PathBuf,
    /// The runtime's ingest path, needed by `channel` destinations.
    pub injector: Option<Arc<dyn ChannelInjector>>,
}

impl BuildContext {
    /// A context for destination `destination` of channel `channel`, with
    /// paths relative to the current directory and no injector.
    pub fn new(channel: impl Into<String>, destination: impl Into<String>) -> Self {
        BuildContext {
            channel: channel.into(),
            destination: destination.into(),
            base_dir: PathBuf::from("."),
            injector: None,
        }
    }

    /// Resolves relative paths against `dir`.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = dir.into();
        self
    }

    /// Sets the ingest path used by `channel` destinations.
    pub fn with_injector(mut self, injector: Arc<dyn ChannelInjector>) -> Self {
        self.injector = Some(injector);
        self
    }

    /// `path` as given when absolute, else relative to [`base_dir`](Self::base_dir).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir.join(path) }
    }
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("channel", &self.channel)
            .field("destination", &self.destination)
            .field("base_dir", &self.base_dir)
            .field("injector", &self.injector.as_ref().map(|_| "..."))
            .finish()
    }
}

/// A built destination, shared by its workers.
#[derive(Debug)]
pub enum Destination {
    /// See [`mllp`] (boxed, as is `Http`: they are large and built once).
    Mllp(Box<MllpDestination>),
    /// See [`http`].
    Http(Box<HttpDestination>),
    /// See [`file`].
    File(FileDestination),
    /// See [`channel`].
    Channel(ChannelDestination),
    /// See [`mod@fhir`].
    Fhir(Box<FhirDestination>),
}

impl Destination {
    /// Delivers one message: one attempt, no retry (the store retries
    /// transient failures with its backoff).
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        match self {
            Destination::Mllp(d) => d.send(out).await,
            Destination::Http(d) => d.send(out).await,
            Destination::File(d) => d.send(out).await,
            Destination::Channel(d) => d.send(out).await,
            Destination::Fhir(d) => d.send(out).await,
        }
    }

    /// The connector's name (`mllp`, `http`, `file`, `channel`, `fhir`).
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Mllp(_) => "mllp",
            Destination::Http(_) => "http",
            Destination::File(_) => "file",
            Destination::Channel(_) => "channel",
            Destination::Fhir(_) => "fhir",
        }
    }
}

/// One message handed to a destination: the content after filters and
/// transforms, and the metadata that names and templates may use.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The bytes to deliver (for HL7 v2, segments separated by `\r`).
    pub content: &'a [u8],
    /// Its media type, e.g. `x-application/hl7-v2+er7` or `application/json`.
    pub content_type: &'a str,
    /// The store's id of the message (stable across retries).
    pub message_id: &'a str,
    /// The channel the message came in on.
    pub channel: &'a str,
    /// MSH-10 of the received message, when it has one.
    pub control_id: Option<&'a str>,
    /// When the message was received (stable across retries, so names and
    /// templates built from it are too).
    pub received_at: DateTime<Utc>,
}

/// The media type of HL7 v2 ER7 ("pipe and hat") content.
pub const HL7_V2_CONTENT_TYPE: &str = "x-application/hl7-v2+er7";

/// What a receiver answered to a delivery, kept with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryResponse {
    /// What kind of answer it is (an ACK, an HTTP status, a local result).
    pub kind: ResponseKind,
    /// One line: the ACK code (`AA`), the HTTP status (`HTTP 201`), the
    /// file written, or the injected message's id.
    pub summary: String,
    /// The start of the receiver's answer (the ACK message, the HTTP body),
    /// at most [`RESPONSE_EXCERPT_MAX`] bytes, when there is one.
    pub body: Option<String>,
}

/// See [`DeliveryResponse::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// An HL7 v2 acknowledgment (`body` holds it).
    Ack,
    /// An HTTP answer with this status (`body` holds the body's start).
    Http(u16),
    /// A local result (a file written, a message injected): `summary` says it.
    Local,
}

impl DeliveryResponse {
    /// The response as the store keeps it with the attempt.
    pub fn to_store(&self) -> store::Response {
        match self.kind {
            ResponseKind::Ack => {
                store::Response::Ack { text: self.body.clone().unwrap_or_else(|| self.summary.clone()) }
            }
            ResponseKind::Http(status) => {
                store::Response::Http { status, body_excerpt: self.body.clone().unwrap_or_default() }
            }
            ResponseKind::Local => store::Response::Text { text: self.summary.clone() },
        }
    }
}

/// The longest response excerpt kept with a delivery, in bytes.
pub const RESPONSE_EXCERPT_MAX: usize = 4096;

/// What to do with a failure: the store's class, shared by every layer
/// (transient: retry with backoff; permanent: dead-letter; config: fix the
/// configuration).
pub use store::ErrorClass;

/// A failed delivery attempt. `class()` tells the store whether to retry;
/// `kind()` is a short, content-free name for logs.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Could not open a connection (refused, unreachable, DNS, connect
    /// timeout, TLS handshake).
    #[error("connecting to {address}: {reason}")]
    Connect {
        /// host:port.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection failed while sending or waiting for the answer.
    #[error("connection to {address} failed: {reason}")]
    Connection {
        /// host:port.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the configured time.
    #[error("no answer from {address} within {after:?}")]
    Timeout {
        /// host:port or URL host.
        address: String,
        /// The time waited.
        after: Duration,
    },
    /// The answer was not a readable ACK (no MSA, not HL7, oversized).
    #[error("unreadable ACK: {reason}")]
    BadAck {
        /// What was wrong with it.
        reason: String,
    },
    /// The ACK's MSA-2 is not the control id that was sent: the receiver
    /// answered another message, so this one's fate is unknown.
    #[error("ACK is for control id {received:?}, sent {sent:?}")]
    AckMismatch {
        /// MSH-10 of the message sent.
        sent: String,
        /// MSA-2 of the ACK received.
        received: String,
    },
    /// The receiver answered AE/AR (or CE/CR). Its class is the
    /// destination's `on_nak` setting.
    #[error("receiver answered {code}")]
    Nak {
        /// The MSA-1 code.
        code: String,
        /// MSA-3 and ERR text, if any (may quote message content, so it is
        /// not part of the error's `Display`).
        text: String,
        /// From the destination's `on_nak`.
        class: ErrorClass,
        /// The whole ACK (excerpt), for the delivery record.
        ack: String,
    },
    /// The HTTP receiver answered with a non-2xx status.
    #[error("HTTP {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// `Retry-After`, when the receiver sent one (429, 503).
        retry_after: Option<Duration>,
        /// The start of the response body (not part of the `Display`).
        body: String,
    },
    /// The outgoing content cannot be delivered by this connector (not
    /// HL7 v2 for MLLP, a template that fails on it, a name that cannot be
    /// made safe).
    #[error("content cannot be delivered: {reason}")]
    Content {
        /// Why.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    File {
        /// What was being done (`writing`, `renaming` ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The target file exists and the destination is set not to overwrite.
    #[error("{path} exists with other content (another message has this name; if_exists = \"fail\")")]
    FileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A FHIR server refused the content or could not be reached (see
    /// [`mod@fhir`]).
    #[error("{reason}")]
    Fhir {
        /// What failed (request or entry, status), without the server's
        /// OperationOutcome.
        reason: String,
        /// The `fhir` crate's class of the failure.
        class: ErrorClass,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
        /// The server's answer (OperationOutcome summary or the start of the
        /// response Bundle; not part of the `Display`).
        body: String,
    },
    /// Injecting into another channel failed.
    #[error("injecting into channel {channel:?}: {source}")]
    Inject {
        /// The target channel.
        channel: String,
        /// The injector's error.
        source: InjectError,
    },
}

impl DeliveryError {
    /// Retry (transient) or dead-letter (permanent).
    pub fn class(&self) -> ErrorClass {
        match self {
            DeliveryError::Connect { .. }
            | DeliveryError::Connection { .. }
            | DeliveryError::Timeout { .. }
            | DeliveryError::BadAck { .. }
            | DeliveryError::AckMismatch { .. } => ErrorClass::Transient,
            DeliveryError::Nak { class, .. } => *class,
            DeliveryError::HttpStatus { status, .. } => http::status_class(*status),
            DeliveryError::Content { .. } | DeliveryError::FileExists { .. } => ErrorClass::Permanent,
            // Disk full, a folder removed under us, permissions being fixed:
            // an operator can repair these, so retry rather than dead-letter.
            DeliveryError::File { .. } => ErrorClass::Transient,
            DeliveryError::Inject { source, .. } => source.class(),
            DeliveryError::Fhir { class, .. } => *class,
        }
    }

    /// How long the receiver asked us to wait before retrying (HTTP
    /// `Retry-After`), for the store's backoff to honour.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::HttpStatus { retry_after, .. } => *retry_after,
            DeliveryError::Inject { source, .. } => source.retry_after(),
            DeliveryError::Fhir { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short name for logs, free of content: `connect`, `timeout`, `nak` ...
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryError::Connect { .. } => "connect",
            DeliveryError::Connection { .. } => "connection",
            DeliveryError::Timeout { .. } => "timeout",
            DeliveryError::BadAck { .. } => "bad_ack",
            DeliveryError::AckMismatch { .. } => "ack_mismatch",
            DeliveryError::Nak { .. } => "nak",
            DeliveryError::HttpStatus { .. } => "http_status",
            DeliveryError::Content { .. } => "content",
            DeliveryError::File { .. } => "file",
            DeliveryError::FileExists { .. } => "file_exists",
            DeliveryError::Inject { .. } => "inject",
            DeliveryError::Fhir { .. } => "fhir",
        }
    }

    /// The class as the store's delivery outcome takes it: a config-class
    /// failure cannot fix itself by retrying, so it counts as permanent.
    pub fn failure_class(&self) -> store::FailureClass {
        match self.class() {
            ErrorClass::Transient => store::FailureClass::Transient,
            ErrorClass::Permanent | ErrorClass::Config => store::FailureClass::Permanent,
        }
    }

    /// The receiver's answer to keep with the failed attempt (the NAK, the
    /// HTTP status and body), when there was one.
    pub fn to_store_response(&self) -> Option<store::Response> {
        match self {
            DeliveryError::Nak { ack, .. } => Some(store::Response::Ack { text: ack.clone() }),
            DeliveryError::HttpStatus { status, body, .. } => {
                Some(store::Response::Http { status: *status, body_excerpt: body.clone() })
            }
            DeliveryError::Fhir { status: Some(status), body, .. } => {
                Some(store::Response::Http { status: *status, body_excerpt: body.clone() })
            }
            DeliveryError::Fhir { status: None, body, .. } if !body.is_empty() => {
                Some(store::Response::Text { text: body.clone() })
            }
            _ => None,
        }
    }

    /// The failed outcome to report to the store: class, reason (this
    /// error's text) and the receiver's answer.
    pub fn to_outcome(&self) -> store::Outcome {
        store::Outcome::Failed {
            class: self.failure_class(),
            reason: self.to_string(),
            response: self.to_store_response(),
        }
    }
}

/// A destination could not be built (the I/O of [`DestinationConfig::build`]).
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// A file named in the configuration cannot be read.
    #[error("{field}: reading {path}: {source}")]
    ReadFile {
        /// The field that names it (`tls.ca_file`).
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A TLS file was read but is not usable.
    #[error("{field}: {reason}")]
    Tls {
        /// The field (`tls.cert_file`).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The output folder cannot be created or is not a folder.
    #[error("directory {path}: {reason}")]
    Directory {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    HttpClient(String),
    /// A `channel` destination was built without an injector.
    #[error("channel destinations need the runtime's injector (none given)")]
    NoInjector,
    /// The configuration is invalid (build was called without validate).
    #[error("invalid configuration: {0}")]
    Invalid(ConfigErrors),
}

impl DestinationError {
    /// Always a configuration problem, except a folder that could not be
    /// created (which an operator may fix while the engine retries).
    pub fn class(&self) -> ErrorClass {
        match self {
            DestinationError::Directory { .. } => ErrorClass::Transient,
            _ => ErrorClass::Config,
        }
    }
}

/// A secret from the configuration (a password, a token, an HMAC key):
/// it is written `${VAR}` in the file and expanded from the environment by
/// the config loader. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Client-side TLS, shared by the MLLP and HTTP destinations.
///
/// ```toml
/// [channel.destination.tls]
/// ca_file = "certs/partner-ca.pem"      # else the system's roots
/// cert_file = "certs/plexus.pem"        # client certificate (mTLS), with key_file
/// key_file = "certs/plexus.key"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    /// PEM file of the certificate authorities to trust. When absent, the
    /// operating system's trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for receivers that
    /// require mutual TLS. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1
    /// or SEC1). Needs `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name to verify the receiver's certificate against, when it is
    /// not the host of the address (e.g. connecting by IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsClientConfig {
    /// Checks the fields' consistency (no I/O).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errors.push(format!("{path}.key_file"), "cert_file needs key_file"),
            (None, Some(_)) => errors.push(format!("{path}.cert_file"), "key_file needs cert_file"),
            _ => {}
        }
        if let Some(name) = &self.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            errors.push(format!("{path}.server_name"), format!("{name:?} is not a DNS name or IP address"));
        }
    }

    /// Reads the files and builds a rustls client configuration (aws-lc-rs).
    pub fn build_rustls(&self, ctx: &BuildContext) -> Result<Arc<rustls::ClientConfig>, DestinationError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DestinationError::Tls { field: "tls", reason: e.to_string() })?;
        let builder = match &self.ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = read_certs(ctx, ca, "tls.ca_file")?;
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(DestinationError::Tls {
                        field: "tls.ca_file",
                        reason: format!("{} holds no usable certificate", ca.display()),
                    });
                }
                builder.with_root_certificates(roots)
            }
            None => {
                use rustls_platform_verifier::BuilderVerifierExt;
                builder
                    .with_platform_verifier()
                    .map_err(|e| DestinationError::Tls { field: "tls", reason: e.to_string() })?
            }
        };
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(ctx, cert, "tls.cert_file")?;
                if chain.is_empty() {
                    return Err(DestinationError::Tls {
                        field: "tls.cert_file",
                        reason: format!("{} holds no certificate", cert.display()),
                    });
                }
                let key = read_key(ctx, key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| DestinationError::Tls { field: "tls.key_file", reason: e.to_string() })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn read_file(ctx: &BuildContext, path: &Path, field: &'static str) -> Result<Vec<u8>, DestinationError> {
    let full = ctx.resolve(path);
    std::fs::read(&full).map_err(|source| DestinationError::ReadFile { field, path: full, source })
}

fn read_certs(
    ctx: &BuildContext,
    path: &Path,
    field: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, DestinationError> {
    let full = ctx.resolve(path);
    crate::sources::tls::load_certs(&full).map_err(|e| pem_error(e, field, path, full))
}

fn read_key(ctx: &BuildContext, path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, DestinationError> {
    let full = ctx.resolve(path);
    crate::sources::tls::load_key(&full).map_err(|e| pem_error(e, "tls.key_file", path, full))
}

/// A PEM file that could not be loaded, as the destination's error for `field`.
fn pem_error(e: crate::sources::tls::PemError, field: &'static str, path: &Path, full: PathBuf) -> DestinationError {
    match e {
        crate::sources::tls::PemError::Read(source) => DestinationError::ReadFile { field, path: full, source },
        crate::sources::tls::PemError::Invalid(reason) => {
            DestinationError::Tls { field, reason: format!("{}: {reason}", path.display()) }
        }
    }
}

/// The first `max` bytes of `bytes` as text (lossy, cut on a character
/// boundary), for response excerpts.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    text.into_owned()
}

/// Exponential backoff with full jitter, for reconnect attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The upper bound of the delay after `failures` consecutive failures
    /// (1 -> initial, doubling, capped at max).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }

    /// A random delay in `[ceiling/2, ceiling]`: jitter spreads the
    /// reconnects of many workers, the floor keeps the backoff meaningful.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let span = ceiling.saturating_sub(half).as_millis() as u64;
        let extra = if span == 0 { 0 } else { rand::random_range(0..=span) };
        half + Duration::from_millis(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        for failures in 1..10 {
            let d = b.delay(failures);
            assert!(d <= b.ceiling(failures) && d >= b.ceiling(failures) / 2, "{d:?}");
        }
    }

    #[test]
    fn secret_debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn config_is_tagged_by_type_and_rejects_unknown_fields() {
        let c: DestinationConfig = toml::from_str("type = \"file\"\ndirectory = \"out\"\n").unwrap();
        assert_eq!(c.kind(), "file");
        let err =
            toml::from_str::<DestinationConfig>("type = \"file\"\ndirectory = \"out\"\ncolour = 1\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = toml::from_str::<DestinationConfig>("type = \"ftp\"\n").unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }

    #[test]
    fn tls_cert_without_key_is_reported() {
        let mut errors = ConfigErrors::default();
        let tls = TlsClientConfig { cert_file: Some("c.pem".into()), ..Default::default() };
        tls.validate("d.tls", &mut errors);
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "d.tls.key_file");
    }
}
