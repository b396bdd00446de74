//! `NotificationConfig`: what a partner's notification looks like, how it is
//! authenticated, which URLs may be fetched, how object storage is reached
//! and how the partner is acknowledged.
//!
//! Read with serde (every struct denies unknown fields), then checked by
//! [`NotificationConfig::validate`], which collects every problem with its
//! path and does no I/O. Secrets arrive already expanded from `${VAR}` by
//! the config loader.

use serde::Deserialize;
use url::Url;

use crate::config::{ByteSize, ConfigErrors, Duration};

/// The partner-notification settings of one channel.
///
/// ```
/// let config: engine::flows::notification::NotificationConfig = toml::from_str(r#"
///     [fields]
///     notification_id = "id"
///     file_id = "data.fileId"
///     presigned_url = "data.url"
///     [auth.hmac]
///     secret = "s3cr3t"
///     [fetch]
///     allowed_hosts = ["*.partner.example"]
///     [acknowledgement]
///     url = "https://api.partner.example/notifications/{notification_id}/ack"
/// "#).unwrap();
/// config.validate("channel \"glucose\".source").unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Where the notification's fields are in its JSON body.
    pub fields: FieldPaths,
    /// How an incoming notification proves it comes from the partner.
    pub auth: InboundAuth,
    /// Which URLs carried in a notification may be fetched.
    #[serde(default)]
    pub fetch: FetchGuardConfig,
    /// Object storage reached with temporary credentials (needed when the
    /// notification carries a bucket and key instead of a URL).
    #[serde(default)]
    pub storage: Option<ObjectStorageConfig>,
    /// The partner's acknowledgement endpoint, called after delivery.
    pub acknowledgement: AcknowledgementConfig,
    /// Size and time limits of the fetch.
    #[serde(default)]
    pub limits: Limits,
}

/// Dot paths (`data.fileId`, `files.0.url`) into the notification's JSON.
/// A numeric segment indexes an array.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPaths {
    /// The notification's own id: the first dedupe key.
    pub notification_id: String,
    /// The id of the file (bundle) it announces: the second dedupe key (a
    /// partner re-notifying the same file under a new id is still a
    /// duplicate).
    pub file_id: String,
    /// The patient the bundle is about (optional; used as the order key).
    #[serde(default)]
    pub patient: Option<String>,
    /// A pre-signed URL to GET the bundle from.
    #[serde(default)]
    pub presigned_url: Option<String>,
    /// The object-storage bucket holding the bundle.
    #[serde(default)]
    pub bucket: Option<String>,
    /// The object key of the bundle within `bucket`.
    #[serde(default)]
    pub key: Option<String>,
}

/// Inbound authentication. When both are configured, both must pass.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAuth {
    /// An HMAC-SHA256 signature over `timestamp + "." + body`.
    #[serde(default)]
    pub hmac: Option<HmacConfig>,
    /// A static bearer token in `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer: Option<BearerConfig>,
}

/// HMAC-SHA256 signing, see [`super::verify`] for the exact scheme.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// The shared secret (write `${PARTNER_HMAC_SECRET}`).
    pub secret: String,
    /// The header carrying the hex signature (`sha256=` prefix optional).
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// The header carrying the Unix time in seconds the partner signed at.
    #[serde(default = "default_timestamp_header")]
    pub timestamp_header: String,
    /// How far the signed time may be from ours, either way: a replay older
    /// than this is rejected.
    #[serde(default = "default_tolerance")]
    pub tolerance: Duration,
}

// Hand-written so the secret never reaches a log line.
impl std::fmt::Debug for HmacConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacConfig")
            .field("secret", &"<redacted>")
            .field("signature_header", &self.signature_header)
            .field("timestamp_header", &self.timestamp_header)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// A static bearer token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    /// The expected token (write `${PARTNER_TOKEN}`).
    pub token: String,
}

impl std::fmt::Debug for BearerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerConfig").field("token", &"<redacted>").finish()
    }
}

/// The SSRF guard for URLs carried in notifications.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchGuardConfig {
    /// Host patterns: an exact host (`files.partner.example`) or a
    /// subdomain wildcard (`*.partner.example`, which does not match
    /// `partner.example` itself). Nothing matches when empty.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Allow plain `http` URLs (only for tests and closed networks).
    #[serde(default)]
    pub allow_http: bool,
    /// Allow private, loopback, link-local and other special addresses
    /// (only for tests and partners inside the hospital network).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

/// Object storage read with temporary credentials from the partner's token
/// service.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStorageConfig {
    /// The S3-compatible endpoint (`https://s3.eu-central-1.amazonaws.com`);
    /// AWS's default for `region` when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region the requests are signed for.
    pub region: String,
    /// The token service (OAuth2 client-credentials style) that returns
    /// temporary credentials.
    pub token_url: String,
    /// Client id for the token service.
    pub client_id: String,
    /// Client secret for the token service (write `${PARTNER_CLIENT_SECRET}`).
    pub client_secret: String,
    /// Credentials are refreshed this long before they expire.
    #[serde(default = "default_refresh_before")]
    pub refresh_before: Duration,
}

impl std::fmt::Debug for ObjectStorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorageConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("refresh_before", &self.refresh_before)
            .finish()
    }
}

/// The acknowledgement sent to the partner after delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgementConfig {
    /// URL template; `{notification_id}` and `{file_id}` are replaced
    /// (percent-encoded) by the notification's values.
    pub url: String,
    /// How the acknowledgement authenticates.
    #[serde(default)]
    pub auth: AckAuth,
}

/// Outbound authentication of the acknowledgement.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AckAuth {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
    /// Signed like inbound notifications (same scheme, same headers).
    Hmac {
        /// The shared secret.
        secret: String,
        /// The signature header.
        #[serde(default = "default_signature_header")]
        signature_header: String,
        /// The timestamp header.
        #[serde(default = "default_timestamp_header")]
        timestamp_header: String,
    },
}

impl std::fmt::Debug for AckAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckAuth::None => f.write_str("None"),
            AckAuth::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            AckAuth::Hmac { signature_header, timestamp_header, .. } => f
                .debug_struct("Hmac")
                .field("signature_header", signature_header)
                .field("timestamp_header", timestamp_header)
                .finish_non_exhaustive(),
        }
    }
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// A bundle larger than this is refused (the fetch aborts at the limit).
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: ByteSize,
    /// The whole fetch (redirects and body included) must finish within this.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bundle_bytes: default_max_bundle(), fetch_timeout: default_fetch_timeout() }
    }
}

fn default_signature_header() -> String {
    "x-signature".into()
}
fn default_timestamp_header() -> String {
    "x-timestamp".into()
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}
fn default_max_bundle() -> ByteSize {
    ByteSize(32 * 1024 * 1024)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(30)
}

impl NotificationConfig {
    /// Checks the values serde cannot: paths, patterns, URLs, secrets and
    /// how the parts fit together. Every problem is reported, each at
    /// `path` + its field. No I/O.
    pub fn validate(&self, path: &str) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let at = |field: &str| {
            if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
        };

        let f = &self.fields;
        check_field_path(&mut errors, &at("fields.notification_id"), Some(&f.notification_id));
        check_field_path(&mut errors, &at("fields.file_id"), Some(&f.file_id));
        check_field_path(&mut errors, &at("fields.patient"), f.patient.as_deref());
        check_field_path(&mut errors, &at("fields.presigned_url"), f.presigned_url.as_deref());
        check_field_path(&mut errors, &at("fields.bucket"), f.bucket.as_deref());
        check_field_path(&mut errors, &at("fields.key"), f.key.as_deref());
        match (&f.bucket, &f.key) {
            (Some(_), None) => errors.push(at("fields.key"), "`bucket` is set: `key` is needed too"),
            (None, Some(_)) => errors.push(at("fields.bucket"), "`key` is set: `bucket` is needed too"),
            _ => {}
        }
        let object_path = f.bucket.is_some() && f.key.is_some();
        if f.presigned_url.is_none() && !object_path {
            errors.push(at("fields"), "set `presigned_url`, or `bucket` and `key`, to say where the bundle is");
        }
        if object_path && self.storage.is_none() {
            errors.push(at("storage"), "`fields.bucket`/`fields.key` need a [storage] section (token service, region)");
        }

        if self.auth.hmac.is_none() && self.auth.bearer.is_none() {
            errors.push(at("auth"), "configure `hmac`, `bearer` or both: notifications must be authenticated");
        }
        if let Some(h) = &self.auth.hmac {
            if h.secret.is_empty() {
                errors.push(at("auth.hmac.secret"), "is empty");
            }
            check_header(&mut errors, &at("auth.hmac.signature_header"), &h.signature_header);
            check_header(&mut errors, &at("auth.hmac.timestamp_header"), &h.timestamp_header);
            if h.tolerance.get().is_zero() {
                errors.push(at("auth.hmac.tolerance"), "must be more than zero");
            }
        }
        if let Some(b) = &self.auth.bearer
            && b.token.is_empty()
        {
            errors.push(at("auth.bearer.token"), "is empty");
        }

        for (i, pattern) in self.fetch.allowed_hosts.iter().enumerate() {
            if let Err(why) = super::guard::HostPattern::parse(pattern) {
                errors.push(at(&format!("fetch.allowed_hosts[{i}]")), why);
            }
        }
        if f.presigned_url.is_some() && self.fetch.allowed_hosts.is_empty() {
            errors.push(at("fetch.allowed_hosts"), "`fields.presigned_url` is set: list the hosts it may point at");
        }

        if let Some(s) = &self.storage {
            if let Some(endpoint) = &s.endpoint {
                check_http_url(&mut errors, &at("storage.endpoint"), endpoint);
            }
            check_http_url(&mut errors, &at("storage.token_url"), &s.token_url);
            if s.region.is_empty() {
                errors.push(at("storage.region"), "is empty");
            }
            if s.client_id.is_empty() {
                errors.push(at("storage.client_id"), "is empty");
            }
            if s.client_secret.is_empty() {
                errors.push(at("storage.client_secret"), "is empty");
            }
        }

        let template = &self.acknowledgement.url;
        match unknown_placeholder(template) {
            Some(name) => errors.push(
                at("acknowledgement.url"),
                format!("unknown placeholder `{{{name}}}` (use {{notification_id}} or {{file_id}})"),
            ),
            None => {
                let sample = super::ack_url_for(template, "n", "f");
                check_http_url(&mut errors, &at("acknowledgement.url"), &sample);
            }
        }
        match &self.acknowledgement.auth {
            AckAuth::None => {}
            AckAuth::Bearer { token } if token.is_empty() => errors.push(at("acknowledgement.auth.token"), "is empty"),
            AckAuth::Bearer { .. } => {}
            AckAuth::Hmac { secret, signature_header, timestamp_header } => {
                if secret.is_empty() {
                    errors.push(at("acknowledgement.auth.secret"), "is empty");
                }
                check_header(&mut errors, &at("acknowledgement.auth.signature_header"), signature_header);
                check_header(&mut errors, &at("acknowledgement.auth.timestamp_header"), timestamp_header);
            }
        }

        if self.limits.max_bundle_bytes.0 == 0 {
            errors.push(at("limits.max_bundle_bytes"), "must be more than zero");
        }
        if self.limits.fetch_timeout.get().is_zero() {
            errors.push(at("limits.fetch_timeout"), "must be more than zero");
        }
        errors.into_result(())
    }
}

fn check_field_path(errors: &mut ConfigErrors, at: &str, value: Option<&str>) {
    if let Some(p) = value
        && (p.is_empty() || p.split('.').any(str::is_empty))
    {
        errors.push(at, format!("`{p}` is not a dot path (write e.g. `data.fileId`)"));
    }
}

fn check_header(errors: &mut ConfigErrors, at: &str, name: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        errors.push(at, format!("`{name}` is not a valid header name"));
    }
}

fn check_http_url(errors: &mut ConfigErrors, at: &str, text: &str) {
    match Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => errors.push(at, format!("`{text}` is not an http(s) URL with a host")),
        Err(e) => errors.push(at, format!("`{text}` is not a URL: {e}")),
    }
}

/// The first `{name}` in `template` that is not a known placeholder.
fn unknown_placeholder(template: &str) -> Option<&str> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if name != "notification_id" && name != "file_id" {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [fields]
        notification_id = "id"
        file_id = "data.fileId"
        patient = "data.patient"
        presigned_url = "data.url"
        bucket = "data.bucket"
        key = "data.key"
        [auth.hmac]
        secret = "s"
        tolerance = "5m"
        [auth.bearer]
        token = "t"
        [fetch]
        allowed_hosts = ["*.partner.example", "files.partner.example"]
        [storage]
        endpoint = "https://s3.partner.example"
        region = "eu-central-1"
        token_url = "https://auth.partner.example/token"
        client_id = "plexus"
        client_secret = "cs"
        [acknowledgement]
        url = "https://api.partner.example/n/{notification_id}/f/{file_id}/ack"
        auth = { type = "bearer", token = "ack" }
        [limits]
        max_bundle_bytes = "10MB"
        fetch_timeout = "10s"
    "#;

    #[test]
    fn a_complete_config_reads_and_validates() {
        let c: NotificationConfig = toml::from_str(GOOD).unwrap();
        assert_eq!(c.validate("src"), Ok(()));
        assert_eq!(c.auth.hmac.as_ref().unwrap().signature_header, "x-signature");
        assert_eq!(c.limits.fetch_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = GOOD.replace("region = ", "regoin = \"x\"\n        region = ");
        let err = toml::from_str::<NotificationConfig>(&text).unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c: NotificationConfig = toml::from_str(
            r#"
            [fields]
            notification_id = "id..x"
            file_id = "f"
            presigned_url = "u"
            bucket = "b"
            [auth]
            [fetch]
            allowed_hosts = ["*.com"]
            [acknowledgement]
            url = "ftp://x/{id}"
            [limits]
            max_bundle_bytes = 0
            "#,
        )
        .unwrap();
        let errors = c.validate("channel \"n\".source").unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "channel \"n\".source.fields.notification_id",
                "channel \"n\".source.fields.key",
                "channel \"n\".source.auth",
                "channel \"n\".source.fetch.allowed_hosts[0]",
                "channel \"n\".source.acknowledgement.url",
                "channel \"n\".source.limits.max_bundle_bytes",
            ],
            "{errors}"
        );
    }

    #[test]
    fn a_bucket_path_needs_storage_and_a_url_needs_hosts() {
        let c: NotificationConfig = toml::from_str(
            r#"
            fields = { notification_id = "id", file_id = "f", presigned_url = "u", bucket = "b", key = "k" }
            auth.bearer.token = "t"
            acknowledgement.url = "https://p.example/ack/{file_id}"
            "#,
        )
        .unwrap();
        let errors = c.validate("").unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["storage", "fetch.allowed_hosts"], "{errors}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c: NotificationConfig = toml::from_str(GOOD).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret = \"s\"") && !shown.contains("\"cs\"") && !shown.contains("\"ack\""),
            "{shown}"
        );
    }
}
