//! Reading a notification's JSON body into a [`Notification`]. Pure.
//!
//! Field locations are configured as dot paths ([`FieldPaths`]); a numeric
//! segment indexes an array. Ids may be JSON strings or integers (partners
//! differ); anything else at a configured path is an error naming the path.

use serde_json::Value;
use url::Url;

use super::config::FieldPaths;

/// A parsed, not yet fetched notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The partner's id of this notification.
    pub notification_id: String,
    /// The partner's id of the announced file.
    pub file_id: String,
    /// The patient, when configured and present (the order key).
    pub patient: Option<String>,
    /// Where the bundle is.
    pub location: BundleLocation,
}

/// Where the announced bundle can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleLocation {
    /// A pre-signed URL (still to be checked by the URL guard).
    PresignedUrl(Url),
    /// An object in the partner's storage, read with temporary credentials.
    Object {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
}

/// The keys a notification is deduplicated by: a repeat of either is a
/// duplicate (the partner may re-notify one file under a new notification
/// id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DedupeKey {
    /// `notification:<id>`.
    Notification(String),
    /// `file:<id>`.
    File(String),
}

impl DedupeKey {
    /// The key as stored: `notification:<id>` or `file:<id>`.
    pub fn as_stored(&self) -> String {
        match self {
            DedupeKey::Notification(id) => format!("notification:{id}"),
            DedupeKey::File(id) => format!("file:{id}"),
        }
    }
}

impl Notification {
    /// The dedupe keys, notification id first.
    pub fn dedupe_keys(&self) -> [DedupeKey; 2] {
        [DedupeKey::Notification(self.notification_id.clone()), DedupeKey::File(self.file_id.clone())]
    }
}

/// Why a notification body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON (the message is serde's, which names a line and
    /// column but never echoes the content).
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    /// A configured field is absent or null.
    #[error("the field `{0}` is missing")]
    Missing(String),
    /// A configured field holds the wrong kind of value.
    #[error("the field `{path}` must be {expected}")]
    WrongType {
        /// The configured path.
        path: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Neither a URL nor a bucket and key are present.
    #[error("the notification carries neither `{url}` nor `{bucket}` and `{key}`")]
    NoLocation {
        /// The URL path (or `-` when not configured).
        url: String,
        /// The bucket path.
        bucket: String,
        /// The key path.
        key: String,
    },
    /// The URL field does not hold a URL.
    #[error("the field `{0}` is not a URL")]
    BadUrl(String),
}

impl ParseError {
    /// Every parse error is the sender's: 400 for a body that is not JSON,
    /// 422 for JSON without the configured fields or with the wrong kind of
    /// value in one (docs/notifications.md).
    pub fn status(&self) -> http::StatusCode {
        match self {
            ParseError::NotJson(_) => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The JSON problem answering this error.
    pub fn problem(&self) -> super::verify::Problem {
        super::verify::Problem::new(self.status(), "malformed-notification", "Malformed notification", self.to_string())
    }
}

/// Parses a notification body with the configured field paths.
pub fn parse(fields: &FieldPaths, body: &[u8]) -> Result<Notification, ParseError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let notification_id = required_id(&json, &fields.notification_id)?;
    let file_id = required_id(&json, &fields.file_id)?;
    let patient = match &fields.patient {
        Some(p) => optional_id(&json, p)?,
        None => None,
    };

    let url = match &fields.presigned_url {
        Some(p) => optional_string(&json, p)?.map(|s| (p, s)),
        None => None,
    };
    let location = if let Some((path, text)) = url {
        BundleLocation::PresignedUrl(Url::parse(&text).map_err(|_| ParseError::BadUrl(path.clone()))?)
    } else {
        match (&fields.bucket, &fields.key) {
            (Some(bp), Some(kp)) => match (optional_string(&json, bp)?, optional_string(&json, kp)?) {
                (Some(bucket), Some(key)) => BundleLocation::Object { bucket, key },
                (None, _) if fields.presigned_url.is_none() => {
                    return Err(ParseError::Missing(bp.clone()));
                }
                (Some(_), None) => return Err(ParseError::Missing(kp.clone())),
                _ => return Err(no_location(fields)),
            },
            _ => return Err(no_location(fields)),
        }
    };
    Ok(Notification { notification_id, file_id, patient, location })
}

fn no_location(fields: &FieldPaths) -> ParseError {
    let show = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".into());
    ParseError::NoLocation { url: show(&fields.presigned_url), bucket: show(&fields.bucket), key: show(&fields.key) }
}

/// The value at dot path `path`, `None` when absent or null.
pub fn lookup<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = json;
    for segment in path.split('.') {
        at = match at {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!at.is_null()).then_some(at)
}

fn optional_id(json: &Value, path: &str) -> Result<Option<String>, ParseError> {
    match lookup(json, path) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ParseError::Missing(path.to_string())),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(_) => Err(ParseError::WrongType { path: path.to_string(), expected: "a string or an integer" }),
    }
}

/// The notification and file ids fill one path segment each of the
/// acknowledgement URL (percent-encoded); `.` and `..` would stay dot
/// segments there, which URL parsing resolves to another path of the
/// partner's server, so they are refused.
fn required_id(json: &Value, path: &str) -> Result<String, ParseError> {
    let id = optional_id(json, path)?.ok_or_else(|| ParseError::Missing(path.to_string()))?;
    if id == "." || id == ".." {
        return Err(ParseError::WrongType { path: path.to_string(), expected: "an id other than `.` and `..`" });
    }
    Ok(id)
}

fn optional_string(json: &Value, path: &str) -> Result<Option<String>, ParseError> {
    match lookup(json, path) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ParseError::WrongType { path: path.to_string(), expected: "a string" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FieldPaths {
        FieldPaths {
            notification_id: "id".into(),
            file_id: "data.fileId".into(),
            patient: Some("data.patient.id".into()),
            presigned_url: Some("data.url".into()),
            bucket: Some("data.location.bucket".into()),
            key: Some("data.location.key".into()),
        }
    }

    #[test]
    fn a_presigned_notification_is_read() {
        let body = br#"{"id":"n-1","data":{"fileId":77,"patient":{"id":"p-9"},"url":"https://files.example/b?sig=1"}}"#;
        let n = parse(&fields(), body).unwrap();
        assert_eq!(n.notification_id, "n-1");
        assert_eq!(n.file_id, "77");
        assert_eq!(n.patient.as_deref(), Some("p-9"));
        assert_eq!(n.location, BundleLocation::PresignedUrl(Url::parse("https://files.example/b?sig=1").unwrap()));
        assert_eq!(n.dedupe_keys().map(|k| k.as_stored()), ["notification:n-1".to_string(), "file:77".to_string()]);
    }

    #[test]
    fn an_object_notification_is_read() {
        let body = br#"{"id":"n-2","data":{"fileId":"f-2","location":{"bucket":"b","key":"p/1.json"}}}"#;
        let n = parse(&fields(), body).unwrap();
        assert_eq!(n.location, BundleLocation::Object { bucket: "b".into(), key: "p/1.json".into() });
        assert_eq!(n.patient, None);
    }

    #[test]
    fn array_segments_index_arrays() {
        let mut f = fields();
        f.file_id = "files.1.id".into();
        let body = br#"{"id":"n","files":[{"id":"a"},{"id":"b"}],"data":{"url":"https://x.example/"}}"#;
        assert_eq!(parse(&f, body).unwrap().file_id, "b");
    }

    #[test]
    fn errors_name_the_missing_path() {
        assert_eq!(parse(&fields(), br#"{"data":{"fileId":"f"}}"#), Err(ParseError::Missing("id".into())));
        assert_eq!(parse(&fields(), br#"{"id":"n","data":{}}"#), Err(ParseError::Missing("data.fileId".into())));
        assert_eq!(parse(&fields(), br#"{"id":" ","data":{"fileId":"f"}}"#), Err(ParseError::Missing("id".into())));
        assert_eq!(
            parse(&fields(), br#"{"id":"n","data":{"fileId":"f","location":{"bucket":"b"}}}"#),
            Err(ParseError::Missing("data.location.key".into()))
        );
        assert!(matches!(parse(&fields(), br#"{"id":"n","data":{"fileId":"f"}}"#), Err(ParseError::NoLocation { .. })));
        // Well-formed JSON without what the channel needs: 422, as documented.
        let missing = parse(&fields(), br#"{"data":{"fileId":"f"}}"#).unwrap_err();
        assert_eq!(missing.problem().status, 422);
        let no_location = parse(&fields(), br#"{"id":"n","data":{"fileId":"f"}}"#).unwrap_err();
        assert_eq!(no_location.problem().status, 422);
    }

    #[test]
    fn dot_segment_ids_are_refused() {
        // They would become `..` segments of the acknowledgement URL.
        for (body, path) in [
            (&br#"{"id":"..","data":{"fileId":"f","url":"https://x.example/"}}"#[..], "id"),
            (&br#"{"id":"n","data":{"fileId":".","url":"https://x.example/"}}"#[..], "data.fileId"),
        ] {
            assert_eq!(
                parse(&fields(), body),
                Err(ParseError::WrongType { path: path.into(), expected: "an id other than `.` and `..`" })
            );
        }
        let url = super::super::ack_url_for("https://p.example/n/{notification_id}/ack", "...", "f");
        assert_eq!(url::Url::parse(&url).unwrap().path(), "/n/.../ack", "three dots are an ordinary segment");
        assert_eq!(
            parse(&fields(), br#"{"id":"...","data":{"fileId":"f.1","url":"https://x.example/"}}"#)
                .unwrap()
                .notification_id,
            "..."
        );
    }

    #[test]
    fn wrong_types_and_bad_json_are_explained() {
        assert_eq!(
            parse(&fields(), br#"{"id":{"x":1},"data":{"fileId":"f"}}"#),
            Err(ParseError::WrongType { path: "id".into(), expected: "a string or an integer" })
        );
        assert_eq!(
            parse(&fields(), br#"{"id":"n","data":{"fileId":"f","url":"not a url"}}"#),
            Err(ParseError::BadUrl("data.url".into()))
        );
        let err = parse(&fields(), b"{\"id\": \"secret-patient-name").unwrap_err();
        assert!(matches!(err, ParseError::NotJson(_)));
        assert!(!err.to_string().contains("secret-patient-name"), "{err}");
        assert_eq!(err.problem().status, 400);
    }
}
