//! The REST API end to end: `Engine::start` from a config file's text (SQLite
//! in a temp dir, an HTTP source on the API listener, a file destination), a
//! token created in the engine's store, and real HTTP requests: send a
//! message, find it by control id, read it (audited), replay it and see it
//! delivered again. Then the same over HTTPS (`[api] tls`).

mod ops_support;

use std::path::Path;
use std::time::Duration;

use engine::api::auth::{self, Scope};
use engine::runtime::Engine;
use ops_support::{Harness, config, eventually, json_of, stored};
use serde_json::json;
use store::{AuditQuery, MessageId};

const CHANNEL: &str = r#"
[channels.adt-in.source]
type = "http"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}-${message_id}.hl7"
"#;

/// The test's ADT^A08, all for one patient.
fn adt(control_id: &str) -> String {
    ops_support::adt(control_id, "MRN77")
}

/// Files the archive destination wrote.
fn archived(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("out")).map(|d| d.count()).unwrap_or(0)
}

/// The scenario on one engine; `base` is `http://...` or `https://...`.
async fn browse_read_and_replay(engine: &Engine, dir: &Path, http: &reqwest::Client, base: &str) {
    let issued =
        auth::issue_token(engine.store().as_ref(), "e2e-operator", &[Scope::MessagesRead, Scope::MessagesReplay], None)
            .await
            .unwrap();
    let token = issued.bearer;

    // Without a token the API refuses; health stays public.
    let (status, problem) = json_of(http.get(format!("{base}/api/channels")).send().await.unwrap()).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);

    let sent = http
        .post(format!("{base}/channels/adt-in/messages"))
        .header("content-type", "x-application/hl7-v2+er7")
        .body(adt("E2E-1"))
        .send()
        .await
        .unwrap();
    let status = sent.status();
    let ack = sent.text().await.unwrap();
    assert_eq!(status, 200, "AA expected: {ack}");

    let search = format!("{base}/api/messages?control_id=E2E-1");
    let mut id = String::new();
    eventually("the message is delivered", async || {
        let (status, page) = json_of(http.get(&search).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, 200, "{page}");
        let Some(item) = page["items"].get(0) else { return false };
        id = item["id"].as_str().unwrap().to_owned();
        item["deliveries"][0]["state"] == "sent"
    })
    .await;
    assert_eq!(archived(dir), 1);

    let (status, channels) =
        json_of(http.get(format!("{base}/api/channels")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(channels["channels"][0]["name"], "adt-in");
    assert_eq!(channels["channels"][0]["source"], "http");
    assert_eq!(channels["channels"][0]["destinations"][0]["counts"]["sent"], 1);

    let (status, detail) =
        json_of(http.get(format!("{base}/api/messages/{id}")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(detail["raw"].as_str().unwrap().contains("E2E-1"));
    assert!(detail["ack"].as_str().unwrap().contains("MSA|AA|E2E-1"));
    assert_eq!(detail["deliveries"][0]["attempt_log"][0]["outcome"], "sent");

    let (status, replay) = json_of(
        http.post(format!("{base}/api/messages/{id}/replay"))
            .bearer_auth(&token)
            .json(&json!({ "reason": "e2e check" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayed"].as_array().unwrap().len(), 1);
    // Delivered a second time (to the same file name: the archive holds one).
    let message: MessageId = id.parse().unwrap();
    eventually("the replay is delivered again", async || {
        let detail = engine.store().get_message(message).await.unwrap().unwrap();
        let d = &detail.deliveries[0];
        d.state == store::DeliveryState::Sent && d.attempt_log.iter().filter(|a| a.outcome == "sent").count() == 2
    })
    .await;
    assert_eq!(archived(dir), 1);
    let events =
        engine.store().audit_events(&AuditQuery { message_id: Some(message), ..AuditQuery::default() }).await.unwrap();
    let actions: Vec<(&str, &str)> = events.iter().map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert_eq!(actions, [("replay", "e2e-operator"), ("read_content", "e2e-operator")]);
    // The token's use is recorded (in the background, at most once a minute).
    eventually("last_used_at is set", async || {
        engine.store().api_token(&issued.token.id).await.unwrap().unwrap().last_used_at.is_some()
    })
    .await;
}

#[tokio::test]
async fn search_read_and_replay_through_a_running_engine() {
    let h = Harness::start(CHANNEL).await;
    let base = format!("http://{}", h.api());
    browse_read_and_replay(h.engine(), h.dir(), &reqwest::Client::new(), &base).await;
    h.stop().await;
}

#[tokio::test]
async fn the_api_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("api.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("api.key"), cert.signing_key.serialize_pem()).unwrap();
    // The TLS line belongs to the [api] table the config starts with.
    let tls = "tls = { cert_file = \"api.pem\", key_file = \"api.key\" }";
    let config = config(dir.path(), &format!("{tls}\n{CHANNEL}"));
    let h = Harness::start_in(dir, config).await;
    let port = h.api().port();
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder().tls_certs_only([ca]).resolve("localhost", h.api()).build().unwrap();
    let base = format!("https://localhost:{port}");
    browse_read_and_replay(h.engine(), h.dir(), &http, &base).await;
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    h.stop().await;
}

#[tokio::test]
async fn a_stopped_channel_refuses_messages_and_pauses_its_workers() {
    let h = Harness::start(CHANNEL).await;
    let base = format!("http://{}", h.api());
    let http = reqwest::Client::new();
    let token = h.token("ops", &[Scope::ChannelsAdmin, Scope::MessagesReplay]).await;
    let send = async |control_id: &str| {
        let r = http
            .post(format!("{base}/channels/adt-in/messages"))
            .header("content-type", "x-application/hl7-v2+er7")
            .body(adt(control_id))
            .send()
            .await
            .unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), retry_after, r.text().await.unwrap())
    };
    let (status, retry_after, _) = send("RUN-1").await;
    assert_eq!(retry_after, None, "only a 503 says when to come back");
    assert_eq!(status, 200);
    eventually("RUN-1 is delivered", async || {
        stored(h.store(), "RUN-1").await.first().is_some_and(|m| m.deliveries[0].state == store::DeliveryState::Sent)
    })
    .await;

    let (status, body) =
        json_of(http.post(format!("{base}/api/channels/adt-in/stop")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("stopped")));
    // Refused with AE / 503, not stored; the listener still answers.
    let (status, retry_after, ack) = send("STOPPED-1").await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("30")), "{ack}");
    assert!(ack.contains("MSA|AE|STOPPED-1") && ack.contains("the channel is stopped"), "{ack}");
    assert!(stored(h.store(), "STOPPED-1").await.is_empty());
    // Workers do not claim: a replayed delivery stays queued while stopped.
    let id = stored(h.store(), "RUN-1").await[0].id;
    let (status, _) =
        json_of(http.post(format!("{base}/api/messages/{id}/replay")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored(h.store(), "RUN-1").await[0].deliveries[0].state,
        store::DeliveryState::Queued,
        "a stopped channel delivered"
    );

    let (status, _) =
        json_of(http.post(format!("{base}/api/channels/adt-in/start")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    eventually("the replay is delivered after start", async || {
        stored(h.store(), "RUN-1").await[0].deliveries[0].state == store::DeliveryState::Sent
    })
    .await;
    let (status, _, _) = send("AFTER-1").await;
    assert_eq!(status, 200);
    h.stop().await;
}

/// The OpenAPI document describes the whole API listener: every route it
/// lists, its own and the other features' (health, metrics, sync), is served
/// by a running engine, and each one that names a scope refuses a caller
/// without a token.
#[tokio::test]
async fn every_documented_route_is_served_and_guarded() {
    let h = Harness::start(CHANNEL).await;
    let base = format!("http://{}", h.api());
    let http = reqwest::Client::new();
    let (status, doc) = json_of(http.get(format!("{base}/api/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, operations) in paths {
        let uri = path.replace("{name}", "adt-in").replace("{id}", &uuid::Uuid::nil().to_string());
        for (method, operation) in operations.as_object().expect("operations") {
            let request = match method.as_str() {
                "get" => http.get(format!("{base}{uri}")),
                "post" => http.post(format!("{base}{uri}")).json(&json!({})),
                other => panic!("unexpected method {other} for {path}"),
            };
            let status = request.send().await.unwrap().status().as_u16();
            let expected = if operation["x-required-scope"].is_string() { 401 } else { 200 };
            assert_eq!(status, expected, "{method} {path}");
            checked += 1;
        }
    }
    let own = engine::api::openapi::documented().len();
    let elsewhere = engine::api::openapi::documented_elsewhere().len();
    assert_eq!(checked, own + elsewhere, "every documented operation was tried");
    assert!(elsewhere >= 7, "health, metrics and the sync routes are documented");
    h.stop().await;
}
