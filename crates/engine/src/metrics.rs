//! Telemetry: Prometheus metrics, and the health state of every channel and
//! destination over a rolling window.
//!
//! # Design
//!
//! Each engine owns its own Prometheus recorder (not the process-global one
//! of the `metrics` crate), so two engines in one process (tests, embedding)
//! never mix their counters, and `/metrics` renders exactly this engine's.
//! The hot paths hold pre-registered handles ([`ChannelMetrics`],
//! [`DestinationMetrics`]): recording is an atomic add, no lookup.
//!
//! Label values are channel and destination names and fixed words (outcome,
//! ACK code, error class): never anything from a message.
//!
//! Health ([`classify`]) follows the issue's rule: over the window (5 minutes
//! by default) a destination is *healthy* when at least 98% of its delivery
//! attempts succeeded and their average response time is at most 2 s,
//! *warning* at 95% and 5 s, *critical* otherwise. A channel's state is the
//! same rule over all of its destinations' attempts together. Filtered
//! deliveries are not attempts; a channel or destination without attempts in
//! the window is healthy. The window is kept as a ring of [`WINDOW_SLOTS`]
//! time slots, so memory is constant whatever the traffic.
//!
//! Queue depths come from the store ([`Store::counts`]), read every few
//! seconds by [`Telemetry::refresh`], never on the message path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use store::{DeliveryState, FailureClass, Outcome, Store};

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::auth::{Auth, AuthError, Scope, require};
use crate::ingest::{AckCode, AckOutcome, Hl7Outcome, JsonOutcome};

/// Number of time slots the rolling window is cut into.
pub const WINDOW_SLOTS: usize = 60;

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static METADATA: Metadata<'static> = Metadata::new("plexus", Level::INFO, None);

/// Every metric, its kind and what it counts (rendered as `# HELP`).
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("plexus_messages_received_total", "Messages handed to a channel's ingest path"),
    ("plexus_messages_total", "Messages answered, by outcome (accepted, duplicate, errored, rejected) and ACK code"),
    ("plexus_ack_latency_seconds", "Time from a message's arrival at the ingest path to its ACK being ready"),
    ("plexus_store_commit_seconds", "Time the store took to commit an accepted message (group commit included)"),
    ("plexus_errors_total", "Errors by class: ingest (invalid, store) and delivery (connect, timeout, nak, ...)"),
    ("plexus_deliveries_total", "Delivery attempts by the state they left the delivery in"),
    ("plexus_delivery_latency_seconds", "Time of a delivery attempt (filters, transforms and the send)"),
    ("plexus_queue_depth", "Deliveries queued or in flight (read from the store periodically)"),
    ("plexus_blocked_deliveries", "Deliveries failed for good and holding their order key (state error)"),
    ("plexus_dead_letters", "Deliveries in the dead letters"),
    ("plexus_health", "Health over the window: 0 healthy, 1 warning, 2 critical"),
    (
        "plexus_fhir_requests_total",
        "FHIR requests by server (config name) and HTTP status or `transport` (whole process)",
    ),
];

/// The health of a channel or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Success rate ≥ 98% and average response time ≤ 2 s.
    Healthy,
    /// Success rate ≥ 95% and average response time ≤ 5 s.
    Warning,
    /// Anything worse.
    Critical,
}

impl HealthState {
    /// `healthy`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Warning => "warning",
            HealthState::Critical => "critical",
        }
    }
}

/// The health rule: `success_rate` in 0..=1, `average` the mean response
/// time of the attempts.
pub fn classify(success_rate: f64, average: Duration) -> HealthState {
    if success_rate >= 0.98 && average <= Duration::from_secs(2) {
        HealthState::Healthy
    } else if success_rate >= 0.95 && average <= Duration::from_secs(5) {
        HealthState::Warning
    } else {
        HealthState::Critical
    }
}

/// Attempts counted over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowTotals {
    /// Successful attempts.
    pub ok: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Sum of the attempts' durations, in microseconds.
    pub latency_us: u64,
}

impl WindowTotals {
    /// Attempts in the window.
    pub fn attempts(&self) -> u64 {
        self.ok + self.failed
    }

    /// Share of successful attempts (0..=1), `None` without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.attempts();
        (n > 0).then(|| self.ok as f64 / n as f64)
    }

    /// Mean attempt duration, `None` without attempts.
    pub fn average(&self) -> Option<Duration> {
        let n = self.attempts();
        (n > 0).then(|| Duration::from_micros(self.latency_us / n))
    }

    /// [`classify`] applied; healthy without attempts.
    pub fn health(&self) -> HealthState {
        match (self.success_rate(), self.average()) {
            (Some(rate), Some(avg)) => classify(rate, avg),
            _ => HealthState::Healthy,
        }
    }

    fn add(&mut self, other: &WindowTotals) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latency_us += other.latency_us;
    }
}

/// A rolling window of attempts: a ring of time slots. Times are offsets
/// from any fixed origin (the engine's start), so the window is pure and
/// testable without sleeping.
#[derive(Debug, Clone)]
pub struct Window {
    slot: Duration,
    slots: Vec<(u64, WindowTotals)>,
}

impl Window {
    /// A window of `length` cut into `slots` slots.
    pub fn new(length: Duration, slots: usize) -> Self {
        let slots = slots.max(1);
        let slot = (length / slots as u32).max(Duration::from_millis(1));
        Window { slot, slots: vec![(0, WindowTotals::default()); slots] }
    }

    fn index(&self, at: Duration) -> u64 {
        (at.as_nanos() / self.slot.as_nanos()) as u64
    }

    /// Records one attempt made at `at`.
    pub fn record(&mut self, at: Duration, ok: bool, latency: Duration) {
        let index = self.index(at);
        let len = self.slots.len() as u64;
        let (slot_index, totals) = &mut self.slots[(index % len) as usize];
        if *slot_index != index {
            *slot_index = index;
            *totals = WindowTotals::default();
        }
        if ok {
            totals.ok += 1;
        } else {
            totals.failed += 1;
        }
        totals.latency_us = totals.latency_us.saturating_add(latency.as_micros().min(u64::MAX as u128) as u64);
    }

    /// The attempts of the window ending at `at`.
    pub fn totals(&self, at: Duration) -> WindowTotals {
        let now = self.index(at);
        let len = self.slots.len() as u64;
        let mut sum = WindowTotals::default();
        for (index, totals) in &self.slots {
            if *index <= now && now - index < len {
                sum.add(totals);
            }
        }
        sum
    }
}

/// An engine's metrics and health registry.
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    window: Duration,
    origin: Instant,
    channels: Mutex<Vec<Arc<ChannelMetrics>>>,
    destinations: Mutex<Vec<Arc<DestinationMetrics>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("window", &self.window).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A registry whose health states look `window` back.
    pub fn new(window: Duration) -> Arc<Telemetry> {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        for (name, help) in DESCRIPTIONS {
            recorder.describe_counter((*name).into(), None, SharedString::const_str(help));
        }
        let handle = recorder.handle();
        Arc::new(Telemetry {
            recorder: Arc::new(recorder),
            handle,
            window,
            origin: Instant::now(),
            channels: Mutex::new(Vec::new()),
            destinations: Mutex::new(Vec::new()),
        })
    }

    /// The health window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The handles of channel `name` (registered on first use).
    pub fn channel(&self, name: &str) -> Arc<ChannelMetrics> {
        let mut channels = lock(&self.channels);
        if let Some(c) = channels.iter().find(|c| c.name == name) {
            return Arc::clone(c);
        }
        let c = Arc::new(ChannelMetrics::new(name, Some(Arc::clone(&self.recorder))));
        channels.push(Arc::clone(&c));
        c
    }

    /// The handles of a destination (registered on first use).
    pub fn destination(&self, channel: &str, destination: &str) -> Arc<DestinationMetrics> {
        let mut all = lock(&self.destinations);
        if let Some(d) = all.iter().find(|d| d.channel == channel && d.destination == destination) {
            return Arc::clone(d);
        }
        let d = Arc::new(DestinationMetrics::new(
            channel,
            destination,
            Some(Arc::clone(&self.recorder)),
            self.window,
            self.origin,
        ));
        all.push(Arc::clone(&d));
        d
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.copy_fhir_requests();
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Copies the FHIR client's request counts ([`fhir::telemetry`]) into
    /// `plexus_fhir_requests_total`.
    fn copy_fhir_requests(&self) {
        let recorder = Some(Arc::clone(&self.recorder));
        for (server, answer, count) in fhir::telemetry::requests() {
            let labels = vec![Label::new("server", server), Label::new("status", answer.label())];
            register_counter(&recorder, "plexus_fhir_requests_total", labels).absolute(count);
        }
    }

    /// Reads the queue depths from the store and updates the health gauges.
    /// A store error leaves the last values (and is returned for the log).
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), store::StoreError> {
        // Histogram samples pile up in the recorder until drained into their
        // buckets: drain them here too, so memory stays bounded when nobody
        // scrapes `/metrics`.
        self.handle.run_upkeep();
        let destinations: Vec<_> = lock(&self.destinations).clone();
        let counts = store.counts().await;
        if let Ok(counts) = &counts {
            let mut per: HashMap<(&str, &str), [u64; 3]> = HashMap::new();
            for c in counts {
                let slot = match c.state {
                    DeliveryState::Queued | DeliveryState::InFlight => 0,
                    DeliveryState::Error => 1,
                    DeliveryState::Dead => 2,
                    DeliveryState::Sent | DeliveryState::Filtered => continue,
                };
                per.entry((c.channel.as_str(), c.destination.as_str())).or_default()[slot] += c.count;
            }
            for d in &destinations {
                let [queued, blocked, dead] =
                    per.get(&(d.channel.as_str(), d.destination.as_str())).copied().unwrap_or_default();
                d.set_queue(queued, blocked, dead);
            }
        }
        let now = self.origin.elapsed();
        for d in &destinations {
            d.health_gauge.set(d.totals_at(now).health() as u8 as f64);
        }
        counts.map(|_| ())
    }

    /// The health of every channel and destination now.
    pub fn health(&self) -> HealthReport {
        self.health_at(self.origin.elapsed())
    }

    fn health_at(&self, at: Duration) -> HealthReport {
        let channels: Vec<String> = lock(&self.channels).iter().map(|c| c.name.clone()).collect();
        let destinations: Vec<_> = lock(&self.destinations).clone();
        let mut report = HealthReport { window_seconds: self.window.as_secs(), channels: Vec::new() };
        let mut names = channels;
        for d in &destinations {
            if !names.contains(&d.channel) {
                names.push(d.channel.clone());
            }
        }
        for name in names {
            let mut sum = WindowTotals::default();
            let mut list = Vec::new();
            for d in destinations.iter().filter(|d| d.channel == name) {
                let s = d.snapshot(at);
                sum.add(&s.totals);
                list.push(DestinationHealth::from(s));
            }
            report.channels.push(ChannelHealth {
                channel: name,
                health: sum.health(),
                attempts: sum.attempts(),
                failures: sum.failed,
                success_rate: sum.success_rate(),
                average_response_ms: sum.average().map(millis),
                destinations: list,
            });
        }
        report
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Health of every channel and destination: what `GET /api/health` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// The window's length.
    pub window_seconds: u64,
    /// Channels in start order.
    pub channels: Vec<ChannelHealth>,
}

impl HealthReport {
    /// One channel's health.
    pub fn channel(&self, name: &str) -> Option<&ChannelHealth> {
        self.channels.iter().find(|c| c.channel == name)
    }
}

/// One channel's health: its destinations' attempts together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelHealth {
    /// The channel.
    pub channel: String,
    /// Its state.
    pub health: HealthState,
    /// Delivery attempts in the window.
    pub attempts: u64,
    /// Of those, failed.
    pub failures: u64,
    /// Successful share (0..=1); absent without attempts.
    pub success_rate: Option<f64>,
    /// Mean attempt duration; absent without attempts.
    pub average_response_ms: Option<f64>,
    /// Each destination.
    pub destinations: Vec<DestinationHealth>,
}

impl ChannelHealth {
    /// One destination's health.
    pub fn destination(&self, name: &str) -> Option<&DestinationHealth> {
        self.destinations.iter().find(|d| d.destination == name)
    }
}

/// One destination's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationHealth {
    /// The destination.
    pub destination: String,
    /// Its state.
    pub health: HealthState,
    /// Attempts in the window.
    pub attempts: u64,
    /// Of those, failed.
    pub failures: u64,
    /// Successful share (0..=1); absent without attempts.
    pub success_rate: Option<f64>,
    /// Mean attempt duration; absent without attempts.
    pub average_response_ms: Option<f64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last attempt could not connect.
    pub unreachable: bool,
    /// Deliveries queued or in flight at the last refresh.
    pub queue_depth: u64,
}

impl From<DestinationSnapshot> for DestinationHealth {
    fn from(s: DestinationSnapshot) -> Self {
        DestinationHealth {
            destination: s.destination,
            health: s.totals.health(),
            attempts: s.totals.attempts(),
            failures: s.totals.failed,
            success_rate: s.totals.success_rate(),
            average_response_ms: s.totals.average().map(millis),
            consecutive_failures: s.consecutive_failures,
            unreachable: s.unreachable,
            queue_depth: s.queue_depth,
        }
    }
}

/// What one destination's state looks like at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationSnapshot {
    /// The channel.
    pub channel: String,
    /// The destination.
    pub destination: String,
    /// The window's attempts.
    pub totals: WindowTotals,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failed attempt could not connect (and none succeeded since).
    pub unreachable: bool,
    /// Deliveries queued or in flight at the last refresh.
    pub queue_depth: u64,
}

fn register_counter(recorder: &Option<Arc<PrometheusRecorder>>, name: &'static str, labels: Vec<Label>) -> Counter {
    match recorder {
        Some(r) => r.register_counter(&Key::from_parts(name, labels), &METADATA),
        None => Counter::noop(),
    }
}

fn register_gauge(recorder: &Option<Arc<PrometheusRecorder>>, name: &'static str, labels: Vec<Label>) -> Gauge {
    match recorder {
        Some(r) => r.register_gauge(&Key::from_parts(name, labels), &METADATA),
        None => Gauge::noop(),
    }
}

fn register_histogram(recorder: &Option<Arc<PrometheusRecorder>>, name: &'static str, labels: Vec<Label>) -> Histogram {
    match recorder {
        Some(r) => r.register_histogram(&Key::from_parts(name, labels), &METADATA),
        None => Histogram::noop(),
    }
}

const OUTCOMES: [&str; 4] = ["accepted", "duplicate", "errored", "rejected"];
const ACK_CODES: [&str; 7] = ["AA", "AE", "AR", "CA", "CE", "CR", "none"];

/// One channel's ingest metrics.
pub struct ChannelMetrics {
    name: String,
    recorder: Option<Arc<PrometheusRecorder>>,
    received: Counter,
    ack_latency: Histogram,
    commit: Histogram,
    /// Outcome × ACK code, registered on first use so that impossible
    /// pairs are not rendered.
    outcomes: [OnceLock<Counter>; OUTCOMES.len() * ACK_CODES.len()],
}

impl std::fmt::Debug for ChannelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelMetrics").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChannelMetrics {
    fn new(name: &str, recorder: Option<Arc<PrometheusRecorder>>) -> Self {
        let l = || vec![Label::new("channel", name.to_string())];
        ChannelMetrics {
            name: name.to_string(),
            received: register_counter(&recorder, "plexus_messages_received_total", l()),
            ack_latency: register_histogram(&recorder, "plexus_ack_latency_seconds", l()),
            commit: register_histogram(&recorder, "plexus_store_commit_seconds", l()),
            outcomes: std::array::from_fn(|_| OnceLock::new()),
            recorder,
        }
    }

    /// Handles that record nothing (a channel ingest built outside an
    /// engine).
    pub fn noop(name: &str) -> Self {
        ChannelMetrics::new(name, None)
    }

    fn outcome(&self, outcome: usize, code: usize) {
        self.outcomes[outcome * ACK_CODES.len() + code]
            .get_or_init(|| {
                let labels = vec![
                    Label::new("channel", self.name.clone()),
                    Label::from_static_parts("outcome", OUTCOMES[outcome]),
                    Label::from_static_parts("ack_code", ACK_CODES[code]),
                ];
                register_counter(&self.recorder, "plexus_messages_total", labels)
            })
            .increment(1);
    }

    fn error(&self, class: &'static str) {
        if self.recorder.is_some() {
            let labels = vec![
                Label::new("channel", self.name.clone()),
                Label::from_static_parts("destination", ""),
                Label::from_static_parts("class", class),
            ];
            register_counter(&self.recorder, "plexus_errors_total", labels).increment(1);
        }
    }

    /// Records an HL7 v2 message's answer and how long it took.
    pub fn hl7(&self, out: &Hl7Outcome, elapsed: Duration) {
        self.received.increment(1);
        self.ack_latency.record(elapsed.as_secs_f64());
        let outcome = match (out.outcome, out.duplicate) {
            (AckOutcome::Accepted, true) => 1,
            (AckOutcome::Accepted, false) => 0,
            (AckOutcome::Errored, _) => 2,
            (AckOutcome::Rejected, _) => 3,
        };
        let code = match out.code {
            Some(AckCode::ApplicationAccept) => 0,
            Some(AckCode::ApplicationError) => 1,
            Some(AckCode::ApplicationReject) => 2,
            Some(AckCode::CommitAccept) => 3,
            Some(AckCode::CommitError) => 4,
            Some(AckCode::CommitReject) => 5,
            None => 6,
        };
        self.outcome(outcome, code);
        if out.store_failed {
            self.error("store");
        } else if outcome >= 2 {
            self.error("invalid");
        }
    }

    /// Records a JSON message's answer and how long it took.
    pub fn json(&self, out: &JsonOutcome, elapsed: Duration) {
        self.received.increment(1);
        self.ack_latency.record(elapsed.as_secs_f64());
        match out {
            JsonOutcome::Stored { duplicate: false, .. } => self.outcome(0, 6),
            JsonOutcome::Stored { duplicate: true, .. } => self.outcome(1, 6),
            JsonOutcome::Unavailable(_) => {
                self.outcome(2, 6);
                self.error("store");
            }
            JsonOutcome::Invalid(_) | JsonOutcome::KeyReused { .. } => {
                self.outcome(3, 6);
                self.error("invalid");
            }
        }
    }

    /// Records a frame rejected for its size (answered AR).
    pub fn oversized(&self) {
        self.received.increment(1);
        self.outcome(3, 2);
        self.error("oversized");
    }

    /// Records a store commit's duration.
    pub fn commit(&self, elapsed: Duration) {
        self.commit.record(elapsed.as_secs_f64());
    }
}

#[derive(Debug)]
struct DestinationState {
    window: Window,
    consecutive_failures: u32,
    last_error: Option<&'static str>,
    queue_depth: u64,
}

/// One destination's delivery metrics and health state.
pub struct DestinationMetrics {
    channel: String,
    destination: String,
    recorder: Option<Arc<PrometheusRecorder>>,
    origin: Instant,
    latency: Histogram,
    /// sent, filtered, retry, error, dead.
    outcomes: [Counter; 5],
    queue_gauge: Gauge,
    blocked_gauge: Gauge,
    dead_gauge: Gauge,
    health_gauge: Gauge,
    state: Mutex<DestinationState>,
}

impl std::fmt::Debug for DestinationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationMetrics")
            .field("channel", &self.channel)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl DestinationMetrics {
    fn new(
        channel: &str,
        destination: &str,
        recorder: Option<Arc<PrometheusRecorder>>,
        window: Duration,
        origin: Instant,
    ) -> Self {
        let l = || vec![Label::new("channel", channel.to_string()), Label::new("destination", destination.to_string())];
        let outcome = |o: &'static str| {
            let mut labels = l();
            labels.push(Label::from_static_parts("outcome", o));
            register_counter(&recorder, "plexus_deliveries_total", labels)
        };
        DestinationMetrics {
            channel: channel.to_string(),
            destination: destination.to_string(),
            origin,
            latency: register_histogram(&recorder, "plexus_delivery_latency_seconds", l()),
            outcomes: [outcome("sent"), outcome("filtered"), outcome("retry"), outcome("error"), outcome("dead")],
            queue_gauge: register_gauge(&recorder, "plexus_queue_depth", l()),
            blocked_gauge: register_gauge(&recorder, "plexus_blocked_deliveries", l()),
            dead_gauge: register_gauge(&recorder, "plexus_dead_letters", l()),
            health_gauge: register_gauge(&recorder, "plexus_health", l()),
            recorder,
            state: Mutex::new(DestinationState {
                window: Window::new(window, WINDOW_SLOTS),
                consecutive_failures: 0,
                last_error: None,
                queue_depth: 0,
            }),
        }
    }

    /// Handles that record nothing.
    pub fn noop(channel: &str, destination: &str) -> Self {
        DestinationMetrics::new(channel, destination, None, Duration::from_secs(300), Instant::now())
    }

    /// Records why an attempt failed: the destination error's kind
    /// (`connect`, `timeout`, `nak`, ...) or `transform` / `content`.
    pub fn error(&self, class: &'static str) {
        lock(&self.state).last_error = Some(class);
        if self.recorder.is_some() {
            let labels = vec![
                Label::new("channel", self.channel.clone()),
                Label::new("destination", self.destination.clone()),
                Label::from_static_parts("class", class),
            ];
            register_counter(&self.recorder, "plexus_errors_total", labels).increment(1);
        }
    }

    /// Records an attempt's outcome and duration (before the store records
    /// it). Filtered deliveries are not attempts.
    pub fn attempt(&self, outcome: &Outcome, elapsed: Duration) {
        let ok = match outcome {
            Outcome::Sent { .. } => true,
            Outcome::Failed { .. } => false,
            Outcome::Filtered { .. } => return,
        };
        self.latency.record(elapsed.as_secs_f64());
        let at = self.origin.elapsed();
        let mut state = lock(&self.state);
        state.window.record(at, ok, elapsed);
        if ok {
            state.consecutive_failures = 0;
            state.last_error = None;
        } else {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            if matches!(outcome, Outcome::Failed { class: FailureClass::Permanent, .. }) && state.last_error.is_none() {
                state.last_error = Some("permanent");
            }
        }
    }

    /// Records the state the store left the delivery in.
    pub fn completed(&self, state: DeliveryState) {
        let i = match state {
            DeliveryState::Sent => 0,
            DeliveryState::Filtered => 1,
            DeliveryState::Queued | DeliveryState::InFlight => 2,
            DeliveryState::Error => 3,
            DeliveryState::Dead => 4,
        };
        self.outcomes[i].increment(1);
    }

    fn set_queue(&self, queued: u64, blocked: u64, dead: u64) {
        self.queue_gauge.set(queued as f64);
        self.blocked_gauge.set(blocked as f64);
        self.dead_gauge.set(dead as f64);
        lock(&self.state).queue_depth = queued;
    }

    fn totals_at(&self, at: Duration) -> WindowTotals {
        lock(&self.state).window.totals(at)
    }

    /// This destination's state at `at` (an offset from the engine's start).
    pub fn snapshot(&self, at: Duration) -> DestinationSnapshot {
        let state = lock(&self.state);
        DestinationSnapshot {
            channel: self.channel.clone(),
            destination: self.destination.clone(),
            totals: state.window.totals(at),
            consecutive_failures: state.consecutive_failures,
            unreachable: state.consecutive_failures > 0 && state.last_error == Some("connect"),
            queue_depth: state.queue_depth,
        }
    }
}

/// `GET /metrics` (Prometheus text format; scope `metrics`, or public with
/// `metrics_public`) and `GET /api/health` (the [`HealthReport`] as JSON;
/// any of the scopes `messages:read`, `channels:admin`, `metrics`).
pub fn router(telemetry: Arc<Telemetry>, auth: Auth, metrics_public: bool) -> axum::Router {
    use axum::routing::get;
    let mut metrics = axum::Router::new().route("/metrics", get(prometheus_text));
    if !metrics_public {
        metrics = metrics.route_layer(require(auth.clone(), Scope::Metrics));
    }
    let health = axum::Router::new().route("/api/health", get(health_json));
    metrics.merge(health).with_state(Routes { telemetry, auth })
}

#[derive(Clone)]
struct Routes {
    telemetry: Arc<Telemetry>,
    auth: Auth,
}

async fn prometheus_text(State(routes): State<Routes>) -> Response {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], routes.telemetry.render())
        .into_response()
}

/// Health is read by the dashboard (`messages:read` or `channels:admin`
/// tokens) and by monitoring (`metrics` tokens): any of them will do.
async fn health_json(State(routes): State<Routes>, headers: http::HeaderMap) -> Response {
    for scope in [Scope::MessagesRead, Scope::ChannelsAdmin, Scope::Metrics] {
        match routes.auth.authorize(&headers, scope).await {
            Ok(_) => return axum::Json(routes.telemetry.health()).into_response(),
            // Only a missing scope is worth trying the next one for.
            Err(AuthError::Forbidden { .. }) => continue,
            Err(other) => return other.into_response(),
        }
    }
    AuthError::Forbidden { scope: Scope::MessagesRead }.into_response()
}

impl Telemetry {
    /// Every destination's state now.
    pub fn destinations(&self) -> Vec<DestinationSnapshot> {
        let at = self.origin.elapsed();
        lock(&self.destinations).iter().map(|d| d.snapshot(at)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_follows_the_thresholds() {
        let s = Duration::from_secs;
        assert_eq!(classify(1.0, s(0)), HealthState::Healthy);
        assert_eq!(classify(0.98, s(2)), HealthState::Healthy);
        assert_eq!(classify(0.979, s(1)), HealthState::Warning);
        assert_eq!(classify(0.99, Duration::from_millis(2001)), HealthState::Warning);
        assert_eq!(classify(0.95, s(5)), HealthState::Warning);
        assert_eq!(classify(0.949, s(1)), HealthState::Critical);
        assert_eq!(classify(1.0, Duration::from_millis(5001)), HealthState::Critical);
        assert_eq!(WindowTotals::default().health(), HealthState::Healthy);
    }

    #[test]
    fn window_forgets_attempts_older_than_its_length() {
        let mut w = Window::new(Duration::from_secs(60), 6);
        let ms = Duration::from_millis;
        w.record(ms(1_000), true, ms(100));
        w.record(ms(15_000), false, ms(300));
        let t = w.totals(ms(20_000));
        assert_eq!((t.ok, t.failed), (1, 1));
        assert_eq!(t.average(), Some(ms(200)));
        assert_eq!(t.success_rate(), Some(0.5));
        // 61 s later the first slot is out of the window, the second not.
        let t = w.totals(ms(61_000));
        assert_eq!((t.ok, t.failed), (0, 1));
        // A new attempt reusing the first slot's ring position resets it.
        w.record(ms(62_000), true, ms(10));
        let t = w.totals(ms(62_000));
        assert_eq!((t.ok, t.failed), (1, 1));
        assert_eq!(w.totals(ms(200_000)), WindowTotals::default());
    }

    #[test]
    fn window_health_uses_rate_and_latency() {
        let mut w = Window::new(Duration::from_secs(300), WINDOW_SLOTS);
        let at = Duration::from_secs(10);
        for _ in 0..97 {
            w.record(at, true, Duration::from_millis(10));
        }
        for _ in 0..3 {
            w.record(at, false, Duration::from_millis(10));
        }
        assert_eq!(w.totals(at).health(), HealthState::Warning);
        w.record(at, false, Duration::from_millis(10));
        w.record(at, false, Duration::from_millis(10));
        w.record(at, false, Duration::from_millis(10));
        assert_eq!(w.totals(at).health(), HealthState::Critical);
    }

    #[test]
    fn destination_tracks_consecutive_failures_and_reachability() {
        let t = Telemetry::new(Duration::from_secs(300));
        let d = t.destination("adt", "lis");
        let failed = Outcome::Failed { class: FailureClass::Transient, reason: "x".into(), response: None };
        d.error("connect");
        d.attempt(&failed, Duration::from_millis(1));
        d.error("connect");
        d.attempt(&failed, Duration::from_millis(1));
        let s = &t.destinations()[0];
        assert_eq!(s.consecutive_failures, 2);
        assert!(s.unreachable);
        d.attempt(&Outcome::Sent { response: None, transformed: None }, Duration::from_millis(1));
        let s = &t.destinations()[0];
        assert_eq!((s.consecutive_failures, s.unreachable), (0, false));
        let report = t.health();
        let lis = report.channel("adt").unwrap().destination("lis").unwrap();
        assert_eq!((lis.attempts, lis.failures, lis.health), (3, 2, HealthState::Critical));
    }

    #[test]
    fn fhir_requests_are_rendered_by_server_and_status() {
        let client = fhir::FhirClient::new(
            "metrics-unit",
            &toml::from_str("base_url = \"http://127.0.0.1:9/fhir\"\n[retry]\nmax_retries = 0").unwrap(),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Port 9 (discard) is closed here: a transport failure, counted.
        assert!(runtime.block_on(client.read("Patient", "1")).is_err());
        let text = Telemetry::new(Duration::from_secs(300)).render();
        let line = text.lines().find(|l| l.starts_with("plexus_fhir_requests_total{server=\"metrics-unit\""));
        let line = line.unwrap_or_else(|| panic!("{text}"));
        assert_eq!(line, r#"plexus_fhir_requests_total{server="metrics-unit",status="transport"} 1"#);
    }

    #[test]
    fn render_has_labelled_counters() {
        let t = Telemetry::new(Duration::from_secs(300));
        let d = t.destination("adt", "lis");
        d.completed(DeliveryState::Sent);
        d.completed(DeliveryState::Sent);
        let text = t.render();
        assert!(
            text.contains("plexus_deliveries_total{channel=\"adt\",destination=\"lis\",outcome=\"sent\"} 2"),
            "{text}"
        );
    }
}
