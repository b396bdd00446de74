//! Ordering property test: random interleavings of accepts over a few order
//! keys, claims by several workers, successes and failures, worker crashes
//! (a worker forgets its leases) and clock jumps that expire leases. After
//! every step the model checks the store; at the end the queue is drained.
//!
//! Properties:
//! - a claim never hands out a delivery whose key has another delivery under
//!   a valid lease (one delivery per key in flight);
//! - a completion succeeds exactly when its lease is current and unexpired;
//! - per key, deliveries are sent in arrival order (those dead-lettered are
//!   skipped, never overtaken), each exactly once;
//! - at the end every delivery was sent or dead-lettered: nothing is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use store::*;

use crate::support::{Kind, TestStore, message};

const WORKERS: usize = 3;
const KEYS: u8 = 4;
const LEASE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Result3 {
    Sent,
    Transient,
    Permanent,
}

#[derive(Debug, Clone)]
enum Action {
    Accept { key: Option<u8> },
    Claim { worker: usize, max: u32 },
    Complete { worker: usize, pick: prop::sample::Index, result: Result3 },
    Crash { worker: usize },
    Advance { secs: u64 },
}

fn action() -> impl Strategy<Value = Action> {
    let result = prop_oneof![6 => Just(Result3::Sent), 3 => Just(Result3::Transient), 1 => Just(Result3::Permanent)];
    prop_oneof![
        4 => proptest::option::weighted(0.85, 0..KEYS).prop_map(|key| Action::Accept { key }),
        4 => (0..WORKERS, 1u32..4).prop_map(|(worker, max)| Action::Claim { worker, max }),
        4 => (0..WORKERS, any::<prop::sample::Index>(), result)
            .prop_map(|(worker, pick, result)| Action::Complete { worker, pick, result }),
        1 => (0..WORKERS).prop_map(|worker| Action::Crash { worker }),
        1 => (0u64..16).prop_map(|secs| Action::Advance { secs }),
    ]
}

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (1u32..4, prop_oneof![Just(OnFailure::Block), Just(OnFailure::DeadLetter)]).prop_map(
        |(max_attempts, on_failure)| RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            on_failure,
        },
    )
}

#[derive(Debug)]
struct Held {
    id: DeliveryId,
    lease: LeaseToken,
}

#[derive(Debug, Default)]
struct Model {
    /// Message id -> (order key, arrival number).
    arrivals: HashMap<MessageId, (Option<u8>, usize)>,
    /// Delivery id -> (order key, arrival number), learnt at claim time.
    deliveries: HashMap<DeliveryId, (Option<u8>, usize)>,
    /// What each live worker believes it holds.
    held: [Vec<Held>; WORKERS],
    /// The store's current lease per delivery, as the model expects it.
    leases: HashMap<DeliveryId, (LeaseToken, DateTime<Utc>)>,
    /// Arrival numbers of successful sends, per key, in completion order.
    sent_order: HashMap<u8, Vec<usize>>,
    sent: HashSet<DeliveryId>,
    dead: HashSet<DeliveryId>,
}

fn key_of(order_key: Option<&str>) -> Option<u8> {
    order_key.and_then(|k| k.strip_prefix("K")).and_then(|n| n.parse().ok())
}

impl Model {
    fn check_claim(&mut self, claim: &Claim, worker: usize, now: DateTime<Utc>) -> Result<(), TestCaseError> {
        let mut keys_in_claim = HashSet::new();
        for d in &claim.deliveries {
            let (key, arrival) =
                *self.arrivals.get(&d.message_id).ok_or_else(|| TestCaseError::fail("unknown message"))?;
            self.deliveries.insert(d.id, (key, arrival));
            prop_assert!(!self.sent.contains(&d.id) && !self.dead.contains(&d.id), "a final delivery was claimed");
            if let Some((_, exp)) = self.leases.get(&d.id) {
                prop_assert!(*exp <= now, "delivery {} re-claimed while its lease was valid", d.id);
            }
            if let Some(k) = key {
                prop_assert!(keys_in_claim.insert(k), "two deliveries of key {k} in one claim");
                for (other, (_, exp)) in &self.leases {
                    if *other != d.id && *exp > now && self.deliveries.get(other).map(|x| x.0) == Some(Some(k)) {
                        return Err(TestCaseError::fail(format!(
                            "key {k}: delivery {} claimed while {other} holds a valid lease",
                            d.id
                        )));
                    }
                }
            }
            self.leases.insert(d.id, (d.lease, d.lease_expires_at));
            self.held[worker].push(Held { id: d.id, lease: d.lease });
        }
        Ok(())
    }
}

async fn run_case(
    t: &TestStore,
    channel: &str,
    policy: RetryPolicy,
    actions: Vec<Action>,
) -> Result<(), TestCaseError> {
    let store = &t.store;
    let mut model = Model::default();
    let mut arrival = 0usize;
    let req = |worker: usize, max: u32| ClaimRequest {
        channel: channel.into(),
        destination: "ehr".into(),
        max,
        lease: LEASE,
        worker: format!("w{worker}"),
    };
    for action in actions {
        let now = t.clock.now();
        match action {
            Action::Accept { key } => {
                let order_key = key.map(|k| format!("K{k}"));
                let mut m = message(channel, &format!("{channel}-{arrival}"), order_key.as_deref(), &["ehr"]);
                m.received_at = now;
                match store.accept(m).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
                    Accepted::Stored { id } => {
                        model.arrivals.insert(id, (key, arrival));
                    }
                    d => return Err(TestCaseError::fail(format!("unexpected {d:?}"))),
                }
                arrival += 1;
            }
            Action::Claim { worker, max } => {
                let claim = store.claim(&req(worker, max)).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(claim.deliveries.len() <= max as usize);
                for d in &claim.deliveries {
                    prop_assert_eq!(
                        key_of(d.order_key.as_deref()),
                        model.arrivals.get(&d.message_id).and_then(|a| a.0)
                    );
                }
                model.check_claim(&claim, worker, now)?;
            }
            Action::Complete { worker, pick, result } => {
                if model.held[worker].is_empty() {
                    continue;
                }
                let i = pick.index(model.held[worker].len());
                let held = model.held[worker].remove(i);
                let valid = model.leases.get(&held.id).is_some_and(|(l, exp)| *l == held.lease && *exp > now);
                let outcome = match result {
                    Result3::Sent => Outcome::Sent { response: None, transformed: None },
                    Result3::Transient => {
                        Outcome::Failed { class: FailureClass::Transient, reason: "timeout".into(), response: None }
                    }
                    Result3::Permanent => {
                        Outcome::Failed { class: FailureClass::Permanent, reason: "AR".into(), response: None }
                    }
                };
                match store.complete(held.id, held.lease, outcome, &policy).await {
                    Ok(done) => {
                        prop_assert!(valid, "completion with a stale or expired lease was accepted");
                        model.leases.remove(&held.id);
                        match done.state {
                            DeliveryState::Sent => {
                                prop_assert!(model.sent.insert(held.id), "delivery {} sent twice", held.id);
                                if let Some((Some(k), a)) = model.deliveries.get(&held.id) {
                                    model.sent_order.entry(*k).or_default().push(*a);
                                }
                            }
                            DeliveryState::Dead => {
                                model.dead.insert(held.id);
                            }
                            DeliveryState::Queued | DeliveryState::Error => {}
                            s => return Err(TestCaseError::fail(format!("unexpected state {s}"))),
                        }
                    }
                    Err(StoreError::LeaseLost(_)) => prop_assert!(!valid, "a valid lease was refused"),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Action::Crash { worker } => model.held[worker].clear(),
            Action::Advance { secs } => t.clock.advance(Duration::from_secs(secs)),
        }
    }

    // Drain: an operator replays blocked heads, a fresh worker sends the rest.
    for _ in 0..10_000 {
        t.clock.advance(Duration::from_secs(3600));
        let now = t.clock.now();
        let claim = store.claim(&req(0, 8)).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        model.held[0].clear();
        model.check_claim(&claim, 0, now)?;
        if claim.deliveries.is_empty() {
            let blocked = store
                .search(&SearchQuery {
                    channel: Some(channel.into()),
                    state: Some(DeliveryState::Error),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if blocked.items.is_empty() {
                break;
            }
            for m in blocked.items {
                let r = ReplayRequest { message_id: m.id, destination: None, actor: "proptest".into(), reason: None };
                store.replay(r).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            continue;
        }
        for d in claim.deliveries {
            let done = store
                .complete(d.id, d.lease, Outcome::Sent { response: None, transformed: None }, &policy)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(done.state, DeliveryState::Sent);
            model.leases.remove(&d.id);
            prop_assert!(model.sent.insert(d.id), "delivery {} sent twice", d.id);
            if let Some((Some(k), a)) = model.deliveries.get(&d.id) {
                model.sent_order.entry(*k).or_default().push(*a);
            }
        }
    }

    for (key, order) in &model.sent_order {
        prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "key {key} sent out of arrival order: {order:?}");
    }
    prop_assert_eq!(model.sent.len() + model.dead.len(), model.arrivals.len(), "a delivery was lost");
    prop_assert!(model.sent.is_disjoint(&model.dead));
    Ok(())
}

fn run(kind: Kind, cases: u32) {
    let rt =
        Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"));
    let suite = format!("store::ordering::{kind:?}");
    let Some(t) = rt.block_on(TestStore::open(kind, &suite)) else { return };
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (policy(), prop::collection::vec(action(), 1..80));
    let result = runner.run(&strategy, |(policy, actions)| {
        // A channel per case: the cases share one database.
        let channel = format!("prop{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        rt.block_on(run_case(&t, &channel, policy, actions))
    });
    rt.block_on(t.store.close());
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_per_key_order_survives_failures_and_lease_expiry() {
    run(Kind::Sqlite, 96);
}

#[test]
fn postgres_per_key_order_survives_failures_and_lease_expiry() {
    run(Kind::Postgres, 48);
}

#[test]
fn mysql_per_key_order_survives_failures_and_lease_expiry() {
    run(Kind::Mysql, 48);
}
