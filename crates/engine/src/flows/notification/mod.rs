//! Partner notifications (issue 7): a partner platform announces that a new
//! FHIR bundle is ready; Plexus verifies the announcement, dedupes it,
//! fetches the bundle, converts and delivers it, and only then acknowledges
//! the partner.
//!
//! This module holds the self-contained core, each part testable without
//! the runtime:
//!
//! - [`config`]: `NotificationConfig` (field paths, auth, URL allow-list,
//!   object storage, acknowledgement, limits) and its validation;
//! - [`verify`]: HMAC-SHA256 signature with a replay window, bearer token,
//!   and the JSON problems answering failures (pure);
//! - [`parse`]: the notification body into ids, patient, bundle location
//!   and dedupe keys (pure);
//! - [`guard`]: the SSRF guard for URLs carried in notifications;
//! - [`fetch`]: the pre-signed URL fetch (streamed, size limit, timeout,
//!   redirects re-checked) and the object-storage read with temporary
//!   credentials from the partner's token service.
//!
//! - [`stage`]: the flow inside the destination workers (fetch, convert,
//!   queue the acknowledgement once every destination has the bundle);
//! - [`json`]: the `json` output (the bundle's resources through mapping
//!   rules);
//! - [`ack`]: the worker sending queued acknowledgements with retries.
//!
//! The engine source ([`crate::sources::notification`]: HTTP endpoint,
//! storing before 202, dedupe in the store) wires these parts to the
//! runtime; docs/notifications.md describes the whole flow.

pub mod ack;
pub mod config;
pub mod fetch;
pub mod guard;
pub mod json;
pub mod parse;
pub mod stage;
pub mod verify;

pub use config::NotificationConfig;
pub use fetch::{BundleFetcher, FetchError};
pub use guard::{GuardError, UrlGuard};
pub use parse::{BundleLocation, DedupeKey, Notification, ParseError, parse};
pub use verify::{AuthError, Problem, Verifier};

/// The acknowledgement URL for one notification: `{notification_id}` and
/// `{file_id}` in `template` replaced by the ids, percent-encoded as one
/// path segment (an id cannot add path segments or a query).
pub fn ack_url_for(template: &str, notification_id: &str, file_id: &str) -> String {
    template
        .replace("{notification_id}", &encode_segment(notification_id))
        .replace("{file_id}", &encode_segment(file_id))
}

fn encode_segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_urls_encode_ids_as_one_segment() {
        assert_eq!(
            ack_url_for("https://p.example/n/{notification_id}/files/{file_id}/ack", "a/b?c", "x y"),
            "https://p.example/n/a%2Fb%3Fc/files/x%20y/ack"
        );
    }
}
