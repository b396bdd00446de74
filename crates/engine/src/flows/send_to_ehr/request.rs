//! Request validation: a FHIR Parameters resource to a typed
//! [`SendToEhrRequest`], or every problem found as a [`Rejection`].
//!
//! Pure: no I/O. Resolving `subject` and `context` against the patient
//! source is the next step ([`super::source::resolve`]).
//!
//! Status rules: a body that is not a Parameters resource, a parameter of
//! the wrong shape, an unknown or repeated parameter, or a payload that is
//! not base64 is malformed (400); a well-formed request that breaks a rule
//! (a required parameter missing, a reference to the wrong type, a document
//! type or content type not accepted, bytes that do not match the declared
//! content type, an RPPS number of the wrong length, a payload too large) is
//! unprocessable (422). When both kinds occur the answer is 400, with every
//! problem listed.
//!
//! Unknown parameters are refused rather than ignored: a misspelt optional
//! parameter (`document_type`) would otherwise silently fall back to its
//! default and file the document under the wrong type.

use base64::Engine as _;
use serde_json::Value;

use super::config::{DEFAULT_DOCUMENT_TYPE, EncounterRule, SendToEhrConfig};
use super::outcome::{Problem, Rejection};

/// The content type used when a request names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/pdf";

/// The operation's parameters and the `value[x]` each must use.
const PARAMETERS: &[(&str, &str)] = &[
    ("subject", "valueReference"),
    ("context", "valueReference"),
    ("content-type", "valueCode"),
    ("document-type", "valueCode"),
    ("document-title", "valueString"),
    ("sender-identifier", "valueString"),
    ("payload", "valueString"),
];

/// The longest title accepted: EHR document titles are short fields
/// (TXA-16 is 30 characters in old versions, most EHRs allow 255).
pub const MAX_TITLE_CHARS: usize = 255;

/// Who sends the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A French RPPS number (11 digits) identifying a health professional.
    Rpps(String),
    /// Any other identifier: an application or organisation name (the
    /// calling application's name when the request gives none).
    Application(String),
}

impl Sender {
    /// The identifier as given.
    pub fn value(&self) -> &str {
        match self {
            Sender::Rpps(v) | Sender::Application(v) => v,
        }
    }
}

/// A valid `$send-to-ehr` request, before its references are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendToEhrRequest {
    /// The Patient's id (`subject` was `Patient/{patient_id}`).
    pub patient_id: String,
    /// The Encounter's id, when `context` was given.
    pub encounter_id: Option<String>,
    /// The checked content type (`application/pdf` by default).
    pub content_type: String,
    /// The LOINC document type (`11488-4` by default).
    pub document_type: String,
    /// The title given, if any; otherwise it is built from the patient
    /// ([`super::build::default_title`]).
    pub title: Option<String>,
    /// The sender.
    pub sender: Sender,
    /// The decoded document.
    pub payload: Vec<u8>,
}

impl SendToEhrRequest {
    /// SHA-256 (hex) of everything the request asks for, defaults applied:
    /// two requests with the same digest file the same document in the
    /// same place. A retry under the same `Idempotency-Key` must have the
    /// original's digest; the JSON around it (parameter order, base64 line
    /// breaks) may differ.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        let sender = match &self.sender {
            Sender::Rpps(v) => ("rpps", v.as_str()),
            Sender::Application(v) => ("application", v.as_str()),
        };
        let fields: [&[u8]; 9] = [
            self.patient_id.as_bytes(),
            self.encounter_id.as_deref().unwrap_or("").as_bytes(),
            if self.encounter_id.is_some() { b"context" } else { b"" },
            self.content_type.as_bytes(),
            self.document_type.as_bytes(),
            self.title.as_deref().map_or(&b"\xFFdefault"[..], str::as_bytes),
            sender.0.as_bytes(),
            sender.1.as_bytes(),
            &self.payload,
        ];
        // Each field length-prefixed, so no two requests hash the same
        // bytes by moving a boundary.
        for field in fields {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field);
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Validates a `$send-to-ehr` request body. `caller` is the calling
/// application's name (from its API token) used when no
/// `sender-identifier` is given; without one, `config.default_sender`.
pub fn validate_request(
    body: &Value,
    config: &SendToEhrConfig,
    caller: Option<&str>,
) -> Result<SendToEhrRequest, Rejection> {
    let mut v = Validator::default();
    let Some(object) = body.as_object() else {
        return Err(Rejection::one(
            400,
            None,
            "structure",
            "request body: expected a FHIR Parameters resource (a JSON object)",
        ));
    };
    match object.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => {}
        Some(other) => {
            return Err(Rejection::one(
                400,
                None,
                "structure",
                format!("request body: expected a FHIR Parameters resource, got {other}"),
            ));
        }
        None => {
            return Err(Rejection::one(
                400,
                None,
                "structure",
                "request body: expected a FHIR Parameters resource (no resourceType)",
            ));
        }
    }
    let entries: &[Value] = match object.get("parameter") {
        None => &[],
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Rejection::one(400, None, "structure", "Parameters.parameter: expected an array")),
    };

    // name -> the entry's value, in request order.
    let mut given: Vec<(&'static str, &Value)> = Vec::new();
    // Names present at all, even with a malformed value: those are not
    // also reported as missing.
    let mut seen: Vec<&'static str> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(name) = entry.get("name").and_then(Value::as_str) else {
            v.malformed(None, "structure", format!("Parameters.parameter[{i}]: has no name"));
            continue;
        };
        let Some(&(known, value_key)) = PARAMETERS.iter().find(|(n, _)| *n == name) else {
            let expected: Vec<&str> = PARAMETERS.iter().map(|(n, _)| *n).collect();
            v.malformed(
                None,
                "structure",
                format!("{name}: unknown parameter (expected one of {})", expected.join(", ")),
            );
            continue;
        };
        if seen.contains(&known) {
            v.malformed(Some(known), "structure", format!("{known}: given more than once"));
            continue;
        }
        seen.push(known);
        match entry.get(value_key) {
            Some(value) => given.push((known, value)),
            None => {
                let found: Vec<&str> = entry
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .filter(|k| k.starts_with("value") || *k == "resource" || *k == "part")
                    .map(String::as_str)
                    .collect();
                let found = if found.is_empty() { "no value".to_string() } else { found.join(", ") };
                v.malformed(Some(known), "structure", format!("{known}: expected {value_key}, got {found}"));
            }
        }
    }
    let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, value)| *value);

    let patient_id = match get("subject") {
        None if seen.contains(&"subject") => None,
        None => {
            v.unprocessable(
                Some("subject"),
                "required",
                "subject: required parameter is missing (a reference to Patient/{id})",
            );
            None
        }
        Some(value) => v.reference("subject", value, "Patient"),
    };
    let encounter_id = match get("context") {
        None if seen.contains(&"context") => None,
        None => {
            if config.encounter == EncounterRule::Required {
                v.unprocessable(
                    Some("context"),
                    "required",
                    "context: required parameter is missing (a reference to Encounter/{id})",
                );
            }
            None
        }
        Some(value) => v.reference("context", value, "Encounter"),
    };

    let content_type = match get("content-type") {
        None if seen.contains(&"content-type") => None,
        None => Some(DEFAULT_CONTENT_TYPE.to_string()),
        Some(value) => v.string("content-type", value, "valueCode").and_then(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            if config.content_types.contains(&ct) {
                Some(ct)
            } else {
                v.unprocessable(
                    Some("content-type"),
                    "value",
                    format!("content-type: `{ct}` is not accepted (accepted: {})", config.content_types.join(", ")),
                );
                None
            }
        }),
    };
    if !seen.contains(&"content-type") && !config.content_types.iter().any(|c| c == DEFAULT_CONTENT_TYPE) {
        v.unprocessable(
            Some("content-type"),
            "required",
            format!(
                "content-type: required here, the default {DEFAULT_CONTENT_TYPE} is not accepted (accepted: {})",
                config.content_types.join(", ")
            ),
        );
    }

    let document_type = {
        let code = match get("document-type") {
            None if seen.contains(&"document-type") => None,
            None => Some(DEFAULT_DOCUMENT_TYPE.to_string()),
            Some(value) => v.string("document-type", value, "valueCode").map(|c| c.trim().to_string()),
        };
        code.and_then(|code| {
            if config.document_types.contains(&code) {
                Some(code)
            } else {
                let shown =
                    if get("document-type").is_none() { format!("the default {code}") } else { format!("`{code}`") };
                v.unprocessable(
                    Some("document-type"),
                    "code-invalid",
                    format!(
                        "document-type: {shown} is not an accepted LOINC document type (accepted: {})",
                        config.document_types.join(", ")
                    ),
                );
                None
            }
        })
    };

    let title =
        get("document-title").and_then(|value| v.string("document-title", value, "valueString")).and_then(|t| {
            let t = t.trim();
            if t.is_empty() {
                v.unprocessable(
                    Some("document-title"),
                    "value",
                    "document-title: is empty (omit it to use the default title)",
                );
                None
            } else if t.chars().count() > MAX_TITLE_CHARS {
                v.unprocessable(
                    Some("document-title"),
                    "too-long",
                    format!("document-title: longer than {MAX_TITLE_CHARS} characters"),
                );
                None
            } else if t.chars().any(char::is_control) {
                v.unprocessable(Some("document-title"), "value", "document-title: contains control characters");
                None
            } else {
                Some(t.to_string())
            }
        });
    let title_ok = !seen.contains(&"document-title") || title.is_some();

    let sender = match get("sender-identifier") {
        None if seen.contains(&"sender-identifier") => None,
        None => Some(Sender::Application(caller.unwrap_or(&config.default_sender).to_string())),
        Some(value) => v.string("sender-identifier", value, "valueString").and_then(|s| v.sender(s)),
    };

    let payload = match get("payload") {
        None if seen.contains(&"payload") => None,
        None => {
            v.unprocessable(
                Some("payload"),
                "required",
                "payload: required parameter is missing (the document, base64)",
            );
            None
        }
        Some(value) => v.string("payload", value, "valueString").and_then(|text| v.payload(text, config.max_payload.0)),
    };

    if let (Some(ct), Some(bytes)) = (&content_type, &payload)
        && !content_matches(ct, bytes)
    {
        let seen = match sniff(bytes) {
            Some(kind) => format!("they look like {kind}"),
            None => "they match no accepted type".to_string(),
        };
        v.unprocessable(
            Some("content-type"),
            "value",
            format!("content-type: the payload's bytes are not {ct} ({seen})"),
        );
    }

    match (patient_id, content_type, document_type, sender, payload) {
        (Some(patient_id), Some(content_type), Some(document_type), Some(sender), Some(payload))
            if v.problems.is_empty() && title_ok =>
        {
            Ok(SendToEhrRequest { patient_id, encounter_id, content_type, document_type, title, sender, payload })
        }
        _ => Err(v.into_rejection()),
    }
}

/// Collects problems; the status follows from the worst.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    malformed: bool,
}

impl Validator {
    fn malformed(&mut self, parameter: Option<&str>, code: &'static str, diagnostics: String) {
        self.malformed = true;
        self.problems.push(Problem { parameter: parameter.map(str::to_string), code, diagnostics });
    }

    fn unprocessable(&mut self, parameter: Option<&str>, code: &'static str, diagnostics: impl Into<String>) {
        self.problems.push(Problem { parameter: parameter.map(str::to_string), code, diagnostics: diagnostics.into() });
    }

    fn into_rejection(self) -> Rejection {
        // A valid-looking request with no problem recorded cannot reach here
        // (every None above records one), but an empty refusal would be
        // useless: say so rather than answer with nothing.
        let mut problems = self.problems;
        if problems.is_empty() {
            problems.push(Problem {
                parameter: None,
                code: "processing",
                diagnostics: "request could not be read".into(),
            });
        }
        Rejection { status: if self.malformed { 400 } else { 422 }, problems }
    }

    fn string<'a>(&mut self, name: &str, value: &'a Value, key: &str) -> Option<&'a str> {
        match value.as_str() {
            Some(s) => Some(s),
            None => {
                self.malformed(Some(name), "structure", format!("{name}: {key} must be a string"));
                None
            }
        }
    }

    /// `{"reference": "Type/id"}` to the id.
    fn reference(&mut self, name: &str, value: &Value, kind: &str) -> Option<String> {
        let Some(reference) = value.get("reference") else {
            self.malformed(
                Some(name),
                "structure",
                format!("{name}: valueReference has no reference (expected {kind}/{{id}})"),
            );
            return None;
        };
        let Some(reference) = reference.as_str() else {
            self.malformed(Some(name), "structure", format!("{name}: valueReference.reference must be a string"));
            return None;
        };
        match reference.split_once('/') {
            Some((k, id)) if k == kind && is_fhir_id(id) => Some(id.to_string()),
            Some((k, id)) if k == kind => {
                self.unprocessable(Some(name), "value", format!("{name}: `{id}` is not a valid {kind} id"));
                None
            }
            _ => {
                self.unprocessable(
                    Some(name),
                    "value",
                    format!("{name}: expected a reference to {kind}/{{id}}, got `{reference}`"),
                );
                None
            }
        }
    }

    /// The sender rule: a value made only of ASCII digits is an RPPS
    /// number and must have exactly 11 digits; anything else (letters,
    /// punctuation) is an application or organisation identifier of at
    /// most 64 characters. Whitespace around the value is ignored.
    fn sender(&mut self, raw: &str) -> Option<Sender> {
        let value = raw.trim();
        if value.is_empty() {
            self.unprocessable(
                Some("sender-identifier"),
                "value",
                "sender-identifier: is empty (omit it to use the calling application's name)",
            );
            None
        } else if value.bytes().all(|b| b.is_ascii_digit()) {
            if value.len() == 11 {
                Some(Sender::Rpps(value.to_string()))
            } else {
                self.unprocessable(
                    Some("sender-identifier"),
                    "value",
                    format!("sender-identifier: an RPPS number has 11 digits, got {}", value.len()),
                );
                None
            }
        } else if value.chars().count() > 64 || value.chars().any(char::is_control) {
            self.unprocessable(
                Some("sender-identifier"),
                "value",
                "sender-identifier: longer than 64 characters or contains control characters",
            );
            None
        } else {
            Some(Sender::Application(value.to_string()))
        }
    }

    /// Base64 (line breaks allowed) to bytes, within the size limit. The
    /// size is checked before decoding so an oversized payload is not
    /// decoded at all.
    fn payload(&mut self, text: &str, max: u64) -> Option<Vec<u8>> {
        let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let padding = clean.bytes().rev().take(2).filter(|b| *b == b'=').count() as u64;
        let decoded_len = (clean.len() as u64 / 4 * 3).saturating_sub(padding);
        if decoded_len > max.saturating_add(2) {
            self.unprocessable(
                Some("payload"),
                "too-long",
                format!("payload: about {decoded_len} bytes, over the limit of {max} bytes"),
            );
            return None;
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.malformed(Some("payload"), "structure", format!("payload: not valid base64 ({e})"));
                return None;
            }
        };
        if bytes.is_empty() {
            self.unprocessable(Some("payload"), "required", "payload: is empty");
            None
        } else if bytes.len() as u64 > max {
            self.unprocessable(
                Some("payload"),
                "too-long",
                format!("payload: {} bytes, over the limit of {max} bytes", bytes.len()),
            );
            None
        } else {
            Some(bytes)
        }
    }
}

/// A FHIR id: 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What the bytes are, by their signature: `application/pdf` (`%PDF-`),
/// `image/jpeg` (FF D8 FF), `image/png` (the 8-byte PNG signature), else
/// `text/plain` when they are UTF-8 without NUL, else nothing.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(PNG) {
        Some("image/png")
    } else if is_plain_text(bytes) {
        Some("text/plain")
    } else {
        None
    }
}

/// Whether `bytes` are what `content_type` says. Text is checked on its
/// own rule rather than by [`sniff`]'s order, since a text file may well
/// begin with `%PDF-`.
pub fn content_matches(content_type: &str, bytes: &[u8]) -> bool {
    match content_type {
        "text/plain" => is_plain_text(bytes),
        other => sniff(bytes) == Some(other),
    }
}

fn is_plain_text(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}
