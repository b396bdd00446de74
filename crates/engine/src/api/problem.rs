//! JSON problem answers (RFC 9457, `application/problem+json`) for the REST
//! API. A problem says what the client got wrong or that the server could not
//! answer; it never carries internals: store errors are logged by their
//! [`store::StoreError::summary`] and answered with a generic text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;

/// The media type of problem answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `urn:plexus:problem:<kind>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request, without internals.
    pub detail: String,
    /// Extra headers (`WWW-Authenticate` on 401 and 403).
    #[serde(skip)]
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of kind `kind` (`urn:plexus:problem:<kind>`).
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("urn:plexus:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// 400: a query or body the API cannot use.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// 404: no such channel, message, destination ...
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed() -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take this method (GET /api/openapi.json lists each route's)",
        )
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 503: the store could not answer; `context` says what was being done.
    /// The error is logged (summary only: no message data), not returned.
    pub fn store(context: &str, e: &store::StoreError) -> Problem {
        warn!(error = %e.summary(), context, "api: store error");
        match e.class() {
            store::ErrorClass::Permanent => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                format!("{context} failed"),
            ),
            _ => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                format!("{context} failed: the store is unavailable, try again"),
            ),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status_code(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// The answer of a path under `/api` that no route serves.
pub async fn no_such_route() -> Problem {
    Problem::not_found("no API route has this path (GET /api/openapi.json lists them)")
}

/// The answer of a route called with a method it does not take.
pub async fn wrong_method() -> Problem {
    Problem::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_answer_without_internals() {
        let p = Problem::store("searching messages", &store::StoreError::Closed);
        assert_eq!(
            (p.status, p.detail.as_str()),
            (503, "searching messages failed: the store is unavailable, try again")
        );
        let p = Problem::store("reading a message", &store::StoreError::NotFound("MRN-123".into()));
        assert_eq!((p.status, p.detail.as_str()), (500, "reading a message failed"));
        let r = p.into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
