//! `/metrics` after real MLLP traffic through a running engine (SQLite temp
//! file, real sockets): every counter checked exactly.

mod ops_support;

use engine::api::auth::Scope;
use ops_support::{Client, Harness, adt, config, eventually, get, sample};

const CHANNEL: &str = r#"
[health]
interval = "100ms"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${control_id}.hl7"
[[channels.adt-in.destinations]]
name = "only-oru"
type = "file"
directory = "oru"
filter = ['MSH-9-1 == "ORU"']
"#;

#[tokio::test]
async fn metrics_count_what_the_engine_did() {
    let h = Harness::start(CHANNEL).await;
    let api = h.api();
    let scraper = h.token("prometheus", &[Scope::Metrics]).await;
    let reader = h.token("dashboard", &[Scope::MessagesRead]).await;
    let sender = h.token("sender", &[Scope::Sync]).await;
    let token = Some(scraper.as_str());

    // Secure by default: no token, a bad token, a token without the scope.
    assert_eq!(get(api, "/metrics", None).await.0, 401);
    assert_eq!(get(api, "/metrics", Some("plx_0123456789abcdef_00")).await.0, 401);
    assert_eq!(get(api, "/metrics", Some(&reader)).await.0, 403);
    assert_eq!(get(api, "/api/health", None).await.0, 401);
    assert_eq!(get(api, "/api/health", Some(&sender)).await.0, 403);

    let mut client = Client::connect(h.addr("adt-in")).await;

    for id in ["M1", "M2", "M3"] {
        assert_eq!(client.exchange(&adt(id, "MRN1")).await, "AA");
    }
    // The same message again: the original ACK, nothing new stored.
    assert_eq!(client.exchange(&adt("M2", "MRN1")).await, "AA");
    // Not HL7: an AE, nothing stored.
    assert_eq!(client.exchange("MSH|^~\\&|X\rGARBAGE").await, "AE");

    // Deliveries are asynchronous: wait until all six are done, then check
    // every figure exactly.
    let text = {
        let mut last = String::new();
        eventually("3 sent and 3 filtered deliveries", async || {
            last = get(api, "/metrics", token).await.1;
            let sent =
                sample(&last, r#"plexus_deliveries_total{channel="adt-in",destination="archive",outcome="sent"}"#);
            let filtered =
                sample(&last, r#"plexus_deliveries_total{channel="adt-in",destination="only-oru",outcome="filtered"}"#);
            sent == Some(3.0) && filtered == Some(3.0)
        })
        .await;
        last
    };
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing in:\n{text}"));

    assert_eq!(value(r#"plexus_messages_received_total{channel="adt-in"}"#), 5.0);
    assert_eq!(value(r#"plexus_messages_total{channel="adt-in",outcome="accepted",ack_code="AA"}"#), 3.0);
    assert_eq!(value(r#"plexus_messages_total{channel="adt-in",outcome="duplicate",ack_code="AA"}"#), 1.0);
    assert_eq!(value(r#"plexus_messages_total{channel="adt-in",outcome="errored",ack_code="AE"}"#), 1.0);
    assert_eq!(sample(&text, r#"plexus_messages_total{channel="adt-in",outcome="rejected",ack_code="AR"}"#), None);
    assert_eq!(value(r#"plexus_errors_total{channel="adt-in",destination="",class="invalid"}"#), 1.0);
    // Histograms: one observation per answer, one per commit (the duplicate
    // went to the store too), one per sent delivery.
    assert_eq!(value(r#"plexus_ack_latency_seconds_count{channel="adt-in"}"#), 5.0);
    assert_eq!(value(r#"plexus_store_commit_seconds_count{channel="adt-in"}"#), 4.0);
    assert_eq!(value(r#"plexus_delivery_latency_seconds_count{channel="adt-in",destination="archive"}"#), 3.0);
    assert_eq!(
        value(r#"plexus_ack_latency_seconds_bucket{channel="adt-in",le="+Inf"}"#),
        5.0,
        "latencies are real histograms with buckets"
    );
    // Filtered deliveries are not attempts: no latency recorded.
    assert_eq!(value(r#"plexus_delivery_latency_seconds_count{channel="adt-in",destination="only-oru"}"#), 0.0);
    for outcome in ["retry", "error", "dead"] {
        let series =
            format!(r#"plexus_deliveries_total{{channel="adt-in",destination="archive",outcome="{outcome}"}}"#);
        assert_eq!(value(&series), 0.0, "{outcome}");
    }
    assert!(text.contains("# HELP plexus_queue_depth"), "described metrics:\n{text}");
    // No message content in any label.
    for secret in ["MRN1", "DOE", "M1", "GARBAGE"] {
        assert!(!text.contains(secret), "{secret} leaked into /metrics");
    }

    // Queue depths come from the store: once every delivery is final the
    // refresh reports zero (it ran at least once since the deliveries
    // completed when a later scrape says so).
    eventually("queue depth refreshed", async || {
        let text = get(api, "/metrics", token).await.1;
        sample(&text, r#"plexus_queue_depth{channel="adt-in",destination="archive"}"#) == Some(0.0)
    })
    .await;

    // Scrapers and dashboards both read health.
    assert_eq!(get(api, "/api/health", token).await.0, 200);
    let (status, body) = get(api, "/api/health", Some(&reader)).await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["window_seconds"], 300);
    let channel = &health["channels"][0];
    assert_eq!(channel["channel"], "adt-in");
    assert_eq!(channel["health"], "healthy");
    assert_eq!(channel["attempts"], 3);
    assert_eq!(channel["success_rate"], 1.0);
    assert_eq!(channel["destinations"][0]["destination"], "archive");
    assert_eq!(channel["destinations"][1]["attempts"], 0, "filtered deliveries are not attempts");

    h.stop().await;
}

#[tokio::test]
async fn metrics_can_be_public() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), CHANNEL);
    config.api.metrics_public = true;
    let h = Harness::start_in(dir, config).await;
    let (status, text) = get(h.api(), "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"plexus_deliveries_total{channel="adt-in",destination="archive",outcome="sent"} 0"#),
        "{text}"
    );
    // Health still needs a token.
    assert_eq!(get(h.api(), "/api/health", None).await.0, 401);
    h.stop().await;
}
