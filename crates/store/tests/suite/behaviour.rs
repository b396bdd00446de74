//! The store's behaviours, each an `async fn(&TestStore)` run on every
//! backend by `on_every_backend!` (see main.rs).

use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest, Sha256};
use store::*;

use crate::support::{TestStore, fixture, message, t0};

pub use crate::batch::accept_many_answers_each_in_order_and_keeps_arrival_order;
pub use crate::retry_after::retry_after_holds_the_retry_back;
pub use crate::tokens::api_tokens_create_find_list_revoke_and_touch;

fn block(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(600),
        on_failure: OnFailure::Block,
    }
}

fn claim_req(channel: &str, destination: &str, max: u32) -> ClaimRequest {
    ClaimRequest {
        channel: channel.into(),
        destination: destination.into(),
        max,
        lease: Duration::from_secs(30),
        worker: "test-worker".into(),
    }
}

fn sent() -> Outcome {
    Outcome::Sent { response: Some(Response::Ack { text: "MSA|AA|1".into() }), transformed: None }
}

fn transient(reason: &str) -> Outcome {
    Outcome::Failed { class: FailureClass::Transient, reason: reason.into(), response: None }
}

async fn stored(t: &TestStore, m: NewMessage) -> MessageId {
    match t.store.accept(m).await.expect("accept") {
        Accepted::Stored { id } => id,
        other => panic!("expected a new message, got {other:?}"),
    }
}

/// Order keys of claimed deliveries, in claim order.
fn keys(c: &Claim) -> Vec<Option<String>> {
    c.deliveries.iter().map(|d| d.order_key.clone()).collect()
}

pub async fn accept_stores_message_with_metadata_and_deliveries(t: &TestStore) {
    let raw = fixture("ADT-A01-01.hl7");
    let mut m = message("adt", "MSG0001", Some("MRN-1"), &["ehr"]);
    m.raw = raw.clone();
    m.patient_ids = vec!["MRN-1".into(), "NHS-9".into(), "MRN-1".into()];
    m.deliveries.push(NewDelivery::filtered("archive", "only-a04"));
    let id = stored(t, m.clone()).await;

    let d = t.store.get_message(id).await.unwrap().expect("message is there");
    assert_eq!(d.summary.id, id);
    assert_eq!(d.summary.channel, "adt");
    assert_eq!(d.summary.size, raw.len() as u64);
    assert_eq!(d.summary.sha256, hex::encode(Sha256::digest(&raw)));
    assert_eq!(d.summary.control_id.as_deref(), Some("MSG0001"));
    assert_eq!(d.summary.sender_key, "LAB^HOSP");
    assert_eq!(d.summary.message_type.as_deref(), Some("ADT"));
    assert_eq!(d.summary.event.as_deref(), Some("A08"));
    assert_eq!(d.summary.order_key.as_deref(), Some("MRN-1"));
    assert_eq!(d.summary.peer_addr.as_deref(), Some("127.0.0.1:50000"));
    assert_eq!(d.summary.received_at, t0());
    assert!(!d.summary.contents_deleted);
    assert_eq!(d.raw.as_deref(), Some(&raw[..]));
    assert_eq!(d.ack, m.ack);
    assert_eq!(d.patient_ids, vec!["MRN-1".to_owned(), "NHS-9".to_owned()]);
    assert_eq!(d.deliveries.len(), 2);
    assert_eq!(d.deliveries[0].destination, "ehr");
    assert_eq!(d.deliveries[0].state, DeliveryState::Queued);
    assert_eq!(d.deliveries[1].destination, "archive");
    assert_eq!(d.deliveries[1].state, DeliveryState::Filtered);
    assert_eq!(d.deliveries[1].filter_rule.as_deref(), Some("only-a04"));

    assert!(t.store.get_message(MessageId(uuid::Uuid::now_v7())).await.unwrap().is_none());
}

pub async fn duplicate_returns_the_original_ack_and_creates_nothing(t: &TestStore) {
    let first = message("adt", "DUP1", Some("MRN-1"), &["ehr"]);
    let original = stored(t, first.clone()).await;

    let mut again = first.clone();
    again.ack = Some(b"a different ACK".to_vec());
    match t.store.accept(again).await.unwrap() {
        Accepted::Duplicate { original: o, ack } => {
            assert_eq!(o, original);
            assert_eq!(ack, first.ack, "the duplicate gets the ACK stored with the original");
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // Same control id from another sender, or on another channel: new.
    let mut other_sender = first.clone();
    other_sender.sender_key = "RAD^HOSP".into();
    stored(t, other_sender).await;
    let mut other_channel = first.clone();
    other_channel.channel = "adt-2".into();
    stored(t, other_channel).await;

    // Nothing was created for the duplicate: one queued delivery for "adt".
    let counts = t.store.counts().await.unwrap();
    let adt: u64 = counts.iter().filter(|c| c.channel == "adt").map(|c| c.count).sum();
    assert_eq!(adt, 2, "{counts:?}");

    // After the window the same key is a new message.
    t.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let mut late = first.clone();
    late.received_at = t.clock.now();
    let id = stored(t, late).await;
    assert_ne!(id, original);
}

pub async fn concurrent_duplicates_store_one_message(t: &TestStore) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move { store.accept(message("adt", "SAME", Some("MRN-1"), &["ehr"])).await }));
    }
    let mut stored_ids = Vec::new();
    let mut originals = HashSet::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Accepted::Stored { id } => stored_ids.push(id),
            Accepted::Duplicate { original, ack } => {
                assert!(ack.is_some());
                originals.insert(original);
            }
        }
    }
    assert_eq!(stored_ids.len(), 1, "exactly one accept stores the message");
    assert!(originals.iter().all(|o| *o == stored_ids[0]));
    let page = t.store.search(&SearchQuery { control_id: Some("SAME".into()), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 1);
}

pub async fn concurrent_accepts_are_all_stored(t: &TestStore) {
    let mut tasks = Vec::new();
    for p in 0..8 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let key = format!("MRN-{}", i % 7);
                let m = message("adt", &format!("P{p}-{i}"), Some(&key), &["ehr", "lab"]);
                match store.accept(m).await.unwrap() {
                    Accepted::Stored { id } => ids.push(id),
                    d => panic!("unexpected {d:?}"),
                }
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(all.insert(id), "ids are unique");
        }
    }
    assert_eq!(all.len(), 400);
    let counts = t.store.counts().await.unwrap();
    let queued: u64 = counts.iter().filter(|c| c.state == DeliveryState::Queued).map(|c| c.count).sum();
    assert_eq!(queued, 800);
}

pub async fn invalid_requests_are_rejected_as_permanent(t: &TestStore) {
    let mut m = message("", "X1", None, &["ehr"]);
    let e = t.store.accept(m.clone()).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    m.channel = "adt".into();
    m.deliveries.push(NewDelivery::queued("ehr"));
    assert_eq!(t.store.accept(m).await.unwrap_err().class(), ErrorClass::Permanent);
    let mut m = message("adt", "X2", None, &["ehr"]);
    m.control_id = Some("x".repeat(500));
    assert!(matches!(t.store.accept(m).await, Err(StoreError::Invalid { field: "control_id", .. })));
    let mut c = claim_req("adt", "ehr", 0);
    assert!(t.store.claim(&c).await.is_err());
    c.max = 1;
    c.lease = Duration::ZERO;
    assert!(t.store.claim(&c).await.is_err());
    // The store still works after refusing.
    stored(t, message("adt", "X3", None, &["ehr"])).await;
}

pub async fn claim_takes_only_the_head_of_each_order_key(t: &TestStore) {
    stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "3", Some("B"), &["ehr"])).await;
    stored(t, message("adt", "4", None, &["ehr"])).await;
    stored(t, message("adt", "5", None, &["ehr"])).await;
    stored(t, message("adt", "6", Some("B"), &["ehr"])).await;
    // Another destination and another channel have queues of their own.
    stored(t, message("adt", "7", Some("A"), &["lab"])).await;
    stored(t, message("oru", "8", Some("A"), &["ehr"])).await;

    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert_eq!(keys(&c), vec![Some("A".into()), Some("B".into()), None, None]);
    let controls: Vec<_> = c.deliveries.iter().map(|d| d.control_id.clone().unwrap()).collect();
    assert_eq!(controls, ["1", "3", "4", "5"]);
    assert!(c.deliveries.iter().all(|d| d.attempt == 1 && d.channel == "adt" && d.destination == "ehr"));
    assert!(c.deliveries[0].raw.starts_with(b"MSH|"));

    // Nothing more while the heads are in flight.
    let again = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert!(again.deliveries.is_empty());
    assert_eq!(again.next_due, Some(c.deliveries[0].lease_expires_at), "wake at the first lease expiry");

    // Completing a head releases the next of its key, in order.
    let a1 = &c.deliveries[0];
    let done = t.store.complete(a1.id, a1.lease, sent(), &block(3)).await.unwrap();
    assert_eq!(done.state, DeliveryState::Sent);
    let next = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert_eq!(next.deliveries.len(), 1);
    assert_eq!(next.deliveries[0].control_id.as_deref(), Some("2"));

    let lab = t.store.claim(&claim_req("adt", "lab", 10)).await.unwrap();
    assert_eq!(lab.deliveries.len(), 1);
    let oru = t.store.claim(&claim_req("oru", "ehr", 10)).await.unwrap();
    assert_eq!(oru.deliveries.len(), 1);
}

pub async fn claim_respects_max_and_returns_oldest_first(t: &TestStore) {
    for i in 0..5 {
        stored(t, message("adt", &format!("{i}"), Some(&format!("K{i}")), &["ehr"])).await;
    }
    let c = t.store.claim(&claim_req("adt", "ehr", 2)).await.unwrap();
    let controls: Vec<_> = c.deliveries.iter().map(|d| d.control_id.clone().unwrap()).collect();
    assert_eq!(controls, ["0", "1"]);
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    let controls: Vec<_> = c.deliveries.iter().map(|d| d.control_id.clone().unwrap()).collect();
    assert_eq!(controls, ["2", "3", "4"]);
}

pub async fn transient_failures_retry_with_backoff_then_block_the_key(t: &TestStore) {
    stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "3", Some("B"), &["ehr"])).await;
    let policy = block(3);

    for attempt in 1..=3u32 {
        let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
        let a = c.deliveries.iter().find(|d| d.order_key.as_deref() == Some("A")).expect("A's head is due");
        assert_eq!(a.control_id.as_deref(), Some("1"), "the head, never the one behind it");
        assert_eq!(a.attempt, attempt);
        let r = Response::Http { status: 503, body_excerpt: "busy".into() };
        let outcome = Outcome::Failed { class: FailureClass::Transient, reason: "HTTP 503".into(), response: Some(r) };
        let done = t.store.complete(a.id, a.lease, outcome, &policy).await.unwrap();
        // B is independent: complete it whenever it shows up.
        for b in c.deliveries.iter().filter(|d| d.order_key.as_deref() == Some("B")) {
            t.store.complete(b.id, b.lease, sent(), &policy).await.unwrap();
        }
        if attempt < 3 {
            assert_eq!(done.state, DeliveryState::Queued);
            let at = done.next_attempt_at.expect("a retry time");
            let delay = (at - t.clock.now()).to_std().unwrap();
            let base = Duration::from_secs(10 * 2u64.pow(attempt - 1));
            assert!(delay >= base / 2 && delay <= base, "attempt {attempt}: {delay:?} outside jittered {base:?}");
            // Not due yet: nothing of key A is claimable, and the claim says
            // when to come back.
            let early = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
            assert!(early.deliveries.iter().all(|d| d.order_key.as_deref() != Some("A")));
            assert_eq!(early.next_due, Some(at));
            t.clock.set(at);
        } else {
            assert_eq!(done.state, DeliveryState::Error);
            assert_eq!(done.next_attempt_at, None);
        }
    }
    // The failed head blocks its key for good (until an operator acts).
    t.clock.advance(Duration::from_secs(3600));
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert!(c.deliveries.is_empty(), "key A is blocked: {c:?}");

    let page = t.store.search(&SearchQuery { state: Some(DeliveryState::Error), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let detail = t.store.get_message(page.items[0].id).await.unwrap().unwrap();
    let d = &detail.deliveries[0];
    assert_eq!(d.state, DeliveryState::Error);
    assert_eq!(d.attempts, 3);
    assert_eq!(d.error_class, Some(FailureClass::Transient));
    assert_eq!(d.error_reason.as_deref(), Some("HTTP 503"));
    assert_eq!(d.attempt_log.len(), 3);
    assert_eq!(d.attempt_log.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(d.attempt_log.iter().all(|a| a.outcome == "failed" && a.worker == "test-worker"));
    assert_eq!(d.attempt_log[0].response, Some(Response::Http { status: 503, body_excerpt: "busy".into() }));

    // An operator dead-letters the blocked head: the key continues.
    t.store.dead_letter(d.id, "alice", Some("receiver will never accept it".into())).await.unwrap();
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    assert_eq!(c.deliveries[0].control_id.as_deref(), Some("2"));
    let audit =
        t.store.audit_events(&AuditQuery { message_id: Some(detail.summary.id), ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "dead_letter");
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[0].delivery_id, Some(d.id));
}

pub async fn dead_letter_policy_moves_the_head_aside(t: &TestStore) {
    stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    let policy = RetryPolicy { on_failure: OnFailure::DeadLetter, ..block(5) };
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    let a = &c.deliveries[0];
    let outcome = Outcome::Failed {
        class: FailureClass::Permanent,
        reason: "AR: unknown patient".into(),
        response: Some(Response::Ack { text: "MSA|AR|1".into() }),
    };
    let done = t.store.complete(a.id, a.lease, outcome, &policy).await.unwrap();
    assert_eq!(done.state, DeliveryState::Dead, "permanent failures do not retry");
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    assert_eq!(c.deliveries[0].control_id.as_deref(), Some("2"));
    let page = t.store.search(&SearchQuery { state: Some(DeliveryState::Dead), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].control_id.as_deref(), Some("1"));
}

pub async fn expired_lease_is_claimed_again_and_stale_completion_rejected(t: &TestStore) {
    stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    let first = t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.remove(0);
    // Just before expiry the lease still holds and can be extended.
    t.clock.advance(Duration::from_secs(29));
    assert!(t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.is_empty());
    let new_expiry = t.store.extend_lease(first.id, first.lease, Duration::from_secs(30)).await.unwrap();
    assert_eq!(new_expiry, t.clock.now() + chrono::TimeDelta::seconds(30));
    t.clock.advance(Duration::from_secs(29));
    assert!(t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.is_empty());

    // The worker goes silent; after expiry another worker takes over.
    t.clock.advance(Duration::from_secs(2));
    let mut req = claim_req("adt", "ehr", 1);
    req.worker = "worker-2".into();
    let second = t.store.claim(&req).await.unwrap().deliveries.remove(0);
    assert_eq!(second.id, first.id);
    assert_ne!(second.lease, first.lease);
    assert_eq!(second.attempt, 2);

    // The first worker wakes up: its outcome is refused.
    let late = t.store.complete(first.id, first.lease, sent(), &block(3)).await.unwrap_err();
    assert!(matches!(late, StoreError::LeaseLost(id) if id == first.id), "{late}");
    assert_eq!(late.class(), ErrorClass::Permanent);
    assert!(matches!(
        t.store.extend_lease(first.id, first.lease, Duration::from_secs(5)).await,
        Err(StoreError::LeaseLost(_))
    ));
    t.store.complete(second.id, second.lease, sent(), &block(3)).await.unwrap();
    // A completed delivery cannot be completed again.
    assert!(matches!(
        t.store.complete(second.id, second.lease, sent(), &block(3)).await,
        Err(StoreError::LeaseLost(_))
    ));

    let d = t.store.get_message(first.message_id).await.unwrap().unwrap();
    let log: Vec<_> =
        d.deliveries[0].attempt_log.iter().map(|a| (a.number, a.outcome.as_str(), a.worker.as_str())).collect();
    assert_eq!(log, [(1, "lease_expired", "test-worker"), (2, "sent", "worker-2")]);
}

pub async fn completion_after_expiry_is_rejected_even_if_not_reclaimed(t: &TestStore) {
    stored(t, message("adt", "1", None, &["ehr"])).await;
    let d = t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.remove(0);
    t.clock.advance(Duration::from_secs(31));
    assert!(matches!(t.store.complete(d.id, d.lease, sent(), &block(3)).await, Err(StoreError::LeaseLost(_))));
    assert!(matches!(
        t.store.complete(DeliveryId(i64::MAX), d.lease, sent(), &block(3)).await,
        Err(StoreError::NotFound(_) | StoreError::LeaseLost(_))
    ));
}

pub async fn filtered_deliveries_are_never_claimed(t: &TestStore) {
    let mut m = message("adt", "1", Some("A"), &[]);
    m.deliveries = vec![NewDelivery::filtered("ehr", "no-a08")];
    stored(t, m).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    assert_eq!(c.deliveries.len(), 1, "the filtered one does not hold its key up");
    assert_eq!(c.deliveries[0].control_id.as_deref(), Some("2"));
    let done = t
        .store
        .complete(c.deliveries[0].id, c.deliveries[0].lease, Outcome::Filtered { rule: "late-rule".into() }, &block(3))
        .await
        .unwrap();
    assert_eq!(done.state, DeliveryState::Filtered);
    let d = t.store.get_message(c.deliveries[0].message_id).await.unwrap().unwrap();
    assert_eq!(d.deliveries[0].filter_rule.as_deref(), Some("late-rule"));
}

pub async fn replay_requeues_with_an_audit_event(t: &TestStore) {
    let id = stored(t, message("adt", "1", Some("A"), &["ehr", "lab"])).await;
    for dest in ["ehr", "lab"] {
        let d = t.store.claim(&claim_req("adt", dest, 1)).await.unwrap().deliveries.remove(0);
        let transformed = Some(b"{\"resourceType\":\"Bundle\"}".to_vec());
        t.store.complete(d.id, d.lease, Outcome::Sent { response: None, transformed }, &block(3)).await.unwrap();
    }
    let before = t.store.get_message(id).await.unwrap().unwrap();
    assert_eq!(before.deliveries[0].transformed.as_deref(), Some(&b"{\"resourceType\":\"Bundle\"}"[..]));

    let mut changes = t.store.changes();
    changes.mark_unchanged();
    let r = t
        .store
        .replay(ReplayRequest {
            message_id: id,
            destination: Some("ehr".into()),
            actor: "bob".into(),
            reason: Some("EHR lost it".into()),
        })
        .await
        .unwrap();
    assert_eq!(r.replayed, vec![before.deliveries[0].id]);
    assert!(r.skipped.is_empty());
    assert!(changes.has_changed().unwrap(), "a replay wakes the workers");

    let after = t.store.get_message(id).await.unwrap().unwrap();
    assert_eq!(after.deliveries[0].state, DeliveryState::Queued);
    assert_eq!(after.deliveries[0].attempts, 0);
    assert_eq!(after.deliveries[1].state, DeliveryState::Sent, "only the named destination");
    let again = t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.remove(0);
    assert_eq!(again.id, before.deliveries[0].id);
    assert_eq!(again.attempt, 1, "a replay brings a fresh retry budget");

    let audit = t.store.audit_events(&AuditQuery { message_id: Some(id), ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "replay");
    assert_eq!(audit[0].actor, "bob");
    assert_eq!(audit[0].at, t.clock.now());
    assert!(audit[0].detail.as_deref().unwrap().contains("EHR lost it"));

    // Replaying an in-flight delivery does nothing to it.
    let r = t
        .store
        .replay(ReplayRequest { message_id: id, destination: None, actor: "bob".into(), reason: None })
        .await
        .unwrap();
    assert_eq!(r.replayed, vec![before.deliveries[1].id]);
    assert_eq!(r.skipped, vec![before.deliveries[0].id]);

    let missing = ReplayRequest {
        message_id: MessageId(uuid::Uuid::now_v7()),
        destination: None,
        actor: "bob".into(),
        reason: None,
    };
    assert!(matches!(t.store.replay(missing).await, Err(StoreError::NotFound(_))));
}

pub async fn replayed_head_never_overtakes_a_delivery_in_flight(t: &TestStore) {
    let id1 = stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    let d1 = t.store.claim(&claim_req("adt", "ehr", 5)).await.unwrap().deliveries.remove(0);
    t.store.complete(d1.id, d1.lease, sent(), &block(3)).await.unwrap();
    let d2 = t.store.claim(&claim_req("adt", "ehr", 5)).await.unwrap().deliveries.remove(0);
    assert_eq!(d2.control_id.as_deref(), Some("2"));
    t.store
        .replay(ReplayRequest { message_id: id1, destination: None, actor: "ops".into(), reason: None })
        .await
        .unwrap();
    let c = t.store.claim(&claim_req("adt", "ehr", 5)).await.unwrap();
    assert!(c.deliveries.is_empty(), "message 2 of key A is still in flight: {c:?}");
    t.store.complete(d2.id, d2.lease, sent(), &block(3)).await.unwrap();
    let c = t.store.claim(&claim_req("adt", "ehr", 5)).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    assert_eq!(c.deliveries[0].message_id, id1);
}

pub async fn record_audit_and_list_newest_first(t: &TestStore) {
    let id = stored(t, message("adt", "1", None, &["ehr"])).await;
    for i in 0..5 {
        t.clock.advance(Duration::from_secs(1));
        t.store
            .record_audit(NewAuditEvent {
                actor: format!("user{i}"),
                action: "read_content".into(),
                message_id: Some(id),
                delivery_id: None,
                detail: None,
            })
            .await
            .unwrap();
    }
    let page1 = t.store.audit_events(&AuditQuery { message_id: Some(id), before_id: None, limit: 3 }).await.unwrap();
    assert_eq!(page1.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(), ["user4", "user3", "user2"]);
    let page2 = t
        .store
        .audit_events(&AuditQuery { message_id: Some(id), before_id: Some(page1[2].id), limit: 3 })
        .await
        .unwrap();
    assert_eq!(page2.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(), ["user1", "user0"]);
    let bad =
        NewAuditEvent { actor: String::new(), action: "x".into(), message_id: None, delivery_id: None, detail: None };
    assert!(t.store.record_audit(bad).await.is_err());
}

pub async fn search_filters_and_keyset_pagination(t: &TestStore) {
    // 30 messages over 30 minutes on two channels, three patients, two types.
    let mut ids = Vec::new();
    for i in 0..30u32 {
        let mut m = message(
            if i % 2 == 0 { "adt" } else { "lab" },
            &format!("C{i:02}"),
            Some(&format!("MRN-{}", i % 3)),
            &["ehr"],
        );
        m.received_at = t0() + chrono::TimeDelta::minutes(i64::from(i));
        if i % 5 == 0 {
            m.message_type = Some("ORU".into());
            m.event = Some("R01".into());
        }
        m.patient_ids.push(format!("ALT-{i}"));
        ids.push(stored(t, m).await);
    }
    let search = |q: SearchQuery| async move { t.store.search(&q).await.unwrap() };

    // Everything, newest first, in pages of 7 that join up exactly.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = search(SearchQuery { limit: 7, cursor: cursor.clone(), ..Default::default() }).await;
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|m| m.id));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let adt = search(SearchQuery { channel: Some("adt".into()), limit: 100, ..Default::default() }).await;
    assert_eq!(adt.items.len(), 15);
    assert!(adt.items.iter().all(|m| m.channel == "adt"));
    assert!(adt.next.is_none());
    assert_eq!(adt.items[0].deliveries.len(), 1);
    assert_eq!(adt.items[0].deliveries[0].state, DeliveryState::Queued);

    let by_control = search(SearchQuery { control_id: Some("C07".into()), ..Default::default() }).await;
    assert_eq!(by_control.items.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[7]]);

    let by_key = search(SearchQuery { order_key: Some("MRN-1".into()), ..Default::default() }).await;
    assert_eq!(by_key.items.len(), 10);

    let by_patient = search(SearchQuery { patient_id: Some("ALT-12".into()), ..Default::default() }).await;
    assert_eq!(by_patient.items.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[12]]);
    let by_patient =
        search(SearchQuery { patient_id: Some("MRN-2".into()), channel: Some("lab".into()), ..Default::default() })
            .await;
    assert_eq!(by_patient.items.len(), 5);

    let oru =
        search(SearchQuery { message_type: Some("ORU".into()), event: Some("R01".into()), ..Default::default() }).await;
    assert_eq!(oru.items.len(), 6);

    let window = search(SearchQuery {
        received_from: Some(t0() + chrono::TimeDelta::minutes(10)),
        received_to: Some(t0() + chrono::TimeDelta::minutes(20)),
        channel: Some("adt".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        window.items.iter().map(|m| m.control_id.clone().unwrap()).collect::<Vec<_>>(),
        ["C18", "C16", "C14", "C12", "C10"]
    );

    let none = search(SearchQuery { state: Some(DeliveryState::Sent), ..Default::default() }).await;
    assert!(none.items.is_empty());

    let bad = t.store.search(&SearchQuery { cursor: Some(Cursor("garbage".into())), ..Default::default() }).await;
    assert!(matches!(bad, Err(StoreError::InvalidCursor)));
}

pub async fn counts_per_channel_destination_and_state(t: &TestStore) {
    for i in 0..4 {
        stored(t, message("adt", &format!("{i}"), None, &["ehr", "lab"])).await;
    }
    let c = t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap().deliveries.remove(0);
    t.store.complete(c.id, c.lease, sent(), &block(3)).await.unwrap();
    let c = t.store.claim(&claim_req("adt", "ehr", 1)).await.unwrap();
    assert_eq!(c.deliveries.len(), 1);
    let mut counts: Vec<_> =
        t.store.counts().await.unwrap().into_iter().map(|c| (c.destination, c.state, c.count)).collect();
    counts.sort();
    let mut expected = vec![
        ("ehr".to_owned(), DeliveryState::Queued, 2u64),
        ("ehr".to_owned(), DeliveryState::InFlight, 1),
        ("ehr".to_owned(), DeliveryState::Sent, 1),
        ("lab".to_owned(), DeliveryState::Queued, 4),
    ];
    expected.sort();
    assert_eq!(counts, expected);
}

pub async fn retention_removes_contents_of_finished_messages_only(t: &TestStore) {
    // Three old messages: one delivered, one filtered, one still queued.
    let mut m = message("adt", "1", None, &["ehr"]);
    m.patient_ids = vec!["MRN-9".into()];
    let done = stored(t, m).await;
    let mut f = message("adt", "2", None, &[]);
    f.deliveries = vec![NewDelivery::filtered("ehr", "rule")];
    let filtered = stored(t, f).await;
    let pending = stored(t, message("adt", "3", Some("A"), &["ehr"])).await;
    let c = t.store.claim(&claim_req("adt", "ehr", 10)).await.unwrap();
    let d = c.deliveries.iter().find(|d| d.message_id == done).unwrap();
    t.store
        .complete(
            d.id,
            d.lease,
            Outcome::Sent { response: Some(Response::Ack { text: "MSA|AA".into() }), transformed: Some(b"x".to_vec()) },
            &block(3),
        )
        .await
        .unwrap();
    let p = c.deliveries.iter().find(|d| d.message_id == pending).unwrap();
    t.store.complete(p.id, p.lease, transient("down"), &block(3)).await.unwrap();

    // A recent one, delivered: too young.
    t.clock.advance(Duration::from_secs(40 * 86_400));
    let mut young = message("adt", "4", None, &["ehr"]);
    young.received_at = t.clock.now();
    let young = stored(t, young).await;

    let cutoff = t.clock.now() - chrono::TimeDelta::days(30);
    let req = RetentionRequest { older_than: cutoff, mode: RetentionMode::Contents, batch_size: 1 };
    let total = run_retention(t.store.as_ref(), &req, Duration::ZERO).await.unwrap();
    assert_eq!(total, 2);

    let gone = t.store.get_message(done).await.unwrap().unwrap();
    assert!(gone.summary.contents_deleted);
    assert_eq!(gone.raw, None);
    assert_eq!(gone.ack, None);
    assert_eq!(gone.deliveries[0].transformed, None);
    assert_eq!(gone.deliveries[0].state, DeliveryState::Sent, "metadata and states stay");
    assert_eq!(gone.deliveries[0].attempt_log.len(), 1);
    assert_eq!(gone.deliveries[0].attempt_log[0].response, Some(Response::Ack { text: String::new() }));
    assert_eq!(gone.patient_ids, ["MRN-9"], "identifiers stay searchable");
    assert!(t.store.get_message(filtered).await.unwrap().unwrap().summary.contents_deleted);
    let kept = t.store.get_message(pending).await.unwrap().unwrap();
    assert!(kept.raw.is_some(), "a message still queued keeps its contents");
    assert!(t.store.get_message(young).await.unwrap().unwrap().raw.is_some());
    // Replaying a message without contents is refused.
    let r = ReplayRequest { message_id: done, destination: None, actor: "ops".into(), reason: None };
    assert!(matches!(t.store.replay(r).await, Err(StoreError::Invalid { .. })));

    // Whole messages: the finished old ones disappear with their rows.
    let req = RetentionRequest { older_than: cutoff, mode: RetentionMode::Messages, batch_size: 100 };
    let batch = t.store.retention_batch(&req).await.unwrap();
    assert_eq!(batch, RetentionBatch { messages: 2, more: false });
    assert!(t.store.get_message(done).await.unwrap().is_none());
    assert!(t.store.get_message(filtered).await.unwrap().is_none());
    assert!(t.store.get_message(pending).await.unwrap().is_some());
    let page = t.store.search(&SearchQuery::default()).await.unwrap();
    assert_eq!(page.items.len(), 2);
}

pub async fn changes_tick_when_work_arrives(t: &TestStore) {
    let mut changes = t.store.changes();
    changes.mark_unchanged();
    let mut f = message("adt", "1", None, &[]);
    f.deliveries = vec![NewDelivery::filtered("ehr", "rule")];
    stored(t, f).await;
    assert!(!changes.has_changed().unwrap(), "nothing to deliver, no wake-up");
    stored(t, message("adt", "2", None, &["ehr"])).await;
    tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.expect("woken").unwrap();
}

pub async fn close_refuses_later_requests(t: &TestStore) {
    stored(t, message("adt", "1", None, &["ehr"])).await;
    t.store.close().await;
    let e = t.store.accept(message("adt", "2", None, &["ehr"])).await.unwrap_err();
    assert!(matches!(e, StoreError::Closed), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
}

pub async fn reopened_store_keeps_messages_queue_and_leases(t: &TestStore) {
    let id = stored(t, message("adt", "1", Some("A"), &["ehr"])).await;
    stored(t, message("adt", "2", Some("A"), &["ehr"])).await;
    let held = t.store.claim(&claim_req("adt", "ehr", 5)).await.unwrap().deliveries.remove(0);
    t.store.close().await;

    let store = t.reopen(StoreOptions::default()).await;
    assert!(store.get_message(id).await.unwrap().is_some());
    // The lease is data, not process state: it still blocks key A ...
    assert!(store.claim(&claim_req("adt", "ehr", 5)).await.unwrap().deliveries.is_empty());
    // ... and its holder can still complete it.
    store.complete(held.id, held.lease, sent(), &block(3)).await.unwrap();
    let next = store.claim(&claim_req("adt", "ehr", 5)).await.unwrap();
    assert_eq!(next.deliveries.len(), 1);
    assert_eq!(next.deliveries[0].control_id.as_deref(), Some("2"));
    // The duplicate window survives the restart too.
    assert!(matches!(
        store.accept(message("adt", "1", Some("A"), &["ehr"])).await.unwrap(),
        Accepted::Duplicate { .. }
    ));
    store.close().await;
}
