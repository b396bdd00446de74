//! Scheduled retention in a running engine: a short interval, and the
//! store's (manual) clock moved forward so that messages received now are
//! old enough.

mod ops_support;

use std::sync::Arc;
use std::time::Duration;

use ops_support::{Client, Harness, adt, config, eventually, open_store, stored};
use store::{Clock, DeliveryState, Store, StoreOptions};

async fn message_id(store: &Arc<dyn Store>, control_id: &str) -> store::MessageId {
    stored(store, control_id).await[0].id
}

#[tokio::test]
async fn retention_runs_on_its_interval_and_spares_unfinished_messages() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: the `held` channel's delivery never ends.
    let closed = testkit::free_port();
    let body = format!(
        r#"
[retention]
contents_after = "30d"
messages_after = "60d"
interval = "100ms"
batch_size = 1
pause = "0ms"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
file_name = "${{control_id}}.hl7"
[channels.held.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.held.destinations]]
name = "down"
type = "mllp"
address = "127.0.0.1:{closed}"
retry = {{ max_attempts = 1000, initial_backoff = "1s" }}
"#
    );
    let config = config(dir.path(), &body);
    // The store's clock runs 40 days ahead of the wall clock that stamps
    // `received_at`: every message is 40 days old to retention.
    let clock = Clock::manual(chrono::Utc::now() + chrono::TimeDelta::days(40));
    let store = open_store(dir.path(), StoreOptions { clock: clock.clone(), ..StoreOptions::default() }).await;
    let h = Harness::start_with_store(dir, config, Arc::clone(&store)).await;

    let mut adt_in = Client::connect(h.addr("adt-in")).await;
    for id in ["R1", "R2", "R3"] {
        assert_eq!(adt_in.exchange(&adt(id, "MRN7")).await, "AA");
    }
    let mut held = Client::connect(h.addr("held")).await;
    assert_eq!(held.exchange(&adt("H1", "MRN8")).await, "AA");
    let kept = message_id(&store, "H1").await;

    // Contents go once the deliveries are sent (batches of one: several
    // batches per run).
    let ids = [message_id(&store, "R1").await, message_id(&store, "R2").await, message_id(&store, "R3").await];
    eventually("contents removed from the sent messages", async || {
        let mut all = true;
        for id in ids {
            let detail = store.get_message(id).await.unwrap().expect("still there: only contents go at 30 days");
            all &= detail.raw.is_none() && detail.deliveries[0].state == DeliveryState::Sent;
        }
        all
    })
    .await;
    let detail = store.get_message(ids[0]).await.unwrap().unwrap();
    assert_eq!(detail.patient_ids, vec!["MRN7".to_string()], "metadata stays searchable");
    // The unfinished message keeps everything.
    let detail = store.get_message(kept).await.unwrap().unwrap();
    assert!(detail.raw.is_some());
    assert!(!detail.deliveries[0].state.is_final());

    // 30 days later by the store's clock: whole messages go.
    clock.advance(Duration::from_secs(30 * 86400));
    eventually("sent messages removed", async || {
        let mut gone = true;
        for id in ids {
            gone &= store.get_message(id).await.unwrap().is_none();
        }
        gone
    })
    .await;
    let detail = store.get_message(kept).await.unwrap().unwrap();
    assert!(detail.raw.is_some(), "a message still queued is never touched");

    h.stop().await;
}

/// A run that removes nothing (a cut-off a century back), so that it cannot
/// touch other suites' messages in a shared test database.
fn every_second() -> engine::config::RetentionConfig {
    engine::config::RetentionConfig {
        contents_after: Some(Duration::from_secs(36500 * 86400)),
        messages_after: None,
        schedule: engine::config::RetentionSchedule::Every(Duration::from_secs(1)),
        batch_size: 10,
        pause: Duration::ZERO,
    }
}

/// Two stores on one database stand for two nodes: while one holds the
/// retention lock, the other's run is skipped; once released, it runs.
async fn one_node_at_a_time(url: &str) {
    let node_a = store::open(url, StoreOptions::default()).await.unwrap();
    let node_b = store::open(url, StoreOptions::default()).await.unwrap();
    let held = node_a.try_lock(engine::retention::LOCK_NAME).await.unwrap().expect("free at first");
    let run = engine::retention::run_once(&*node_b, &every_second()).await.unwrap();
    assert!(!run.ran, "node b must skip while node a holds the lock");
    drop(held);
    // The release closes node a's lock session in the background.
    eventually("node b runs once the lock is free", async || {
        engine::retention::run_once(&*node_b, &every_second()).await.unwrap().ran
    })
    .await;
    node_a.close().await;
    node_b.close().await;
}

#[tokio::test]
async fn postgres_runs_retention_on_one_node() {
    let Some(url) = testkit::env_or_skip("PLEXUS_TEST_POSTGRES_URL", "retention cluster lock (postgres)") else {
        return;
    };
    one_node_at_a_time(&url).await;
}

#[tokio::test]
async fn mariadb_runs_retention_on_one_node() {
    let Some(url) = testkit::env_or_skip("PLEXUS_TEST_MYSQL_URL", "retention cluster lock (mysql)") else {
        return;
    };
    one_node_at_a_time(&url).await;
}

#[tokio::test]
async fn sqlite_runs_retention_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let run = engine::retention::run_once(&*store, &every_second()).await.unwrap();
    assert!(run.ran);
    assert_eq!((run.messages, run.contents), (0, 0));
}
