//! The `notification` source: a partner platform announces a new FHIR bundle
//! with `POST /channels/{name}/notifications` (issue 7).
//!
//! ```toml
//! [channels.glucose]
//! content = "json"
//!
//! [channels.glucose.source]
//! type = "notification"
//! # listen = "0.0.0.0:8443"        # own listener; by default the API listener
//! partner = "diabetes-app"         # sender key of the stored notifications
//! output = "oru_r01"               # oru_r01 | ras_o17 | fhir | json, the default
//! outputs = { emr-meds = "ras_o17", crm = { format = "json", rules = "rules/glucose.yaml" } }
//! [channels.glucose.source.fields]
//! notification_id = "id"
//! file_id = "data.fileId"
//! patient = "data.patientId"
//! presigned_url = "data.url"
//! [channels.glucose.source.auth.hmac]
//! secret = "${PARTNER_HMAC_SECRET}"
//! [channels.glucose.source.fetch]
//! allowed_hosts = ["*.partner.example"]
//! [channels.glucose.source.acknowledgement]
//! url = "https://api.partner.example/notifications/{notification_id}/ack"
//! ```
//!
//! The rest of the table is [`NotificationConfig`] (fields, auth, fetch,
//! storage, acknowledgement, limits).
//!
//! # What the endpoint does, in order
//!
//! 1. Checks the size, the signature and/or bearer token (401 with a
//!    problem document when they fail; a timestamp outside the tolerance is
//!    a replay), reads the configured fields (400/422 naming the field),
//!    and checks a pre-signed URL against the allow-list (422): nothing is
//!    stored for a refused notification.
//! 2. Dedupes: the same file id within `duplicate_window` (looked up by
//!    the stored order key `file:<id>`, indexed; a per-file lock makes the
//!    lookup and the store one step within this process), or the same
//!    notification id (the store's duplicate detection on channel, partner
//!    and control id = notification id). A duplicate answers 200
//!    `{"status": "duplicate", "message_id": <original>}` and is not
//!    processed again; if the original is already delivered everywhere, the
//!    partner is acknowledged again (it evidently missed the first one).
//! 3. Stores the notification exactly as received (control id =
//!    notification id, sender key = partner, patient indexed) with one
//!    delivery per destination, and only after the commit answers 202
//!    `{"status": "accepted", "message_id": ...}`. A failed commit answers
//!    503: the partner notifies again.
//!
//! Fetching, converting, delivering and acknowledging happen in the
//! destination workers ([`NotificationStage`]) and the acknowledgement
//! worker ([`AckWorker`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use store::{Accepted, MessageId, NewDelivery, NewMessage, SearchQuery, Store};
use tracing::{info, warn};

use crate::api::control::ChannelSwitch;
use crate::config::{ByteSize, ChannelConfig, ConfigErrors, Duration, RetryConfig};
use crate::flows::FlowStage;
use crate::flows::notification::ack::AckWorker;
use crate::flows::notification::config::{
    AcknowledgementConfig, FetchGuardConfig, FieldPaths, InboundAuth, Limits, ObjectStorageConfig,
};
use crate::flows::notification::json::{OutputSpec, resolve_rules};
use crate::flows::notification::stage::{ACK_DESTINATION, NOTIFICATION_TYPE, StageSettings};
use crate::flows::notification::{
    BundleLocation, Notification, NotificationConfig, Problem, UrlGuard, Verifier, parse,
};
use crate::sources::SourceConfig;

pub use crate::flows::notification::stage::NotificationStage;

/// Configuration of a `notification` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSourceConfig {
    /// Address and port of a listener of its own. When absent, the channel
    /// is served on the API listener.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The largest notification body accepted (413 above). Default `1MiB`.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: ByteSize,
    /// The partner's name: the stored notifications' sender key. Default:
    /// the channel's name.
    #[serde(default)]
    pub partner: Option<String>,
    /// What the destinations receive: `oru_r01` (Observations and Devices,
    /// the default), `ras_o17` (MedicationAdministrations), `fhir` (the
    /// bundle as fetched, for a `fhir` destination) or `json` (written as
    /// a table: `{ format = "json", rules = "rules.yaml" }`, the bundle's
    /// resources mapped by mapping rules; see
    /// [`crate::flows::notification::json`]).
    #[serde(default)]
    pub output: OutputSpec,
    /// Per destination name, overriding `output` (one ORU and one RAS
    /// destination to the same EMR carry a mixed bundle), in the same forms.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputSpec>,
    /// MSH fields of the HL7 v2 outputs (sending/receiving application and
    /// facility, version ...). MSH-10 is derived from the file id when empty.
    #[serde(default)]
    pub hl7: convert::FhirToHl7Options,
    /// How long a notification or file id counts as a duplicate. Default
    /// `24h`.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// Retries of the partner acknowledgement (its own queue; the bundle is
    /// not delivered again). Default: 10 attempts, `1s` doubling to `5m`.
    #[serde(default)]
    pub ack_retry: RetryConfig,
    /// Where the notification's fields are in its JSON body.
    pub fields: FieldPaths,
    /// How a notification proves it comes from the partner.
    pub auth: InboundAuth,
    /// Which URLs carried in a notification may be fetched.
    #[serde(default)]
    pub fetch: FetchGuardConfig,
    /// Object storage read with temporary credentials.
    #[serde(default)]
    pub storage: Option<ObjectStorageConfig>,
    /// The partner's acknowledgement endpoint.
    pub acknowledgement: AcknowledgementConfig,
    /// Size and time limits of the fetch.
    #[serde(default)]
    pub limits: Limits,
}

fn default_max_body_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl NotificationSourceConfig {
    /// The flow's part of the table.
    pub fn flow_config(&self) -> NotificationConfig {
        NotificationConfig {
            fields: self.fields.clone(),
            auth: self.auth.clone(),
            fetch: self.fetch.clone(),
            storage: self.storage.clone(),
            acknowledgement: self.acknowledgement.clone(),
            limits: self.limits,
        }
    }

    /// Checks the settings (no I/O).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if self.max_body_size.0 == 0 {
            errors.push(format!("{path}.max_body_size"), "must be more than 0");
        }
        if self.ack_retry.max_attempts == 0 {
            errors.push(format!("{path}.ack_retry.max_attempts"), "must be at least 1");
        }
        self.output.validate(&format!("{path}.output"), errors);
        for (destination, spec) in &self.outputs {
            spec.validate(&format!("{path}.outputs.{destination}"), errors);
        }
        if let Err(e) = self.flow_config().validate(path) {
            errors.0.extend(e.0);
        }
    }
}

/// Checks that need the channel: `outputs` name destinations of the
/// channel, and no destination uses the reserved name of acknowledgements.
/// Also loads the `json` outputs' rules files (relative to `base_dir`, made
/// absolute here), so `plexus check` reports a broken one.
pub(crate) fn cross_check(channels: &mut [ChannelConfig], base_dir: Option<&FsPath>, errors: &mut ConfigErrors) {
    for channel in channels {
        let path = format!("{}.source", channel.path());
        if let SourceConfig::Notification(config) = &mut channel.source {
            resolve_rules(&mut config.output, base_dir, &format!("{path}.output"), errors);
            for (destination, spec) in &mut config.outputs {
                resolve_rules(spec, base_dir, &format!("{path}.outputs.{destination}"), errors);
            }
        }
        let SourceConfig::Notification(config) = &channel.source else { continue };
        for destination in config.outputs.keys() {
            if channel.destination(destination).is_none() {
                errors.push(format!("{path}.outputs.{destination}"), "no destination of this channel has this name");
            }
        }
        if channel.destination(ACK_DESTINATION).is_some() {
            errors.push(
                format!("{}.destinations", channel.path()),
                format!("{ACK_DESTINATION:?} is reserved for the partner acknowledgements of a notification channel"),
            );
        }
    }
}

/// A notification channel's running parts: the endpoint's state, the flow
/// stage of its destination workers, and its acknowledgement worker.
#[derive(Debug, Clone)]
pub struct NotificationRuntime {
    endpoint: Arc<NotificationEndpoint>,
    ack: Arc<AckWorker>,
    listen: Option<SocketAddr>,
}

impl NotificationRuntime {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        self.endpoint.stage.channel()
    }

    /// The flow stage for the channel's destination workers.
    pub fn stage(&self) -> Arc<dyn FlowStage> {
        Arc::clone(&self.endpoint.stage) as Arc<dyn FlowStage>
    }

    /// The acknowledgement worker (run it with the destination workers).
    pub fn ack_worker(&self) -> Arc<AckWorker> {
        Arc::clone(&self.ack)
    }

    /// The listener of its own, if configured.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }
}

/// Builds the runtime of every enabled `notification` channel, by channel
/// name. `Err` names the channel and what failed (an HTTP client).
pub fn prepare(
    channels: &[ChannelConfig],
    store: &Arc<dyn Store>,
    switch_of: impl Fn(&str) -> Arc<ChannelSwitch>,
) -> Result<HashMap<String, NotificationRuntime>, (String, String)> {
    let mut out = HashMap::new();
    for channel in channels.iter().filter(|c| c.enabled) {
        let SourceConfig::Notification(config) = &channel.source else { continue };
        let fail = |e: String| (channel.name.clone(), e);
        let flow = config.flow_config();
        let partner = config.partner.clone().unwrap_or_else(|| channel.name.clone());
        let settings = StageSettings {
            channel: channel.name.clone(),
            partner: partner.clone(),
            config: flow.clone(),
            output: config.output.clone(),
            outputs: config.outputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            hl7: config.hl7.clone(),
            destinations: channel.destinations.iter().map(|d| d.name.clone()).collect(),
        };
        let stage = NotificationStage::new(settings, Arc::clone(store)).map_err(|e| fail(e.to_string()))?;
        let ack = AckWorker::new(
            &channel.name,
            flow.acknowledgement.clone(),
            config.ack_retry.to_store_policy(),
            Arc::clone(store),
        )
        .map_err(|e| fail(format!("acknowledgement client: {e}")))?;
        let endpoint = NotificationEndpoint {
            stage: Arc::new(stage),
            verifier: Verifier::new(flow.auth.clone()),
            guard: UrlGuard::new(&flow.fetch),
            fields: flow.fields.clone(),
            destinations: channel.destinations.iter().map(|d| d.name.clone()).collect(),
            partner,
            max_body_size: config.max_body_size.as_usize(),
            duplicate_window: config.duplicate_window.get(),
            store: Arc::clone(store),
            file_locks: (0..FILE_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            switch: switch_of(&channel.name),
        };
        out.insert(
            channel.name.clone(),
            NotificationRuntime { endpoint: Arc::new(endpoint), ack: Arc::new(ack), listen: config.listen },
        );
    }
    Ok(out)
}

/// Per-file locks (striped): the file-id lookup and the store of one file
/// never interleave with another notification of the same file.
const FILE_LOCK_STRIPES: usize = 64;

/// The endpoint of one channel.
#[derive(Debug)]
struct NotificationEndpoint {
    stage: Arc<NotificationStage>,
    verifier: Verifier,
    guard: UrlGuard,
    fields: FieldPaths,
    destinations: Vec<String>,
    partner: String,
    max_body_size: usize,
    duplicate_window: std::time::Duration,
    store: Arc<dyn Store>,
    file_locks: Vec<tokio::sync::Mutex<()>>,
    /// The channel's stop/start switch: stopped, notifications are refused.
    switch: Arc<ChannelSwitch>,
}

/// The routes of `channels`: `POST /channels/{name}/notifications`. Needs
/// `ConnectInfo<SocketAddr>`, like the http source.
pub fn router(channels: &[NotificationRuntime]) -> Router {
    let limit = channels.iter().map(|c| c.endpoint.max_body_size).max().unwrap_or(0);
    let map: HashMap<String, Arc<NotificationEndpoint>> =
        channels.iter().map(|c| (c.channel().to_string(), Arc::clone(&c.endpoint))).collect();
    Router::new()
        .route("/channels/{name}/notifications", post(post_notification))
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "send notifications with POST",
            )
        })
        .layer(DefaultBodyLimit::max(limit.max(1)))
        .with_state(Arc::new(map))
}

type Endpoints = Arc<HashMap<String, Arc<NotificationEndpoint>>>;

async fn post_notification(
    State(endpoints): State<Endpoints>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(endpoint) = endpoints.get(&name) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no-such-channel",
            "No such channel",
            "no notification source serves this channel",
        )
        .into_response();
    };
    match body {
        Ok(body) => endpoint.receive(&headers, body, peer).await,
        // Over the largest channel's limit: refused while it is read, and
        // answered as a problem like the smaller limits below.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        Err(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Notification not readable",
            "the request body could not be read",
        )
        .into_response(),
    }
}

fn too_large() -> Response {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Notification too large", "the body exceeds max_body_size")
        .into_response()
}

impl NotificationEndpoint {
    async fn receive(&self, headers: &HeaderMap, body: Bytes, peer: SocketAddr) -> Response {
        let received_at = chrono::Utc::now();
        if body.len() > self.max_body_size {
            return too_large();
        }
        if let Err(e) = self.verifier.verify(headers, &body, received_at.timestamp()) {
            info!(channel = %self.stage.channel(), %peer, kind = e.kind(), "notification refused");
            return e.problem().into_response();
        }
        // After the signature check, so only the partner learns the
        // channel's state; nothing is stored, the partner notifies again.
        if self.switch.is_stopped() {
            info!(channel = %self.stage.channel(), "notification refused: the channel is stopped");
            let mut response = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "channel-stopped",
                "Channel stopped",
                "the channel is stopped; send the notification again later",
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::ingest::STOPPED_RETRY_AFTER_SECS),
            );
            return response;
        }
        let notification = match parse(&self.fields, &body) {
            Ok(n) => n,
            Err(e) => return e.problem().into_response(),
        };
        if let BundleLocation::PresignedUrl(url) = &notification.location
            && let Err(e) = self.guard.check_url(url)
        {
            info!(channel = %self.stage.channel(), "notification refused: its URL is outside the allow-list");
            return Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "url-refused",
                "Bundle URL refused",
                format!("the bundle URL is not allowed: {e}"),
            )
            .into_response();
        }

        let _file = self.file_locks[stripe(&notification.file_id)].lock().await;
        match self.find_file(&notification.file_id, received_at).await {
            Ok(Some(original)) => return self.duplicate(original, &notification).await,
            Ok(None) => {}
            Err(e) => return unavailable(self.stage.channel(), &e),
        }
        let message = NewMessage {
            channel: self.stage.channel().to_string(),
            received_at,
            peer_addr: Some(peer.to_string()),
            content_type: "application/json".into(),
            raw: body.to_vec(),
            control_id: Some(notification.notification_id.clone()),
            sender_key: self.partner.clone(),
            message_type: Some(NOTIFICATION_TYPE.into()),
            event: None,
            order_key: Some(file_key(&notification.file_id)),
            patient_ids: notification.patient.iter().cloned().collect(),
            ack: None,
            deliveries: self.destinations.iter().map(NewDelivery::queued).collect(),
        };
        match self.store.accept(message).await {
            Ok(Accepted::Stored { id }) => {
                (StatusCode::ACCEPTED, axum::Json(json!({ "status": "accepted", "message_id": id.to_string() })))
                    .into_response()
            }
            Ok(Accepted::Duplicate { original, .. }) => self.duplicate(original, &notification).await,
            Err(e) => unavailable(self.stage.channel(), &e),
        }
    }

    /// The newest stored notification of `file_id` within the window.
    async fn find_file(
        &self,
        file_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<MessageId>, store::StoreError> {
        let window = chrono::TimeDelta::from_std(self.duplicate_window).unwrap_or(chrono::TimeDelta::MAX);
        let query = SearchQuery {
            channel: Some(self.stage.channel().to_string()),
            order_key: Some(file_key(file_id)),
            received_from: now.checked_sub_signed(window),
            limit: 1,
            ..SearchQuery::default()
        };
        Ok(self.store.search(&query).await?.items.first().map(|m| m.id))
    }

    /// Answers a duplicate, acknowledging the partner again when the
    /// original is delivered everywhere.
    async fn duplicate(&self, original: MessageId, notification: &Notification) -> Response {
        let acknowledgement = match self.stage.delivered_everywhere(original).await {
            Ok(true) => match self.stage.queue_ack(original, notification).await {
                Ok(()) => "queued",
                Err(e) => return unavailable(self.stage.channel(), &e),
            },
            Ok(false) => "after delivery",
            Err(e) => return unavailable(self.stage.channel(), &e),
        };
        (
            StatusCode::OK,
            axum::Json(json!({
                "status": "duplicate",
                "message_id": original.to_string(),
                "acknowledgement": acknowledgement,
            })),
        )
            .into_response()
    }
}

/// The stored order key of a file: its dedupe lookup key.
fn file_key(file_id: &str) -> String {
    format!("file:{file_id}")
}

fn stripe(file_id: &str) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    file_id.hash(&mut hasher);
    (hasher.finish() % FILE_LOCK_STRIPES as u64) as usize
}

fn unavailable(channel: &str, e: &store::StoreError) -> Response {
    warn!(%channel, error = %e.summary(), "a notification could not be stored");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-stored",
        "Notification not stored",
        "the notification could not be stored; send it again later",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::notification::stage::NotificationOutput;

    const CHANNEL: &str = r#"
version = 1
[channels.glucose]
content = "json"
[channels.glucose.source]
type = "notification"
outputs = { OUTPUT }
[channels.glucose.source.fields]
notification_id = "id"
file_id = "file.id"
presigned_url = "file.url"
[channels.glucose.source.auth.bearer]
token = "t"
[channels.glucose.source.fetch]
allowed_hosts = ["*.partner.example"]
[channels.glucose.source.acknowledgement]
url = "https://api.partner.example/ack/{notification_id}"
[[channels.glucose.destinations]]
name = "DESTINATION"
type = "file"
directory = "out"
"#;

    fn compile(output: &str, destination: &str) -> Result<crate::config::Config, ConfigErrors> {
        crate::config::Config::from_toml_str(&CHANNEL.replace("OUTPUT", output).replace("DESTINATION", destination))
    }

    #[test]
    fn a_notification_channel_compiles() {
        let config = compile(r#"emr = "ras_o17""#, "emr").unwrap();
        let SourceConfig::Notification(source) = &config.channels[0].source else { panic!("notification source") };
        assert_eq!(source.outputs["emr"], NotificationOutput::RasO17.into());
        assert_eq!(source.output, NotificationOutput::OruR01.into());
        assert_eq!(source.duplicate_window, Duration::from_secs(24 * 3600));
        assert_eq!(config.channels[0].source.describe(), "notification (api listener)");
    }

    #[test]
    fn outputs_must_name_destinations_and_the_ack_name_is_reserved() {
        let err = compile(r#"archive = "fhir""#, "emr").unwrap_err().to_string();
        assert!(err.contains("outputs.archive") && err.contains("no destination"), "{err}");
        let err = compile("", ACK_DESTINATION).unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
        let err = compile(r#"emr = "xml""#, "emr").unwrap_err().to_string();
        assert!(err.contains("outputs"), "{err}");
    }

    #[test]
    fn file_keys_and_stripes_are_stable() {
        assert_eq!(file_key("f-1"), "file:f-1");
        assert_eq!(stripe("f-1"), stripe("f-1"));
        assert!(stripe("anything") < FILE_LOCK_STRIPES);
    }
}
