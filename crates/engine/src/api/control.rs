//! Stopping and starting a channel (`POST /api/channels/{name}/stop` and
//! `/start`, scope `channels:admin`).
//!
//! A stopped channel's ingest path refuses new messages, answering AE (HTTP
//! 503) "the channel is stopped", so senders keep them and retry; its
//! destination workers stop claiming (a delivery already in flight
//! finishes). Its listeners stay bound, so senders see a clear refusal
//! instead of a connection error. Starting resumes both at once. The switch
//! lives in this process only and is not persisted: a restart runs every
//! enabled channel.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::info;

use super::ApiState;
use super::auth::{self, Caller, Scope};
use super::problem::Problem;

/// Whether a channel runs; shared by its ingest path, its workers and the
/// API.
#[derive(Debug)]
pub struct ChannelSwitch {
    stopped: AtomicBool,
    changed: watch::Sender<bool>,
}

impl Default for ChannelSwitch {
    fn default() -> Self {
        ChannelSwitch { stopped: AtomicBool::new(false), changed: watch::Sender::new(false) }
    }
}

impl ChannelSwitch {
    /// Whether the channel is stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops (`true`) or starts (`false`) the channel; returns whether that
    /// changed anything.
    pub fn set_stopped(&self, stopped: bool) -> bool {
        let was = self.stopped.swap(stopped, Ordering::AcqRel);
        self.changed.send_replace(stopped);
        was != stopped
    }

    /// Returns once the channel runs (at once if it does).
    pub async fn running(&self) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|stopped| !*stopped).await;
    }

    /// `running` or `stopped`.
    pub fn status(&self) -> &'static str {
        if self.is_stopped() { "stopped" } else { "running" }
    }
}

/// The start and stop routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/channels/{name}/stop", post(stop))
        .route("/api/channels/{name}/start", post(start))
        .route_layer(auth::require(state.auth.clone(), Scope::ChannelsAdmin))
        .method_not_allowed_fallback(super::problem::wrong_method)
        .with_state(state)
}

async fn stop(state: State<ApiState>, caller: Extension<Caller>, name: Path<String>) -> Result<Json<Value>, Problem> {
    switch(state, caller, name, true).await
}

async fn start(state: State<ApiState>, caller: Extension<Caller>, name: Path<String>) -> Result<Json<Value>, Problem> {
    switch(state, caller, name, false).await
}

async fn switch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    stopped: bool,
) -> Result<Json<Value>, Problem> {
    let switch = state.switches.get(&name).ok_or_else(|| Problem::not_found("no enabled channel has this name"))?;
    let changed = switch.set_stopped(stopped);
    if changed {
        info!(channel = %name, by = %caller.token_name, stopped, "channel switched");
        let event = store::NewAuditEvent {
            actor: caller.token_name,
            action: if stopped { "channel_stop".into() } else { "channel_start".into() },
            message_id: None,
            delivery_id: None,
            detail: Some(format!("channel {name}")),
        };
        if let Err(e) = state.store.record_audit(event).await {
            // The switch took effect; the trail misses it. Say so.
            return Err(Problem::store("recording the channel switch", &e));
        }
    }
    Ok(Json(json!({ "name": name, "status": switch.status(), "changed": changed })))
}
