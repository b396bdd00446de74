//! Server-side TLS for listeners, with optional client-certificate
//! verification (mutual TLS, which many hospital networks require of MLLP
//! partners).
//!
//! ```toml
//! [channels.adt-in.source.tls]
//! cert_file = "certs/plexus.pem"       # certificate chain, PEM
//! key_file = "certs/plexus.key"        # private key, PEM (PKCS#8, PKCS#1, SEC1)
//! client_ca_file = "certs/partners.pem" # verify client certificates against these
//! client_cert = "required"             # or "optional"
//! ```
//!
//! The config struct does no I/O; [`TlsServerConfig::build`] reads the files
//! when the source starts. One crypto provider everywhere: aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::de::PathBuf as CfgPath;

/// `tls = { ... }` of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key.
    pub key_file: PathBuf,
    /// PEM file of the certificate authorities that client certificates
    /// must chain to. When set, clients are asked for a certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (the default: a client without a valid
    /// certificate is refused during the handshake) or `optional` (a client
    /// may connect without one, but a certificate it presents must be
    /// valid).
    #[serde(default)]
    pub client_cert: ClientCertMode,
}

/// See [`TlsServerConfig::client_cert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertMode {
    /// Refuse clients without a valid certificate.
    #[default]
    Required,
    /// Accept clients without one.
    Optional,
}

/// A TLS set-up could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{field}: reading {path}: {error}")]
    Read {
        /// The config field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{field}: {reason}")]
    Invalid {
        /// The config field naming the file.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl TlsServerConfig {
    /// Checks the settings' consistency (no I/O).
    pub fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.cert_file.as_os_str().is_empty() {
            errors.push(path.key("cert_file").to_string(), "must name a PEM file");
        }
        if self.key_file.as_os_str().is_empty() {
            errors.push(path.key("key_file").to_string(), "must name a PEM file");
        }
        if self.client_ca_file.is_none() && self.client_cert == ClientCertMode::Optional {
            errors
                .push(path.key("client_cert").to_string(), "needs client_ca_file (the authorities to verify against)");
        }
    }

    /// Reads the files (relative to `base_dir`) and builds the acceptor's
    /// configuration.
    pub fn build(&self, base_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid { field: "tls", reason: e.to_string() })?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = read_certs(base_dir, ca, "tls.client_ca_file")?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::Invalid {
                        field: "tls.client_ca_file",
                        reason: format!("{} holds no usable certificate", ca.display()),
                    });
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match self.client_cert {
                    ClientCertMode::Required => verifier,
                    ClientCertMode::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Invalid { field: "tls.client_ca_file", reason: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = read_certs(base_dir, &self.cert_file, "tls.cert_file")?;
        if chain.is_empty() {
            return Err(TlsError::Invalid {
                field: "tls.cert_file",
                reason: format!("{} holds no certificate", self.cert_file.display()),
            });
        }
        let key = read_key(base_dir, &self.key_file)?;
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Invalid { field: "tls.key_file", reason: e.to_string() })?;
        Ok(Arc::new(config))
    }
}

fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) }
}

fn read_certs(
    base_dir: &Path,
    path: &Path,
    field: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let full = resolve(base_dir, path);
    load_certs(&full).map_err(|e| e.into_tls(field, path, full))
}

fn read_key(base_dir: &Path, path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    let full = resolve(base_dir, path);
    load_key(&full).map_err(|e| e.into_tls("tls.key_file", path, full))
}

/// Why a PEM file could not be loaded. Listeners and destinations load
/// their certificates and keys with the same two functions
/// ([`load_certs`], [`load_key`]) and name the config field in their own
/// error type.
#[derive(Debug)]
pub(crate) enum PemError {
    /// The file could not be read.
    Read(std::io::Error),
    /// The file was read but does not hold what it should (the reason does
    /// not include the path; the caller adds it).
    Invalid(String),
}

impl PemError {
    fn into_tls(self, field: &'static str, path: &Path, full: PathBuf) -> TlsError {
        match self {
            PemError::Read(error) => TlsError::Read { field, path: full, error },
            PemError::Invalid(reason) => TlsError::Invalid { field, reason: format!("{}: {reason}", path.display()) },
        }
    }
}

/// Every certificate in the PEM file at `path` (possibly none).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PemError> {
    let pem = std::fs::read(path).map_err(PemError::Read)?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid(e.to_string()))
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub(crate) fn load_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PemError> {
    let pem = std::fs::read(path).map_err(PemError::Read)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(PemError::Invalid("holds no private key".into())),
        Err(e) => Err(PemError::Invalid(e.to_string())),
    }
}
