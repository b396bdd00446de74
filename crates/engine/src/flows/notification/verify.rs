//! Verifying that a notification comes from the partner. Pure: the current
//! time is passed in, so replay windows are tested without a clock.
//!
//! # The signature scheme
//!
//! The partner sends two headers (names configurable, defaults shown):
//!
//! - `x-timestamp`: the Unix time in whole seconds at which it signed, as
//!   ASCII decimal digits;
//! - `x-signature`: lower- or upper-case hex of
//!   `HMAC-SHA256(secret, timestamp_header_value + "." + raw_body_bytes)`,
//!   optionally prefixed with `sha256=`.
//!
//! The timestamp is part of the signed text, so it cannot be swapped; a
//! request whose timestamp is more than the tolerance away from our clock
//! (either way) is rejected, so a captured request cannot be replayed later.
//! The signature is compared in constant time (`hmac`'s `verify_slice`).
//!
//! A bearer token, when configured, is compared in constant time with
//! `subtle` after hashing both sides with SHA-256, so neither the content
//! nor the length of the expected token leaks through timing.
//!
//! Every failure maps to an HTTP status (400 for a malformed request, 401
//! for one that does not prove who sent it) and to a JSON problem
//! ([`Problem`]) that says what was wrong without echoing secrets or
//! internals.

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{BearerConfig, HmacConfig, InboundAuth};

type HmacSha256 = Hmac<Sha256>;

/// Why a notification was not accepted as authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The signature header is absent.
    #[error("the {0} header is missing")]
    MissingSignature(String),
    /// The timestamp header is absent.
    #[error("the {0} header is missing")]
    MissingTimestamp(String),
    /// The timestamp is not a Unix time in seconds.
    #[error("the {0} header is not a Unix time in seconds")]
    MalformedTimestamp(String),
    /// The signature is not hex.
    #[error("the {0} header is not a hex HMAC-SHA256 signature")]
    MalformedSignature(String),
    /// The timestamp is outside the tolerance window (a replay, or a clock
    /// far off).
    #[error("the timestamp is {skew_secs} s away from the server's clock (tolerance {tolerance_secs} s)")]
    StaleTimestamp {
        /// How far off, in seconds (absolute).
        skew_secs: u64,
        /// The configured tolerance.
        tolerance_secs: u64,
    },
    /// The signature does not match the body and timestamp.
    #[error("the signature does not match")]
    BadSignature,
    /// No `Authorization: Bearer` header.
    #[error("the Authorization header with a bearer token is missing")]
    MissingBearer,
    /// The bearer token is wrong.
    #[error("the bearer token is not valid")]
    BadBearer,
}

impl AuthError {
    /// The HTTP status to answer with: 400 for a malformed request, 401 for
    /// failed authentication.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::MalformedTimestamp(_) | AuthError::MalformedSignature(_) => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// A short stable slug for the problem type and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::MissingSignature(_) => "missing-signature",
            AuthError::MissingTimestamp(_) => "missing-timestamp",
            AuthError::MalformedTimestamp(_) => "malformed-timestamp",
            AuthError::MalformedSignature(_) => "malformed-signature",
            AuthError::StaleTimestamp { .. } => "stale-timestamp",
            AuthError::BadSignature => "bad-signature",
            AuthError::MissingBearer => "missing-bearer-token",
            AuthError::BadBearer => "bad-bearer-token",
        }
    }

    /// The JSON problem answering this error.
    pub fn problem(&self) -> Problem {
        let title = match self.status() {
            http::StatusCode::BAD_REQUEST => "Malformed notification request",
            _ => "Notification not authenticated",
        };
        Problem::new(self.status(), self.kind(), title, self.to_string())
    }
}

/// An RFC 9457 problem document (`application/problem+json`). The `detail`
/// says what the client got wrong; it never carries internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the problem type (`urn:plexus:problem:<kind>`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short human summary of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

/// The media type of [`Problem`] bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl Problem {
    /// A problem of kind `kind` (becomes `urn:plexus:problem:<kind>`).
    pub fn new(status: http::StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("urn:plexus:problem:{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        let status = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        // Serialising four strings and a number cannot fail.
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, [(http::header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}

/// Checks notifications against the configured inbound authentication.
#[derive(Debug, Clone)]
pub struct Verifier {
    auth: InboundAuth,
}

impl Verifier {
    /// A verifier for `auth` (validated config).
    pub fn new(auth: InboundAuth) -> Self {
        Verifier { auth }
    }

    /// Verifies one request: `headers` and the raw `body` as received,
    /// `now_unix` the server's current Unix time in seconds. Every
    /// configured method must pass.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), AuthError> {
        if let Some(bearer) = &self.auth.bearer {
            verify_bearer(bearer, headers)?;
        }
        if let Some(h) = &self.auth.hmac {
            verify_hmac(h, headers, body, now_unix)?;
        }
        Ok(())
    }
}

/// Verifies the HMAC-SHA256 signature and the timestamp window.
pub fn verify_hmac(config: &HmacConfig, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), AuthError> {
    let timestamp = headers
        .get(config.timestamp_header.as_str())
        .ok_or_else(|| AuthError::MissingTimestamp(config.timestamp_header.clone()))?
        .as_bytes();
    let signature = headers
        .get(config.signature_header.as_str())
        .ok_or_else(|| AuthError::MissingSignature(config.signature_header.clone()))?
        .as_bytes();

    let ts_text = std::str::from_utf8(timestamp)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| AuthError::MalformedTimestamp(config.timestamp_header.clone()))?;
    let ts: i64 = ts_text.parse().map_err(|_| AuthError::MalformedTimestamp(config.timestamp_header.clone()))?;

    let sig_text = signature.strip_prefix(b"sha256=").unwrap_or(signature);
    let sig = hex::decode(sig_text).map_err(|_| AuthError::MalformedSignature(config.signature_header.clone()))?;

    // The signature is checked before the window, so an unauthenticated
    // caller learns nothing about our clock.
    let mut mac = HmacSha256::new_from_slice(config.secret.as_bytes()).map_err(|_| AuthError::BadSignature)?;
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;

    let skew = now_unix.abs_diff(ts);
    let tolerance = config.tolerance.get().as_secs();
    if skew > tolerance {
        return Err(AuthError::StaleTimestamp { skew_secs: skew, tolerance_secs: tolerance });
    }
    Ok(())
}

/// Verifies `Authorization: Bearer <token>`.
pub fn verify_bearer(config: &BearerConfig, headers: &HeaderMap) -> Result<(), AuthError> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or(AuthError::MissingBearer)?.as_bytes();
    let token = strip_bearer(value).ok_or(AuthError::MissingBearer)?;
    let given = Sha256::digest(token);
    let expected = Sha256::digest(config.token.as_bytes());
    if bool::from(given.as_slice().ct_eq(expected.as_slice())) { Ok(()) } else { Err(AuthError::BadBearer) }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// The hex HMAC-SHA256 signature of `timestamp + "." + body`: what a
/// partner sends, and what Plexus sends on signed acknowledgements.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;

    fn hmac_config() -> HmacConfig {
        HmacConfig {
            secret: "top-secret".into(),
            signature_header: "x-signature".into(),
            timestamp_header: "x-timestamp".into(),
            tolerance: Duration::from_secs(300),
        }
    }

    fn signed(ts: &str, body: &[u8], secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-timestamp", ts.parse().unwrap());
        h.insert("x-signature", sign(secret.as_bytes(), ts, body).parse().unwrap());
        h
    }

    const NOW: i64 = 1_795_000_000;

    #[test]
    fn a_correct_signature_inside_the_window_passes() {
        let body = br#"{"id":"n1"}"#;
        let h = signed(&NOW.to_string(), body, "top-secret");
        assert_eq!(verify_hmac(&hmac_config(), &h, body, NOW + 299), Ok(()));
        assert_eq!(verify_hmac(&hmac_config(), &h, body, NOW - 299), Ok(()));
    }

    #[test]
    fn a_known_vector_matches_the_documented_scheme() {
        // Computed independently:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", "1700000000", b"{}"),
            "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn the_sha256_prefix_and_upper_case_hex_are_accepted() {
        let body = b"{}";
        let sig = sign(b"top-secret", &NOW.to_string(), body).to_uppercase();
        let mut h = HeaderMap::new();
        h.insert("x-timestamp", NOW.to_string().parse().unwrap());
        h.insert("x-signature", format!("sha256={sig}").parse().unwrap());
        assert_eq!(verify_hmac(&hmac_config(), &h, body, NOW), Ok(()));
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let h = signed(&NOW.to_string(), b"{\"id\":\"n1\"}", "top-secret");
        assert_eq!(verify_hmac(&hmac_config(), &h, b"{\"id\":\"n2\"}", NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_wrong_secret_is_rejected() {
        let h = signed(&NOW.to_string(), b"{}", "other");
        assert_eq!(verify_hmac(&hmac_config(), &h, b"{}", NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_swapped_timestamp_breaks_the_signature() {
        let mut h = signed(&NOW.to_string(), b"{}", "top-secret");
        h.insert("x-timestamp", (NOW + 1).to_string().parse().unwrap());
        assert_eq!(verify_hmac(&hmac_config(), &h, b"{}", NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_replay_outside_the_window_is_rejected_either_way() {
        let h = signed(&NOW.to_string(), b"{}", "top-secret");
        let err = verify_hmac(&hmac_config(), &h, b"{}", NOW + 301).unwrap_err();
        assert_eq!(err, AuthError::StaleTimestamp { skew_secs: 301, tolerance_secs: 300 });
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        assert!(matches!(verify_hmac(&hmac_config(), &h, b"{}", NOW - 301), Err(AuthError::StaleTimestamp { .. })));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let mut h = HeaderMap::new();
        assert_eq!(verify_hmac(&hmac_config(), &h, b"{}", NOW), Err(AuthError::MissingTimestamp("x-timestamp".into())));
        h.insert("x-timestamp", "yesterday".parse().unwrap());
        assert_eq!(verify_hmac(&hmac_config(), &h, b"{}", NOW), Err(AuthError::MissingSignature("x-signature".into())));
        h.insert("x-signature", "zz".parse().unwrap());
        let err = verify_hmac(&hmac_config(), &h, b"{}", NOW).unwrap_err();
        assert_eq!(err, AuthError::MalformedTimestamp("x-timestamp".into()));
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        h.insert("x-timestamp", "-5".parse().unwrap());
        assert_eq!(
            verify_hmac(&hmac_config(), &h, b"{}", NOW),
            Err(AuthError::MalformedTimestamp("x-timestamp".into()))
        );
        h.insert("x-timestamp", NOW.to_string().parse().unwrap());
        assert_eq!(
            verify_hmac(&hmac_config(), &h, b"{}", NOW),
            Err(AuthError::MalformedSignature("x-signature".into()))
        );
    }

    #[test]
    fn bearer_tokens_are_compared_exactly() {
        let cfg = BearerConfig { token: "abc123".into() };
        let mut h = HeaderMap::new();
        assert_eq!(verify_bearer(&cfg, &h), Err(AuthError::MissingBearer));
        h.insert(http::header::AUTHORIZATION, "Basic abc123".parse().unwrap());
        assert_eq!(verify_bearer(&cfg, &h), Err(AuthError::MissingBearer));
        h.insert(http::header::AUTHORIZATION, "Bearer abc12".parse().unwrap());
        assert_eq!(verify_bearer(&cfg, &h), Err(AuthError::BadBearer));
        h.insert(http::header::AUTHORIZATION, "Bearer abc1234".parse().unwrap());
        assert_eq!(verify_bearer(&cfg, &h), Err(AuthError::BadBearer));
        h.insert(http::header::AUTHORIZATION, "bearer abc123".parse().unwrap());
        assert_eq!(verify_bearer(&cfg, &h), Ok(()));
    }

    #[test]
    fn both_methods_must_pass_when_both_are_configured() {
        let v = Verifier::new(InboundAuth {
            hmac: Some(hmac_config()),
            bearer: Some(BearerConfig { token: "abc123".into() }),
        });
        let mut h = signed(&NOW.to_string(), b"{}", "top-secret");
        assert_eq!(v.verify(&h, b"{}", NOW), Err(AuthError::MissingBearer));
        h.insert(http::header::AUTHORIZATION, "Bearer abc123".parse().unwrap());
        assert_eq!(v.verify(&h, b"{}", NOW), Ok(()));
    }

    #[test]
    fn the_problem_names_the_failure_without_internals() {
        let p = AuthError::BadSignature.problem();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "urn:plexus:problem:bad-signature");
        assert_eq!(json["status"], 401);
        assert_eq!(json["title"], "Notification not authenticated");
        assert_eq!(json["detail"], "the signature does not match");
        let stale = AuthError::StaleTimestamp { skew_secs: 400, tolerance_secs: 300 }.problem();
        assert!(!stale.detail.contains("top-secret"));
    }

    #[tokio::test]
    async fn a_problem_becomes_a_problem_json_response() {
        use axum::response::IntoResponse;
        let response = AuthError::MissingBearer.problem().into_response();
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:plexus:problem:missing-bearer-token");
        assert_eq!(json["status"], 401);
    }
}
