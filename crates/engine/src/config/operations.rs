//! `[health]`, `[[alerts]]` and `[retention]`: how the engine watches itself
//! and cleans up after itself.

use std::str::FromStr;

use serde::Deserialize;

use super::de::{self, PathBuf as CfgPath};
use super::{ChannelConfig, ConfigErrors, Duration};

/// `[health]`: the window health states look back on, and how often queue
/// depths are read and alert rules evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The rolling window of the health states and the success-rate alerts
    /// (`"5m"` by default).
    #[serde(default = "default_window")]
    pub window: Duration,
    /// How often queue depths are read from the store and alert rules are
    /// evaluated (`"5s"` by default).
    #[serde(default = "default_interval")]
    pub interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { window: default_window(), interval: default_interval() }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// What an alert rule watches, per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCondition {
    /// The success rate over the health window is below `threshold`
    /// percent (with at least `min_samples` attempts in the window).
    SuccessRateBelow,
    /// More than `threshold` deliveries are queued or in flight.
    QueueDepthAbove,
    /// At least `threshold` attempts in a row failed.
    ConsecutiveFailures,
    /// The last attempt could not connect to the destination.
    Unreachable,
}

impl AlertCondition {
    /// The name used in the file and in webhook payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertCondition::SuccessRateBelow => "success_rate_below",
            AlertCondition::QueueDepthAbove => "queue_depth_above",
            AlertCondition::ConsecutiveFailures => "consecutive_failures",
            AlertCondition::Unreachable => "unreachable",
        }
    }
}

/// One `[[alerts]]` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The rule's name (unique), sent in every notification.
    pub name: String,
    /// What is watched.
    pub condition: AlertCondition,
    /// The limit: a percentage for `success_rate_below`, a count for
    /// `queue_depth_above` and `consecutive_failures`; not used by
    /// `unreachable`.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Only this channel's destinations (all channels when absent).
    #[serde(default)]
    pub channel: Option<String>,
    /// Only destinations of this name (all when absent).
    #[serde(default)]
    pub destination: Option<String>,
    /// `success_rate_below` only: fewer attempts in the window never fire
    /// (10 by default).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// `for = "1m"`: the condition must hold this long (at every
    /// evaluation) before the alert fires, so that a brief blip or a
    /// flapping figure does not notify. `0s` (the default) fires at once.
    #[serde(default, rename = "for")]
    pub hold: Duration,
    /// A URL to POST the alert and its resolution to, as JSON.
    #[serde(default)]
    pub webhook: Option<url::Url>,
    /// Write a warning to the log when the alert starts and ends (the
    /// default).
    #[serde(default = "default_true")]
    pub log: bool,
}

fn default_min_samples() -> u64 {
    10
}
fn default_true() -> bool {
    true
}

impl AlertRule {
    /// The threshold, with the rule's default for `unreachable`.
    pub fn limit(&self) -> f64 {
        self.threshold.unwrap_or(match self.condition {
            AlertCondition::Unreachable => 0.0,
            AlertCondition::ConsecutiveFailures => 1.0,
            _ => f64::NAN,
        })
    }

    fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.name.trim().is_empty() {
            errors.push(path.key("name").to_string(), "must not be empty");
        }
        let threshold = path.key("threshold").to_string();
        match (self.condition, self.threshold) {
            (AlertCondition::SuccessRateBelow, Some(t)) if !(0.0..=100.0).contains(&t) => {
                errors.push(threshold, "a percentage between 0 and 100")
            }
            (AlertCondition::QueueDepthAbove | AlertCondition::ConsecutiveFailures, Some(t))
                if !(t >= 1.0 && t.fract() == 0.0) =>
            {
                errors.push(threshold, "a whole number, at least 1")
            }
            (AlertCondition::SuccessRateBelow | AlertCondition::QueueDepthAbove, None) => {
                errors.push(threshold, format!("required for condition {:?}", self.condition.as_str()))
            }
            (AlertCondition::Unreachable, Some(_)) => errors.push(threshold, "not used by condition \"unreachable\""),
            _ => {}
        }
        if let Some(url) = &self.webhook
            && !matches!(url.scheme(), "http" | "https")
        {
            errors.push(path.key("webhook").to_string(), "must be an http:// or https:// URL");
        }
        if !self.log && self.webhook.is_none() {
            errors.push(path.to_string(), "has no action: set `webhook` or leave `log` on");
        }
    }
}

/// When scheduled retention runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RetentionSchedule {
    /// Every so often (the first run one interval after the start).
    Every(std::time::Duration),
    /// At the times of a cron pattern (UTC), e.g. `"0 3 * * *"`.
    Cron(String),
}

/// `[retention]`: what is removed, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// Remove the contents (raw message, ACK, transformed content, response
    /// texts) of messages older than this, keeping their metadata.
    pub contents_after: Option<std::time::Duration>,
    /// Remove whole messages older than this.
    pub messages_after: Option<std::time::Duration>,
    /// When to run.
    pub schedule: RetentionSchedule,
    /// Messages per transaction.
    pub batch_size: u32,
    /// Pause between batches, so ingestion gets the database in between.
    pub pause: std::time::Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default)]
    contents_after: Option<Duration>,
    #[serde(default)]
    messages_after: Option<Duration>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    interval: Option<Duration>,
    #[serde(default = "default_batch_size")]
    batch_size: u32,
    #[serde(default = "default_pause")]
    pause: Duration,
}

fn default_batch_size() -> u32 {
    500
}
fn default_pause() -> Duration {
    Duration::from_millis(50)
}

/// Reads `[[alerts]]`; a rule naming a channel or destination that does not
/// exist would never fire, so it is an error.
pub(super) fn compile_alerts(
    value: toml::Value,
    channels: &[ChannelConfig],
    errors: &mut ConfigErrors,
) -> Vec<AlertRule> {
    let root = CfgPath::root().key("alerts");
    let toml::Value::Array(items) = value else {
        errors.push("alerts", format!("must be an array of tables ([[alerts]]), found {}", de::type_name(&value)));
        return Vec::new();
    };
    let mut rules: Vec<AlertRule> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = root.index(i);
        if let Some(rule) = de::component::<AlertRule>(item, &path, errors) {
            rule.validate(&path, errors);
            check_subjects(&rule, channels, &path, errors);
            if rules.iter().any(|r| r.name == rule.name) {
                errors.push(path.key("name").to_string(), format!("another alert is named {:?}", rule.name));
            }
            rules.push(rule);
        }
    }
    rules
}

fn check_subjects(rule: &AlertRule, channels: &[ChannelConfig], path: &CfgPath, errors: &mut ConfigErrors) {
    let selected: Vec<&ChannelConfig> = match &rule.channel {
        Some(name) => match channels.iter().find(|c| c.name == *name) {
            Some(c) => vec![c],
            None => {
                errors.push(path.key("channel").to_string(), format!("no channel is named {name:?}"));
                return;
            }
        },
        None => channels.iter().collect(),
    };
    if let Some(name) = &rule.destination
        && !selected.iter().any(|c| c.destinations.iter().any(|d| d.name == *name))
    {
        errors.push(path.key("destination").to_string(), format!("no destination is named {name:?} there"));
    }
}

/// Reads `[retention]`.
pub(super) fn compile_retention(value: toml::Value, errors: &mut ConfigErrors) -> Option<RetentionConfig> {
    let path = CfgPath::root().key("retention");
    let raw = de::component::<RawRetention>(value, &path, errors)?;
    if raw.contents_after.is_none() && raw.messages_after.is_none() {
        errors.push(path.to_string(), "set `contents_after`, `messages_after` or both");
    }
    if let (Some(c), Some(m)) = (raw.contents_after, raw.messages_after)
        && m < c
    {
        errors.push(path.key("messages_after").to_string(), "must not be shorter than `contents_after`");
    }
    if raw.batch_size == 0 {
        errors.push(path.key("batch_size").to_string(), "must be at least 1");
    }
    let schedule = match (raw.schedule, raw.interval) {
        (Some(_), Some(_)) => {
            errors.push(path.to_string(), "set `schedule` (cron) or `interval`, not both");
            return None;
        }
        (Some(cron), None) => {
            if let Err(e) = croner::Cron::from_str(&cron) {
                errors.push(path.key("schedule").to_string(), format!("not a cron pattern: {e}"));
            }
            RetentionSchedule::Cron(cron)
        }
        (None, Some(every)) if every.get().is_zero() => {
            errors.push(path.key("interval").to_string(), "must be more than 0");
            return None;
        }
        (None, Some(every)) => RetentionSchedule::Every(every.get()),
        (None, None) => RetentionSchedule::Every(std::time::Duration::from_secs(3600)),
    };
    Some(RetentionConfig {
        contents_after: raw.contents_after.map(Duration::get),
        messages_after: raw.messages_after.map(Duration::get),
        schedule,
        batch_size: raw.batch_size,
        pause: raw.pause.get(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{AlertCondition, Config, RetentionSchedule};

    fn errors_of(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn alerts_health_and_retention_compile() {
        let c = Config::from_toml_str(
            r#"
            version = 1
            [api]
            metrics_public = true
            [health]
            window = "10m"
            [[alerts]]
            name = "lab down"
            condition = "consecutive_failures"
            threshold = 3
            webhook = "https://ops.example/hook"
            [[alerts]]
            name = "backlog"
            condition = "queue_depth_above"
            threshold = 1000
            channel = "adt"
            [retention]
            contents_after = "30d"
            messages_after = "365d"
            schedule = "0 3 * * *"
            [channels.adt.source]
            type = "mllp"
            listen = "127.0.0.1:0"
            [[channels.adt.destinations]]
            name = "archive"
            type = "file"
            directory = "out"
            "#,
        )
        .unwrap();
        assert_eq!(c.health.window.get(), std::time::Duration::from_secs(600));
        assert!(c.api.metrics_public);
        assert_eq!(c.alerts.len(), 2);
        assert_eq!(c.alerts[0].condition, AlertCondition::ConsecutiveFailures);
        assert!(c.alerts[1].log);
        let r = c.retention.unwrap();
        assert_eq!(r.schedule, RetentionSchedule::Cron("0 3 * * *".into()));
        assert_eq!(r.batch_size, 500);
    }

    #[test]
    fn bad_rules_say_where() {
        let e = errors_of(
            "version = 1\n[[alerts]]\nname = \"a\"\ncondition = \"success_rate_below\"\nthreshold = 120\n\
             [[alerts]]\nname = \"a\"\ncondition = \"unreachable\"\nlog = false\n",
        );
        assert!(e.contains("alerts[0].threshold"), "{e}");
        assert!(e.contains("another alert is named"), "{e}");
        assert!(e.contains("has no action"), "{e}");
        let e = errors_of(
            "version = 1\n[[alerts]]\nname = \"a\"\ncondition = \"unreachable\"\nchannel = \"nope\"\n\
             [[alerts]]\nname = \"b\"\ncondition = \"unreachable\"\ndestination = \"nope\"\n",
        );
        assert!(e.contains("alerts[0].channel: no channel is named \"nope\""), "{e}");
        assert!(e.contains("alerts[1].destination: no destination is named \"nope\""), "{e}");
        let e = errors_of("version = 1\n[retention]\nschedule = \"every day\"\n");
        assert!(e.contains("set `contents_after`"), "{e}");
        assert!(e.contains("retention.schedule"), "{e}");
    }
}
