//! FHIR poll checkpoints on every backend: absent until saved, replaced by
//! a later save (stamped with the store's clock), listed per channel in
//! order, removed per channel or per resource type, kept across a reopen,
//! and refused when they cannot be recorded faithfully.

use std::time::Duration;

use chrono::TimeDelta;
use store::{MAX_SEEN_AT_CHECKPOINT, PollCheckpoint, StoreError, StoreOptions};

use crate::support::{Kind, TestStore, t0};

fn checkpoint(channel: &str, resource_type: &str, seconds: i64, seen: &[&str]) -> PollCheckpoint {
    PollCheckpoint {
        channel: channel.into(),
        resource_type: resource_type.into(),
        last_updated: t0() - TimeDelta::try_seconds(seconds).expect("small") + TimeDelta::microseconds(123_456),
        seen_at_checkpoint: seen.iter().map(|s| s.to_string()).collect(),
        // Not stored as given: the store stamps its own clock.
        updated_at: t0() - TimeDelta::days(100),
    }
}

async fn checkpoints_are_saved_replaced_listed_and_removed(t: &TestStore) {
    let s = &t.store;
    assert_eq!(s.poll_checkpoint("ehr-poll", "Patient").await.unwrap(), None);
    assert!(s.poll_checkpoints(None).await.unwrap().is_empty());

    s.save_poll_checkpoint(&checkpoint("ehr-poll", "Patient", 60, &["Patient/1/_history/1"])).await.unwrap();
    let read = s.poll_checkpoint("ehr-poll", "Patient").await.unwrap().expect("saved");
    // Microseconds survive the round trip; updated_at is the store's now.
    assert_eq!(read.last_updated, checkpoint("ehr-poll", "Patient", 60, &[]).last_updated);
    assert_eq!(read.seen_at_checkpoint, ["Patient/1/_history/1"]);
    assert_eq!(read.updated_at, t0());

    // A later save replaces the row (one row per channel and type).
    t.clock.advance(Duration::from_secs(5));
    let later = checkpoint("ehr-poll", "Patient", 10, &["Patient/2/_history/1", "Patient/3/_history/4"]);
    s.save_poll_checkpoint(&later).await.unwrap();
    let read = s.poll_checkpoint("ehr-poll", "Patient").await.unwrap().expect("saved");
    assert_eq!(read.last_updated, later.last_updated);
    assert_eq!(read.seen_at_checkpoint, later.seen_at_checkpoint);
    assert_eq!(read.updated_at, t0() + TimeDelta::seconds(5));

    s.save_poll_checkpoint(&checkpoint("ehr-poll", "Observation", 30, &[])).await.unwrap();
    s.save_poll_checkpoint(&checkpoint("another", "Patient", 30, &[])).await.unwrap();
    let all: Vec<(String, String)> =
        s.poll_checkpoints(None).await.unwrap().into_iter().map(|c| (c.channel, c.resource_type)).collect();
    assert_eq!(
        all,
        [
            ("another".to_string(), "Patient".to_string()),
            ("ehr-poll".to_string(), "Observation".to_string()),
            ("ehr-poll".to_string(), "Patient".to_string()),
        ]
    );
    assert_eq!(s.poll_checkpoints(Some("ehr-poll")).await.unwrap().len(), 2);

    // Removing one type leaves the others; removing a channel leaves other channels.
    assert_eq!(s.delete_poll_checkpoints("ehr-poll", Some("Observation")).await.unwrap(), 1);
    assert_eq!(s.poll_checkpoint("ehr-poll", "Observation").await.unwrap(), None);
    assert!(s.poll_checkpoint("ehr-poll", "Patient").await.unwrap().is_some());
    assert_eq!(s.delete_poll_checkpoints("ehr-poll", None).await.unwrap(), 1);
    assert_eq!(s.delete_poll_checkpoints("ehr-poll", None).await.unwrap(), 0);
    assert_eq!(s.poll_checkpoints(None).await.unwrap().len(), 1);

    // Kept by the database, not the process.
    let other = t.reopen(StoreOptions::default()).await;
    assert!(other.poll_checkpoint("another", "Patient").await.unwrap().is_some());
    other.close().await;
}

async fn checkpoints_that_cannot_be_recorded_are_refused(t: &TestStore) {
    let s = &t.store;
    let too_many: Vec<String> = (0..=MAX_SEEN_AT_CHECKPOINT).map(|i| format!("Patient/{i}/_history/1")).collect();
    let refused = [
        checkpoint("", "Patient", 1, &[]),
        checkpoint("ehr-poll", " ", 1, &[]),
        checkpoint(&"c".repeat(65), "Patient", 1, &[]),
        PollCheckpoint { seen_at_checkpoint: too_many, ..checkpoint("ehr-poll", "Patient", 1, &[]) },
    ];
    for bad in refused {
        let e = s.save_poll_checkpoint(&bad).await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    }
    assert!(s.poll_checkpoints(None).await.unwrap().is_empty());
    // A 64-character channel name (the config's limit) fits every backend.
    s.save_poll_checkpoint(&checkpoint(&"c".repeat(64), "MedicationRequest", 1, &[])).await.unwrap();
    assert_eq!(s.poll_checkpoints(Some(&"c".repeat(64))).await.unwrap().len(), 1);
}

macro_rules! checkpoint_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                async fn run(kind: super::Kind, backend: &str) {
                    let suite = format!("store::poll_checkpoints::{backend}::{}", stringify!($name));
                    if let Some(t) = super::TestStore::open(kind, &suite).await {
                        super::$name(&t).await;
                        t.store.close().await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(super::Kind::Sqlite, "sqlite").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(super::Kind::Postgres, "postgres").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    run(super::Kind::Mysql, "mysql").await;
                }
            }
        )*
    };
}

checkpoint_tests!(checkpoints_are_saved_replaced_listed_and_removed, checkpoints_that_cannot_be_recorded_are_refused);
