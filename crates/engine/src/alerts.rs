//! Alerts: `[[alerts]]` rules evaluated every few seconds against each
//! destination's state, with a log line and a webhook POST when a condition
//! starts and when it ends.
//!
//! # Design
//!
//! An alert is an *edge*, not a level: [`AlertBook`] keeps, per rule and
//! destination, whether the condition currently holds, and emits one
//! `firing` event when it starts to hold and one `resolved` event when it
//! stops. A condition that holds for an hour is one notification, not 720.
//! The book is a pure state machine (tested without time or I/O); the
//! [`watch`] loop around it reads the store's queue depths, evaluates the
//! rules and hands events to the notifiers.
//!
//! Webhooks are sent one at a time, in order, by one task, with a short
//! retry (3 attempts), so a firing never arrives after its resolution and a
//! slow receiver never delays evaluation. Events carry channel and
//! destination names and figures only, never message content.
//!
//! The webhook payload (stable; `version` changes if a field's meaning does):
//!
//! ```json
//! {"version": 1, "alert": "lab down", "status": "firing", "condition": "consecutive_failures",
//!  "channel": "adt", "destination": "lis", "value": 3, "threshold": 3,
//!  "started_at": "2026-11-21T14:00:00Z", "at": "2026-11-21T14:00:00Z",
//!  "summary": "adt/lis: 3 consecutive failures (threshold 3)"}
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{AlertCondition, AlertRule};
use crate::metrics::{DestinationSnapshot, Telemetry};

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The condition started to hold.
    Firing,
    /// The condition stopped holding.
    Resolved,
}

/// One notification: what webhooks receive as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    /// Payload format version (1).
    pub version: u32,
    /// The rule's name.
    pub alert: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// The rule's condition.
    pub condition: &'static str,
    /// The channel.
    pub channel: String,
    /// The destination.
    pub destination: String,
    /// The observed value (percent for success rates, a count otherwise).
    pub value: f64,
    /// The rule's threshold, if it has one.
    pub threshold: Option<f64>,
    /// When the condition started to hold.
    pub started_at: DateTime<Utc>,
    /// When this event was raised.
    pub at: DateTime<Utc>,
    /// One line for humans.
    pub summary: String,
}

/// Whether `rule` holds for `subject`, with the observed value; `None` when
/// the rule does not watch this destination.
pub fn observe(rule: &AlertRule, subject: &DestinationSnapshot) -> Option<(bool, f64)> {
    if rule.channel.as_ref().is_some_and(|c| *c != subject.channel)
        || rule.destination.as_ref().is_some_and(|d| *d != subject.destination)
    {
        return None;
    }
    let limit = rule.limit();
    Some(match rule.condition {
        AlertCondition::SuccessRateBelow => {
            let rate = subject.totals.success_rate().unwrap_or(1.0) * 100.0;
            (subject.totals.attempts() >= rule.min_samples.max(1) && rate < limit, rate)
        }
        AlertCondition::QueueDepthAbove => {
            let depth = subject.queue_depth as f64;
            (depth > limit, depth)
        }
        AlertCondition::ConsecutiveFailures => {
            let n = f64::from(subject.consecutive_failures);
            (n >= limit, n)
        }
        AlertCondition::Unreachable => (subject.unreachable, f64::from(subject.consecutive_failures)),
    })
}

fn summary(rule: &AlertRule, subject: &DestinationSnapshot, status: AlertStatus, value: f64) -> String {
    let what = match rule.condition {
        AlertCondition::SuccessRateBelow => format!("success rate {value:.1}% (threshold {}%)", rule.limit()),
        AlertCondition::QueueDepthAbove => format!("queue depth {value} (threshold {})", rule.limit()),
        AlertCondition::ConsecutiveFailures => {
            format!("{value} consecutive failures (threshold {})", rule.limit())
        }
        AlertCondition::Unreachable => "cannot connect".to_string(),
    };
    let state = match status {
        AlertStatus::Firing => "",
        AlertStatus::Resolved => "resolved: ",
    };
    format!("{}/{}: {state}{what}", subject.channel, subject.destination)
}

/// Which (rule, destination) conditions hold now: the alert state machine.
/// A condition that holds is *pending* until it has held for the rule's
/// `for`, then *firing* until it stops holding.
#[derive(Debug, Default)]
pub struct AlertBook {
    pending: HashMap<(usize, String, String), DateTime<Utc>>,
    firing: HashMap<(usize, String, String), DateTime<Utc>>,
}

impl AlertBook {
    /// An empty book (nothing firing).
    pub fn new() -> Self {
        AlertBook::default()
    }

    /// Evaluates every rule against every destination at `now` and returns
    /// the transitions: `firing` for conditions that started to hold,
    /// `resolved` for those that stopped.
    pub fn step(
        &mut self,
        rules: &[AlertRule],
        subjects: &[DestinationSnapshot],
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            for subject in subjects {
                let Some((holds, value)) = observe(rule, subject) else { continue };
                let key = (index, subject.channel.clone(), subject.destination.clone());
                let status = match (holds, self.firing.get(&key).copied()) {
                    (true, None) => {
                        let since = *self.pending.entry(key.clone()).or_insert(now);
                        let held = (now - since).to_std().unwrap_or_default();
                        if held < rule.hold.get() {
                            continue;
                        }
                        self.pending.remove(&key);
                        self.firing.insert(key, since);
                        (AlertStatus::Firing, since)
                    }
                    (false, firing) => {
                        self.pending.remove(&key);
                        let Some(started) = firing else { continue };
                        self.firing.remove(&key);
                        (AlertStatus::Resolved, started)
                    }
                    (true, Some(_)) => continue,
                };
                events.push(AlertEvent {
                    version: 1,
                    alert: rule.name.clone(),
                    status: status.0,
                    condition: rule.condition.as_str(),
                    channel: subject.channel.clone(),
                    destination: subject.destination.clone(),
                    value,
                    threshold: rule.threshold,
                    started_at: status.1,
                    at: now,
                    summary: summary(rule, subject, status.0, value),
                });
            }
        }
        events
    }

    /// How many conditions hold now.
    pub fn firing(&self) -> usize {
        self.firing.len()
    }
}

/// Evaluates `rules` every `interval` (refreshing queue depths and health
/// gauges first) until `stop`, and sends the notifications. Runs the
/// telemetry refresh even without rules.
pub async fn watch(
    telemetry: Arc<Telemetry>,
    store: Arc<dyn Store>,
    rules: Vec<AlertRule>,
    interval: Duration,
    stop: CancellationToken,
) {
    let (tx, rx) = mpsc::unbounded_channel::<(url::Url, AlertEvent)>();
    let evaluate = async move {
        let mut book = AlertBook::new();
        let mut refresh_failed = false;
        loop {
            match telemetry.refresh(&*store).await {
                Ok(()) => refresh_failed = false,
                // Once per outage, not every interval.
                Err(e) if !refresh_failed => {
                    refresh_failed = true;
                    warn!(error = %e.summary(), "reading queue depths failed; alerts use the last values");
                }
                Err(_) => {}
            }
            for event in book.step(&rules, &telemetry.destinations(), Utc::now()) {
                let Some(rule) = rules.iter().find(|r| r.name == event.alert) else { continue };
                if rule.log {
                    warn!(alert = %event.alert, status = ?event.status, condition = event.condition,
                          channel = %event.channel, destination = %event.destination, value = event.value,
                          "{}", event.summary);
                }
                if let Some(url) = &rule.webhook {
                    let _ = tx.send((url.clone(), event));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        // Dropping `tx` lets the sender finish what is queued and stop.
    };
    tokio::join!(evaluate, send_webhooks(rx));
}

/// Posts events in order; 3 attempts each, 1 s then 2 s apart.
async fn send_webhooks(mut rx: mpsc::UnboundedReceiver<(url::Url, AlertEvent)>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the webhook client; alert webhooks are off");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    while let Some((url, event)) = rx.recv().await {
        for attempt in 1..=3u32 {
            // The URL may carry a secret (a token in its query): not logged.
            match client.post(url.clone()).json(&event).send().await {
                Ok(r) if r.status().is_success() => {
                    debug!(alert = %event.alert, status = ?event.status, "alert webhook delivered");
                    break;
                }
                Ok(r) => {
                    warn!(alert = %event.alert, http_status = r.status().as_u16(), attempt, "alert webhook refused")
                }
                Err(e) => {
                    warn!(alert = %event.alert, error_kind = webhook_error_kind(&e), attempt, "alert webhook failed")
                }
            }
            if attempt < 3 {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
}

fn webhook_error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WindowTotals;

    fn rule(condition: &str, threshold: Option<f64>) -> AlertRule {
        let mut text = format!("name = \"r\"\ncondition = \"{condition}\"\n");
        if let Some(t) = threshold {
            text.push_str(&format!("threshold = {t}\n"));
        }
        toml::from_str(&text).unwrap()
    }

    fn subject(consecutive: u32, unreachable: bool, depth: u64, ok: u64, failed: u64) -> DestinationSnapshot {
        DestinationSnapshot {
            channel: "adt".into(),
            destination: "lis".into(),
            totals: WindowTotals { ok, failed, latency_us: 0 },
            consecutive_failures: consecutive,
            unreachable,
            queue_depth: depth,
        }
    }

    #[test]
    fn one_event_when_a_condition_starts_and_one_when_it_ends() {
        let rules = vec![rule("consecutive_failures", Some(2.0))];
        let mut book = AlertBook::new();
        let t = Utc::now();
        assert!(book.step(&rules, &[subject(1, true, 0, 0, 1)], t).is_empty());
        let fired = book.step(&rules, &[subject(2, true, 0, 0, 2)], t);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].status, AlertStatus::Firing);
        assert_eq!(fired[0].value, 2.0);
        // Still failing: no flood.
        for n in 3..50 {
            assert!(book.step(&rules, &[subject(n, true, 0, 0, n.into())], t).is_empty());
        }
        assert_eq!(book.firing(), 1);
        let later = t + chrono::TimeDelta::seconds(30);
        let resolved = book.step(&rules, &[subject(0, false, 0, 1, 49)], later);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert_eq!(resolved[0].started_at, t);
        assert!(book.step(&rules, &[subject(0, false, 0, 2, 49)], later).is_empty());
        assert_eq!(book.firing(), 0);
    }

    #[test]
    fn a_rule_with_for_fires_only_after_the_condition_held_that_long() {
        let mut r = rule("unreachable", None);
        r.hold = crate::config::Duration::from_secs(60);
        let rules = vec![r];
        let mut book = AlertBook::new();
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::TimeDelta::seconds(s);
        let down = subject(1, true, 0, 0, 1);
        let up = subject(0, false, 0, 1, 1);
        assert!(book.step(&rules, std::slice::from_ref(&down), at(0)).is_empty());
        assert!(book.step(&rules, std::slice::from_ref(&down), at(30)).is_empty());
        // A blip that clears before `for` never notifies, and resets the wait.
        assert!(book.step(&rules, std::slice::from_ref(&up), at(40)).is_empty());
        assert!(book.step(&rules, std::slice::from_ref(&down), at(50)).is_empty());
        assert!(book.step(&rules, std::slice::from_ref(&down), at(100)).is_empty());
        let fired = book.step(&rules, std::slice::from_ref(&down), at(110));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].started_at, at(50), "started when the condition began to hold");
        assert_eq!(fired[0].at, at(110));
        let resolved = book.step(&rules, &[up], at(120));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
    }

    #[test]
    fn conditions_read_their_figures() {
        let s = subject(0, false, 0, 90, 10);
        assert_eq!(observe(&rule("success_rate_below", Some(95.0)), &s), Some((true, 90.0)));
        assert_eq!(observe(&rule("success_rate_below", Some(90.0)), &s), Some((false, 90.0)));
        // Too few attempts never fire.
        assert!(!observe(&rule("success_rate_below", Some(95.0)), &subject(0, false, 0, 0, 3)).unwrap().0);
        assert_eq!(observe(&rule("queue_depth_above", Some(10.0)), &subject(0, false, 11, 0, 0)), Some((true, 11.0)));
        assert_eq!(observe(&rule("queue_depth_above", Some(10.0)), &subject(0, false, 10, 0, 0)), Some((false, 10.0)));
        assert_eq!(observe(&rule("unreachable", None), &subject(4, true, 0, 0, 4)), Some((true, 4.0)));
        let mut only_other = rule("unreachable", None);
        only_other.channel = Some("orders".into());
        assert_eq!(observe(&only_other, &s), None);
    }

    #[test]
    fn payload_shape_is_stable() {
        let rules = vec![rule("unreachable", None)];
        let t = DateTime::parse_from_rfc3339("2026-11-21T14:00:00Z").unwrap().with_timezone(&Utc);
        let e = AlertBook::new().step(&rules, &[subject(1, true, 0, 0, 1)], t).remove(0);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1, "alert": "r", "status": "firing", "condition": "unreachable",
                "channel": "adt", "destination": "lis", "value": 1.0, "threshold": null,
                "started_at": "2026-11-21T14:00:00Z", "at": "2026-11-21T14:00:00Z",
                "summary": "adt/lis: cannot connect"
            })
        );
    }
}
