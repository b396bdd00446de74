//! The REST API under `/api`: API tokens and scopes ([`auth`]), JSON problem
//! answers ([`problem`]), channels with counts ([`channels`]) and their
//! stop/start ([`control`]), the message
//! browser and replay ([`messages`]), the OpenAPI document ([`openapi`]).
//!
//! Every `/api` route needs a token with the route's scope unless
//! `api.auth = "none"`; `/healthz`, `/readyz` and `/api/openapi.json` stay
//! public. [`router`] returns a plain `Router` that the runtime merges into
//! the API listener's app, next to the other features' routers.

pub mod auth;
pub mod channels;
pub mod control;
pub mod dashboard;
pub mod https;
pub mod messages;
pub mod openapi;
pub mod problem;
pub mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use store::Store;

use crate::config::ChannelConfig;

/// What the API handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The message store.
    pub store: Arc<dyn Store>,
    /// Token checks.
    pub auth: auth::Auth,
    /// The enabled channels, in config order.
    pub channels: Arc<Vec<ChannelInfo>>,
    /// Each enabled channel's stop/start switch, by name (empty: channels
    /// cannot be stopped, and list as running).
    pub switches: Arc<BTreeMap<String, Arc<control::ChannelSwitch>>>,
}

impl ApiState {
    /// State for `store`, checking tokens with `auth`, describing `channels`.
    pub fn new(store: Arc<dyn Store>, auth: auth::Auth, channels: Vec<ChannelInfo>) -> ApiState {
        ApiState { store, auth, channels: Arc::new(channels), switches: Arc::new(BTreeMap::new()) }
    }

    /// With the channels' stop/start switches (the runtime's ingest paths').
    pub fn with_switches(mut self, switches: BTreeMap<String, Arc<control::ChannelSwitch>>) -> ApiState {
        self.switches = Arc::new(switches);
        self
    }
}

/// A channel as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Name.
    pub name: String,
    /// Source type (`mllp`, `http` ...).
    pub source: String,
    /// Destination names, in config order.
    pub destinations: Vec<String>,
}

impl ChannelInfo {
    /// From a channel's configuration.
    pub fn from_config(c: &ChannelConfig) -> ChannelInfo {
        ChannelInfo {
            name: c.name.clone(),
            source: c.source.kind().to_owned(),
            destinations: c.destinations.iter().map(|d| d.name.clone()).collect(),
        }
    }
}

/// Every `/api` route of this module: channels, messages, dead letters,
/// replay, the OpenAPI document.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(channels::router(state.clone()))
        .merge(control::router(state.clone()))
        .merge(messages::router(state))
        .merge(openapi::router())
        // Any other path under /api: a problem document like every error
        // (the more specific routes merged beside this one win).
        .route("/api/{*path}", axum::routing::any(problem::no_such_route))
}
