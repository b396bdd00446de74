//! The store's notion of "now".
//!
//! Lease expiry, retry times and the duplicate window are all computed from
//! the store's clock rather than the database's, so that the three backends
//! behave identically and tests can move time forward without sleeping.
//! With several processes on one PostgreSQL the nodes' clocks must agree to
//! well within a lease (NTP gives milliseconds; leases are seconds).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Wall clock or a hand-driven test clock. Cheap to clone; clones share the
/// same manual time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] or
    /// [`Clock::set`] moves it (for tests of leases and retries).
    pub fn manual(start: DateTime<Utc>) -> Self {
        Clock { manual: Some(Arc::new(Mutex::new(truncate(start)))) }
    }

    /// The current time, truncated to microseconds (the stored precision).
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => truncate(Utc::now()),
            Some(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.manual {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            *t = truncate(*t + to_delta(by));
        }
    }

    /// Sets a manual clock; no effect on the system clock.
    pub fn set(&self, to: DateTime<Utc>) {
        if let Some(t) = &self.manual {
            *t.lock().unwrap_or_else(|p| p.into_inner()) = truncate(to);
        }
    }
}

/// A `Duration` as a chrono delta, saturating at about 290,000 years.
pub(crate) fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(to_micros(t))
}

/// Timestamps are stored as microseconds since the Unix epoch (BIGINT) in all
/// three databases: one representation, no time-zone conversions, the same
/// comparisons everywhere.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`]; out-of-range values (which this crate never
/// writes) clamp to the epoch rather than panic.
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let c = Clock::manual(start);
        assert_eq!(c.now().timestamp_subsec_nanos(), 123_456_000);
        let shared = c.clone();
        shared.advance(Duration::from_secs(5));
        assert_eq!(c.now().timestamp(), 1_700_000_005);
    }

    #[test]
    fn micros_round_trip() {
        let t = DateTime::from_timestamp_micros(1_763_700_000_123_456).unwrap();
        assert_eq!(from_micros(to_micros(t)), t);
    }
}
