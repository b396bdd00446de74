//! Alerts end to end: an MLLP destination whose port is closed, then a real
//! receiver on that port; a webhook receiver served by the test must get
//! exactly one alert and one resolution per rule.

mod ops_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use ops_support::{Client, Harness, adt, eventually, mllp_receiver};
use serde_json::Value;
use tokio::net::TcpListener;

/// An HTTP server recording every JSON body POSTed to `/hook`.
async fn webhook_receiver() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn events(received: &Mutex<Vec<Value>>, alert: &str, status: &str) -> usize {
    received.lock().unwrap().iter().filter(|e| e["alert"] == alert && e["status"] == status).count()
}

#[tokio::test]
async fn a_destination_down_then_up_raises_one_alert_and_one_resolution() {
    let (hook, received) = webhook_receiver().await;
    // A port nobody listens on (yet).
    let lis_port = testkit::free_port();
    let body = format!(
        r#"
[health]
interval = "100ms"
[[alerts]]
name = "lis unreachable"
condition = "unreachable"
webhook = "http://{hook}/hook"
[[alerts]]
name = "lis failing"
condition = "consecutive_failures"
threshold = 3
channel = "adt-in"
destination = "lis"
webhook = "http://{hook}/hook"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "lis"
type = "mllp"
address = "127.0.0.1:{lis_port}"
retry = {{ max_attempts = 1000, initial_backoff = "100ms", max_backoff = "200ms" }}
"#
    );
    let h = Harness::start(&body).await;
    let mut client = Client::connect(h.addr("adt-in")).await;
    assert_eq!(client.exchange(&adt("A1", "MRN1")).await, "AA");

    eventually("both alerts fire", async || {
        events(&received, "lis unreachable", "firing") == 1 && events(&received, "lis failing", "firing") == 1
    })
    .await;
    // Keep failing for a while: many more failed attempts and evaluations,
    // no more notifications.
    let telemetry = Arc::clone(h.engine().telemetry());
    eventually("5 consecutive failures", async || telemetry.destinations().iter().any(|d| d.consecutive_failures >= 5))
        .await;
    assert_eq!(received.lock().unwrap().len(), 2, "no flood while the destination stays down");
    let health = telemetry.health();
    let lis = health.channel("adt-in").unwrap().destination("lis").unwrap();
    assert_eq!(lis.health, engine::metrics::HealthState::Critical);
    assert!(lis.unreachable);

    // The receiver comes up on that port: the queued delivery goes through.
    let listener = TcpListener::bind(("127.0.0.1", lis_port)).await.unwrap();
    let delivered = mllp_receiver(listener);
    eventually("both alerts resolve", async || {
        events(&received, "lis unreachable", "resolved") == 1 && events(&received, "lis failing", "resolved") == 1
    })
    .await;
    let delivered: Vec<String> = delivered.lock().unwrap().iter().map(|(_, control_id)| control_id.clone()).collect();
    assert_eq!(delivered, vec!["A1".to_string()]);
    // Several more evaluations (every 100 ms) with the destination healthy
    // again: nothing more is sent. (A pause, not a timing assertion: it
    // gives a flood the chance to show.)
    tokio::time::sleep(Duration::from_millis(800)).await;

    let all = received.lock().unwrap().clone();
    assert_eq!(all.len(), 4, "exactly one alert and one resolution per rule: {all:#?}");
    for name in ["lis unreachable", "lis failing"] {
        let mine: Vec<&Value> = all.iter().filter(|e| e["alert"] == name).collect();
        assert_eq!(mine[0]["status"], "firing", "{name}: the alert comes first");
        assert_eq!(mine[1]["status"], "resolved");
        assert_eq!(mine[0]["started_at"], mine[1]["started_at"]);
        for e in &mine {
            assert_eq!(e["version"], 1);
            assert_eq!(e["channel"], "adt-in");
            assert_eq!(e["destination"], "lis");
        }
    }
    let failing = all.iter().find(|e| e["alert"] == "lis failing" && e["status"] == "firing").unwrap();
    assert_eq!(failing["condition"], "consecutive_failures");
    assert!(failing["value"].as_f64().unwrap() >= 3.0, "{failing}");
    assert_eq!(failing["threshold"], 3.0);
    // No patient data in the notifications.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("MRN1") && !text.contains("DOE"), "{text}");

    h.stop().await;
}
