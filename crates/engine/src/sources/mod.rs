//! Sources: where a channel receives messages (one file per connector).
//!
//! # Design
//!
//! A source only *receives*: it frames the bytes (MLLP blocks, an HTTP
//! body), hands each message to the channel's [`Ingest`](crate::ingest::Ingest)
//! path, and writes back what that path answers. The ingest path parses,
//! validates, extracts metadata, builds the ACK and stores the message with
//! its ACK before returning, so a source can never acknowledge a message
//! that is not durably stored.
//!
//! Each connector has a serde `XxxSourceConfig` (`deny_unknown_fields`),
//! gathered in the closed enum [`SourceConfig`] tagged by `type`, and a
//! `run` function that does the I/O until the shutdown signal: only sources
//! get that signal (they stop accepting and finish the commits in flight),
//! the rest of the engine drains behind them.

pub mod fhir_poll;
pub mod file;
pub mod http;
pub mod mllp;
pub mod notification;
pub mod send_to_ehr;
pub mod tls;

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::de::{self, PathBuf as CfgPath};

pub use fhir_poll::FhirPollSourceConfig;
pub use http::HttpSourceConfig;
pub use mllp::MllpSourceConfig;
pub use tls::TlsServerConfig;

/// Configuration of a channel's source, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A scheduled read of what a FHIR server changed ([`fhir_poll`]).
    FhirPoll(Box<FhirPollSourceConfig>),
    /// HL7 v2 over MLLP (TCP, optional TLS).
    Mllp(MllpSourceConfig),
    /// `POST /channels/{name}/messages` over HTTP.
    Http(HttpSourceConfig),
    /// The FHIR operation `$send-to-ehr` on the API listener
    /// ([`send_to_ehr`]).
    SendToEhr(Box<send_to_ehr::SendToEhrSourceConfig>),
    /// Partner notifications: `POST /channels/{name}/notifications`
    /// ([`notification`]).
    Notification(Box<notification::NotificationSourceConfig>),
    /// A drop folder polled for files ([`file`]).
    File(Box<file::FileSourceConfig>),
}

impl SourceConfig {
    /// The connector's name as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::FhirPoll(_) => "fhir_poll",
            SourceConfig::Mllp(_) => "mllp",
            SourceConfig::Http(_) => "http",
            SourceConfig::SendToEhr(_) => "send_to_ehr",
            SourceConfig::Notification(_) => "notification",
            SourceConfig::File(_) => "file",
        }
    }

    /// The address this source listens on by itself, if any (an `http`
    /// source without `listen` shares the API listener).
    pub fn own_listener(&self) -> Option<SocketAddr> {
        match self {
            SourceConfig::FhirPoll(_) => None,
            SourceConfig::Mllp(c) => Some(c.listen),
            SourceConfig::Http(c) => c.listen,
            SourceConfig::SendToEhr(_) => None,
            SourceConfig::Notification(c) => c.listen,
            SourceConfig::File(_) => None,
        }
    }

    /// Whether the source can carry JSON bodies.
    pub fn accepts_json(&self) -> bool {
        if let SourceConfig::FhirPoll(_) = self {
            return true;
        }
        matches!(
            self,
            SourceConfig::Http(_) | SourceConfig::SendToEhr(_) | SourceConfig::Notification(_) | SourceConfig::File(_)
        )
    }

    /// One line for summaries: `mllp 127.0.0.1:2575 (tls)`.
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::FhirPoll(c) => {
                let types: Vec<String> = c.targets().into_iter().map(|t| t.resource_type).collect();
                let when = match c.when() {
                    crate::config::RetentionSchedule::Every(every) => format!("every {}s", every.as_secs_f64()),
                    crate::config::RetentionSchedule::Cron(pattern) => format!("cron {pattern}"),
                };
                format!("fhir_poll {} ({}), {when}", c.server, types.join(", "))
            }
            SourceConfig::Mllp(c) => {
                let tls = match &c.tls {
                    Some(t) if t.client_ca_file.is_some() => " (tls, client certificates)",
                    Some(_) => " (tls)",
                    None => "",
                };
                format!("mllp {}{tls}", c.listen)
            }
            SourceConfig::Http(c) => match c.listen {
                Some(addr) => format!("http {addr}"),
                None => "http (api listener)".to_string(),
            },
            SourceConfig::SendToEhr(c) => {
                format!("send_to_ehr (api listener, patients from {})", c.patient_source.as_deref().unwrap_or("?"))
            }
            SourceConfig::Notification(c) => match c.listen {
                Some(addr) => format!("notification {addr}"),
                None => "notification (api listener)".to_string(),
            },
            SourceConfig::File(c) => format!("file {} ({})", c.directory.display(), c.pattern),
        }
    }
}

/// Compiles a `source` table: dispatched on `type` so that errors inside
/// keep their field paths.
pub(crate) fn compile(value: toml::Value, path: &CfgPath, errors: &mut ConfigErrors) -> Option<SourceConfig> {
    let toml::Value::Table(mut table) = value else {
        errors.push(path.to_string(), format!("must be a table, found {}", de::type_name(&value)));
        return None;
    };
    let config = match table.remove("type") {
        Some(toml::Value::String(kind)) => match kind.as_str() {
            "fhir_poll" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::FhirPoll),
            "mllp" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::Mllp),
            "http" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::Http),
            "send_to_ehr" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::SendToEhr),
            "notification" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::Notification),
            "file" => de::component(toml::Value::Table(table), path, errors).map(SourceConfig::File),
            other => {
                errors.push(
                    path.key("type").to_string(),
                    format!(
                        "unknown source type {other:?}, expected fhir_poll, mllp, http, send_to_ehr, notification or file"
                    ),
                );
                None
            }
        },
        Some(other) => {
            errors.push(path.key("type").to_string(), format!("must be a string, found {}", de::type_name(&other)));
            None
        }
        None => {
            errors.push(
                path.key("type").to_string(),
                "required: fhir_poll, mllp, http, send_to_ehr, notification or file",
            );
            None
        }
    }?;
    match &config {
        SourceConfig::FhirPoll(c) => c.validate(path, errors),
        SourceConfig::Mllp(c) => c.validate(path, errors),
        SourceConfig::Http(c) => c.validate(path, errors),
        SourceConfig::SendToEhr(c) => c.validate(path.as_str(), errors),
        SourceConfig::Notification(c) => c.validate(path.as_str(), errors),
        SourceConfig::File(c) => c.validate(path, errors),
    }
    Some(config)
}
