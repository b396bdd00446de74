//! `[channels.<name>]`: one source, channel filters and transform steps, and
//! destinations, each with its own filters, transform, workers and retry
//! policy.
//!
//! ```toml
//! [channels.adt-in]
//! validation = "error"          # reject | error | accept
//! order_key = "PID-3-1"         # or "none"
//! filter = ['MSH-9-1 == "ADT"']
//!
//! [channels.adt-in.source]
//! type = "mllp"
//! listen = "127.0.0.1:2575"
//!
//! [[channels.adt-in.destinations]]
//! name = "archive"
//! type = "file"
//! directory = "out"
//! workers = 1
//! retry = { max_attempts = 10, initial_backoff = "1s", max_backoff = "5m", on_failure = "block" }
//! ```
//!
//! A destination table mixes the runtime's keys (`name`, `filter`,
//! `transform`, `workers`, `retry`, `lease`) with the connector's own keys
//! (everything else, read by [`DestinationConfig`] with its `type`); both
//! halves deny unknown fields.

use std::path::Path;

use serde::Deserialize;

use super::de::{self, PathBuf as CfgPath};
use super::{ConfigErrors, Duration};
use crate::destinations::{self, DestinationConfig};
use crate::filter::{Filter, Reads};
use crate::sources::{self, SourceConfig};
use crate::transform::{self, ContentStage, StepConfig, Transform};

/// A compiled channel.
#[derive(Debug)]
pub struct ChannelConfig {
    /// The channel's name: `[channels.<name>]`. Used in URLs, logs and the
    /// store, so it is restricted to letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Free text for people.
    pub description: Option<String>,
    /// A disabled channel is checked but not started.
    pub enabled: bool,
    /// What the channel carries.
    pub content: ContentKind,
    /// Where messages come from.
    pub source: SourceConfig,
    /// What to answer when an HL7 v2 message fails validation.
    pub validation: ValidationPolicy,
    /// Original or enhanced acknowledgement.
    pub ack_mode: AckMode,
    /// Which field orders deliveries (per patient by default).
    pub order_key: OrderKey,
    /// Channel filter rules, applied by every destination's worker at
    /// delivery time, before the channel transform. All must match.
    pub filter: Vec<Filter>,
    /// Channel transform steps, applied after the channel filter by every
    /// destination's worker.
    pub transform: Transform,
    /// The destinations, in file order.
    pub destinations: Vec<DestinationEntry>,
}

impl ChannelConfig {
    /// The channel's path in error messages: `channel "adt-in"`.
    pub fn path(&self) -> String {
        channel_path(&self.name)
    }

    /// A destination by name.
    pub fn destination(&self, name: &str) -> Option<&DestinationEntry> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

fn channel_path(name: &str) -> String {
    format!("channel {name:?}")
}

/// What a channel carries, deciding how sources read bodies and what the
/// workers can do with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentKind {
    /// HL7 v2 (ER7): parsed, validated, acknowledged with an HL7 ACK,
    /// filtered and transformed by path.
    #[default]
    Hl7v2,
    /// Any JSON document: checked to be JSON, stored and delivered as is.
    Json,
    /// A FHIR R4 resource or Bundle (JSON with a `resourceType`).
    Fhir,
}

impl ContentKind {
    /// The media type stored with messages of this kind.
    pub fn media_type(self) -> &'static str {
        match self {
            ContentKind::Hl7v2 => destinations::HL7_V2_CONTENT_TYPE,
            ContentKind::Json => "application/json",
            ContentKind::Fhir => "application/fhir+json",
        }
    }
}

/// What to do with an HL7 v2 message that fails validation (header,
/// structure, required fields, data types: `hl7v2::validate`). A message
/// that cannot be parsed at all is never stored: AR under `reject`, AE
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationPolicy {
    /// Answer AR (CR in enhanced mode) with an ERR per problem; store
    /// nothing.
    Reject,
    /// Answer AE (CE) with an ERR per problem for content errors, AR (CR)
    /// for an unsupported message type, event, processing id or version;
    /// store nothing. The default: the sender learns at once that the
    /// message needs fixing.
    #[default]
    Error,
    /// Store and deliver it anyway; the ACK is AA carrying the problems as
    /// warnings in ERR segments.
    Accept,
}

/// How the ACK is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Follow the message's mode: enhanced codes (commit ACK CA/CE/CR) when
    /// MSH-15 or MSH-16 is valued, original codes (AA/AE/AR) otherwise.
    /// An answer is always sent on the connection, even when MSH-15 says
    /// `NE`: MLLP senders commonly wait for one whatever the header says
    /// (Mirth's default behaves the same).
    #[default]
    Auto,
    /// As `auto`, and also honour MSH-15's condition: no accept ACK for
    /// `NE`, only on errors for `ER`, only on success for `SU`. For senders
    /// that really do not read answers they did not ask for.
    Msh15,
    /// Always original mode (AA/AE/AR), whatever MSH-15/MSH-16 say.
    Original,
}

/// The field whose value orders deliveries: messages with the same value
/// reach each destination in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// A path such as `PID-3-1` (the default of `hl7v2` channels: one queue
    /// per patient).
    Path(hl7v2::Path),
    /// `json:<path>` (`json:patient.id`, `json:identifier[system=urn:x].value`)
    /// for `json` and `fhir` channels: the scalar at that path of the body.
    Json(convert::rules::JsonPath),
    /// `fhir:patient` (the default of `fhir` channels): the patient the
    /// resource or Bundle is about ([`fhir_patient_key`]).
    FhirPatient,
    /// No ordering: every message may go in parallel (the default of `json`
    /// channels).
    None,
}

impl OrderKey {
    /// The key of an HL7 v2 message (`None`: not ordered).
    pub fn of_hl7(&self, message: &hl7v2::Message) -> Option<String> {
        match self {
            OrderKey::Path(p) => message.get(*p).map(|s| s.into_owned()).filter(|s| !s.is_empty()),
            _ => None,
        }
    }

    /// The key of a JSON or FHIR body (`None`: not ordered).
    pub fn of_json(&self, doc: &serde_json::Value) -> Option<String> {
        match self {
            OrderKey::Json(path) => scalar_text(path.get(doc)?),
            OrderKey::FhirPatient => fhir_patient_key(doc),
            _ => None,
        }
    }
}

/// A JSON scalar as key text (strings as they are, numbers and booleans as
/// written); objects, arrays, null and `""` give no key.
fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The patient a FHIR body is about, as an order key:
///
/// - a Patient: its first identifier with a value, as `system|value`, or
///   else `Patient/<id>`;
/// - a Bundle: the first Patient entry as above, or else the first entry's
///   `subject` or `patient` reference;
/// - another resource: its `subject` or `patient` reference: the
///   `reference` text (`Patient/123`, `urn:uuid:...`), or the logical
///   `identifier` as `system|value`.
///
/// The same patient must be written the same way by the sender to share a
/// key (a Patient's identifier and a reference `Patient/123` differ).
pub fn fhir_patient_key(doc: &serde_json::Value) -> Option<String> {
    fn identifier(id: &serde_json::Value) -> Option<String> {
        let value = id.get("value")?.as_str().filter(|v| !v.is_empty())?;
        Some(format!("{}|{value}", id.get("system").and_then(|s| s.as_str()).unwrap_or("")))
    }
    fn patient(resource: &serde_json::Value) -> Option<String> {
        resource
            .get("identifier")
            .and_then(|ids| ids.as_array())
            .and_then(|ids| ids.iter().find_map(identifier))
            .or_else(|| resource.get("id").and_then(|i| i.as_str()).map(|id| format!("Patient/{id}")))
    }
    fn reference(resource: &serde_json::Value) -> Option<String> {
        ["subject", "patient"].iter().find_map(|key| {
            let r = resource.get(*key)?;
            r.get("reference")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .or_else(|| r.get("identifier").and_then(identifier))
        })
    }
    match doc.get("resourceType")?.as_str()? {
        "Patient" => patient(doc),
        "Bundle" => {
            let resources: Vec<&serde_json::Value> =
                doc.get("entry")?.as_array()?.iter().filter_map(|e| e.get("resource")).collect();
            resources
                .iter()
                .find(|r| r.get("resourceType").and_then(|t| t.as_str()) == Some("Patient"))
                .and_then(|p| patient(p))
                .or_else(|| resources.iter().find_map(|r| reference(r)))
        }
        _ => reference(doc),
    }
}

/// The patient identifiers a FHIR body carries, for the message browser's
/// identifier search (what PID-3 gives an HL7 v2 message): the `value` of
/// every `identifier` of the Patient (or of each Patient entry of a
/// Bundle), and, for other resources, of the logical identifier in their
/// `subject` or `patient` reference. Values only, in order, once each.
///
/// ```
/// let bundle = serde_json::json!({"resourceType": "Bundle", "entry": [
///     {"resource": {"resourceType": "Patient", "identifier": [
///         {"system": "urn:oid:1.2.3", "value": "MRN-1"}, {"value": "SSN-9"}]}},
///     {"resource": {"resourceType": "Observation",
///         "subject": {"identifier": {"system": "urn:oid:1.2.3", "value": "MRN-1"}}}}
/// ]});
/// assert_eq!(engine::config::fhir_patient_ids(&bundle), ["MRN-1", "SSN-9"]);
/// ```
pub fn fhir_patient_ids(doc: &serde_json::Value) -> Vec<String> {
    fn value(identifier: &serde_json::Value) -> Option<&str> {
        identifier.get("value")?.as_str().filter(|v| !v.is_empty())
    }
    fn collect<'a>(resource: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match resource.get("resourceType").and_then(|t| t.as_str()) {
            Some("Patient") => {
                let ids = resource.get("identifier").and_then(|i| i.as_array());
                out.extend(ids.into_iter().flatten().filter_map(value));
            }
            Some("Bundle") => {
                let entries = resource.get("entry").and_then(|e| e.as_array());
                for r in entries.into_iter().flatten().filter_map(|e| e.get("resource")) {
                    // A Bundle inside a Bundle is not followed: one level is
                    // what senders use, and it bounds the work.
                    if r.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle") {
                        collect(r, out);
                    }
                }
            }
            _ => out.extend(
                ["subject", "patient"].iter().filter_map(|k| resource.get(*k)?.get("identifier")).filter_map(value),
            ),
        }
    }
    let mut found = Vec::new();
    collect(doc, &mut found);
    let mut ids: Vec<String> = Vec::with_capacity(found.len());
    for id in found {
        if !ids.iter().any(|x| x == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// A destination of a channel, with the runtime's settings around the
/// connector.
#[derive(Debug)]
pub struct DestinationEntry {
    /// Unique within the channel; the store keys its queue by it.
    pub name: String,
    /// The connector (`type = "mllp" | "http" | "file" | "channel" | "fhir"`).
    pub connector: DestinationConfig,
    /// Destination filter rules, after the channel's filter and transform.
    pub filter: Vec<Filter>,
    /// Destination transform steps, after its filter.
    pub transform: Transform,
    /// Workers claiming this destination's queue in parallel (different
    /// order keys only). Default 1.
    pub workers: usize,
    /// What the store does when a delivery fails.
    pub retry: RetryConfig,
    /// How long a worker may hold a claimed delivery before another may
    /// take it over (a crashed node's work). Default 60 s.
    pub lease: Duration,
}

impl DestinationEntry {
    /// The channel a `channel` destination injects into.
    pub fn injects_into(&self) -> Option<&str> {
        match &self.connector {
            DestinationConfig::Channel(c) => Some(&c.channel),
            _ => None,
        }
    }
}

/// `retry = { ... }` of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, before a transient failure is
    /// final. Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt, with jitter.
    /// Default `1s`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// The longest delay between attempts. Default `5m`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// After the last attempt, or on a permanent failure: `block` (the
    /// default: the delivery stays at the head of its order key in state
    /// error, so that patient's later messages wait for an operator; order
    /// is never broken) or `dead_letter` (moved aside; the key goes on).
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// See [`RetryConfig::on_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep the failed delivery at the head of its key.
    #[default]
    Block,
    /// Move it to the dead letters.
    DeadLetter,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            on_failure: OnFailure::Block,
        }
    }
}

impl RetryConfig {
    /// The store's form of this policy.
    pub fn to_store_policy(&self) -> store::RetryPolicy {
        store::RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            initial_backoff: self.initial_backoff.get(),
            max_backoff: self.max_backoff.get(),
            on_failure: match self.on_failure {
                OnFailure::Block => store::OnFailure::Block,
                OnFailure::DeadLetter => store::OnFailure::DeadLetter,
            },
        }
    }
}

fn default_max_attempts() -> u32 {
    10
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_workers() -> usize {
    1
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}

/// The channel's own settings (everything but source, filter, transform and
/// destinations, which are compiled as separate components).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelSettings {
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    content: ContentKind,
    #[serde(default)]
    validation: ValidationPolicy,
    #[serde(default)]
    ack_mode: AckMode,
    /// Default by content: `PID-3-1`, `fhir:patient` or `none` (json).
    #[serde(default)]
    order_key: Option<String>,
}

/// The runtime's keys of a destination table (the connector reads the rest).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationSettings {
    name: String,
    #[serde(default = "default_workers")]
    workers: usize,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default = "default_lease")]
    lease: Duration,
}

/// Keys of a destination table that belong to the runtime, not the
/// connector.
const DESTINATION_KEYS: [&str; 4] = ["name", "workers", "retry", "lease"];

/// Names that travel in URLs (`/channels/{name}/messages`), file names and
/// log lines.
fn check_name(name: &str, path: &str, errors: &mut ConfigErrors) {
    if name.is_empty() {
        errors.push(path, "must not be empty");
    } else if name.len() > 64 {
        errors.push(path, "must be at most 64 characters");
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errors.push(path, format!("{name:?}: use only letters, digits, '-', '_' and '.'"));
    }
}

/// Compiles `[channels.<name>]`. `None` when it is too broken to build
/// (its errors are in `errors`).
pub(super) fn compile(
    name: String,
    value: toml::Value,
    base_dir: Option<&Path>,
    errors: &mut ConfigErrors,
) -> Option<ChannelConfig> {
    let path = CfgPath::from_display(channel_path(&name));
    check_name(&name, path.as_str(), errors);
    let toml::Value::Table(mut table) = value else {
        errors.push(path.to_string(), format!("must be a table, found {}", de::type_name(&value)));
        return None;
    };

    let source_value = table.remove("source");
    let filter_value = table.remove("filter");
    let transform_value = table.remove("transform");
    let destinations_value = table.remove("destinations");

    let settings = de::component::<ChannelSettings>(toml::Value::Table(table), &path, errors);

    let source = match source_value {
        Some(v) => sources::compile(v, &path.key("source"), errors),
        None => {
            errors.push(path.key("source").to_string(), "required: every channel needs a source");
            None
        }
    };
    let filter = compile_filters(filter_value, &path.key("filter"), errors);
    let transform = compile_transform(transform_value, &path.key("transform"), base_dir, errors);

    let mut destinations = Vec::new();
    match destinations_value {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let dpath = CfgPath::from_display(format!("{path}.destination[{i}]"));
                if let Some(d) = compile_destination(item, &dpath, base_dir, errors) {
                    destinations.push(d);
                }
            }
        }
        Some(other) => errors.push(
            path.key("destinations").to_string(),
            format!("must be an array of tables ([[channels.{name}.destinations]]), found {}", de::type_name(&other)),
        ),
    }
    for (i, d) in destinations.iter().enumerate() {
        if destinations[..i].iter().any(|e| e.name == d.name) {
            errors.push(format!("{path}.destination[{i}].name"), format!("{:?} is used twice", d.name));
        }
    }

    let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
    if let Some(t) = &transform {
        t.check_destinations(&names, errors);
        for d in &destinations {
            d.transform.check_after(t, errors);
        }
    }
    for d in &destinations {
        d.transform.check_destinations(&names, errors);
    }

    let settings = settings?;
    let source = source?;
    let transform = transform?;

    let order_key = compile_order_key(settings.order_key.as_deref(), settings.content, &path.key("order_key"), errors);

    if settings.content != ContentKind::Hl7v2 {
        let kind = match settings.content {
            ContentKind::Json => "json",
            _ => "fhir",
        };
        if !source.accepts_json() {
            errors.push(
                path.key("source").key("type").to_string(),
                format!("a {} source carries HL7 v2 only; content = \"{kind}\" needs a source that carries JSON (http, file, fhir_poll, notification or send_to_ehr)", source.kind()),
            );
        }
    }
    // Each rule and step against the content it meets: JSON until
    // fhir_to_hl7, HL7 v2 until hl7_to_fhir. The channel's filter meets the
    // content as it arrives; a destination's transform and filter start
    // where the channel's transform left the content.
    let start = if settings.content == ContentKind::Hl7v2 { ContentStage::Hl7 } else { ContentStage::Json };
    check_filter_content(&filter, start, &path.key("filter").to_string(), errors);
    let after_channel = transform.check_content(start, errors);
    for (i, d) in destinations.iter().enumerate() {
        check_filter_content(&d.filter, after_channel, &format!("{path}.destination[{i}].filter"), errors);
        d.transform.check_content(after_channel, errors);
    }

    Some(ChannelConfig {
        name,
        description: settings.description,
        enabled: settings.enabled,
        content: settings.content,
        source,
        validation: settings.validation,
        ack_mode: settings.ack_mode,
        order_key,
        filter,
        transform,
        destinations,
    })
}

/// `order_key` for a channel carrying `content`; `None` when not written.
fn compile_order_key(text: Option<&str>, content: ContentKind, path: &CfgPath, errors: &mut ConfigErrors) -> OrderKey {
    let text = match (text.map(str::trim), content) {
        (Some(t), _) => t,
        (None, ContentKind::Hl7v2) => "PID-3-1",
        (None, ContentKind::Fhir) => "fhir:patient",
        (None, ContentKind::Json) => "none",
    };
    let json_content = content != ContentKind::Hl7v2;
    if matches!(text, "none" | "") {
        return OrderKey::None;
    }
    if let Some(json) = text.strip_prefix("json:") {
        if !json_content {
            errors
                .push(path.to_string(), "a json: order key needs content = \"json\" or \"fhir\"; give an HL7 v2 path");
            return OrderKey::None;
        }
        return match convert::rules::JsonPath::parse(json.trim()) {
            Ok(p) if !p.has_each() => OrderKey::Json(p),
            Ok(_) => {
                errors.push(path.to_string(), format!("{json:?}: an order key reads one value; [*] is not allowed"));
                OrderKey::None
            }
            Err(e) => {
                errors.push(path.to_string(), e.to_string());
                OrderKey::None
            }
        };
    }
    if text == "fhir:patient" {
        if !json_content {
            errors.push(path.to_string(), "fhir:patient needs content = \"fhir\" or \"json\"; give an HL7 v2 path");
        }
        return OrderKey::FhirPatient;
    }
    if json_content {
        errors.push(
            path.to_string(),
            format!("{text:?}: a JSON body has no HL7 v2 fields; write \"json:<path>\" (e.g. \"json:patient.id\"), \"fhir:patient\" or \"none\""),
        );
        return OrderKey::None;
    }
    match hl7v2::Path::parse(text) {
        Ok(p) => OrderKey::Path(p),
        Err(e) => {
            errors.push(path.to_string(), format!("{e} (or write \"none\")"));
            OrderKey::None
        }
    }
}

fn compile_destination(
    value: toml::Value,
    path: &CfgPath,
    base_dir: Option<&Path>,
    errors: &mut ConfigErrors,
) -> Option<DestinationEntry> {
    let toml::Value::Table(mut table) = value else {
        errors.push(path.to_string(), format!("must be a table, found {}", de::type_name(&value)));
        return None;
    };
    let filter_value = table.remove("filter");
    let transform_value = table.remove("transform");
    let mut ours = toml::Table::new();
    for key in DESTINATION_KEYS {
        if let Some(v) = table.remove(key) {
            ours.insert(key.to_string(), v);
        }
    }
    let settings = de::component::<DestinationSettings>(toml::Value::Table(ours), path, errors);
    let connector = compile_connector(table, path, errors);
    let filter = compile_filters(filter_value, &path.key("filter"), errors);
    let transform = compile_transform(transform_value, &path.key("transform"), base_dir, errors);

    let settings = settings?;
    check_name(&settings.name, path.key("name").as_str(), errors);
    if settings.workers == 0 || settings.workers > 256 {
        errors.push(path.key("workers").to_string(), "must be between 1 and 256");
    }
    let retry = &settings.retry;
    if retry.max_attempts == 0 {
        errors.push(path.key("retry").key("max_attempts").to_string(), "must be at least 1");
    }
    if retry.initial_backoff.get().is_zero() {
        errors.push(path.key("retry").key("initial_backoff").to_string(), "must be more than 0");
    }
    if retry.max_backoff < retry.initial_backoff {
        errors.push(path.key("retry").key("max_backoff").to_string(), "must be at least initial_backoff");
    }
    if settings.lease.get() < std::time::Duration::from_secs(1) {
        errors.push(path.key("lease").to_string(), "must be at least 1s");
    }
    Some(DestinationEntry {
        name: settings.name,
        connector: connector?,
        filter,
        transform: transform?,
        workers: settings.workers.clamp(1, 256),
        retry: settings.retry,
        lease: settings.lease,
    })
}

/// The connector half of a destination table, dispatched on `type` so that
/// an error inside the connector's struct keeps its field path (serde loses
/// paths inside internally tagged enums).
fn compile_connector(mut table: toml::Table, path: &CfgPath, errors: &mut ConfigErrors) -> Option<DestinationConfig> {
    let kind = match table.get("type") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => {
            errors.push(path.key("type").to_string(), format!("must be a string, found {}", de::type_name(other)));
            return None;
        }
        None => {
            errors.push(path.key("type").to_string(), "required: mllp, http, file, channel or fhir");
            return None;
        }
    };
    let config = match kind.as_str() {
        "mllp" | "http" | "file" | "channel" | "fhir" => {
            table.remove("type");
            let v = toml::Value::Table(table);
            match kind.as_str() {
                "mllp" => de::component(v, path, errors).map(DestinationConfig::Mllp),
                "http" => de::component(v, path, errors).map(DestinationConfig::Http),
                "file" => de::component(v, path, errors).map(DestinationConfig::File),
                "fhir" => de::component(v, path, errors).map(DestinationConfig::Fhir),
                _ => de::component(v, path, errors).map(DestinationConfig::Channel),
            }
        }
        // Let the enum name the variants it knows.
        _ => de::component::<DestinationConfig>(toml::Value::Table(table), path, errors),
    }?;
    config.validate(path.as_str(), errors);
    Some(config)
}

/// Each rule of `rules` against the content it meets: `json:` paths need
/// JSON (a `json` or `fhir` channel before any `fhir_to_hl7`), HL7 v2 paths
/// an HL7 v2 message (after `hl7_to_fhir` the rules still read the message
/// it converted).
fn check_filter_content(rules: &[Filter], stage: ContentStage, path: &str, errors: &mut ConfigErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let at = if rules.len() == 1 { path.to_owned() } else { format!("{path}[{i}]") };
        match (stage, rule.reads()) {
            (_, Reads::Nothing) | (ContentStage::Json, Reads::Json) => {}
            (ContentStage::Hl7 | ContentStage::Converted, Reads::Hl7) => {}
            (ContentStage::Json, Reads::Hl7) => errors.push(
                at,
                format!(
                    "{:?} reads HL7 v2 fields, but here the content is JSON: read it with json: paths (as in \
                     json:resourceType == \"Observation\"), or filter at a destination after a fhir_to_hl7 step in the channel transform",
                    rule.source()
                ),
            ),
            (_, Reads::Json) => errors
                .push(at, format!("{:?} reads json: paths, but here the content is an HL7 v2 message", rule.source())),
        }
    }
}

fn compile_filters(value: Option<toml::Value>, path: &CfgPath, errors: &mut ConfigErrors) -> Vec<Filter> {
    let items = match value {
        None => return Vec::new(),
        // A single expression is accepted as a list of one.
        Some(toml::Value::String(s)) => vec![(path.clone(), s)],
        Some(toml::Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    toml::Value::String(s) => out.push((path.index(i), s)),
                    other => errors.push(
                        path.index(i).to_string(),
                        format!("must be an expression string, found {}", de::type_name(&other)),
                    ),
                }
            }
            out
        }
        Some(other) => {
            errors.push(
                path.to_string(),
                format!("must be a list of expression strings, found {}", de::type_name(&other)),
            );
            return Vec::new();
        }
    };
    let mut rules = Vec::new();
    for (p, text) in items {
        match Filter::compile(&text) {
            Ok(filter) => rules.push(filter),
            // The rule's text is config, not patient data: quote it so the
            // column points somewhere.
            Err(e) => errors.push(p.to_string(), format!("{e} in {text:?}")),
        }
    }
    rules
}

/// Compiles a `transform` list. Each step is dispatched on its `type` so
/// an error inside keeps its field path. With `base_dir` (a config read
/// from a file), JavaScript steps' `file`s are read relative to it.
fn compile_transform(
    value: Option<toml::Value>,
    path: &CfgPath,
    base_dir: Option<&Path>,
    errors: &mut ConfigErrors,
) -> Option<Transform> {
    let items = match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(other) => {
            errors.push(
                path.to_string(),
                format!("must be an array of step tables ([[...transform]]), found {}", de::type_name(&other)),
            );
            return None;
        }
    };
    let mut steps = Vec::new();
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        match compile_step(item, &path.index(i), errors) {
            Some(step) => steps.push(step),
            None => ok = false,
        }
    }
    if let Some(dir) = base_dir {
        let before = errors.0.len();
        transform::load_script_files(&mut steps, dir, path.as_str(), errors);
        ok &= errors.0.len() == before;
    }
    if !ok {
        return None;
    }
    match Transform::compile(&steps, path.as_str()) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.0.extend(e.0);
            None
        }
    }
}

fn compile_step(value: toml::Value, path: &CfgPath, errors: &mut ConfigErrors) -> Option<StepConfig> {
    let toml::Value::Table(mut table) = value else {
        errors.push(path.to_string(), format!("must be a table, found {}", de::type_name(&value)));
        return None;
    };
    let kind = match table.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(other) => {
            errors.push(path.key("type").to_string(), format!("must be a string, found {}", de::type_name(&other)));
            return None;
        }
        None => {
            errors.push(
                path.key("type").to_string(),
                "required: set, copy, delete, map, route, javascript, hl7_to_fhir, fhir_to_hl7 or mapping_rules",
            );
            return None;
        }
    };
    let v = toml::Value::Table(table);
    match kind.as_str() {
        "set" => de::component(v, path, errors).map(StepConfig::Set),
        "copy" => de::component(v, path, errors).map(StepConfig::Copy),
        "delete" => de::component(v, path, errors).map(StepConfig::Delete),
        "map" => de::component(v, path, errors).map(StepConfig::Map),
        "route" => de::component(v, path, errors).map(StepConfig::Route),
        "javascript" => de::component(v, path, errors).map(StepConfig::Javascript),
        "hl7_to_fhir" => de::component(v, path, errors).map(StepConfig::Hl7ToFhir),
        "fhir_to_hl7" => de::component(v, path, errors).map(StepConfig::FhirToHl7),
        "mapping_rules" => de::component(v, path, errors).map(StepConfig::MappingRules),
        other => {
            errors.push(
                path.key("type").to_string(),
                format!(
                    "unknown step type {other:?}, expected set, copy, delete, map, route, javascript, hl7_to_fhir, \
                     fhir_to_hl7 or mapping_rules"
                ),
            );
            None
        }
    }
}
