//! The `http` destination: one HTTP request per message.
//!
//! ```toml
//! type = "http"
//! url = "https://crm.example.org/api/hl7"
//! method = "post"
//! headers = { "X-Source" = "plexus" }
//! auth = { type = "bearer", token = "${CRM_TOKEN}" }
//! ```
//!
//! # Body
//!
//! By default the body is the message as it is (after transforms), sent
//! with the message's content type. With `body`, it is a
//! [minijinja](https://docs.rs/minijinja) template rendered per message with
//! `message` (the content as text), `message_base64`, `message_id`,
//! `channel`, `control_id` (absent when the message has none),
//! `received_at` (RFC 3339) and `content_type`; e.g.
//! `body = '{"id": {{ message_id|tojson }}, "hl7": {{ message|tojson }}}'`.
//! Rendering is limited by `template_fuel` (instructions per message), so a
//! runaway loop fails the delivery instead of stalling a worker, and an
//! undefined variable is an error rather than an empty string. A template
//! that fails is a permanent error: the same message fails the same way.
//!
//! # Authentication
//!
//! - `bearer`: `Authorization: Bearer TOKEN`.
//! - `basic`: `Authorization: Basic base64(USER:PASSWORD)`.
//! - `hmac`: the request is signed with HMAC-SHA256 over the timestamp and
//!   the body. Plexus sends `X-Plexus-Timestamp: T` (Unix seconds) and
//!   `X-Plexus-Signature: sha256=HEX` where
//!   `HEX = hex(HMAC-SHA256(secret, T + "." + body))`. The receiver
//!   recomputes it over the raw body it received, compares in constant
//!   time, and should reject timestamps more than a few minutes old to stop
//!   replays. Both header names are configurable.
//!
//! Secrets (tokens, passwords, HMAC keys, header values) are written
//! `${VAR}` in the file and expanded by the config loader; they are held as
//! [`Secret`], marked sensitive on the request, and never logged.
//!
//! # Answers
//!
//! 2xx is success (status and a body excerpt are kept with the delivery),
//! even when the body breaks off after the status (the receiver stalls or
//! closes the connection): the status is the receiver's answer, and
//! failing a delivery it took would send the message twice.
//! 408, 429 and 5xx are transient, with the `Retry-After` header (seconds or
//! an HTTP date) passed on in the error for the store's backoff; every
//! other status is permanent, including redirects, which are not followed
//! (an integration endpoint that moves is a configuration change, and
//! following it would resend credentials elsewhere). Timeouts and
//! connection failures are transient.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tracing::debug;

use super::{
    BuildContext, DeliveryError, DeliveryResponse, DestinationError, ErrorClass, Outbound, RESPONSE_EXCERPT_MAX,
    ResponseKind, Secret, TlsClientConfig,
};
use crate::config::{ConfigErrors, Duration};

/// Configuration of an `http` destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The URL to send to (`http` or `https`).
    pub url: String,
    /// `post` (the default), `put` or `patch`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers. Values may hold secrets (`${API_KEY}`) and are
    /// never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A minijinja template for the body; when absent the message content
    /// is sent as it is.
    #[serde(default)]
    pub body: Option<String>,
    /// The request's `Content-Type`. Defaults to the message's content type
    /// for raw bodies, `text/plain; charset=utf-8` for templated ones. A
    /// `Content-Type` in `headers` does the same (give one of the two).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Authentication, tagged by `type`: `bearer`, `basic` or `hmac`.
    #[serde(default)]
    pub auth: Option<HttpAuth>,
    /// TLS settings for `https` URLs (trusted CAs, client certificate).
    #[serde(default)]
    pub tls: Option<TlsClientConfig>,
    /// Time allowed for the whole request, answer included (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Time allowed to open the connection (default 10s).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Instructions a body template may run per message (default 100000).
    #[serde(default = "default_template_fuel")]
    pub template_fuel: u64,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_template_fuel() -> u64 {
    100_000
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

impl HttpMethod {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
        }
    }
}

/// How requests authenticate, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    /// `Authorization: Bearer TOKEN`.
    Bearer {
        /// The token (`${VAR}`).
        token: Secret,
    },
    /// `Authorization: Basic ...`.
    Basic {
        /// The user name.
        username: String,
        /// The password (`${VAR}`).
        password: Secret,
    },
    /// HMAC-SHA256 signature over timestamp and body (see the module docs).
    Hmac {
        /// The shared key (`${VAR}`).
        secret: Secret,
        /// The header carrying `sha256=HEX` (default `X-Plexus-Signature`).
        #[serde(default = "default_signature_header")]
        signature_header: String,
        /// The header carrying the Unix timestamp (default `X-Plexus-Timestamp`).
        #[serde(default = "default_timestamp_header")]
        timestamp_header: String,
    },
}

fn default_signature_header() -> String {
    "X-Plexus-Signature".to_owned()
}

fn default_timestamp_header() -> String {
    "X-Plexus-Timestamp".to_owned()
}

/// The signature value for `body` sent at `timestamp` (Unix seconds):
/// `sha256=` + hex HMAC-SHA256 over `"{timestamp}.{body}"`. Public so
/// tests and receivers written in Rust can verify requests.
pub fn hmac_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl HttpConfig {
    /// Checks URL, headers, auth, template and limits (no I/O).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                if u.scheme() == "http" && self.tls.is_some() {
                    errors.push(format!("{path}.tls"), "set for an http:// URL (use https://)");
                }
            }
            Ok(u) => errors.push(format!("{path}.url"), format!("scheme {:?} is not http or https", u.scheme())),
            Err(e) => errors.push(format!("{path}.url"), format!("not a URL: {e}")),
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(format!("{path}.headers.{name}"), "not a valid header name");
            } else if HeaderValue::from_str(value.expose()).is_err() {
                // The value may be a secret: say what is wrong, not what it is.
                errors.push(format!("{path}.headers.{name}"), "value has characters not allowed in a header");
            } else if name.eq_ignore_ascii_case("authorization") && self.auth.is_some() {
                // Both would be sent: two Authorization headers.
                errors.push(format!("{path}.headers.{name}"), "set next to auth: give one of them");
            } else if name.eq_ignore_ascii_case("content-type") && self.content_type.is_some() {
                errors.push(format!("{path}.headers.{name}"), "set next to content_type: give one of them");
            }
        }
        if let Some(content_type) = &self.content_type
            && HeaderValue::from_str(content_type).is_err()
        {
            errors.push(format!("{path}.content_type"), "not a valid header value");
        }
        if let Some(HttpAuth::Hmac { signature_header, timestamp_header, secret }) = &self.auth {
            for (field, name) in [("signature_header", signature_header), ("timestamp_header", timestamp_header)] {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    errors.push(format!("{path}.auth.{field}"), format!("{name:?} is not a valid header name"));
                }
            }
            if secret.expose().is_empty() {
                errors.push(format!("{path}.auth.secret"), "must not be empty");
            }
        }
        if let Some(body) = &self.body
            && let Err(e) = compile_template(body, self.template_fuel)
        {
            errors.push(format!("{path}.body"), format!("template: {e}"));
        }
        if self.timeout.get().is_zero() {
            errors.push(format!("{path}.timeout"), "must be more than 0");
        }
        if self.connect_timeout.get().is_zero() {
            errors.push(format!("{path}.connect_timeout"), "must be more than 0");
        }
        if self.template_fuel == 0 {
            errors.push(format!("{path}.template_fuel"), "must be more than 0");
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
            if tls.server_name.is_some() {
                errors.push(format!("{path}.tls.server_name"), "not supported for http (the URL's host is verified)");
            }
        }
    }

    /// Builds the HTTP client (reads the TLS files).
    pub fn build(&self, ctx: &BuildContext) -> Result<HttpDestination, DestinationError> {
        let invalid = |field: &str, message: String| {
            let mut errors = ConfigErrors::default();
            errors.push(field, message);
            DestinationError::Invalid(errors)
        };
        let url = url::Url::parse(&self.url).map_err(|e| invalid("url", e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid("headers", e.to_string()))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| invalid("headers", "invalid header value".to_owned()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        // A Content-Type among the headers is the content type: kept apart
        // so the request carries one (the builder appends, it does not
        // replace, so both would be sent).
        let content_type = match (&self.content_type, headers.remove(reqwest::header::CONTENT_TYPE)) {
            (Some(c), _) => Some(HeaderValue::from_str(c).map_err(|e| invalid("content_type", e.to_string()))?),
            (None, from_headers) => from_headers,
        };
        let template = match &self.body {
            Some(body) => Some(compile_template(body, self.template_fuel).map_err(|e| invalid("body", e))?),
            None => None,
        };
        let auth = match &self.auth {
            None => None,
            Some(HttpAuth::Bearer { token }) => Some(Auth::Bearer(token.clone())),
            Some(HttpAuth::Basic { username, password }) => Some(Auth::Basic(username.clone(), password.clone())),
            Some(HttpAuth::Hmac { secret, signature_header, timestamp_header }) => Some(Auth::Hmac {
                secret: secret.clone(),
                signature_header: HeaderName::from_bytes(signature_header.as_bytes())
                    .map_err(|e| invalid("auth.signature_header", e.to_string()))?,
                timestamp_header: HeaderName::from_bytes(timestamp_header.as_bytes())
                    .map_err(|e| invalid("auth.timestamp_header", e.to_string()))?,
            }),
        };

        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout.get())
            .connect_timeout(self.connect_timeout.get())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("plexus/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_file {
                let pem = super::read_file(ctx, ca, "tls.ca_file")?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| DestinationError::Tls { field: "tls.ca_file", reason: e.to_string() })?;
                if certs.is_empty() {
                    return Err(DestinationError::Tls {
                        field: "tls.ca_file",
                        reason: format!("{} holds no certificate", ca.display()),
                    });
                }
                builder = builder.tls_certs_only(certs);
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let mut pem = super::read_file(ctx, cert, "tls.cert_file")?;
                pem.push(b'\n');
                pem.extend(super::read_file(ctx, key, "tls.key_file")?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| DestinationError::Tls { field: "tls.cert_file", reason: e.to_string() })?;
                builder = builder.identity(identity);
            }
        }
        let client = builder.build().map_err(|e| DestinationError::HttpClient(e.to_string()))?;
        Ok(HttpDestination {
            client,
            url,
            method: self.method.as_reqwest(),
            headers,
            content_type,
            template,
            auth,
            timeout: self.timeout.get(),
        })
    }
}

fn compile_template(source: &str, fuel: u64) -> Result<minijinja::Environment<'static>, String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(fuel));
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    // Named without an extension so no HTML auto-escaping applies.
    env.add_template_owned("body", source.to_owned()).map_err(|e| e.to_string())?;
    Ok(env)
}

enum Auth {
    Bearer(Secret),
    Basic(String, Secret),
    Hmac { secret: Secret, signature_header: HeaderName, timestamp_header: HeaderName },
}

/// A built `http` destination (one connection-pooling client).
pub struct HttpDestination {
    client: reqwest::Client,
    url: url::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    content_type: Option<HeaderValue>,
    template: Option<minijinja::Environment<'static>>,
    auth: Option<Auth>,
    timeout: StdDuration,
}

impl std::fmt::Debug for HttpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL's host and path only: a query string may carry a key.
        f.debug_struct("HttpDestination")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("path", &self.url.path())
            .finish_non_exhaustive()
    }
}

impl HttpDestination {
    /// Sends one request.
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        let (body, default_type) = match &self.template {
            None => (out.content.to_vec(), out.content_type),
            Some(env) => (render(env, out)?.into_bytes(), "text/plain; charset=utf-8"),
        };
        let content_type = match &self.content_type {
            Some(c) => c.clone(),
            None => HeaderValue::from_str(default_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
        };
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type);
        match &self.auth {
            None => {}
            Some(Auth::Bearer(token)) => request = request.bearer_auth(token.expose()),
            Some(Auth::Basic(user, password)) => request = request.basic_auth(user, Some(password.expose())),
            Some(Auth::Hmac { secret, signature_header, timestamp_header }) => {
                let timestamp = chrono::Utc::now().timestamp();
                let mut signature =
                    HeaderValue::from_str(&hmac_signature(secret.expose().as_bytes(), timestamp, &body))
                        .map_err(|e| DeliveryError::Content { reason: e.to_string() })?;
                signature.set_sensitive(true);
                request = request
                    .header(timestamp_header.clone(), HeaderValue::from(timestamp))
                    .header(signature_header.clone(), signature);
            }
        }
        let address = self.address();
        let response = request.body(body).send().await.map_err(|e| self.request_error(e, &address))?;
        let status = response.status();
        let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(parse_retry_after);
        // The status decides: a body that breaks off after it (the receiver
        // stalls or drops the connection) leaves the excerpt short, but a
        // 2xx is still a delivery (retrying it would send the message again
        // to a receiver that took it) and a 4xx still permanent.
        let (body, broken) = read_excerpt(response).await;
        if let Some(e) = broken {
            debug!(
                message_id = out.message_id, status = status.as_u16(), error = %error_chain(&e.without_url()),
                "http answered; its body broke off"
            );
        }
        debug!(message_id = out.message_id, status = status.as_u16(), "http answered");
        if status.is_success() {
            Ok(DeliveryResponse {
                kind: ResponseKind::Http(status.as_u16()),
                summary: format!("HTTP {}", status.as_u16()),
                body: if body.is_empty() { None } else { Some(body) },
            })
        } else {
            Err(DeliveryError::HttpStatus { status: status.as_u16(), retry_after, body })
        }
    }

    fn address(&self) -> String {
        match (self.url.host_str(), self.url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => String::new(),
        }
    }

    fn request_error(&self, e: reqwest::Error, address: &str) -> DeliveryError {
        // Strip the URL: its query string may carry a key.
        let e = e.without_url();
        if e.is_timeout() {
            DeliveryError::Timeout { address: address.to_owned(), after: self.timeout }
        } else if e.is_connect() {
            DeliveryError::Connect { address: address.to_owned(), reason: error_chain(&e) }
        } else {
            DeliveryError::Connection { address: address.to_owned(), reason: error_chain(&e) }
        }
    }
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

fn render(env: &minijinja::Environment<'static>, out: &Outbound<'_>) -> Result<String, DeliveryError> {
    let template = env.get_template("body").map_err(|e| DeliveryError::Content { reason: e.to_string() })?;
    let message = String::from_utf8_lossy(out.content);
    let ctx = minijinja::context! {
        message => message.as_ref(),
        message_base64 => base64::engine::general_purpose::STANDARD.encode(out.content),
        message_id => out.message_id,
        channel => out.channel,
        control_id => out.control_id,
        received_at => out.received_at.to_rfc3339(),
        content_type => out.content_type,
    };
    template.render(ctx).map_err(|e| DeliveryError::Content { reason: format!("body template: {e}") })
}

/// Reads at most [`RESPONSE_EXCERPT_MAX`] bytes of the body, so a huge
/// answer cannot fill memory; the rest is dropped with the connection.
/// Returns what was read, and the error that ended the body early, if one
/// did (a timeout, a connection closed inside the body).
async fn read_excerpt(mut response: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut bytes = Vec::new();
    let mut broken = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_EXCERPT_MAX - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if bytes.len() >= RESPONSE_EXCERPT_MAX {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    (super::excerpt(&bytes, RESPONSE_EXCERPT_MAX), broken)
}

/// Retry (408, 429, 5xx) or dead-letter (everything else that is not 2xx).
pub fn status_class(status: u16) -> ErrorClass {
    match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The longest `Retry-After` honoured; beyond it the store's own backoff
/// applies (a receiver asking for days is more likely wrong than right).
const RETRY_AFTER_MAX: StdDuration = StdDuration::from_secs(24 * 3600);

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<StdDuration> {
    let text = value.to_str().ok()?.trim();
    let delay = if let Ok(seconds) = text.parse::<u64>() {
        StdDuration::from_secs(seconds)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(StdDuration::ZERO)
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> HttpConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(status_class(429), ErrorClass::Transient);
        assert_eq!(status_class(503), ErrorClass::Transient);
        assert_eq!(status_class(408), ErrorClass::Transient);
        assert_eq!(status_class(400), ErrorClass::Permanent);
        assert_eq!(status_class(404), ErrorClass::Permanent);
        assert_eq!(status_class(301), ErrorClass::Permanent);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after(&HeaderValue::from_static("120")), Some(StdDuration::from_secs(120)));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(StdDuration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(3600)).to_rfc2822();
        let d = parse_retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
        assert!(d > StdDuration::from_secs(3500) && d <= StdDuration::from_secs(3600), "{d:?}");
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
        assert_eq!(parse_retry_after(&HeaderValue::from_static("99999999")), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently:
        // printf '1700000000.hello' | openssl dgst -sha256 -hmac key
        assert_eq!(
            hmac_signature(b"key", 1_700_000_000, b"hello"),
            "sha256=4d583a269f4f276a3fa80ff31b5a01879a848096983222a17893d198418939aa"
        );
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let c = config(
            r#"
            url = "ftp://x"
            headers = { "bad header" = "v" }
            body = "{{ unclosed"
            timeout = 0
            auth = { type = "hmac", secret = "", signature_header = "a b" }
            "#,
        );
        let mut errors = ConfigErrors::default();
        c.validate("d", &mut errors);
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["d.url", "d.headers.bad header", "d.auth.signature_header", "d.auth.secret", "d.body", "d.timeout"]
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = config(
            r#"
            url = "https://x.example/api?key=abc"
            headers = { "X-Api-Key" = "s3cr3t-header" }
            auth = { type = "basic", username = "u", password = "s3cr3t-pw" }
            "#,
        );
        let text = format!("{c:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        let dest = c.build(&BuildContext::new("c", "d")).unwrap();
        let text = format!("{dest:?}");
        assert!(!text.contains("s3cr3t") && !text.contains("key=abc"), "{text}");
    }

    #[test]
    fn template_renders_the_message_and_fails_on_undefined() {
        let env = compile_template(r#"{"id": {{ message_id|tojson }}, "hl7": {{ message|tojson }}}"#, 10_000).unwrap();
        let out = Outbound {
            content: b"MSH|^~\\&|A\rPID|1\r",
            content_type: super::super::HL7_V2_CONTENT_TYPE,
            message_id: "m1",
            channel: "c",
            control_id: None,
            received_at: chrono::Utc::now(),
        };
        let body = render(&env, &out).unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["hl7"], "MSH|^~\\&|A\rPID|1\r");
        assert_eq!(json["id"], "m1");

        let env = compile_template("{{ nope }}", 10_000).unwrap();
        assert_eq!(render(&env, &out).unwrap_err().class(), ErrorClass::Permanent);
    }

    #[test]
    fn template_fuel_stops_runaway_loops() {
        let env = compile_template("{% for i in range(100000) %}{{ i }}{% endfor %}", 1_000).unwrap();
        let out = Outbound {
            content: b"x",
            content_type: "text/plain",
            message_id: "m1",
            channel: "c",
            control_id: None,
            received_at: chrono::Utc::now(),
        };
        let err = render(&env, &out).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }
}
