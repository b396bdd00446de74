//! The REST API's handlers through `Router::oneshot` (no socket) on a real
//! SQLite store in a temp dir: every route with no token and a bad token
//! (401), a token without the scope (403), bad queries and bodies (400),
//! unknown ids (404), and what each answers; the audit trail of reads and
//! replays; revoked and expired tokens; `api.auth = "none"`.

mod ops_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{TimeZone, Utc};
use engine::api::auth::{self, Auth, Scope};
use engine::api::control::ChannelSwitch;
use engine::api::{ApiState, ChannelInfo, openapi, router};
use ops_support::WatchedStore;
use serde_json::{Value, json};
use store::{AuditQuery, DeliveryState, MessageId, NewDelivery, NewMessage, Store, StoreOptions};
use tower::ServiceExt as _;

struct Api {
    store: Arc<dyn Store>,
    router: Router,
    _dir: tempfile::TempDir,
}

fn channels() -> Vec<ChannelInfo> {
    vec![
        ChannelInfo {
            name: "adt-in".into(),
            source: "mllp".into(),
            destinations: vec!["ehr".into(), "archive".into()],
        },
        ChannelInfo { name: "lab-in".into(), source: "http".into(), destinations: vec!["ehr".into()] },
    ]
}

fn switches() -> BTreeMap<String, Arc<ChannelSwitch>> {
    channels().into_iter().map(|c| (c.name, Arc::new(ChannelSwitch::default()))).collect()
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("plexus.db").display());
    let store = store::open(&url, StoreOptions::default()).await.unwrap();
    let state = ApiState::new(Arc::clone(&store), Auth::new(Arc::clone(&store)), channels());
    let router = router(state.with_switches(switches()));
    Api { store, router, _dir: dir }
}

impl Api {
    async fn token(&self, name: &str, scopes: &[Scope]) -> String {
        auth::issue_token(self.store.as_ref(), name, scopes, None).await.unwrap().bearer
    }

    async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        call(&self.router, method, uri, token, body).await
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = match body {
        Some(b) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let media = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{uri}: not JSON: {bytes:?}"));
    if status.is_success() {
        assert_eq!(media, "application/json", "{uri}");
    } else {
        assert_eq!(media, "application/problem+json", "{uri}: {value}");
        assert_eq!(value["status"], status.as_u16(), "{uri}");
    }
    (status, value)
}

fn hl7(control_id: &str, mrn: &str, kind: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261121120000||{kind}|{control_id}|P|2.5.1\rPID|1||{mrn}^^^HOSP^MR||DOE^JANE\r"
    )
    .into_bytes()
}

/// Stores a message on `channel` with queued deliveries to `destinations`.
async fn accept(
    store: &dyn Store,
    channel: &str,
    control_id: &str,
    mrn: &str,
    minute: u32,
    destinations: &[&str],
) -> MessageId {
    let (kind, event) = if channel == "lab-in" { ("ORU^R01", "R01") } else { ("ADT^A08", "A08") };
    let accepted = store
        .accept(NewMessage {
            channel: channel.into(),
            received_at: Utc.with_ymd_and_hms(2026, 11, 21, 10, minute, 0).unwrap(),
            peer_addr: Some("127.0.0.1:5000".into()),
            content_type: "x-application/hl7-v2+er7".into(),
            raw: hl7(control_id, mrn, kind),
            control_id: Some(control_id.into()),
            sender_key: "LAB^HOSP".into(),
            message_type: Some(kind[..3].into()),
            event: Some(event.into()),
            order_key: None,
            patient_ids: vec![mrn.into()],
            ack: Some(
                format!("MSH|^~\\&|EHR|HOSP|LAB|HOSP|20261121120000||ACK|A{control_id}|P|2.5.1\rMSA|AA|{control_id}\r")
                    .into_bytes(),
            ),
            deliveries: destinations.iter().map(|d| NewDelivery::queued(*d)).collect(),
        })
        .await
        .unwrap();
    match accepted {
        store::Accepted::Stored { id, .. } => id,
        other => panic!("not stored: {other:?}"),
    }
}

/// Every route with a request that would succeed given the right token.
fn every_route(id: MessageId) -> Vec<(Method, String, Option<Value>, Scope)> {
    vec![
        (Method::GET, "/api/channels".into(), None, Scope::MessagesRead),
        (Method::GET, "/api/channels/adt-in".into(), None, Scope::MessagesRead),
        (Method::GET, "/api/messages".into(), None, Scope::MessagesRead),
        (Method::GET, format!("/api/messages/{id}"), None, Scope::MessagesRead),
        (Method::GET, "/api/dead-letters".into(), None, Scope::MessagesRead),
        (Method::POST, format!("/api/messages/{id}/replay"), Some(json!({})), Scope::MessagesReplay),
        (Method::POST, "/api/messages/replay".into(), Some(json!({ "channel": "adt-in" })), Scope::MessagesReplay),
        (Method::POST, "/api/channels/adt-in/stop".into(), None, Scope::ChannelsAdmin),
        (Method::POST, "/api/channels/adt-in/start".into(), None, Scope::ChannelsAdmin),
    ]
}

#[tokio::test]
async fn every_route_refuses_missing_bad_and_unscoped_tokens() {
    let api = api().await;
    let id = accept(api.store.as_ref(), "adt-in", "C1", "MRN1", 0, &["ehr"]).await;
    let metrics_only = api.token("prometheus", &[Scope::Metrics]).await;
    // The token with its last hex digit changed (to a digit it does not
    // already have: a token ending in 0 would otherwise be "forged" as itself).
    let (head, last) = metrics_only.split_at(metrics_only.len() - 1);
    let forged = format!("{head}{}", if last == "0" { '1' } else { '0' });
    assert_ne!(forged, metrics_only);
    for (method, uri, body, scope) in every_route(id) {
        let (status, problem) = api.call(method.clone(), &uri, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} without a token");
        assert_eq!(problem["type"], "urn:plexus:problem:unauthorized");
        for bad in ["plx_nonsense", "plx_0123456789abcdef_00", forged.as_str()] {
            let (status, _) = api.call(method.clone(), &uri, Some(bad), body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} with {bad}");
        }
        let (status, problem) = api.call(method.clone(), &uri, Some(&metrics_only), body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} with scope metrics");
        assert!(problem["detail"].as_str().unwrap().contains(scope.as_str()), "{problem}");
        // The read scope does not allow replays.
        if scope == Scope::MessagesReplay {
            let reader = api.token(&format!("reader-{}", uri.len()), &[Scope::MessagesRead]).await;
            let (status, _) = api.call(method.clone(), &uri, Some(&reader), body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} with messages:read");
        }
    }
    // A refused read leaves no audit event.
    let events = api.store.audit_events(&AuditQuery { message_id: Some(id), ..AuditQuery::default() }).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn openapi_lists_every_route_and_needs_no_token() {
    let api = api().await;
    let (status, doc) = call(&api.router, Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let id = MessageId(uuid::Uuid::nil());
    let served: Vec<(String, String)> = every_route(id)
        .into_iter()
        .map(|(m, uri, _, _)| {
            (m.as_str().to_lowercase(), uri.replace(&id.to_string(), "{id}").replace("adt-in", "{name}"))
        })
        .chain([("get".to_owned(), "/api/openapi.json".to_owned())])
        .collect();
    for (method, path) in &served {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing from the OpenAPI document");
    }
    let mut documented: Vec<(String, String)> =
        openapi::documented().into_iter().map(|(m, p)| (m.to_owned(), p.to_owned())).collect();
    documented.sort();
    let mut served = served;
    served.sort();
    assert_eq!(documented, served, "the document lists exactly the served routes");
    assert_eq!(doc["paths"]["/api/messages/{id}/replay"]["post"]["x-required-scope"], "messages:replay");
}

#[tokio::test]
async fn channels_list_counts_per_destination_and_state() {
    let api = api().await;
    let token = api.token("dashboard", &[Scope::MessagesRead]).await;
    accept(api.store.as_ref(), "adt-in", "C1", "MRN1", 0, &["ehr", "archive"]).await;
    let dead = accept(api.store.as_ref(), "adt-in", "C2", "MRN2", 1, &["ehr", "archive"]).await;
    let detail = api.store.get_message(dead).await.unwrap().unwrap();
    let ehr = detail.deliveries.iter().find(|d| d.destination == "ehr").unwrap().id;
    api.store.dead_letter(ehr, "test", Some("partner gone".into())).await.unwrap();

    let (status, body) = api.get("/api/channels", &token).await;
    assert_eq!(status, StatusCode::OK);
    let adt = &body["channels"][0];
    assert_eq!(adt["name"], "adt-in");
    assert_eq!(adt["source"], "mllp");
    assert_eq!(adt["status"], "running");
    assert_eq!(adt["counts"]["queued"], 3);
    assert_eq!(adt["counts"]["dead"], 1);
    assert_eq!(adt["counts"]["sent"], 0);
    assert_eq!(
        adt["destinations"][0],
        json!({ "name": "ehr", "counts": {
        "queued": 1, "in_flight": 0, "sent": 0, "filtered": 0, "error": 0, "dead": 1 } })
    );
    assert_eq!(adt["destinations"][1]["counts"]["queued"], 2);
    assert_eq!(body["channels"][1]["name"], "lab-in");
    assert_eq!(body["channels"][1]["counts"]["queued"], 0);

    let (status, one) = api.get("/api/channels/adt-in", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, adt);
    let (status, problem) = api.get("/api/channels/nope", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["type"], "urn:plexus:problem:not-found");
}

#[tokio::test]
async fn search_filters_paginates_and_rejects_bad_queries() {
    let api = api().await;
    let token = api.token("dashboard", &[Scope::MessagesRead]).await;
    for i in 0..5u32 {
        accept(api.store.as_ref(), "adt-in", &format!("A{i}"), &format!("MRN{}", i % 2), i, &["ehr"]).await;
    }
    accept(api.store.as_ref(), "lab-in", "L1", "MRN9", 10, &["ehr"]).await;

    let ids = |body: &Value| -> Vec<String> {
        body["items"].as_array().unwrap().iter().map(|m| m["control_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, body) = api.get("/api/messages?control_id=A3", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["A3"]);
    assert_eq!(body["items"][0]["deliveries"][0]["state"], "queued");
    let (_, body) = api.get("/api/messages?mrn=MRN1", &token).await;
    assert_eq!(ids(&body), ["A3", "A1"]);
    let (_, body) = api.get("/api/messages?channel=lab-in", &token).await;
    assert_eq!(ids(&body), ["L1"]);
    let (_, body) = api.get("/api/messages?type=ORU&event=R01", &token).await;
    assert_eq!(ids(&body), ["L1"]);
    let (_, body) = api.get("/api/messages?from=2026-11-21T10:01:00Z&to=2026-11-21T10:03:00Z", &token).await;
    assert_eq!(ids(&body), ["A2", "A1"]);
    let (_, body) = api.get("/api/messages?state=dead", &token).await;
    assert!(ids(&body).is_empty());

    // Keyset pagination: two per page, newest first, no repeats.
    let mut seen = Vec::new();
    let mut uri = "/api/messages?channel=adt-in&limit=2".to_owned();
    loop {
        let (status, page) = api.get(&uri, &token).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/messages?channel=adt-in&limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["A4", "A3", "A2", "A1", "A0"]);

    for (query, needle) in [
        ("state=lost", "state must be"),
        ("from=yesterday", "RFC 3339"),
        ("limit=0", "limit must be"),
        ("limit=abc", "limit must be"),
        ("sort=asc", "unknown query parameter"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let (status, problem) = api.get(&format!("/api/messages?{query}"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{query}: {problem}");
    }
    let (status, _) = api.get("/api/dead-letters?state=sent", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn message_detail_shows_everything_and_is_audited() {
    let api = api().await;
    let token = api.token("alice-dashboard", &[Scope::MessagesRead]).await;
    let id = accept(api.store.as_ref(), "adt-in", "C7", "MRN7", 0, &["ehr", "archive"]).await;

    let (status, body) = api.get(&format!("/api/messages/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["message"]["id"], id.to_string());
    assert_eq!(body["message"]["control_id"], "C7");
    assert!(body["raw"].as_str().unwrap().starts_with("MSH|^~\\&|LAB|HOSP"));
    assert!(body["ack"].as_str().unwrap().contains("MSA|AA|C7"));
    assert_eq!(body["patient_ids"], json!(["MRN7"]));
    let pid = &body["hl7"]["segments"][1];
    assert_eq!(pid["path"], "PID");
    assert_eq!(pid["fields"][1]["components"][0], json!({ "path": "PID-3-1", "value": "MRN7" }));
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(body["deliveries"][0]["destination"], "ehr");
    assert_eq!(body["deliveries"][0]["transformed"], Value::Null);
    assert!(body["deliveries"][0]["attempt_log"].as_array().unwrap().is_empty());
    // The read itself is in the trail it answers with, and in the store.
    assert_eq!(body["audit"][0]["action"], "read_content");
    assert_eq!(body["audit"][0]["actor"], "alice-dashboard");
    let events = api.store.audit_events(&AuditQuery { message_id: Some(id), ..AuditQuery::default() }).await.unwrap();
    assert_eq!(events.len(), 1);

    let (status, _) = api.get(&format!("/api/messages/{}", uuid::Uuid::now_v7()), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = api.get("/api/messages/42", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("UUID"));
}

#[tokio::test]
async fn replay_one_message_to_some_destinations_with_the_token_name() {
    let api = api().await;
    let token = api.token("ops-replayer", &[Scope::MessagesReplay]).await;
    let id = accept(api.store.as_ref(), "adt-in", "C1", "MRN1", 0, &["ehr", "archive"]).await;
    let detail = api.store.get_message(id).await.unwrap().unwrap();
    for d in &detail.deliveries {
        api.store.dead_letter(d.id, "test", None).await.unwrap();
    }
    let ehr = detail.deliveries.iter().find(|d| d.destination == "ehr").unwrap().id;
    let archive = detail.deliveries.iter().find(|d| d.destination == "archive").unwrap().id;

    let uri = format!("/api/messages/{id}/replay");
    let (status, body) = api.post(&uri, &token, json!({ "destinations": ["ehr"], "reason": "partner fixed" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], json!([ehr.0]));
    let after = api.store.get_message(id).await.unwrap().unwrap();
    let state = |d: store::DeliveryId| after.deliveries.iter().find(|x| x.id == d).unwrap().state;
    assert_eq!((state(ehr), state(archive)), (DeliveryState::Queued, DeliveryState::Dead));
    let events = api.store.audit_events(&AuditQuery { message_id: Some(id), ..AuditQuery::default() }).await.unwrap();
    let replay = events.iter().find(|e| e.action == "replay").expect("replay audited");
    assert_eq!(replay.actor, "ops-replayer");

    // No body: every destination (the queued one is skipped).
    let (status, body) = api.call(Method::POST, &uri, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["replayed"], json!([archive.0]));
    assert_eq!(body["skipped"], json!([ehr.0]));

    let (status, problem) = api.post(&uri, &token, json!({ "destinations": ["nowhere"] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("nowhere"));
    let (status, _) = api.post(&uri, &token, json!({ "destination": "ehr" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown body fields are refused");
    let (status, _) = api.post(&format!("/api/messages/{}/replay", uuid::Uuid::now_v7()), &token, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.post("/api/messages/xyz/replay", &token, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn replay_by_search_and_dead_letters() {
    let api = api().await;
    let reader = api.token("reader", &[Scope::MessagesRead]).await;
    let replayer = api.token("replayer", &[Scope::MessagesReplay]).await;
    let mut dead = Vec::new();
    for i in 0..4u32 {
        let id = accept(api.store.as_ref(), "adt-in", &format!("D{i}"), "MRN1", i, &["ehr"]).await;
        if i != 0 {
            let d = api.store.get_message(id).await.unwrap().unwrap().deliveries[0].id;
            api.store.dead_letter(d, "test", None).await.unwrap();
            dead.push(id);
        }
    }
    let (status, page) = api.get("/api/dead-letters?channel=adt-in", &reader).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|m| m["control_id"].as_str().unwrap()).collect();
    assert_eq!(listed, ["D3", "D2", "D1"]);

    let (status, problem) = api.post("/api/messages/replay", &replayer, json!({ "reason": "all" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a replay by search needs a filter");
    assert!(problem["detail"].as_str().unwrap().contains("at least one search filter"));
    // A body over the API's limit is a problem document too, not plain text.
    let huge = json!({ "channel": "adt-in", "reason": "x".repeat(3 << 20) });
    let (status, problem) = api.post("/api/messages/replay", &replayer, huge.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["type"], "urn:plexus:problem:too-large");
    let first = dead[0].to_string();
    let (status, _) = api.post(&format!("/api/messages/{first}/replay"), &replayer, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Blank filters filter nothing: refused alike, nothing replayed.
    let (status, problem) =
        api.post("/api/messages/replay", &replayer, json!({ "channel": "", "mrn": "  ", "reason": "all" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "blank filters are no filter: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("at least one search filter"));
    let (status, _) = api.post("/api/messages/replay", &replayer, json!({ "channel": "adt-in", "max": 0 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.post("/api/messages/replay", &replayer, json!({ "state": "lost" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) =
        api.post("/api/messages/replay", &replayer, json!({ "channel": "adt-in", "state": "dead", "max": 2 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "messages": 2, "replayed": 2, "skipped": 0, "truncated": true }));
    let (_, body) = api.post("/api/messages/replay", &replayer, json!({ "channel": "adt-in", "state": "dead" })).await;
    assert_eq!(body, json!({ "messages": 1, "replayed": 1, "skipped": 0, "truncated": false }));
    let (_, page) = api.get("/api/dead-letters", &reader).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
    for id in dead {
        let events =
            api.store.audit_events(&AuditQuery { message_id: Some(id), ..AuditQuery::default() }).await.unwrap();
        assert!(events.iter().any(|e| e.action == "replay" && e.actor == "replayer"), "{events:?}");
    }
}

/// A replay by search re-queues a patient's messages oldest first: a worker
/// may claim each as soon as its replay commits, so newest first would send
/// the newest again before the older ones. With more matches than `max`,
/// the oldest are replayed and the next call goes on with the newer ones.
#[tokio::test]
async fn replay_by_search_goes_in_arrival_order_oldest_first() {
    let api = api().await;
    let replayer = api.token("replayer", &[Scope::MessagesReplay]).await;
    let mut ids = Vec::new();
    for i in 0..5u32 {
        let id = accept(api.store.as_ref(), "adt-in", &format!("O{i}"), "MRN9", i, &["ehr"]).await;
        let d = api.store.get_message(id).await.unwrap().unwrap().deliveries[0].id;
        api.store.dead_letter(d, "test", None).await.unwrap();
        ids.push(id);
    }
    let replayed_in_order = || async {
        let mut events = api.store.audit_events(&AuditQuery { limit: 1000, ..AuditQuery::default() }).await.unwrap();
        events.retain(|e| e.action == "replay");
        events.sort_by_key(|e| e.id);
        events.into_iter().map(|e| e.message_id.unwrap()).collect::<Vec<_>>()
    };

    let filters = json!({ "mrn": "MRN9", "state": "dead", "max": 3 });
    let (status, body) = api.post("/api/messages/replay", &replayer, filters.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "messages": 3, "replayed": 3, "skipped": 0, "truncated": true }));
    assert_eq!(replayed_in_order().await, ids[..3], "the oldest three, oldest first");

    let (_, body) = api.post("/api/messages/replay", &replayer, filters).await;
    assert_eq!(body, json!({ "messages": 2, "replayed": 2, "skipped": 0, "truncated": false }));
    assert_eq!(replayed_in_order().await, ids, "then the newer two, in order");
}

/// Every error under /api is a problem document (docs/api.md), unknown
/// paths and wrong methods included.
#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_problems() {
    let api = api().await;
    let reader = api.token("reader", &[Scope::MessagesRead]).await;
    for uri in ["/api/nothing", "/api/channels/adt-in/deliveries", "/api/messages/x/y/z"] {
        let (status, problem) = api.get(uri, &reader).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(problem["type"], "urn:plexus:problem:not-found", "{uri}");
    }
    for (method, uri) in [
        (Method::DELETE, "/api/channels"),
        (Method::POST, "/api/channels/adt-in"),
        (Method::GET, "/api/channels/adt-in/stop"),
        (Method::PUT, "/api/messages"),
        (Method::DELETE, "/api/messages/replay"),
    ] {
        let (status, problem) = api.call(method.clone(), uri, Some(&reader), None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(problem["type"], "urn:plexus:problem:method-not-allowed", "{method} {uri}");
    }
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let api = api().await;
    let token = api.token("temp", &[Scope::MessagesRead]).await;
    let (status, _) = api.get("/api/channels", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.store.revoke_api_token("temp").await.unwrap(), 1);
    // A fresh Auth has no cached record (a running one trusts its cache for
    // auth::CACHE_TTL).
    let fresh = router(ApiState::new(Arc::clone(&api.store), Auth::new(Arc::clone(&api.store)), channels()));
    let (status, _) = call(&fresh, Method::GET, "/api/channels", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let past = Utc::now() - chrono::Duration::minutes(1);
    let expired = auth::issue_token(api.store.as_ref(), "old", &[Scope::MessagesRead], Some(past)).await.unwrap();
    let (status, _) = api.get("/api/channels", &expired.bearer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn auth_none_lets_everyone_in_as_anonymous() {
    let api = api().await;
    let id = accept(api.store.as_ref(), "adt-in", "C1", "MRN1", 0, &["ehr"]).await;
    let open = router(ApiState::new(Arc::clone(&api.store), Auth::disabled(), channels()));
    let (status, _) = call(&open, Method::GET, &format!("/api/messages/{id}"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    let events = api.store.audit_events(&AuditQuery { message_id: Some(id), ..AuditQuery::default() }).await.unwrap();
    assert_eq!(events[0].actor, "anonymous");
}

#[tokio::test]
async fn channels_stop_and_start_with_channels_admin() {
    let api = api().await;
    let admin = api.token("ops-admin", &[Scope::ChannelsAdmin]).await;
    let reader = api.token("reader", &[Scope::MessagesRead]).await;
    let (status, body) = api.call(Method::POST, "/api/channels/adt-in/stop", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "name": "adt-in", "status": "stopped", "changed": true }));
    let (_, body) = api.call(Method::POST, "/api/channels/adt-in/stop", Some(&admin), None).await;
    assert_eq!(body["changed"], false, "stopping twice changes nothing");
    let (_, one) = api.get("/api/channels/adt-in", &reader).await;
    assert_eq!(one["status"], "stopped");
    let (_, list) = api.get("/api/channels", &reader).await;
    assert_eq!(list["channels"][1]["status"], "running", "other channels run on");
    let (status, body) = api.call(Method::POST, "/api/channels/adt-in/start", Some(&admin), None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("running")));
    let (status, _) = api.call(Method::POST, "/api/channels/nope/stop", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let events = api.store.audit_events(&AuditQuery::default()).await.unwrap();
    let trail: Vec<(&str, &str)> = events.iter().map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert_eq!(trail, [("channel_start", "ops-admin"), ("channel_stop", "ops-admin")]);
}

#[tokio::test]
async fn store_failures_answer_problems_without_internals_or_contents() {
    let api = api().await;
    let token = api.token("dashboard", &[Scope::MessagesRead]).await;
    let id = accept(api.store.as_ref(), "adt-in", "C1", "MRN-999", 0, &["ehr"]).await;
    let watched = WatchedStore::new(Arc::clone(&api.store));
    watched.fail_reads.store(true, Ordering::SeqCst);
    let failing: Arc<dyn Store> = Arc::new(watched);
    let app = router(ApiState::new(Arc::clone(&failing), Auth::new(Arc::clone(&failing)), channels()));

    let (status, problem) = call(&app, Method::GET, "/api/messages?mrn=MRN-999", Some(&token), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem["detail"], "searching messages failed");
    let (status, problem) = call(&app, Method::GET, "/api/channels", Some(&token), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(problem["detail"].as_str().unwrap().contains("try again"));
    // The read cannot be audited: the contents are not sent.
    let (status, problem) = call(&app, Method::GET, &format!("/api/messages/{id}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!problem.to_string().contains("MSH") && !problem.to_string().contains("MRN-999"), "{problem}");

    let watched = WatchedStore::new(Arc::clone(&api.store));
    watched.fail_reads.store(true, Ordering::SeqCst);
    watched.fail_tokens.store(true, Ordering::SeqCst);
    let no_tokens: Arc<dyn Store> = Arc::new(watched);
    let app = router(ApiState::new(Arc::clone(&no_tokens), Auth::new(Arc::clone(&no_tokens)), channels()));
    let (status, problem) = call(&app, Method::GET, "/api/channels", Some(&token), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "an unreadable token store is not a bad token");
    assert_eq!(problem["type"], "urn:plexus:problem:unavailable");
}
