//! The `fhir_poll` source: a scheduled read of the resources a FHIR server
//! changed since the last run (a "FHIR Reader" polling channel).
//!
//! ```toml
//! [fhir_servers.ehr]
//! base_url = "https://ehr.example.org/fhir/R4"
//!
//! [channels.ehr-changes]
//! content = "fhir"
//! [channels.ehr-changes.source]
//! type = "fhir_poll"
//! server = "ehr"
//! resources = ["Patient", "Observation?category=laboratory"]
//! interval = "1m"          # or schedule = "*/5 * * * *" (cron, UTC)
//! page_size = 100          # _count
//! start = "now"            # or an instant: "2026-01-01T00:00:00Z"
//! lag = "5s"               # read only up to now - lag
//! ```
//!
//! # How a run goes
//!
//! Each run takes the store's cluster lock `plexus.fhir_poll.<channel>`
//! ([`store::Store::try_lock`]), so nodes sharing a database poll once per
//! schedule between them, and skips while the channel is stopped from the
//! API. For each resource type, in the order written, it reads
//! `GET [base]/Type?<extra>&_lastUpdated=ge<checkpoint>&_sort=_lastUpdated&_count=N`
//! and hands every resource, one at a time in server order, to the channel's
//! JSON ingest path (the same one the `http` source uses: order key,
//! duplicate detection, one queued delivery per destination). Only when a
//! page's resources are committed does the type's checkpoint move to the
//! page's highest `meta.lastUpdated` ([`store::PollCheckpoint`]).
//!
//! After a page that moved the checkpoint, the next page is a new search
//! from the new checkpoint (keyset paging) instead of the server's `next`
//! link: a server that pages by offset shifts its pages when a resource is
//! updated mid-run (it moves to the end), and an offset would then step over
//! a resource that the checkpoint already passed. A page whose resources all
//! carry the checkpoint's instant cannot move it, so the run follows the
//! server's `next` link (or `_offset`, [`fhir::FhirClient::next_page`]) until
//! a page does. Pages must come sorted by `_lastUpdated`: a page that is not
//! is refused (the checkpoint would skip what sorts before it).
//!
//! # Duplicates
//!
//! A resource version is one message: its idempotency key (the message's
//! control id) is `Type/id/_history/versionId`, or `Type/id@lastUpdated`
//! when the server gives no version. The versions read at the checkpoint's
//! own instant are kept with it and skipped by the next run's `ge` read
//! without a store round trip; anything else read twice (a crash between a
//! commit and the checkpoint) is a duplicate inside the store's window.
//!
//! # Failures
//!
//! A run that fails (server down, 4xx/5xx, a page the store could not take)
//! is logged (server, resource type, error kind: never a resource's
//! contents), counted in [`PollStats`], and retried at the next scheduled
//! time; the checkpoint stays where the last committed page left it. A
//! resource the channel refuses (its transform's checks fail) is counted
//! and logged by type, and the run continues past it: a poll stuck forever
//! on one resource would hold back every later change.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;
use store::{MAX_SEEN_AT_CHECKPOINT, PollCheckpoint, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::de::PathBuf as CfgPath;
use crate::config::{ChannelConfig, ConfigErrors, ContentKind, Duration, RetentionSchedule};
use crate::ingest::{ChannelIngest, JsonOutcome, Received};
use crate::sources::SourceConfig;

/// Prefix of the cluster lock of a channel's poll.
pub const LOCK_PREFIX: &str = "plexus.fhir_poll.";

/// Search parameters the poll sets itself, refused in `resources`.
const RESERVED_PARAMS: [&str; 4] = ["_lastUpdated", "_sort", "_count", "_offset"];

/// Most pages one run follows by `next` link while they all carry the
/// checkpoint's instant: a server whose links never end is cut off there.
const MAX_PAGES_AT_ONE_INSTANT: u32 = 1000;

/// Configuration of a `fhir_poll` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirPollSourceConfig {
    /// The `[fhir_servers.<name>]` table to poll: base URL, authentication,
    /// timeouts and retries.
    pub server: String,
    /// What to poll: resource types, each optionally with extra search
    /// parameters (`"Observation?category=laboratory"`). Each type has its
    /// own checkpoint, so a type may appear once.
    pub resources: Vec<String>,
    /// Poll every so often (`"1m"` when neither this nor `schedule` is
    /// set); the first run is at start-up.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Poll at the times of a cron pattern instead (UTC, with seconds
    /// optional: `"*/5 * * * *"`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Resources per page (`_count`, 100 by default, at most 1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Where a resource type's first poll starts when it has no checkpoint
    /// yet: `"now"` (the default: only changes from then on) or an RFC 3339
    /// instant (`"2026-01-01T00:00:00Z"`; an old one reads everything).
    /// Ignored once a checkpoint exists (docs/sync.md, "Checkpoints").
    #[serde(default)]
    pub start: Option<String>,
    /// Read only resources last updated at least this long ago
    /// (`_lastUpdated=lt<now - lag>`), for servers that stamp
    /// `lastUpdated` before their transaction commits: a resource that
    /// becomes visible late with an earlier stamp would otherwise fall
    /// behind the checkpoint. `"0s"` (the default) reads up to now.
    #[serde(default)]
    pub lag: Duration,
}

fn default_page_size() -> u32 {
    100
}

/// One entry of `resources`: a type and its extra search parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTarget {
    /// The resource type.
    pub resource_type: String,
    /// Extra search parameters, in the order written.
    pub params: Vec<(String, String)>,
}

/// Where a type's first poll starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStart {
    /// The time of that first poll.
    Now,
    /// A fixed instant.
    At(DateTime<Utc>),
}

/// Parses one `resources` entry.
fn parse_target(text: &str) -> Result<PollTarget, String> {
    let (resource_type, query) = match text.split_once('?') {
        Some((t, q)) => (t.trim(), q),
        None => (text.trim(), ""),
    };
    if !fhir::resource::is_valid_type(resource_type) {
        return Err(format!("{resource_type:?} is not a resource type (write `Type` or `Type?param=value&...`)"));
    }
    let mut params = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name.is_empty() {
            return Err("a search parameter without a name".into());
        }
        let base = name.split(':').next().unwrap_or(&name);
        if RESERVED_PARAMS.contains(&base) {
            return Err(format!("{base} is set by the poll itself; remove it"));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(PollTarget { resource_type: resource_type.to_owned(), params })
}

fn parse_start(text: Option<&str>) -> Result<PollStart, String> {
    match text.map(str::trim) {
        None | Some("now") => Ok(PollStart::Now),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|at| PollStart::At(at.with_timezone(&Utc)))
            .map_err(|e| format!("{t:?}: expected \"now\" or an RFC 3339 instant like 2026-01-01T00:00:00Z ({e})")),
    }
}

impl FhirPollSourceConfig {
    /// Checks the settings (no I/O); cross-table checks are in
    /// [`cross_check`].
    pub fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.server.trim().is_empty() {
            errors.push(path.key("server").to_string(), "must name a [fhir_servers.NAME] table");
        }
        if self.resources.is_empty() {
            errors.push(path.key("resources").to_string(), "list at least one resource type, e.g. [\"Patient\"]");
        }
        let mut types: Vec<String> = Vec::new();
        for (i, entry) in self.resources.iter().enumerate() {
            let at = format!("{}[{i}]", path.key("resources"));
            match parse_target(entry) {
                Ok(t) if types.contains(&t.resource_type) => errors.push(
                    at,
                    format!(
                        "{} is listed twice; each type has one checkpoint (join values with a comma: \
                         category=laboratory,vital-signs)",
                        t.resource_type
                    ),
                ),
                Ok(t) => types.push(t.resource_type),
                Err(e) => errors.push(at, e),
            }
        }
        match (&self.interval, &self.schedule) {
            (Some(_), Some(_)) => errors.push(path.to_string(), "set `schedule` (cron) or `interval`, not both"),
            (Some(every), None) if every.get().is_zero() => {
                errors.push(path.key("interval").to_string(), "must be more than 0")
            }
            (None, Some(cron)) => {
                if let Err(e) = croner::Cron::from_str(cron) {
                    errors.push(path.key("schedule").to_string(), format!("not a cron pattern: {e}"));
                }
            }
            _ => {}
        }
        if !(1..=1000).contains(&self.page_size) {
            errors.push(path.key("page_size").to_string(), "between 1 and 1000");
        }
        if let Err(e) = parse_start(self.start.as_deref()) {
            errors.push(path.key("start").to_string(), e);
        }
    }

    /// The `resources` entries, parsed (the invalid ones left out: the
    /// config does not compile with them).
    pub fn targets(&self) -> Vec<PollTarget> {
        self.resources.iter().filter_map(|r| parse_target(r).ok()).collect()
    }

    /// When the poll runs.
    pub fn when(&self) -> RetentionSchedule {
        match (&self.schedule, &self.interval) {
            (Some(cron), _) => RetentionSchedule::Cron(cron.clone()),
            (None, Some(every)) => RetentionSchedule::Every(every.get()),
            (None, None) => RetentionSchedule::Every(std::time::Duration::from_secs(60)),
        }
    }

    /// Where a type without a checkpoint starts.
    pub fn first_start(&self) -> PollStart {
        parse_start(self.start.as_deref()).unwrap_or(PollStart::Now)
    }
}

/// Checks that need the other tables: the server is a `[fhir_servers]`
/// table, and the channel carries JSON (FHIR resources are not HL7 v2).
pub(crate) fn cross_check(
    fhir_servers: &BTreeMap<String, fhir::ServerConfig>,
    channels: &[ChannelConfig],
    errors: &mut ConfigErrors,
) {
    for channel in channels {
        let SourceConfig::FhirPoll(config) = &channel.source else { continue };
        let path = format!("{}.source", channel.path());
        if !config.server.trim().is_empty() && !fhir_servers.contains_key(&config.server) {
            let known: Vec<&str> = fhir_servers.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none is configured".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            errors.push(format!("{path}.server"), format!("no [fhir_servers.{}] table ({known})", config.server));
        }
        if channel.content == ContentKind::Hl7v2 {
            errors.push(
                format!("{}.content", channel.path()),
                "a fhir_poll source reads FHIR resources: set content = \"fhir\" on this channel (or \"json\")",
            );
        }
    }
}

/// Counters of one channel's poll (the end-to-end tests and operators read
/// them; every figure is also in the log lines of each run).
#[derive(Debug, Default)]
pub struct PollStats {
    /// Runs that ended without error (skipped runs excluded).
    pub runs: AtomicU64,
    /// Runs that failed (server, store); retried at the next schedule.
    pub failed_runs: AtomicU64,
    /// Runs skipped: another node held the lock, or the channel was stopped.
    pub skipped_runs: AtomicU64,
    /// Resources stored as new messages.
    pub stored: AtomicU64,
    /// Resources already stored (a re-read), not stored again.
    pub duplicates: AtomicU64,
    /// Resources the channel refused (its checks failed); not stored.
    pub refused: AtomicU64,
}

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollRun {
    /// False when the run was skipped (lock held elsewhere, channel stopped).
    pub ran: bool,
    /// Resources stored as new messages.
    pub stored: u64,
    /// Re-reads, not stored again.
    pub duplicates: u64,
    /// Resources refused by the channel.
    pub refused: u64,
    /// Pages read.
    pub pages: u64,
}

/// Why a run stopped early. The checkpoint stays at the last committed page.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The server could not be read (down, 4xx/5xx, not a Bundle ...).
    #[error("reading {resource_type} from the server: {error}")]
    Server {
        /// The type being polled.
        resource_type: String,
        /// What failed.
        error: fhir::FhirError,
    },
    /// The server's pages are not sorted by `_lastUpdated`.
    #[error("{resource_type}: the server did not sort the page by _lastUpdated (_sort=_lastUpdated unsupported?)")]
    Unsorted {
        /// The type being polled.
        resource_type: String,
    },
    /// More pages than [`MAX_PAGES_AT_ONE_INSTANT`] at one instant.
    #[error("{resource_type}: more than {MAX_PAGES_AT_ONE_INSTANT} pages share one lastUpdated instant")]
    EndlessInstant {
        /// The type being polled.
        resource_type: String,
    },
    /// A resource could not be stored (the store or the channel is
    /// unavailable).
    #[error("storing a resource: {0}")]
    Ingest(String),
    /// The store failed (lock, checkpoint).
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

impl PollError {
    /// A one-line summary without resource contents (what the log gets).
    pub fn summary(&self) -> String {
        match self {
            PollError::Server { resource_type, error } => format!("{resource_type}: {error}"),
            PollError::Store(e) => format!("store: {}", e.summary()),
            other => other.to_string(),
        }
    }
}

/// A `fhir_poll` channel's poller, ready to run.
pub struct FhirPoller {
    channel: String,
    server: String,
    client: fhir::FhirClient,
    targets: Vec<PollTarget>,
    when: RetentionSchedule,
    page_size: u32,
    start: PollStart,
    lag: std::time::Duration,
    ingest: Arc<ChannelIngest>,
    store: Arc<dyn Store>,
    stats: Arc<PollStats>,
}

impl std::fmt::Debug for FhirPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirPoller")
            .field("channel", &self.channel)
            .field("server", &self.server)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl FhirPoller {
    /// The poller of the channel `ingest` serves, reading the server
    /// `config` names. Fails when that server's client cannot be built
    /// (TLS, credentials from the environment).
    pub fn new(
        config: &FhirPollSourceConfig,
        fhir_servers: &BTreeMap<String, fhir::ServerConfig>,
        ingest: Arc<ChannelIngest>,
        store: Arc<dyn Store>,
    ) -> Result<FhirPoller, String> {
        let server =
            fhir_servers.get(&config.server).ok_or_else(|| format!("no [fhir_servers.{}] table", config.server))?;
        let client = fhir::FhirClient::new(&config.server, server).map_err(|e| e.to_string())?;
        Ok(FhirPoller {
            channel: ingest.name().to_owned(),
            server: config.server.clone(),
            client,
            targets: config.targets(),
            when: config.when(),
            page_size: config.page_size,
            start: config.first_start(),
            lag: config.lag.get(),
            ingest,
            store,
            stats: Arc::new(PollStats::default()),
        })
    }

    /// The poll's counters.
    pub fn stats(&self) -> Arc<PollStats> {
        Arc::clone(&self.stats)
    }

    /// Polls on the schedule until `stop` (an interval polls at once, then
    /// every interval). A run in progress stops between two resources.
    pub async fn run(self, stop: CancellationToken) {
        let mut first = matches!(self.when, RetentionSchedule::Every(_));
        loop {
            if !first {
                let wait = crate::retention::next_wait(&self.when, Utc::now());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            first = false;
            let started = std::time::Instant::now();
            match self.run_once(&stop).await {
                Ok(run) if run.ran => {
                    self.stats.runs.fetch_add(1, Ordering::Relaxed);
                    let level_info = run.stored > 0 || run.refused > 0;
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    if level_info {
                        info!(channel = %self.channel, server = %self.server, stored = run.stored,
                              duplicates = run.duplicates, refused = run.refused, pages = run.pages,
                              elapsed_ms, "fhir poll finished");
                    } else {
                        debug!(channel = %self.channel, server = %self.server, duplicates = run.duplicates,
                               pages = run.pages, elapsed_ms, "fhir poll finished: no changes");
                    }
                }
                Ok(_) => {
                    self.stats.skipped_runs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.failed_runs.fetch_add(1, Ordering::Relaxed);
                    warn!(channel = %self.channel, server = %self.server, error = %e.summary(),
                          "fhir poll failed; the checkpoint stays, retrying at the next scheduled time");
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// One run now, under the channel's cluster lock.
    pub async fn run_once(&self, stop: &CancellationToken) -> Result<PollRun, PollError> {
        if self.ingest.switch().is_stopped() {
            debug!(channel = %self.channel, "channel stopped; fhir poll skipped");
            return Ok(PollRun::default());
        }
        let Some(lock) = self.store.try_lock(&format!("{LOCK_PREFIX}{}", self.channel)).await? else {
            debug!(channel = %self.channel, "another node holds the poll lock; skipping this run");
            return Ok(PollRun::default());
        };
        let mut run = PollRun { ran: true, ..PollRun::default() };
        for target in &self.targets {
            if stop.is_cancelled() {
                break;
            }
            self.poll_type(target, stop, &mut run).await?;
        }
        drop(lock);
        Ok(run)
    }

    /// Reads one type from its checkpoint to the end.
    async fn poll_type(
        &self,
        target: &PollTarget,
        stop: &CancellationToken,
        run: &mut PollRun,
    ) -> Result<(), PollError> {
        let resource_type = target.resource_type.as_str();
        let server_error = |error| PollError::Server { resource_type: resource_type.to_owned(), error };
        let now = Utc::now();
        let mut at = match self.store.poll_checkpoint(&self.channel, resource_type).await? {
            Some(saved) => saved,
            None => {
                // Saved at once: with start = "now", the runs after this
                // one must start from this run's time, not theirs.
                let first = PollCheckpoint {
                    channel: self.channel.clone(),
                    resource_type: resource_type.to_owned(),
                    last_updated: match self.start {
                        PollStart::Now => now,
                        PollStart::At(at) => at,
                    },
                    seen_at_checkpoint: Vec::new(),
                    updated_at: now,
                };
                self.store.save_poll_checkpoint(&first).await?;
                first
            }
        };
        let upper = (!self.lag.is_zero()).then(|| now - chrono::TimeDelta::from_std(self.lag).unwrap_or_default());
        loop {
            let mut search = fhir::Search::new(resource_type);
            for (name, value) in &target.params {
                search = search.param(name, value);
            }
            search = search.param("_lastUpdated", format!("ge{}", instant(at.last_updated)));
            if let Some(upper) = upper {
                search = search.param("_lastUpdated", format!("lt{}", instant(upper)));
            }
            let search = search.param("_sort", "_lastUpdated").param("_count", self.page_size.to_string());
            let mut page = self.client.search(&search).await.map_err(server_error)?;
            let mut returned = 0u64;
            let mut pages_at_instant = 0u32;
            loop {
                run.pages += 1;
                let matches: Vec<&Value> = fhir::bundle::search_matches(&page).collect();
                returned += matches.len() as u64;
                let moved = self.ingest_page(&matches, &mut at, stop, run).await?;
                if stop.is_cancelled() {
                    return Ok(());
                }
                let more = fhir::bundle::next_link(&page).is_some()
                    || fhir::bundle::total(&page).is_some_and(|total| returned < total);
                if !more || matches.is_empty() {
                    return Ok(());
                }
                if moved {
                    // Keyset paging from the new checkpoint (module docs).
                    break;
                }
                pages_at_instant += 1;
                if pages_at_instant >= MAX_PAGES_AT_ONE_INSTANT {
                    return Err(PollError::EndlessInstant { resource_type: resource_type.to_owned() });
                }
                match self.client.next_page(&search, &page, returned).await.map_err(server_error)? {
                    Some(next) => page = next,
                    None => return Ok(()),
                }
            }
        }
    }

    /// Stores one page's resources in order, then moves the checkpoint to
    /// the page's highest `lastUpdated`. Returns whether it moved later.
    async fn ingest_page(
        &self,
        matches: &[&Value],
        at: &mut PollCheckpoint,
        stop: &CancellationToken,
        run: &mut PollRun,
    ) -> Result<bool, PollError> {
        let stamps: Vec<Option<DateTime<Utc>>> = matches.iter().map(|r| last_updated(r)).collect();
        let mut sorted = stamps.iter().flatten();
        if let Some(mut previous) = sorted.next() {
            for stamp in sorted {
                if stamp < previous {
                    return Err(PollError::Unsorted { resource_type: at.resource_type.clone() });
                }
                previous = stamp;
            }
        }
        let seen: BTreeSet<&str> = at.seen_at_checkpoint.iter().map(String::as_str).collect();
        let mut keys = Vec::with_capacity(matches.len());
        for (resource, stamp) in matches.iter().zip(&stamps) {
            if stop.is_cancelled() {
                // Not all of the page is stored: the checkpoint stays.
                return Ok(false);
            }
            let bytes = serde_json::to_vec(resource).unwrap_or_default();
            let key = version_key(resource, &bytes);
            if *stamp == Some(at.last_updated) && seen.contains(key.as_str()) {
                run.duplicates += 1;
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                keys.push(key);
                continue;
            }
            let received = Received {
                bytes,
                peer: Some(format!("fhir_poll:{}", self.server)),
                received_at: Utc::now(),
                idempotency_key: Some(key.clone()),
            };
            match self.ingest.ingest_json(received).await {
                JsonOutcome::Stored { duplicate: false, .. } => {
                    run.stored += 1;
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                }
                // The same version again; KeyReused is the same version
                // serialised differently (element order), not a new body.
                JsonOutcome::Stored { duplicate: true, .. } | JsonOutcome::KeyReused { .. } => {
                    run.duplicates += 1;
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                JsonOutcome::Invalid(_) => {
                    warn!(channel = %self.channel, resource_type = %at.resource_type,
                          "the channel refused a polled resource; it is not stored (see the debug log for its id)");
                    debug!(channel = %self.channel, key = %key, "refused polled resource");
                    run.refused += 1;
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                JsonOutcome::Unavailable(detail) => return Err(PollError::Ingest(detail)),
            }
            keys.push(key);
        }
        let Some(highest) = stamps.iter().flatten().max().copied() else { return Ok(false) };
        if highest < at.last_updated {
            return Ok(false);
        }
        let moved = highest > at.last_updated;
        let mut seen_now: Vec<String> = if moved { Vec::new() } else { at.seen_at_checkpoint.clone() };
        for (key, stamp) in keys.into_iter().zip(&stamps) {
            if *stamp == Some(highest) && !seen_now.contains(&key) && seen_now.len() < MAX_SEEN_AT_CHECKPOINT {
                seen_now.push(key);
            }
        }
        at.last_updated = highest;
        at.seen_at_checkpoint = seen_now;
        self.store.save_poll_checkpoint(at).await?;
        Ok(moved)
    }
}

/// An instant as a search value, UTC, with as many fraction digits as it has.
fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `meta.lastUpdated`, to the microsecond the store keeps.
fn last_updated(resource: &Value) -> Option<DateTime<Utc>> {
    let text = resource.get("meta")?.get("lastUpdated")?.as_str()?;
    let at = DateTime::parse_from_rfc3339(text).ok()?;
    DateTime::from_timestamp_micros(at.timestamp_micros())
}

/// The idempotency key of one resource version (module docs).
fn version_key(resource: &Value, bytes: &[u8]) -> String {
    fn text(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    let resource_type = text(resource.get("resourceType")).unwrap_or("Resource");
    let meta = resource.get("meta");
    let key = match (text(resource.get("id")), text(meta.and_then(|m| m.get("versionId")))) {
        (Some(id), Some(version)) => Some(format!("{resource_type}/{id}/_history/{version}")),
        (Some(id), None) => {
            text(meta.and_then(|m| m.get("lastUpdated"))).map(|at| format!("{resource_type}/{id}@{at}"))
        }
        (None, _) => None,
    };
    match key {
        // The store keeps control ids of up to 199 characters.
        Some(key) if key.len() <= 199 => key,
        _ => {
            use sha2::Digest as _;
            format!("{resource_type}#sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const SERVER: &str = "[fhir_servers.ehr]\nbase_url = \"http://127.0.0.1:1/fhir\"\n";

    fn config(channel: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("version = 1\n{SERVER}{channel}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_source_compiles() {
        let c = config(
            "[channels.poll]\ncontent = \"fhir\"\n[channels.poll.source]\ntype = \"fhir_poll\"\nserver = \"ehr\"\n\
             resources = [\"Patient\", \"Observation?category=laboratory&status=final\"]\n\
             schedule = \"*/5 * * * *\"\npage_size = 50\nstart = \"2026-01-01T00:00:00+01:00\"\nlag = \"5s\"\n",
        )
        .unwrap();
        let SourceConfig::FhirPoll(p) = &c.channels[0].source else { panic!("not fhir_poll") };
        assert_eq!(
            p.targets()[1],
            PollTarget {
                resource_type: "Observation".into(),
                params: vec![("category".into(), "laboratory".into()), ("status".into(), "final".into())],
            }
        );
        assert_eq!(p.when(), RetentionSchedule::Cron("*/5 * * * *".into()));
        assert_eq!(p.first_start(), PollStart::At("2025-12-31T23:00:00Z".parse().unwrap()));
        assert_eq!(p.lag.get(), std::time::Duration::from_secs(5));
        assert_eq!(c.channels[0].source.describe(), "fhir_poll ehr (Patient, Observation), cron */5 * * * *");
        // The defaults: every minute, from now, 100 per page.
        let c = config(
            "[channels.poll]\ncontent = \"fhir\"\n[channels.poll.source]\ntype = \"fhir_poll\"\nserver = \"ehr\"\n\
             resources = [\"Patient\"]\n",
        )
        .unwrap();
        let SourceConfig::FhirPoll(p) = &c.channels[0].source else { panic!("not fhir_poll") };
        assert_eq!(p.when(), RetentionSchedule::Every(std::time::Duration::from_secs(60)));
        assert_eq!((p.first_start(), p.page_size, p.lag.get()), (PollStart::Now, 100, std::time::Duration::ZERO));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let e = config(
            "[channels.poll.source]\ntype = \"fhir_poll\"\nserver = \"nope\"\n\
             resources = [\"patient\", \"Observation?_count=5\", \"Encounter\", \"Encounter?status=finished\"]\n\
             interval = \"1m\"\nschedule = \"0 * * * *\"\npage_size = 0\nstart = \"yesterday\"\n",
        )
        .unwrap_err();
        for expected in [
            "channel \"poll\".source.resources[0]: \"patient\" is not a resource type",
            "channel \"poll\".source.resources[1]: _count is set by the poll itself",
            "channel \"poll\".source.resources[3]: Encounter is listed twice",
            "channel \"poll\".source: set `schedule` (cron) or `interval`, not both",
            "channel \"poll\".source.page_size: between 1 and 1000",
            "channel \"poll\".source.start: \"yesterday\"",
            "channel \"poll\".source.server: no [fhir_servers.nope] table (known: ehr)",
            // HL7 v2 by default: the content must be said.
            "channel \"poll\".content: a fhir_poll source reads FHIR resources",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
        let e = config(
            "[channels.poll]\ncontent = \"fhir\"\n[channels.poll.source]\ntype = \"fhir_poll\"\nserver = \"ehr\"\n\
             resources = []\ninterval = \"0s\"\nschedule_typo = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("channel \"poll\".source"), "{e}");
        assert!(e.contains("schedule_typo"), "{e}");
        let e = config(
            "[channels.poll]\ncontent = \"fhir\"\n[channels.poll.source]\ntype = \"fhir_poll\"\nserver = \"ehr\"\n\
             resources = []\nschedule = \"every day\"\n",
        )
        .unwrap_err();
        assert!(e.contains("channel \"poll\".source.resources: list at least one"), "{e}");
        assert!(e.contains("channel \"poll\".source.schedule: not a cron pattern"), "{e}");
    }

    #[test]
    fn version_keys_name_the_version_or_else_the_instant_or_else_the_body() {
        let with_version = json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3", "lastUpdated": "2026-11-22T08:00:00.123Z"}});
        assert_eq!(version_key(&with_version, b""), "Patient/p1/_history/3");
        let without =
            json!({"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2026-11-22T08:00:00.123Z"}});
        assert_eq!(version_key(&without, b""), "Patient/p1@2026-11-22T08:00:00.123Z");
        let bare = json!({"resourceType": "Patient", "id": "p1"});
        assert!(version_key(&bare, b"{}").starts_with("Patient#sha256:"));
        assert_ne!(version_key(&bare, b"{}"), version_key(&bare, b"{ }"));
    }

    #[test]
    fn instants_keep_their_precision_and_say_utc() {
        let at = last_updated(&json!({"meta": {"lastUpdated": "2026-11-22T09:03:33.3021+01:00"}})).unwrap();
        assert_eq!(instant(at), "2026-11-22T08:03:33.302100Z");
        let at = last_updated(&json!({"meta": {"lastUpdated": "2026-11-22T08:03:33.302Z"}})).unwrap();
        assert_eq!(instant(at), "2026-11-22T08:03:33.302Z");
        // Nanoseconds are cut to the microsecond the store keeps: the `ge`
        // read still includes the resource.
        let at = last_updated(&json!({"meta": {"lastUpdated": "2026-11-22T08:03:33.123456789Z"}})).unwrap();
        assert_eq!(instant(at), "2026-11-22T08:03:33.123456Z");
        assert_eq!(last_updated(&json!({"meta": {"lastUpdated": "yesterday"}})), None);
    }
}
