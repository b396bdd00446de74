//! `Store::accept_many`: the pipelined frames of one connection, accepted
//! together. Run on every backend through `behaviour` (see main.rs).

use std::collections::HashMap;
use std::time::Duration;

use store::*;

use crate::support::{TestStore, message};

/// Two connections each hand over 60 messages for 4 patients in one call,
/// at the same time. Each message gets its own answer in order (a repeat of
/// an earlier message of the same call, or of one stored before, is a
/// duplicate with the original's id and ACK; an invalid one is refused
/// alone), and every patient's deliveries are claimed in arrival order.
pub async fn accept_many_answers_each_in_order_and_keeps_arrival_order(t: &TestStore) {
    let before = message("adt", "EARLIER", Some("P0"), &["ehr"]);
    let earlier = match t.store.accept(before.clone()).await.unwrap() {
        Accepted::Stored { id } => id,
        other => panic!("expected a new message, got {other:?}"),
    };

    let batch = |conn: &str| -> Vec<NewMessage> {
        (0..60).map(|i| message("adt", &format!("{conn}-{i:02}"), Some(&format!("P{}", i % 4)), &["ehr"])).collect()
    };
    let mut a = batch("A");
    let b = batch("B");
    // A repeat of A-03 inside the call, a resend of the earlier message, and
    // a message the store must refuse.
    a[10] = a[3].clone();
    a[20] = before.clone();
    a[30].channel = String::new();

    let (answers_a, answers_b) = tokio::join!(t.store.accept_many(a.clone()), t.store.accept_many(b.clone()));
    assert_eq!(answers_a.len(), 60);
    assert_eq!(answers_b.len(), 60);
    assert!(answers_b.iter().all(|r| matches!(r, Ok(Accepted::Stored { .. }))), "{answers_b:?}");

    let stored_id = |r: &Result<Accepted>| match r {
        Ok(Accepted::Stored { id }) => *id,
        other => panic!("expected a new message, got {other:?}"),
    };
    let a3 = stored_id(&answers_a[3]);
    match &answers_a[10] {
        Ok(Accepted::Duplicate { original, ack }) => {
            assert_eq!(*original, a3);
            assert_eq!(ack.as_deref(), a[3].ack.as_deref());
        }
        other => panic!("a repeat within the call must be a duplicate, got {other:?}"),
    }
    match &answers_a[20] {
        Ok(Accepted::Duplicate { original, ack }) => {
            assert_eq!(*original, earlier);
            assert_eq!(ack.as_deref(), before.ack.as_deref());
        }
        other => panic!("a resend must be a duplicate, got {other:?}"),
    }
    match &answers_a[30] {
        Err(e) => assert_eq!(e.class(), ErrorClass::Permanent, "{e}"),
        other => panic!("an invalid message must be refused, got {other:?}"),
    }

    // Arrival order per patient: the earlier message, then each
    // connection's stored messages in the order of its call (the two
    // connections interleave freely).
    let mut expected: HashMap<String, Vec<MessageId>> = HashMap::new();
    expected.entry("P0".into()).or_default().push(earlier);
    let mut sent_order = Vec::new();
    for (messages, answers) in [(&a, &answers_a), (&b, &answers_b)] {
        for (m, r) in messages.iter().zip(answers) {
            if let Ok(Accepted::Stored { id }) = r {
                sent_order.push((m.order_key.clone().unwrap(), *id));
            }
        }
    }
    for (key, id) in &sent_order {
        expected.entry(key.clone()).or_default().push(*id);
    }

    let mut claimed: HashMap<String, Vec<MessageId>> = HashMap::new();
    let request = ClaimRequest {
        channel: "adt".into(),
        destination: "ehr".into(),
        max: 16,
        lease: Duration::from_secs(30),
        worker: "test-worker".into(),
    };
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
        on_failure: OnFailure::Block,
    };
    loop {
        let claim = t.store.claim(&request).await.unwrap();
        if claim.deliveries.is_empty() {
            break;
        }
        for d in claim.deliveries {
            claimed.entry(d.order_key.clone().unwrap()).or_default().push(d.message_id);
            let sent = Outcome::Sent { response: None, transformed: None };
            t.store.complete(d.id, d.lease, sent, &policy).await.unwrap();
        }
    }
    assert_eq!(claimed.values().map(Vec::len).sum::<usize>(), 1 + 60 + 57);
    for (key, ids) in &expected {
        // Each connection's messages keep their relative order; the merge
        // of the two is the order the store committed them in.
        let got = &claimed[key];
        for conn_ids in [&answers_a, &answers_b].map(|answers| {
            answers.iter().filter_map(|r| match r {
                Ok(Accepted::Stored { id }) => Some(*id),
                _ => None,
            })
        }) {
            let mine: Vec<MessageId> = conn_ids.filter(|id| ids.contains(id)).collect();
            let positions: Vec<usize> = mine.iter().map(|id| got.iter().position(|g| g == id).unwrap()).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "key {key}: claimed out of arrival order");
        }
        let mut sorted_expected = ids.clone();
        sorted_expected.sort_by_key(|id| id.0);
        let mut sorted_got = got.clone();
        sorted_got.sort_by_key(|id| id.0);
        assert_eq!(sorted_got, sorted_expected, "key {key}: every stored message delivered once");
    }
    assert_eq!(claimed["P0"][0], earlier, "the message stored before the calls comes first");
}
