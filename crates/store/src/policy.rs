//! The retry policy as pure functions: what a failed attempt leads to, and
//! how long to wait before the next one. The backends call these inside
//! their completion transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::to_delta;
use crate::model::{DeliveryState, FailureClass, OnFailure, RetryPolicy};

/// The delay before retry number `attempt` (1 = the retry after the first
/// failure): `initial_backoff * 2^(attempt-1)`, capped at `max_backoff`, then
/// "equal jitter": half of it fixed, half scaled by `jitter` in `[0, 1)`.
/// The fixed half keeps a retry storm from hammering a recovering
/// destination; the random half spreads workers apart.
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base =
        policy.initial_backoff.checked_mul(1u32 << exp.min(31)).unwrap_or(policy.max_backoff).min(policy.max_backoff);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// What follows a failed attempt number `attempt` (1-based, since the last
/// replay): another try at `retry_at`, or a final state.
pub(crate) fn after_failure(
    policy: &RetryPolicy,
    class: FailureClass,
    attempt: u32,
    now: DateTime<Utc>,
    jitter: f64,
) -> (DeliveryState, Option<DateTime<Utc>>) {
    if class == FailureClass::Transient && attempt < policy.max_attempts.max(1) {
        let at = now + to_delta(backoff_delay(policy, attempt, jitter));
        return (DeliveryState::Queued, Some(at));
    }
    match policy.on_failure {
        OnFailure::Block => (DeliveryState::Error, None),
        OnFailure::DeadLetter => (DeliveryState::Dead, None),
    }
}

/// The retry time `at` from the policy, held back to at least `retry_after`
/// from `now` when the destination said how long to wait (HTTP
/// `Retry-After`): coming back sooner would only be refused again. A longer
/// backoff stays as it is.
pub(crate) fn not_before(at: DateTime<Utc>, now: DateTime<Utc>, retry_after: Option<Duration>) -> DateTime<Utc> {
    match retry_after {
        Some(wait) => at.max(now + to_delta(wait)),
        None => at,
    }
}

/// A jitter sample in `[0, 1)`.
pub(crate) fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, on_failure: OnFailure) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            on_failure,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy(10, OnFailure::Block);
        // With jitter 0 the delay is half the exponential base.
        assert_eq!(backoff_delay(&p, 1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(&p, 2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(&p, 3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(&p, 20, 0.0), Duration::from_secs(30));
        let longest = backoff_delay(&p, u32::MAX, 0.999_999);
        assert!(longest > Duration::from_secs(59) && longest < Duration::from_secs(60), "{longest:?}");
    }

    #[test]
    fn jitter_stays_within_half_and_full_base() {
        let p = policy(10, OnFailure::Block);
        for j in [0.0, 0.25, 0.5, 0.99] {
            let d = backoff_delay(&p, 3, j);
            assert!(d >= Duration::from_secs(4) && d < Duration::from_secs(8), "{d:?}");
        }
    }

    #[test]
    fn transient_failure_retries_until_max_attempts() {
        let p = policy(3, OnFailure::Block);
        let now = Utc::now();
        let (s, at) = after_failure(&p, FailureClass::Transient, 1, now, 0.0);
        assert_eq!(s, DeliveryState::Queued);
        assert_eq!(at, Some(now + chrono::TimeDelta::seconds(1)));
        assert_eq!(after_failure(&p, FailureClass::Transient, 2, now, 0.0).0, DeliveryState::Queued);
        assert_eq!(after_failure(&p, FailureClass::Transient, 3, now, 0.0), (DeliveryState::Error, None));
    }

    #[test]
    fn permanent_failure_is_final_at_once() {
        let block = policy(5, OnFailure::Block);
        let dead = policy(5, OnFailure::DeadLetter);
        let now = Utc::now();
        assert_eq!(after_failure(&block, FailureClass::Permanent, 1, now, 0.5), (DeliveryState::Error, None));
        assert_eq!(after_failure(&dead, FailureClass::Permanent, 1, now, 0.5), (DeliveryState::Dead, None));
    }

    #[test]
    fn retry_after_holds_the_retry_back_but_never_brings_it_forward() {
        let now = Utc::now();
        let backoff = now + chrono::TimeDelta::seconds(4);
        assert_eq!(not_before(backoff, now, None), backoff);
        assert_eq!(not_before(backoff, now, Some(Duration::from_secs(120))), now + chrono::TimeDelta::seconds(120));
        assert_eq!(not_before(backoff, now, Some(Duration::from_secs(1))), backoff);
    }

    #[test]
    fn zero_max_attempts_means_one_try() {
        let p = policy(0, OnFailure::DeadLetter);
        assert_eq!(after_failure(&p, FailureClass::Transient, 1, Utc::now(), 0.1).0, DeliveryState::Dead);
    }
}
