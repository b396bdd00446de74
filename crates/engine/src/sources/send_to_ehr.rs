//! The `send_to_ehr` source: document submission through the FHIR operation
//! `POST /fhir/CommunicationRequest/$send-to-ehr` and its tracking `GET
//! /fhir/CommunicationRequest/$tracking`, served on the API listener.
//!
//! ```toml
//! [fhir_servers.ehr]
//! base_url = "https://ehr.example.org/fhir"
//!
//! [channels.documents.source]
//! type = "send_to_ehr"
//! patient_source = "ehr"                      # where subject and context are read
//! public_url = "https://plexus.example/fhir"  # for the tracking-url answer
//! output = "oru_r01"                          # oru_r01 | mdm_t02 | json
//! outputs = { archive = "json" }              # per destination
//!
//! [[channels.documents.destinations]]
//! name = "ehr"
//! type = "mllp"
//! address = "ehr.example.org:2575"
//! ```
//!
//! The rest of the table is [`SendToEhrConfig`] (accepted content and
//! document types, payload limit, tracking retention ...).
//!
//! # How a submission travels
//!
//! 1. The operation checks the caller's API token (scope `SEND_TO_EHR`),
//!    validates the Parameters, resolves `subject` and `context` on the
//!    patient source, builds the Binary, DocumentReference and
//!    CommunicationRequest, and stores them with the Patient and Encounter
//!    as one message of the channel, queued for each destination
//!    ([`StoreTracking`]). Only after that commit does it answer 200 with
//!    the transaction id.
//! 2. Each destination's worker converts the stored submission into the
//!    destination's format ([`SendToEhrStage`], the channel's
//!    [`FlowStage`]), then the channel's filters and transforms run on
//!    HL7 v2 output as for any message, and the destination sends it, with
//!    the destination's retry policy while the EHR is down.
//! 3. `$tracking` reads the status from the message's deliveries.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use store::{ClaimedDelivery, Store};

use crate::api::auth::{ANONYMOUS, Auth, AuthError, Scope};
use crate::api::control::ChannelSwitch;
use crate::config::{ChannelConfig, ConfigErrors};
use crate::flows::send_to_ehr::Rejection;
use crate::flows::send_to_ehr::api::{self, Caller, CallerAuth, SendToEhrState};
use crate::flows::send_to_ehr::build::ehr_message_from_stored;
use crate::flows::send_to_ehr::persist::StoreTracking;
use crate::flows::send_to_ehr::{PatientSource, SendToEhrConfig};
use crate::flows::{FlowError, FlowOutput, FlowStage};
use crate::sources::SourceConfig;

/// The configuration of a `send_to_ehr` source.
pub type SendToEhrSourceConfig = SendToEhrConfig;

/// Checks that need the other tables: the patient source names a
/// `[fhir_servers.*]` table, `outputs` name destinations of the channel,
/// and at most one enabled channel serves the operation (it has one URL).
pub(crate) fn cross_check(
    fhir_servers: &BTreeMap<String, fhir::ServerConfig>,
    channels: &[ChannelConfig],
    errors: &mut ConfigErrors,
) {
    let mut serving: Option<&str> = None;
    for channel in channels {
        let SourceConfig::SendToEhr(config) = &channel.source else { continue };
        let path = format!("{}.source", channel.path());
        match &config.patient_source {
            None => {
                errors.push(format!("{path}.patient_source"), "required: the [fhir_servers.NAME] to read patients from")
            }
            Some(name) if !fhir_servers.contains_key(name) => {
                let known: Vec<&str> = fhir_servers.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none is configured".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                errors.push(format!("{path}.patient_source"), format!("no [fhir_servers.{name}] table ({known})"));
            }
            Some(_) => {}
        }
        for destination in config.outputs.keys() {
            if channel.destination(destination).is_none() {
                errors.push(format!("{path}.outputs.{destination}"), "no destination of this channel has this name");
            }
        }
        if channel.enabled {
            match serving {
                Some(other) => errors.push(
                    format!("{path}.type"),
                    format!("channel {other:?} already serves $send-to-ehr (one channel per engine)"),
                ),
                None => serving = Some(&channel.name),
            }
        }
    }
}

/// The channel's flow stage: converts a stored submission into what each
/// destination sends (ORU^R01 or MDM^T02 with the document in an ED OBX, or
/// the FHIR Bundle as JSON), per [`SendToEhrConfig::output_for`]. The
/// conversion is deterministic, so a retried attempt sends the same bytes;
/// a submission that cannot be converted fails permanently (retrying would
/// not change it) and its tracking says `entered-in-error` with the reason.
#[derive(Debug)]
pub struct SendToEhrStage {
    config: Arc<SendToEhrConfig>,
}

impl SendToEhrStage {
    /// The stage of a flow configured by `config`.
    pub fn new(config: Arc<SendToEhrConfig>) -> SendToEhrStage {
        SendToEhrStage { config }
    }
}

#[async_trait]
impl FlowStage for SendToEhrStage {
    async fn prepare(&self, delivery: &ClaimedDelivery, destination: &str) -> Result<FlowOutput, FlowError> {
        let format = self.config.output_for(destination);
        let message = ehr_message_from_stored(&delivery.raw, format, &self.config.hl7).map_err(FlowError::Permanent)?;
        Ok(FlowOutput { content: message.to_bytes(), content_type: message.media_type().to_string() })
    }

    async fn delivered(
        &self,
        _delivery: &ClaimedDelivery,
        _destination: &str,
        _sent: &FlowOutput,
        _response: &store::Response,
    ) -> Result<(), FlowError> {
        // The tracking status is read from the delivery itself.
        Ok(())
    }
}

/// API tokens guard the operation: a token with the scope `SEND_TO_EHR`
/// (401 without a valid token, 403 without the scope, both as FHIR
/// OperationOutcome). The token's name is the calling application, the
/// default `sender-identifier`.
#[async_trait]
impl CallerAuth for Auth {
    async fn authorize(&self, headers: &axum::http::HeaderMap, scope: &str) -> Result<Caller, Rejection> {
        debug_assert_eq!(scope, api::SEND_TO_EHR_SCOPE);
        match Auth::authorize(self, headers, Scope::SendToEhr).await {
            // With authentication off there is no application name: the
            // configured default sender applies.
            Ok(caller) if caller.token_name == ANONYMOUS && caller.token_id.is_empty() => {
                Ok(Caller { application: None })
            }
            Ok(caller) => Ok(Caller { application: Some(caller.token_name) }),
            Err(e) => Err(auth_rejection(&e)),
        }
    }
}

/// An [`AuthError`] as the operation's refusal.
fn auth_rejection(error: &AuthError) -> Rejection {
    let (status, code) = match error {
        AuthError::Missing | AuthError::Invalid => (401, "login"),
        AuthError::Forbidden { .. } => (403, "forbidden"),
        AuthError::Unavailable => (503, "transient"),
    };
    Rejection::one(status, None, code, error.to_string())
}

/// The flow stage of a channel whose source is `send_to_ehr`.
pub fn flow_stage(source: &SourceConfig) -> Option<Arc<dyn FlowStage>> {
    match source {
        SourceConfig::SendToEhr(config) => Some(Arc::new(SendToEhrStage::new(Arc::new((**config).clone())))),
        _ => None,
    }
}

/// A `send_to_ehr` channel, ready to be served once the API listener is
/// bound (its address is the default public URL).
pub struct SendToEhrApi {
    channel: String,
    config: Arc<SendToEhrConfig>,
    destinations: Vec<String>,
    source: Arc<dyn PatientSource>,
}

impl std::fmt::Debug for SendToEhrApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendToEhrApi")
            .field("channel", &self.channel)
            .field("destinations", &self.destinations)
            .finish()
    }
}

/// Why a `send_to_ehr` channel could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("patient source {name:?}: {error}")]
pub struct SetupError {
    /// The `[fhir_servers.*]` name.
    pub name: String,
    /// What failed (building its client: TLS, credentials from the
    /// environment).
    pub error: String,
}

/// Builds the patient source client of the enabled `send_to_ehr` channel,
/// if any (the configuration allows one). `Err` carries the channel's name.
pub fn prepare(
    channels: &[ChannelConfig],
    fhir_servers: &BTreeMap<String, fhir::ServerConfig>,
) -> Result<Option<SendToEhrApi>, (String, SetupError)> {
    let Some((channel, config)) = channels.iter().filter(|c| c.enabled).find_map(|c| match &c.source {
        SourceConfig::SendToEhr(config) => Some((c, config)),
        _ => None,
    }) else {
        return Ok(None);
    };
    let name = config.patient_source.clone().unwrap_or_default();
    let fail = |error: String| (channel.name.clone(), SetupError { name: name.clone(), error });
    let server = fhir_servers.get(&name).ok_or_else(|| fail("no such [fhir_servers] table".into()))?;
    let client = fhir::FhirClient::new(&name, server).map_err(|e| fail(e.to_string()))?;
    Ok(Some(SendToEhrApi {
        channel: channel.name.clone(),
        config: Arc::new((**config).clone()),
        destinations: channel.destinations.iter().map(|d| d.name.clone()).collect(),
        source: Arc::new(client),
    }))
}

impl SendToEhrApi {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The operation's routes, storing submissions in `store` and checking
    /// callers with `auth`. `listener_base` is the API listener's FHIR base
    /// (`http://127.0.0.1:8080/fhir`), used when `public_url` is not set.
    /// `switch` is the channel's stop/start switch: stopped, it refuses
    /// submissions (503).
    pub fn router(
        self,
        store: Arc<dyn Store>,
        auth: Arc<dyn CallerAuth>,
        listener_base: &str,
        switch: Arc<ChannelSwitch>,
    ) -> Router {
        let fhir_base = self.config.public_url.clone().unwrap_or_else(|| listener_base.to_string());
        tracing::info!(channel = %self.channel, base = %fhir_base, "send-to-ehr operation served");
        api::router(SendToEhrState {
            config: self.config,
            fhir_base,
            source: self.source,
            tracking: Arc::new(StoreTracking::new(store, self.channel, self.destinations)),
            auth,
            switch,
        })
    }
}
