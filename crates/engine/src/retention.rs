//! Scheduled retention: `[retention]` runs the store's retention in small
//! batches on an interval or a cron pattern, in a background task the
//! runtime starts.
//!
//! # Design
//!
//! Each run takes the store's cluster lock `plexus.retention`
//! ([`store::Store::try_lock`]: a PostgreSQL advisory lock, a MariaDB
//! `GET_LOCK`), so with several nodes on one database one of them runs it and
//! the others skip that run. The cut-offs come from the store's clock
//! ([`store::Store::clock`]), the same clock the store stamps times with.
//! Whole messages (`messages_after`) are removed first, then the contents of
//! younger ones (`contents_after`); the store never touches a message whose
//! deliveries are not all final. Batches are small and separated by a pause
//! ([`store::run_retention`]), so ingestion always gets the database in
//! between. A failed run is logged and retried at the next scheduled time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use store::{RetentionMode, RetentionRequest, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{RetentionConfig, RetentionSchedule};

/// The cluster lock's name.
pub const LOCK_NAME: &str = "plexus.retention";

/// What one run removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionRun {
    /// Whole messages removed.
    pub messages: u64,
    /// Messages whose contents were removed.
    pub contents: u64,
    /// False when another node held the lock and this run was skipped.
    pub ran: bool,
}

/// How long to wait from `now` until the next run.
pub fn next_wait(schedule: &RetentionSchedule, now: DateTime<Utc>) -> Duration {
    match schedule {
        RetentionSchedule::Every(every) => *every,
        RetentionSchedule::Cron(pattern) => croner::Cron::from_str(pattern)
            .ok()
            .and_then(|cron| cron.find_next_occurrence(&now, false).ok())
            .and_then(|next| (next - now).to_std().ok())
            // The pattern was checked when the config compiled; an
            // unsatisfiable one (30 February) waits a day and looks again.
            .unwrap_or(Duration::from_secs(24 * 3600)),
    }
}

/// The retention requests of one run at `now`: whole messages first.
pub fn requests(config: &RetentionConfig, now: DateTime<Utc>) -> Vec<RetentionRequest> {
    let cut = |after: Duration| now - chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
    let mut out = Vec::new();
    if let Some(after) = config.messages_after {
        out.push(RetentionRequest {
            older_than: cut(after),
            mode: RetentionMode::Messages,
            batch_size: config.batch_size,
        });
    }
    if let Some(after) = config.contents_after {
        out.push(RetentionRequest {
            older_than: cut(after),
            mode: RetentionMode::Contents,
            batch_size: config.batch_size,
        });
    }
    out
}

/// Runs retention once now (under the cluster lock).
pub async fn run_once(store: &dyn Store, config: &RetentionConfig) -> Result<RetentionRun, store::StoreError> {
    let Some(lock) = store.try_lock(LOCK_NAME).await? else {
        debug!("another node holds the retention lock; skipping this run");
        return Ok(RetentionRun::default());
    };
    let mut run = RetentionRun { ran: true, ..RetentionRun::default() };
    for request in requests(config, store.clock().now()) {
        let n = store::run_retention(store, &request, config.pause).await?;
        match request.mode {
            RetentionMode::Messages => run.messages += n,
            RetentionMode::Contents => run.contents += n,
        }
    }
    drop(lock);
    Ok(run)
}

/// Runs retention on `config`'s schedule until `stop`. A run in progress
/// is abandoned between batches (each batch is its own transaction).
pub async fn schedule(store: Arc<dyn Store>, config: RetentionConfig, stop: CancellationToken) {
    loop {
        let wait = next_wait(&config.schedule, Utc::now());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        tokio::select! {
            _ = stop.cancelled() => return,
            result = run_once(&*store, &config) => match result {
                Ok(run) if run.ran => info!(
                    messages_removed = run.messages, contents_removed = run.contents,
                    elapsed_ms = started.elapsed().as_millis() as u64, "retention run finished"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e.summary(), "retention run failed; retrying at the next scheduled time"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: RetentionSchedule) -> RetentionConfig {
        RetentionConfig {
            contents_after: Some(Duration::from_secs(86400)),
            messages_after: Some(Duration::from_secs(10 * 86400)),
            schedule,
            batch_size: 100,
            pause: Duration::ZERO,
        }
    }

    #[test]
    fn cron_waits_until_the_next_match() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T02:30:00Z").unwrap().with_timezone(&Utc);
        let wait = next_wait(&RetentionSchedule::Cron("0 3 * * *".into()), now);
        assert_eq!(wait, Duration::from_secs(1800));
        assert_eq!(next_wait(&RetentionSchedule::Every(Duration::from_secs(7)), now), Duration::from_secs(7));
    }

    #[test]
    fn whole_messages_go_first_with_their_own_cut_off() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T00:00:00Z").unwrap().with_timezone(&Utc);
        let r = requests(&config(RetentionSchedule::Every(Duration::from_secs(60))), now);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].mode, RetentionMode::Messages);
        assert_eq!(r[0].older_than.to_rfc3339(), "2026-11-11T00:00:00+00:00");
        assert_eq!(r[1].mode, RetentionMode::Contents);
        assert_eq!(r[1].older_than.to_rfc3339(), "2026-11-20T00:00:00+00:00");
        assert_eq!(r[1].batch_size, 100);
    }
}
