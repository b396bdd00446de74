//! The message browser: search, one message with everything about it, replay
//! (one message or every match of a search), dead letters.
//!
//! Reading a message's contents is an audited act: the `read_content` event
//! (actor: the token's name) is committed before the contents are sent, and
//! if it cannot be recorded the contents are not sent. Replays are recorded
//! by the store in the same transaction as the replay itself.

use std::collections::{BTreeSet, VecDeque};

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{AuditQuery, Cursor, DeliveryState, MessageDetail, MessageId, NewAuditEvent, ReplayRequest, SearchQuery};

use super::ApiState;
use super::auth::{self, Caller, Scope};
use super::problem::Problem;

/// The most messages one search page returns.
pub const MAX_PAGE: u32 = 1000;
/// The most messages one replay-by-search touches (default 100).
pub const MAX_REPLAY: u32 = 1000;

/// `GET /api/messages`, `GET /api/messages/{id}`, `GET /api/dead-letters`
/// (scope `messages:read`); `POST /api/messages/{id}/replay` and
/// `POST /api/messages/replay` (scope `messages:replay`).
pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/api/messages", get(search))
        .route("/api/messages/{id}", get(detail))
        .route("/api/dead-letters", get(dead_letters))
        .route_layer(auth::require(state.auth.clone(), Scope::MessagesRead));
    let replay = Router::new()
        .route("/api/messages/{id}/replay", post(replay_one))
        .route("/api/messages/replay", post(replay_search))
        .route_layer(auth::require(state.auth.clone(), Scope::MessagesReplay));
    read.merge(replay).method_not_allowed_fallback(super::problem::wrong_method).with_state(state)
}

/// The search filters as query parameters; every one optional.
const SEARCH_PARAMS: &[&str] =
    &["channel", "state", "from", "to", "control_id", "mrn", "order_key", "type", "event", "limit", "cursor"];

/// Builds a store query from `?channel=&state=&from=&to=&control_id=&mrn=&
/// order_key=&type=&event=&limit=&cursor=`, naming the first parameter that
/// is unknown or malformed.
pub fn search_query(params: &[(String, String)]) -> Result<SearchQuery, Problem> {
    let mut q = SearchQuery::default();
    let mut seen = BTreeSet::new();
    for (key, value) in params {
        if !seen.insert(key.as_str()) {
            return Err(Problem::bad_request(format!("query parameter {key:?} is given twice")));
        }
        let value = value.trim();
        let text = || (!value.is_empty()).then(|| value.to_owned());
        match key.as_str() {
            "channel" => q.channel = text(),
            "control_id" => q.control_id = text(),
            "mrn" => q.patient_id = text(),
            "order_key" => q.order_key = text(),
            "type" => q.message_type = text(),
            "event" => q.event = text(),
            "cursor" => q.cursor = text().map(Cursor),
            "state" => {
                q.state = Some(DeliveryState::parse(value).ok_or_else(|| {
                    Problem::bad_request(format!(
                        "state must be one of queued, in_flight, sent, filtered, error, dead, not {value:?}"
                    ))
                })?)
            }
            "from" => q.received_from = Some(time(key, value)?),
            "to" => q.received_to = Some(time(key, value)?),
            "limit" => {
                q.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| Problem::bad_request(format!("limit must be a number from 1 to {MAX_PAGE}")))?
            }
            _ => {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {key:?}; expected one of {}",
                    SEARCH_PARAMS.join(", ")
                )));
            }
        }
    }
    if let (Some(from), Some(to)) = (q.received_from, q.received_to)
        && from >= to
    {
        return Err(Problem::bad_request("from must be before to"));
    }
    Ok(q)
}

fn time(key: &str, value: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Problem::bad_request(format!("{key} must be an RFC 3339 time such as 2026-11-21T10:00:00Z")))
}

/// A store search error: a foreign cursor is the client's fault.
fn search_error(e: &store::StoreError) -> Problem {
    match e {
        store::StoreError::InvalidCursor => Problem::bad_request("cursor is not one this server returned"),
        store::StoreError::Invalid { field, reason } => Problem::bad_request(format!("{field}: {reason}")),
        e => Problem::store("searching messages", e),
    }
}

async fn search(
    State(state): State<ApiState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Problem> {
    let q = search_query(&params)?;
    let page = state.store.search(&q).await.map_err(|e| search_error(&e))?;
    Ok(Json(json!(page)))
}

async fn dead_letters(
    State(state): State<ApiState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Problem> {
    if let Some((key, _)) = params.iter().find(|(k, _)| !["channel", "limit", "cursor"].contains(&k.as_str())) {
        return Err(Problem::bad_request(format!("unknown query parameter {key:?}; expected channel, limit, cursor")));
    }
    let mut q = search_query(&params)?;
    q.state = Some(DeliveryState::Dead);
    let page = state.store.search(&q).await.map_err(|e| search_error(&e))?;
    Ok(Json(json!(page)))
}

fn message_id(id: &str) -> Result<MessageId, Problem> {
    id.parse().map_err(|_| Problem::bad_request("the message id must be a UUID"))
}

async fn detail(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let id = message_id(&id)?;
    let message = state
        .store
        .get_message(id)
        .await
        .map_err(|e| Problem::store("reading the message", &e))?
        .ok_or_else(|| Problem::not_found("no message has this id"))?;
    // Audit first: contents are never sent without the record of it.
    state
        .store
        .record_audit(NewAuditEvent {
            actor: caller.token_name.clone(),
            action: "read_content".into(),
            message_id: Some(id),
            delivery_id: None,
            detail: None,
        })
        .await
        .map_err(|e| Problem::store("recording the read", &e))?;
    let audit = state
        .store
        .audit_events(&AuditQuery { message_id: Some(id), before_id: None, limit: 100 })
        .await
        .map_err(|e| Problem::store("reading the audit trail", &e))?;
    Ok(Json(detail_json(message, &audit)))
}

/// The message view: contents as text (lossy UTF-8), the parsed HL7 v2 tree
/// with the path of every value, deliveries with their transformed content
/// and attempts, the audit trail (newest first).
pub fn detail_json(message: MessageDetail, audit: &[store::AuditEvent]) -> Value {
    let text = |b: &Option<Vec<u8>>| b.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
    let hl7 = message.raw.as_deref().and_then(hl7_tree);
    let deliveries: Vec<Value> = message
        .deliveries
        .iter()
        .map(|d| {
            let mut v = json!(d);
            v["transformed"] = json!(text(&d.transformed));
            v
        })
        .collect();
    json!({
        "message": message.summary,
        "raw": text(&message.raw),
        "ack": text(&message.ack),
        "hl7": hl7,
        "patient_ids": message.patient_ids,
        "deliveries": deliveries,
        "audit": audit,
    })
}

/// The HL7 v2 tree: segments, fields, repetitions, components, each with
/// its path (`PID-5-1`, `OBX(2)-5`, `PID-3(2)-1`) as filters and `plexus hl7
/// get` accept. `None` when the contents are not HL7 v2.
pub fn hl7_tree(raw: &[u8]) -> Option<Value> {
    let msg = hl7v2::Message::parse(raw.to_vec()).ok()?;
    let mut segments = Vec::new();
    for segment in msg.segments() {
        let name = segment.name();
        let seg = if msg.segments_named(name).nth(1).is_some() {
            format!("{name}({})", segment.occurrence())
        } else {
            name.to_owned()
        };
        let mut fields = Vec::new();
        for n in 1..=segment.field_count() {
            let Some(field) = segment.field(n) else { continue };
            if field.is_empty() {
                continue;
            }
            let path = format!("{seg}-{n}");
            if segment.is_header() && n <= 2 {
                fields.push(json!({ "path": path, "value": String::from_utf8_lossy(field.raw()) }));
                continue;
            }
            let reps: Vec<_> = field.repetitions().collect();
            let repeated = reps.len() > 1;
            let mut repetitions = Vec::new();
            for (r, rep) in reps.iter().enumerate() {
                if rep.is_empty() {
                    continue;
                }
                let rep_path = if repeated { format!("{path}({})", r + 1) } else { path.clone() };
                let components: Vec<Value> = if rep.component_count() > 1 {
                    rep.components()
                        .enumerate()
                        .filter(|(_, c)| !c.is_empty())
                        .map(|(c, component)| {
                            // A component with subcomponents shows as written, like a repetition below.
                            let value = if component.subcomponent_count() > 1 {
                                String::from_utf8_lossy(component.raw())
                            } else {
                                component.text()
                            };
                            json!({ "path": format!("{rep_path}-{}", c + 1), "value": value })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                // A value with components shows the whole value as written
                // (`DOE^JANE`); its decoded parts are in `components`. Its
                // `text()` would be the first component only.
                let value = if components.is_empty() { rep.text() } else { String::from_utf8_lossy(rep.raw()) };
                let mut v = json!({ "path": rep_path, "value": value });
                if !components.is_empty() {
                    v["components"] = json!(components);
                }
                repetitions.push(v);
            }
            if repeated {
                fields.push(json!({ "path": path, "repetitions": repetitions }));
            } else if let Some(only) = repetitions.pop() {
                fields.push(only);
            }
        }
        segments.push(json!({ "path": seg, "fields": fields }));
    }
    Some(json!({ "segments": segments }))
}

/// Body of the replay requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// Only these destinations (every destination when absent).
    #[serde(default)]
    destinations: Option<Vec<String>>,
    /// Why, for the audit trail (no patient data).
    #[serde(default)]
    reason: Option<String>,
}

/// A body axum could not read (over its 2 MiB default limit, say) as a
/// problem document: its own rejection is plain text.
fn unreadable_body(e: &BytesRejection) -> Problem {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(e.status(), "too-large", "Body too large", "the request body is over the API's limit")
    } else {
        Problem::bad_request("the request body could not be read")
    }
}

/// A JSON body that may be absent; a malformed one is a 400 problem.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON for this request: {e}")))
}

async fn replay_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    bytes: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<Value>, Problem> {
    let id = message_id(&id)?;
    let request: ReplayBody = body(&bytes.map_err(|e| unreadable_body(&e))?)?;
    let message = state
        .store
        .get_message(id)
        .await
        .map_err(|e| Problem::store("reading the message", &e))?
        .ok_or_else(|| Problem::not_found("no message has this id"))?;
    let known: Vec<&str> = message.deliveries.iter().map(|d| d.destination.as_str()).collect();
    if let Some(unknown) = request.destinations.iter().flatten().find(|d| !known.contains(&d.as_str())) {
        return Err(Problem::bad_request(format!("the message has no destination {unknown:?}")));
    }
    let (replayed, skipped) = replay(&state, &caller, id, request.destinations.as_deref(), request.reason).await?;
    Ok(Json(json!({ "message_id": id, "replayed": replayed, "skipped": skipped })))
}

/// Replays one message (all or some destinations); returns the delivery ids
/// replayed and skipped.
async fn replay(
    state: &ApiState,
    caller: &Caller,
    id: MessageId,
    destinations: Option<&[String]>,
    reason: Option<String>,
) -> Result<(Vec<store::DeliveryId>, Vec<store::DeliveryId>), Problem> {
    let targets: Vec<Option<String>> = match destinations {
        None => vec![None],
        Some(list) => list.iter().cloned().map(Some).collect(),
    };
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    for destination in targets {
        let done = state
            .store
            .replay(ReplayRequest {
                message_id: id,
                destination,
                actor: caller.token_name.clone(),
                reason: reason.clone(),
            })
            .await
            .map_err(|e| match e {
                store::StoreError::NotFound(_) => Problem::not_found("no message has this id"),
                e => Problem::store("replaying the message", &e),
            })?;
        replayed.extend(done.replayed);
        skipped.extend(done.skipped);
    }
    Ok((replayed, skipped))
}

/// Body of `POST /api/messages/replay`: search filters (as in the query of
/// `GET /api/messages`, at least one), destinations, reason, max.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaySearchBody {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    control_id: Option<String>,
    #[serde(default)]
    mrn: Option<String>,
    #[serde(default)]
    order_key: Option<String>,
    #[serde(default, rename = "type")]
    message_type: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
    #[serde(default)]
    reason: Option<String>,
    /// The most messages to replay (default 100, at most 1,000).
    #[serde(default)]
    max: Option<u32>,
}

async fn replay_search(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    bytes: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<Value>, Problem> {
    let b: ReplaySearchBody = body(&bytes.map_err(|e| unreadable_body(&e))?)?;
    let filters: Vec<(String, String)> = [
        ("channel", &b.channel),
        ("state", &b.state),
        ("from", &b.from),
        ("to", &b.to),
        ("control_id", &b.control_id),
        ("mrn", &b.mrn),
        ("order_key", &b.order_key),
        ("type", &b.message_type),
        ("event", &b.event),
    ]
    .into_iter()
    // A blank value filters nothing (the search ignores it), so it does not
    // count as the filter this route requires: `{"channel": ""}` from a
    // script whose variable was unset must not replay every channel.
    .filter_map(|(k, v)| v.as_ref().filter(|v| !v.trim().is_empty()).map(|v| (k.to_owned(), v.clone())))
    .collect();
    if filters.is_empty() {
        return Err(Problem::bad_request(
            "give at least one search filter (channel, state, from, to, control_id, mrn, order_key, type, event)",
        ));
    }
    let max = b.max.unwrap_or(100);
    if !(1..=MAX_REPLAY).contains(&max) {
        return Err(Problem::bad_request(format!("max must be from 1 to {MAX_REPLAY}")));
    }
    let mut q = search_query(&filters)?;
    // The search runs newest first; the replays run oldest first. A replayed
    // delivery keeps its place in its key's queue, but a worker may claim it
    // as soon as its replay commits, so replaying newest first would let a
    // patient's newest message go out again before the older ones are
    // queued again: the receiver would end with an older version. So every
    // match is looked at, the oldest `max` are kept (`truncated` when there
    // were more: a second call with the same filters, `state` among them,
    // goes on with the newer ones, again in order) and replayed in arrival
    // order.
    let mut oldest: VecDeque<store::MessageSummary> = VecDeque::new();
    let mut truncated = false;
    loop {
        q.limit = MAX_PAGE;
        let page = state.store.search(&q).await.map_err(|e| search_error(&e))?;
        for item in page.items {
            // Messages without any of the wanted destinations are passed over.
            if let Some(wanted) = &b.destinations
                && !item.deliveries.iter().any(|d| wanted.contains(&d.destination))
            {
                continue;
            }
            oldest.push_back(item);
            if oldest.len() > max as usize {
                oldest.pop_front();
                truncated = true;
            }
        }
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => break,
        }
    }
    let (mut messages, mut replayed, mut skipped) = (0u32, 0usize, 0usize);
    for item in oldest.into_iter().rev() {
        // Destinations this message does not have are simply not replayed.
        let own: Option<Vec<String>> = b.destinations.as_ref().map(|wanted| {
            item.deliveries.iter().map(|d| d.destination.clone()).filter(|d| wanted.contains(d)).collect()
        });
        let (r, s) = replay(&state, &caller, item.id, own.as_deref(), b.reason.clone()).await?;
        messages += 1;
        replayed += r.len();
        skipped += s.len();
    }
    Ok(Json(json!({ "messages": messages, "replayed": replayed, "skipped": skipped, "truncated": truncated })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn search_parameters_become_a_store_query() {
        let q = search_query(&params(&[
            ("channel", "adt-in"),
            ("state", "error"),
            ("from", "2026-11-21T10:00:00Z"),
            ("to", "2026-11-21T12:00:00+01:00"),
            ("mrn", "MRN1"),
            ("type", "ADT"),
            ("limit", "20"),
        ]))
        .unwrap();
        assert_eq!(q.channel.as_deref(), Some("adt-in"));
        assert_eq!(q.state, Some(DeliveryState::Error));
        assert_eq!(q.patient_id.as_deref(), Some("MRN1"));
        assert_eq!(q.message_type.as_deref(), Some("ADT"));
        assert_eq!(q.limit, 20);
        assert_eq!(q.received_to.unwrap().to_rfc3339(), "2026-11-21T11:00:00+00:00");
    }

    #[test]
    fn bad_search_parameters_are_named() {
        for (pairs, needle) in [
            (vec![("state", "lost")], "state must be"),
            (vec![("from", "yesterday")], "from must be an RFC 3339"),
            (vec![("limit", "0")], "limit must be"),
            (vec![("limit", "5000")], "limit must be"),
            (vec![("sort", "asc")], "unknown query parameter \"sort\""),
            (vec![("channel", "a"), ("channel", "b")], "given twice"),
            (vec![("from", "2026-11-21T12:00:00Z"), ("to", "2026-11-21T10:00:00Z")], "from must be before to"),
        ] {
            let e = search_query(&params(&pairs)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.detail.contains(needle), "{} lacks {needle}", e.detail);
        }
    }

    #[test]
    fn hl7_tree_has_paths() {
        let raw =
            b"MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20261121||ORU^R01|C1|P|2.5.1\rPID|1||A~B||Doe^Jane\rOBX|1\rOBX|2|NM|x\r";
        let tree = hl7_tree(raw).unwrap();
        let segments = tree["segments"].as_array().unwrap();
        assert_eq!(segments[1]["path"], "PID");
        let pid = &segments[1]["fields"];
        assert_eq!(pid[1]["path"], "PID-3");
        assert_eq!(pid[1]["repetitions"][1]["path"], "PID-3(2)");
        assert_eq!(pid[1]["repetitions"][1]["value"], "B");
        assert_eq!(pid[2]["value"], "Doe^Jane", "a field with components shows whole");
        assert_eq!(pid[2]["components"][1], json!({ "path": "PID-5-2", "value": "Jane" }));
        let msh = &segments[0]["fields"];
        let msh9 = msh.as_array().unwrap().iter().find(|f| f["path"] == "MSH-9").unwrap();
        assert_eq!(msh9["value"], "ORU^R01");
        assert_eq!(segments[3]["path"], "OBX(2)");
        assert_eq!(segments[3]["fields"][2], json!({ "path": "OBX(2)-3", "value": "x" }));
        assert!(hl7_tree(b"{\"resourceType\":\"Patient\"}").is_none());
    }
}
