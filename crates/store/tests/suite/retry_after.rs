//! `Store::complete_with_retry_after`: a destination that says when to come
//! back (HTTP `Retry-After`) is not retried sooner. Run on every backend
//! through `behaviour` (see main.rs).

use std::time::Duration;

use store::*;

use crate::support::{TestStore, message, t0};

fn request() -> ClaimRequest {
    ClaimRequest {
        channel: "adt".into(),
        destination: "ehr".into(),
        max: 4,
        lease: Duration::from_secs(30),
        worker: "test-worker".into(),
    }
}

fn busy() -> Outcome {
    Outcome::Failed {
        class: FailureClass::Transient,
        reason: "HTTP 503".into(),
        response: Some(Response::Http { status: 503, body_excerpt: "busy".into() }),
    }
}

pub async fn retry_after_holds_the_retry_back(t: &TestStore) {
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(600),
        on_failure: OnFailure::Block,
    };
    t.store.accept(message("adt", "RA1", Some("P1"), &["ehr"])).await.unwrap();
    let d = t.store.claim(&request()).await.unwrap().deliveries.remove(0);

    // The receiver asked for five minutes: the backoff (5 to 10 s) gives way.
    let wait = Duration::from_secs(300);
    let done = t.store.complete_with_retry_after(d.id, d.lease, busy(), &policy, Some(wait)).await.unwrap();
    assert_eq!(done.state, DeliveryState::Queued);
    assert_eq!(done.next_attempt_at, Some(t0() + chrono::TimeDelta::seconds(300)));

    t.clock.advance(Duration::from_secs(299));
    assert!(t.store.claim(&request()).await.unwrap().deliveries.is_empty(), "claimed before Retry-After");
    t.clock.advance(Duration::from_secs(1));
    let d = t.store.claim(&request()).await.unwrap().deliveries.remove(0);
    assert_eq!(d.attempt, 2);

    // A hint shorter than the backoff changes nothing.
    let now = t.clock.now();
    let done =
        t.store.complete_with_retry_after(d.id, d.lease, busy(), &policy, Some(Duration::from_secs(1))).await.unwrap();
    let at = done.next_attempt_at.expect("retried");
    assert!(
        at >= now + chrono::TimeDelta::seconds(10) && at <= now + chrono::TimeDelta::seconds(20),
        "{at} after {now}"
    );

    // The last attempt fails for good whatever the receiver asks.
    t.clock.set(at);
    let d = t.store.claim(&request()).await.unwrap().deliveries.remove(0);
    let done = t.store.complete_with_retry_after(d.id, d.lease, busy(), &policy, Some(wait)).await.unwrap();
    assert_eq!((done.state, done.next_attempt_at), (DeliveryState::Error, None));
}
