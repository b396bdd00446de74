//! The notification flow inside the destination workers ([`FlowStage`]):
//! fetch the announced bundle, convert it for each destination, and queue
//! the partner's acknowledgement once every destination has it.
//!
//! # Per attempt ([`NotificationStage::prepare`])
//!
//! The stored message is the notification exactly as received. Each attempt
//! parses it again (pure, deterministic), fetches the bundle through the URL
//! guard and the fetcher (pre-signed URL or object storage with temporary
//! credentials), records the fetch in the message's audit trail
//! (`bundle_fetched`: SHA-256, size and entry count, never the content) and
//! converts it into the destination's [`NotificationOutput`]. The converted
//! message is what the worker keeps as the delivery's transformed content.
//! A fetched bundle is kept in memory (bounded) until the message is done,
//! so retries while the EMR is down do not fetch it again.
//!
//! A fetch failure is classified by [`FetchError::class`]: a network error,
//! a timeout or a 5xx is retried by the destination's policy; a body that is
//! not a FHIR Bundle, a bundle over the size limit or a refused URL fails
//! the delivery at once with the reason (the partner is never acknowledged
//! for it). A bundle without anything a destination's format carries
//! (no MedicationAdministration for `ras_o17`) completes that delivery as
//! filtered, with the reason. The `json` output maps the bundle's resources
//! with mapping rules ([`super::json`]); a rule violation fails the delivery
//! at once with the rule's message.
//!
//! # Acknowledgement
//!
//! The partner is acknowledged when every destination of the channel has
//! the bundle (sent, or filtered because there was nothing for it). The
//! stage does not call the partner itself: it stores an acknowledgement
//! request (a small message of the same channel with one delivery to the
//! reserved destination [`ACK_DESTINATION`]), which the
//! [`super::ack::AckWorker`] sends with its own retry policy. So a failing
//! acknowledgement is retried without delivering the bundle again, and an
//! undelivered bundle is never acknowledged.
//!
//! Which destinations are done is tracked in memory (serialised, so two
//! destinations finishing at once cannot both miss each other) and, for
//! destinations finished before a restart, read from the store. With
//! several processes on one PostgreSQL store, two destinations finishing at
//! the same time in different processes may both miss each other; the
//! partner's re-notification then finds the delivered original and is
//! acknowledged (see the source).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use store::{ClaimedDelivery, DeliveryState, MessageId, NewAuditEvent, NewDelivery, NewMessage, Store};
use tracing::warn;

use super::config::NotificationConfig;
use super::fetch::{BundleFetcher, ErrorClass, FetchError, FetchedBundle};
use super::json::{OutputSpec, load_rules, map_bundle};
use super::parse::{Notification, parse};
use crate::flows::{FlowError, FlowOutput, FlowStage};

/// The reserved destination name of acknowledgement requests.
pub const ACK_DESTINATION: &str = "partner-ack";

/// The `message_type` of stored notifications.
pub const NOTIFICATION_TYPE: &str = "notification";

/// The `message_type` of stored acknowledgement requests.
pub const ACK_TYPE: &str = "notification-ack";

/// The media type of acknowledgement requests in the store.
pub const ACK_CONTENT_TYPE: &str = "application/json";

/// How many fetched bundles are kept for retries.
const BUNDLE_CACHE: usize = 256;

/// What a destination of a notification channel receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationOutput {
    /// HL7 v2 ORU^R01 with the bundle's Observations and Devices.
    #[default]
    OruR01,
    /// HL7 v2 RAS^O17 with the bundle's MedicationAdministrations.
    RasO17,
    /// The bundle as fetched (`application/fhir+json`), for a `fhir`
    /// destination (or an `http` one).
    Fhir,
    /// The bundle's resources mapped by mapping rules into a JSON array
    /// (`application/json`), see [`super::json`].
    Json,
}

impl NotificationOutput {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationOutput::OruR01 => "oru_r01",
            NotificationOutput::RasO17 => "ras_o17",
            NotificationOutput::Fhir => "fhir",
            NotificationOutput::Json => "json",
        }
    }
}

/// The notification flow of one channel.
#[derive(Debug)]
pub struct NotificationStage {
    channel: String,
    partner: String,
    config: NotificationConfig,
    fetcher: BundleFetcher,
    output: OutputSpec,
    outputs: HashMap<String, OutputSpec>,
    /// The compiled rules of the `json` outputs, by file.
    rules: HashMap<PathBuf, Arc<convert::rules::MappingRules>>,
    hl7: convert::FhirToHl7Options,
    destinations: Vec<String>,
    store: Arc<dyn Store>,
    bundles: Mutex<BundleCache>,
    /// Notifications parsed by `prepare`, for `delivered` (whose delivery
    /// carries the converted content) without reading the store again.
    parsed: Mutex<HashMap<MessageId, Notification>>,
    done: tokio::sync::Mutex<HashMap<MessageId, HashSet<String>>>,
}

/// The settings a [`NotificationStage`] is built from.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// The channel's name.
    pub channel: String,
    /// The partner's name (the stored messages' sender key).
    pub partner: String,
    /// The notification settings.
    pub config: NotificationConfig,
    /// The default output.
    pub output: OutputSpec,
    /// Outputs per destination name.
    pub outputs: HashMap<String, OutputSpec>,
    /// MSH fields of HL7 v2 outputs.
    pub hl7: convert::FhirToHl7Options,
    /// The channel's destinations (all of them must have the bundle before
    /// the partner is acknowledged).
    pub destinations: Vec<String>,
}

impl NotificationStage {
    /// Builds the stage (the fetcher's clients, the `json` outputs' rules;
    /// no connection is opened).
    pub fn new(settings: StageSettings, store: Arc<dyn Store>) -> Result<NotificationStage, StageError> {
        let fetcher = BundleFetcher::new(&settings.config)?;
        let mut rules = HashMap::new();
        for spec in std::iter::once(&settings.output).chain(settings.outputs.values()) {
            if let Some(path) = &spec.rules
                && !rules.contains_key(path)
            {
                let compiled = load_rules(path).map_err(StageError::Rules)?;
                rules.insert(path.clone(), Arc::new(compiled));
            }
        }
        Ok(NotificationStage {
            channel: settings.channel,
            partner: settings.partner,
            config: settings.config,
            fetcher,
            output: settings.output,
            outputs: settings.outputs,
            rules,
            hl7: settings.hl7,
            destinations: settings.destinations,
            store,
            bundles: Mutex::new(BundleCache::default()),
            parsed: Mutex::new(HashMap::new()),
            done: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The partner's name.
    pub fn partner(&self) -> &str {
        &self.partner
    }

    /// The notification settings.
    pub fn config(&self) -> &NotificationConfig {
        &self.config
    }

    /// What `destination` receives.
    pub fn output_for(&self, destination: &str) -> &OutputSpec {
        self.outputs.get(destination).unwrap_or(&self.output)
    }

    /// Stores a request to acknowledge `notification` (of the stored message
    /// `original`) to the partner; the [`super::ack::AckWorker`] sends it.
    pub async fn queue_ack(&self, original: MessageId, notification: &Notification) -> Result<(), store::StoreError> {
        let body = json!({
            "message_id": original.to_string(),
            "notification_id": notification.notification_id,
            "file_id": notification.file_id,
        });
        let message = NewMessage {
            channel: self.channel.clone(),
            received_at: chrono::Utc::now(),
            peer_addr: None,
            content_type: ACK_CONTENT_TYPE.to_string(),
            raw: body.to_string().into_bytes(),
            // Every request is its own: a re-notification of a delivered
            // bundle is acknowledged again.
            control_id: None,
            sender_key: self.partner.clone(),
            message_type: Some(ACK_TYPE.to_string()),
            event: None,
            order_key: None,
            patient_ids: Vec::new(),
            ack: None,
            deliveries: vec![NewDelivery::queued(ACK_DESTINATION)],
        };
        let accepted = self.store.accept(message).await?;
        let detail = match accepted {
            store::Accepted::Stored { id } => format!("acknowledgement request {id}"),
            store::Accepted::Duplicate { original, .. } => format!("acknowledgement request {original}"),
        };
        self.audit(original, "acknowledgement_queued", detail).await;
        Ok(())
    }

    /// Whether every destination of the stored notification `id` has it
    /// (sent, or filtered with nothing to send). `false` if it is unknown.
    pub async fn delivered_everywhere(&self, id: MessageId) -> Result<bool, store::StoreError> {
        let Some(detail) = self.store.get_message(id).await? else { return Ok(false) };
        let done: HashSet<&str> = detail
            .deliveries
            .iter()
            .filter(|d| matches!(d.state, DeliveryState::Sent | DeliveryState::Filtered))
            .map(|d| d.destination.as_str())
            .collect();
        Ok(self.destinations.iter().all(|d| done.contains(d.as_str())))
    }

    async fn audit(&self, message: MessageId, action: &str, detail: String) {
        let event = NewAuditEvent {
            actor: format!("channel:{}", self.channel),
            action: action.to_string(),
            message_id: Some(message),
            delivery_id: None,
            detail: Some(detail),
        };
        if let Err(e) = self.store.record_audit(event).await {
            warn!(channel = %self.channel, message_id = %message, action, error = %e.summary(),
                  "recording a notification audit event failed");
        }
    }

    /// The bundle of `delivery`'s notification: from the cache, or fetched
    /// (and the fetch recorded).
    async fn bundle(
        &self,
        delivery: &ClaimedDelivery,
        notification: &Notification,
    ) -> Result<Arc<FetchedBundle>, FlowError> {
        if let Some(b) = self.lock_bundles().get(delivery.message_id) {
            return Ok(b);
        }
        let fetched = self.fetcher.fetch(&notification.location).await.map_err(|e| fetch_failure(&e))?;
        let entries = fetched.bundle.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
        let detail = format!(
            "sha256={} size={} entries={entries} via={}",
            hex::encode(Sha256::digest(&fetched.bytes)),
            fetched.bytes.len(),
            match notification.location {
                super::BundleLocation::PresignedUrl(_) => "presigned_url",
                super::BundleLocation::Object { .. } => "object_storage",
            }
        );
        self.audit(delivery.message_id, "bundle_fetched", detail).await;
        let fetched = Arc::new(fetched);
        self.lock_bundles().insert(delivery.message_id, Arc::clone(&fetched));
        Ok(fetched)
    }

    fn lock_parsed(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Notification>> {
        self.parsed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_bundles(&self) -> std::sync::MutexGuard<'_, BundleCache> {
        self.bundles.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `destination` has the message's bundle; queues the
    /// acknowledgement when it was the last one.
    async fn destination_done(&self, message: MessageId, destination: &str, notification: &Notification) {
        let mut done = self.done.lock().await;
        let entry = done.entry(message).or_default();
        entry.insert(destination.to_string());
        let mut complete = self.destinations.iter().all(|d| entry.contains(d));
        if !complete {
            // Destinations done before a restart are only in the store.
            complete = match self.store.get_message(message).await {
                Ok(Some(detail)) => self.destinations.iter().all(|d| {
                    entry.contains(d)
                        || detail.deliveries.iter().any(|x| {
                            &x.destination == d && matches!(x.state, DeliveryState::Sent | DeliveryState::Filtered)
                        })
                }),
                _ => false,
            };
        }
        if !complete {
            return;
        }
        done.remove(&message);
        drop(done);
        self.lock_bundles().remove(message);
        self.lock_parsed().remove(&message);
        if let Err(e) = self.queue_ack(message, notification).await {
            // The partner notifies again; that duplicate is acknowledged.
            warn!(channel = %self.channel, message_id = %message, error = %e.summary(),
                  "queueing the partner acknowledgement failed");
        }
    }

    fn convert(
        &self,
        bundle: &FetchedBundle,
        notification: &Notification,
        spec: &OutputSpec,
    ) -> Result<FlowOutput, FlowError> {
        let output = spec.format;
        let target = match output {
            NotificationOutput::Fhir => {
                return Ok(FlowOutput { content: bundle.bytes.to_vec(), content_type: "application/fhir+json".into() });
            }
            NotificationOutput::Json => {
                let rules = spec
                    .rules
                    .as_ref()
                    .and_then(|p| self.rules.get(p))
                    .ok_or_else(|| FlowError::Permanent("the json output has no mapping rules".into()))?;
                let content = map_bundle(&bundle.bundle, spec, rules)?;
                return Ok(FlowOutput { content, content_type: "application/json".into() });
            }
            NotificationOutput::OruR01 => convert::TargetMessage::OruR01,
            NotificationOutput::RasO17 => convert::TargetMessage::RasO17,
        };
        let wanted: &[&str] = match output {
            NotificationOutput::RasO17 => &["MedicationAdministration"],
            _ => &["Observation", "Device", "DeviceMetric"],
        };
        if !has_resources(&bundle.bundle, wanted) {
            return Err(FlowError::Skip(format!(
                "the bundle holds no {} for {}",
                wanted.join(" or "),
                output.as_str()
            )));
        }
        let mut options = self.hl7.clone();
        if options.control_id.is_empty() {
            options.control_id = control_id(&notification.file_id, output);
        }
        let message = convert::fhir_to_hl7(&bundle.bundle, target, &options)
            .map_err(|e| FlowError::Permanent(format!("converting the bundle to {}: {e}", output.as_str())))?;
        Ok(FlowOutput { content: message.encode(), content_type: crate::destinations::HL7_V2_CONTENT_TYPE.into() })
    }
}

#[async_trait]
impl FlowStage for NotificationStage {
    async fn prepare(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<FlowOutput, FlowError> {
        let notification = parse(&self.config.fields, &delivery.raw)
            .map_err(|e| FlowError::Permanent(format!("the stored notification does not parse: {e}")))?;
        let bundle = self.bundle(delivery, &notification).await?;
        self.lock_parsed().insert(delivery.message_id, notification.clone());
        let result = self.convert(&bundle, &notification, self.output_for(destination));
        if let Err(FlowError::Skip(_)) = &result {
            // Nothing for this destination: it is done as far as the
            // acknowledgement is concerned.
            self.destination_done(delivery.message_id, destination, &notification).await;
        }
        result
    }

    async fn delivered(
        &self,
        delivery: &ClaimedDelivery,
        destination: &str,
        _sent: &FlowOutput,
        _response: &store::Response,
    ) -> Result<(), FlowError> {
        self.finished(delivery, destination).await
    }

    async fn filtered(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<(), FlowError> {
        // Filtered is final: nothing will ever be sent there, so the
        // acknowledgement must not wait for it.
        self.finished(delivery, destination).await
    }

    async fn failed(&self, delivery: &ClaimedDelivery, destination: &str, reason: &str) {
        self.lock_bundles().remove(delivery.message_id);
        self.lock_parsed().remove(&delivery.message_id);
        self.audit(
            delivery.message_id,
            "not_acknowledged",
            format!("destination {destination} failed for good, the partner is not acknowledged: {reason}"),
        )
        .await;
    }
}

impl NotificationStage {
    /// `destination` is done with `delivery`'s notification (sent, or
    /// filtered with nothing to send).
    async fn finished(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<(), FlowError> {
        // `delivery.raw` is the prepared content here; the notification is
        // the one `prepare` parsed, or (another process prepared it) read
        // from the store's copy.
        let memo = self.lock_parsed().get(&delivery.message_id).cloned();
        if let Some(notification) = memo {
            self.destination_done(delivery.message_id, destination, &notification).await;
            return Ok(());
        }
        let raw = match self.store.get_message(delivery.message_id).await {
            Ok(Some(detail)) => detail.raw.unwrap_or_default(),
            Ok(None) => return Err(FlowError::Permanent("the notification is no longer stored".into())),
            Err(e) => return Err(FlowError::Transient(e.summary())),
        };
        let notification = parse(&self.config.fields, &raw)
            .map_err(|e| FlowError::Permanent(format!("the stored notification: {e}")))?;
        self.destination_done(delivery.message_id, destination, &notification).await;
        Ok(())
    }
}

/// Why a [`NotificationStage`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The fetcher's HTTP clients.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A `json` output's rules file does not load.
    #[error("mapping rules: {0}")]
    Rules(String),
}

/// A stable MSH-10 per file and output (20 characters, the 2.5.1 length):
/// a retried or re-notified bundle carries the same control id, so an EMR
/// that dedupes on MSH-10 drops a repeat; ORU and RAS of one bundle differ.
pub fn control_id(file_id: &str, output: NotificationOutput) -> String {
    let digest = Sha256::new().chain_update(output.as_str()).chain_update([0]).chain_update(file_id).finalize();
    hex::encode(digest)[..20].to_string()
}

fn has_resources(bundle: &Value, types: &[&str]) -> bool {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| e.pointer("/resource/resourceType").and_then(Value::as_str).is_some_and(|t| types.contains(&t)))
}

fn fetch_failure(e: &FetchError) -> FlowError {
    let reason = format!("fetching the bundle: {e}");
    match e.class() {
        ErrorClass::Transient => FlowError::Transient(reason),
        ErrorClass::Permanent | ErrorClass::Config => FlowError::Permanent(reason),
    }
}

/// Fetched bundles by message, oldest evicted first.
#[derive(Debug, Default)]
struct BundleCache {
    map: HashMap<MessageId, Arc<FetchedBundle>>,
    order: VecDeque<MessageId>,
}

impl BundleCache {
    fn get(&self, id: MessageId) -> Option<Arc<FetchedBundle>> {
        self.map.get(&id).cloned()
    }

    fn insert(&mut self, id: MessageId, bundle: Arc<FetchedBundle>) {
        if self.map.insert(id, bundle).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > BUNDLE_CACHE {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, id: MessageId) {
        if self.map.remove(&id).is_some() {
            self.order.retain(|x| *x != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_stable_short_and_differ_per_output() {
        let oru = control_id("file-1", NotificationOutput::OruR01);
        assert_eq!(oru.len(), 20);
        assert_eq!(oru, control_id("file-1", NotificationOutput::OruR01));
        assert_ne!(oru, control_id("file-1", NotificationOutput::RasO17));
        assert_ne!(oru, control_id("file-2", NotificationOutput::OruR01));
    }

    #[test]
    fn resources_are_found_by_type() {
        let bundle = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation"}}]});
        assert!(has_resources(&bundle, &["Observation"]));
        assert!(!has_resources(&bundle, &["MedicationAdministration"]));
        assert!(!has_resources(&json!({"resourceType": "Bundle"}), &["Observation"]));
    }

    #[test]
    fn fetch_failures_are_classified() {
        assert!(matches!(fetch_failure(&FetchError::Status(503)), FlowError::Transient(_)));
        assert!(matches!(fetch_failure(&FetchError::NotBundle("Patient".into())), FlowError::Permanent(_)));
        assert!(matches!(fetch_failure(&FetchError::TooLarge { limit: 10 }), FlowError::Permanent(_)));
    }

    #[test]
    fn the_cache_evicts_the_oldest() {
        let mut cache = BundleCache::default();
        let bundle = Arc::new(FetchedBundle { bytes: bytes::Bytes::new(), bundle: Value::Null });
        let ids: Vec<MessageId> = (0..=BUNDLE_CACHE).map(|_| MessageId(uuid::Uuid::now_v7())).collect();
        for id in &ids {
            cache.insert(*id, Arc::clone(&bundle));
        }
        assert!(cache.get(ids[0]).is_none());
        assert!(cache.get(ids[BUNDLE_CACHE]).is_some());
        cache.remove(ids[BUNDLE_CACHE]);
        assert!(cache.get(ids[BUNDLE_CACHE]).is_none());
    }
}
