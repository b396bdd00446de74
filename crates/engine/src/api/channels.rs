//! Channels with their delivery counts per state, per destination and in
//! total (`GET /api/channels`, `GET /api/channels/{name}`, scope
//! `messages:read`). Counts come from the store, so they cover every process
//! sharing it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use store::{DeliveryState, StateCount};

use super::auth::{self, Scope};
use super::problem::Problem;
use super::{ApiState, ChannelInfo};

/// The channel routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/channels", get(list))
        .route("/api/channels/{name}", get(one))
        .route_layer(auth::require(state.auth.clone(), Scope::MessagesRead))
        .method_not_allowed_fallback(super::problem::wrong_method)
        .with_state(state)
}

async fn list(State(state): State<ApiState>) -> Result<Json<Value>, Problem> {
    let counts = state.store.counts().await.map_err(|e| Problem::store("counting deliveries", &e))?;
    let channels: Vec<Value> =
        state.channels.iter().map(|c| channel_json(c, status(&state, &c.name), &counts)).collect();
    Ok(Json(json!({ "channels": channels })))
}

async fn one(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, Problem> {
    let channel = state
        .channels
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| Problem::not_found("no enabled channel has this name"))?;
    let counts = state.store.counts().await.map_err(|e| Problem::store("counting deliveries", &e))?;
    let mut body = channel_json(channel, status(&state, &channel.name), &counts);
    // Where a scheduled poll stands, per resource type: what an operator
    // asks first when changes seem not to arrive.
    if channel.source == "fhir_poll" {
        let saved = state
            .store
            .poll_checkpoints(Some(&channel.name))
            .await
            .map_err(|e| Problem::store("reading poll checkpoints", &e))?;
        let checkpoints: Vec<Value> = saved
            .iter()
            .map(|c| {
                json!({
                    "resource_type": c.resource_type,
                    "last_updated": c.last_updated.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    "updated_at": c.updated_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                })
            })
            .collect();
        body["checkpoints"] = Value::Array(checkpoints);
    }
    Ok(Json(body))
}

/// `running` or `stopped`.
fn status(state: &ApiState, channel: &str) -> &'static str {
    state.switches.get(channel).map_or("running", |s| s.status())
}

/// Zero for every state, so clients never miss a key.
fn zeroes() -> BTreeMap<&'static str, u64> {
    DeliveryState::ALL.iter().map(|s| (s.as_str(), 0)).collect()
}

/// `{name, source, status, counts, destinations: [{name, counts}]}`; status
/// is `running` or `stopped`; counts
/// map every delivery state to a number.
pub fn channel_json(channel: &ChannelInfo, status: &str, counts: &[StateCount]) -> Value {
    let mut total = zeroes();
    let destinations: Vec<Value> = channel
        .destinations
        .iter()
        .map(|d| {
            let mut own = zeroes();
            for c in counts.iter().filter(|c| c.channel == channel.name && &c.destination == d) {
                *own.entry(c.state.as_str()).or_default() += c.count;
                *total.entry(c.state.as_str()).or_default() += c.count;
            }
            json!({ "name": d, "counts": own })
        })
        .collect();
    json!({
        "name": channel.name,
        "source": channel.source,
        "status": status,
        "counts": total,
        "destinations": destinations,
    })
}
