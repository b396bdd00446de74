//! The client's error type, its retry class, and the typed OperationOutcome.
//!
//! Every failure of a FHIR interaction becomes one [`FhirError`]. Its
//! [`class`](FhirError::class) tells the caller what to do: retry later
//! (transient: 429, 5xx, timeouts, version conflicts), give up on this request
//! (permanent: 4xx, invalid content), or fix the configuration (config). The
//! client has already retried transient failures as far as its retry policy
//! allows by the time an error reaches the caller.
//!
//! Error messages name the server, the method and the path of the request,
//! never its query string (a patient search carries names and birth dates) nor
//! any secret. The OperationOutcome's diagnostics are kept because the user
//! needs them to fix a rejected resource; callers that log errors at info level
//! or above should log [`FhirError::class`] and [`FhirError::status`], and the
//! full message only at debug.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a caller should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// May succeed later as it is: the server is busy or down (429, 502, 503,
    /// 504, 500), the request timed out, the connection failed, or the
    /// resource changed under us (409, 412).
    Transient,
    /// Will fail the same way again: the server rejected the request (4xx),
    /// the answer is not FHIR, the resource does not exist.
    Permanent,
    /// The server's configuration is wrong: a missing secret, an unreadable
    /// key, a base URL that cannot be used.
    Config,
}

impl ErrorClass {
    /// `transient`, `permanent` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Config => "config",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which request failed: server name, HTTP method and path (no query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The configured name of the server (`[fhir_servers.<name>]`).
    pub server: String,
    /// The HTTP method.
    pub method: String,
    /// The path relative to the base URL, without the query string:
    /// `Patient/123`, `Observation`, `` (the base, for batches).
    pub path: String,
}

impl fmt::Display for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "/" } else { self.path.as_str() };
        write!(f, "{}: {} {}", self.server, self.method, path)
    }
}

/// Everything that can go wrong talking to a FHIR server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The server's configuration cannot be used (missing secret, bad key,
    /// bad base URL). Nothing was sent.
    #[error("{server}: configuration: {reason}")]
    Config {
        /// The configured server name.
        server: String,
        /// What is wrong; names environment variables, never their values.
        reason: String,
    },

    /// The server answered with an error status (after any retries).
    #[error("{context}: HTTP {status}{}", outcome_suffix(.outcome.as_ref()))]
    Status {
        /// The request.
        context: RequestContext,
        /// The HTTP status code.
        status: u16,
        /// The OperationOutcome in the body, when there was one.
        outcome: Option<OperationOutcome>,
        /// The server's Retry-After, when it sent one.
        retry_after: Option<Duration>,
    },

    /// No answer within the configured timeout (after any retries).
    #[error("{context}: timed out after {attempts} attempt(s)")]
    Timeout {
        /// The request.
        context: RequestContext,
        /// How many times it was sent.
        attempts: u32,
    },

    /// The connection failed or broke (after any retries).
    #[error("{context}: connection failed after {attempts} attempt(s): {source}")]
    Transport {
        /// The request.
        context: RequestContext,
        /// How many times it was sent.
        attempts: u32,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },

    /// Obtaining an access token failed.
    #[error("{server}: authentication failed: {reason}")]
    Auth {
        /// The configured server name.
        server: String,
        /// What went wrong (the token endpoint's `error` and
        /// `error_description`, or the transport failure). Never the token
        /// or the client secret.
        reason: String,
        /// The token endpoint's HTTP status, when it answered.
        status: Option<u16>,
        /// Whether a later attempt may succeed (token endpoint down or busy).
        transient: bool,
    },

    /// The server answered 2xx with something that is not what FHIR says it
    /// should be (not JSON, a Bundle of the wrong type, a next link to
    /// another host).
    #[error("{context}: invalid response: {reason}")]
    InvalidResponse {
        /// The request.
        context: RequestContext,
        /// What is wrong with it.
        reason: String,
    },

    /// The caller passed something the client cannot send (a resource
    /// without `resourceType`, an update without `id`). Nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

fn outcome_suffix(outcome: Option<&OperationOutcome>) -> String {
    match outcome {
        Some(o) if !o.issues.is_empty() => format!(": {}", o.summary()),
        _ => String::new(),
    }
}

impl FhirError {
    /// What the caller should do about it: see [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            FhirError::Config { .. } => ErrorClass::Config,
            FhirError::Status { status, outcome, .. } => {
                let outcome = outcome.as_ref();
                // A 409/412 is a version conflict (run again with fresh
                // data) unless the server says the condition matched
                // several resources: that fails the same way every time.
                if outcome.is_some_and(OperationOutcome::is_ambiguous) {
                    ErrorClass::Permanent
                } else if is_transient_status(*status) || outcome.is_some_and(OperationOutcome::is_transient) {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            FhirError::Timeout { .. } | FhirError::Transport { .. } => ErrorClass::Transient,
            FhirError::Auth { transient, .. } => {
                if *transient {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            FhirError::InvalidResponse { .. } | FhirError::InvalidRequest(_) => ErrorClass::Permanent,
        }
    }

    /// The HTTP status of the failed request, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            FhirError::Status { status, .. } => Some(*status),
            FhirError::Auth { status, .. } => *status,
            _ => None,
        }
    }

    /// The server's OperationOutcome, when it sent one.
    pub fn outcome(&self) -> Option<&OperationOutcome> {
        match self {
            FhirError::Status { outcome, .. } => outcome.as_ref(),
            _ => None,
        }
    }

    /// True for 404 Not Found and 410 Gone (deleted).
    pub fn is_not_found(&self) -> bool {
        matches!(self.status(), Some(404 | 410))
    }

    /// True when the server says it does not know the interaction (404 or
    /// 405 on an operation or endpoint, 501 Not Implemented): the caller may
    /// fall back to another way of doing the same thing.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.status(), Some(404 | 405 | 501))
    }
}

/// 408 Request Timeout, 409 Conflict and 412 Precondition Failed (someone
/// else changed the resource: a later run sees the new version), 429 Too Many
/// Requests, and every 5xx except 501 Not Implemented.
pub(crate) fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 412 | 429) || (status >= 500 && status != 501)
}

/// A FHIR OperationOutcome, reduced to what callers act on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OperationOutcome {
    /// The issues, in the server's order.
    pub issues: Vec<OutcomeIssue>,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutcomeIssue {
    /// `fatal`, `error`, `warning` or `information`.
    pub severity: String,
    /// The issue type code (`invalid`, `not-found`, `transient` ...).
    pub code: String,
    /// `issue.diagnostics`, the server's free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// `issue.details.text` (some servers put their message here instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// `issue.expression` (or the deprecated `issue.location`): where in the
    /// resource the problem is.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub expression: Vec<String>,
}

impl OperationOutcome {
    /// Parses an OperationOutcome resource; `None` when `value` is not one.
    pub fn from_value(value: &Value) -> Option<OperationOutcome> {
        if value.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
            return None;
        }
        let issues = value
            .get("issue")
            .and_then(Value::as_array)
            .map(|issues| issues.iter().map(OutcomeIssue::from_value).collect())
            .unwrap_or_default();
        Some(OperationOutcome { issues })
    }

    /// One line: each issue as `severity code: text at expression`, joined
    /// with `; `.
    pub fn summary(&self) -> String {
        self.issues.iter().map(OutcomeIssue::summary).collect::<Vec<_>>().join("; ")
    }

    /// The diagnostics (or details text) of every issue, in order.
    pub fn diagnostics(&self) -> Vec<&str> {
        self.issues.iter().filter_map(|i| i.text()).collect()
    }

    /// True when some error issue says a condition matched several
    /// resources (`multiple-matches`) or a resource already exists
    /// (`duplicate`).
    pub fn is_ambiguous(&self) -> bool {
        self.issues.iter().any(|i| matches!(i.code.as_str(), "multiple-matches" | "duplicate"))
    }

    /// True when some error issue says a retry may help (`transient`,
    /// `lock-error`, `timeout`, `throttled`, `incomplete`).
    pub fn is_transient(&self) -> bool {
        self.issues.iter().any(|i| {
            matches!(i.severity.as_str(), "error" | "fatal")
                && matches!(i.code.as_str(), "transient" | "lock-error" | "timeout" | "throttled" | "incomplete")
        })
    }
}

impl OutcomeIssue {
    fn from_value(value: &Value) -> OutcomeIssue {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let strings = |key: &str| -> Vec<String> {
            value
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let mut expression = strings("expression");
        if expression.is_empty() {
            expression = strings("location");
        }
        OutcomeIssue {
            severity: text("severity").unwrap_or_default(),
            code: text("code").unwrap_or_default(),
            diagnostics: text("diagnostics"),
            details: value.get("details").and_then(|d| d.get("text")).and_then(Value::as_str).map(str::to_owned),
            expression,
        }
    }

    /// The human-readable text: diagnostics, else details.text.
    pub fn text(&self) -> Option<&str> {
        self.diagnostics.as_deref().or(self.details.as_deref())
    }

    fn summary(&self) -> String {
        let mut s = format!("{} {}", self.severity, self.code);
        if let Some(text) = self.text() {
            s.push_str(": ");
            s.push_str(text);
        }
        if !self.expression.is_empty() {
            s.push_str(" at ");
            s.push_str(&self.expression.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status_error(status: u16, outcome: Option<OperationOutcome>) -> FhirError {
        FhirError::Status {
            context: RequestContext { server: "ehr".into(), method: "GET".into(), path: "Patient/1".into() },
            status,
            outcome,
            retry_after: None,
        }
    }

    #[test]
    fn outcome_parses_diagnostics_details_and_expression() {
        let oo = OperationOutcome::from_value(&json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "birthDate is not a date",
                 "expression": ["Patient.birthDate"]},
                {"severity": "warning", "code": "processing", "details": {"text": "from details"},
                 "location": ["Patient.gender"]}
            ]
        }))
        .expect("an OperationOutcome");
        assert_eq!(oo.issues.len(), 2);
        assert_eq!(oo.diagnostics(), vec!["birthDate is not a date", "from details"]);
        assert_eq!(oo.issues[1].expression, vec!["Patient.gender"]);
        assert_eq!(
            oo.summary(),
            "error invalid: birthDate is not a date at Patient.birthDate; \
             warning processing: from details at Patient.gender"
        );
    }

    #[test]
    fn non_outcome_is_not_parsed() {
        assert!(OperationOutcome::from_value(&json!({"resourceType": "Patient"})).is_none());
        assert!(OperationOutcome::from_value(&json!("text")).is_none());
    }

    #[test]
    fn status_classes() {
        for s in [408, 409, 412, 429, 500, 502, 503, 504] {
            assert_eq!(status_error(s, None).class(), ErrorClass::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422, 501] {
            assert_eq!(status_error(s, None).class(), ErrorClass::Permanent, "{s}");
        }
    }

    #[test]
    fn multiple_matches_make_a_412_permanent() {
        let oo = OperationOutcome::from_value(&json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "multiple-matches",
                       "details": {"text": "Multiple resources found matching condition"}}]}));
        assert_eq!(status_error(412, oo).class(), ErrorClass::Permanent);
        assert_eq!(status_error(412, None).class(), ErrorClass::Transient);
    }

    #[test]
    fn transient_issue_code_makes_a_4xx_transient() {
        let oo = OperationOutcome {
            issues: vec![OutcomeIssue { severity: "error".into(), code: "lock-error".into(), ..Default::default() }],
        };
        assert_eq!(status_error(400, Some(oo)).class(), ErrorClass::Transient);
    }

    #[test]
    fn message_has_path_and_diagnostics_but_no_query() {
        let oo = OperationOutcome::from_value(&json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad gender"}]
        }));
        let msg = status_error(400, oo).to_string();
        assert_eq!(msg, "ehr: GET Patient/1: HTTP 400: error invalid: bad gender");
    }
}
