//! The `file` source: a drop folder polled for files (Mirth's File Reader,
//! Rhapsody's Directory communication point).
//!
//! ```toml
//! [channels.lab-files.source]
//! type = "file"
//! directory = "in/lab"
//! pattern = "*.hl7"
//! interval = "5s"
//! min_age = "1s"
//! sort = "modified"
//! after = "move"
//! move_to = "in/lab-done"
//! error_directory = "in/lab-error"
//! max_size = "64MiB"
//! ```
//!
//! # Design
//!
//! Every `interval` the folder is listed; the files whose name matches
//! `pattern` (names starting with a dot are never taken: they are other
//! programs' temporary files, the `file` destination's included), that were
//! last modified at least `min_age` ago (a file still being written keeps
//! moving its modification time) and that are not larger than `max_size`
//! are taken one at a time, oldest first (`sort = "modified"`) or by name.
//!
//! **Claim.** A file is first renamed into the folder's `.plexus-claimed/`
//! folder under a name that says which process took it
//! (`PID.N@HOST~NAME`, N numbering the sources of the process). A rename within one file system is atomic, so when
//! several nodes (one PostgreSQL store) watch a shared folder, exactly one
//! of them gets each file; the others find it gone and skip it. Nothing is
//! read before the claim.
//!
//! **Ingest.** An HL7 v2 file is split into messages at each `MSH` segment
//! (lines may end in CR, LF or CRLF; they are stored with CR, the HL7
//! segment terminator); the envelope segments of a batch file (FHS, BHS,
//! BTS, FTS) are checked with [`hl7v2::batch::BatchFile`] (a count that
//! does not match is logged) and not stored. Each message then takes the
//! channel's ingest path exactly as an MLLP frame does (parse, validation
//! policy, duplicate detection, stored with its ACK), with the peer
//! `file:NAME`. A JSON or FHIR channel reads one document per file, keyed
//! by its SHA-256 for duplicate detection (the role MSH-10 plays for HL7).
//!
//! **After.** Only once every message of the file is durably stored (or
//! found to be a duplicate of a stored one) is the file moved to `move_to`
//! or deleted. A crash before that leaves the file claimed; the process
//! that claimed it takes it again when it starts (a claimed file whose
//! process is gone, on the same host, is taken back), reads it again, and
//! the store answers the messages already stored as duplicates: nothing is
//! processed twice. A message the ingest path refuses (AR, or AE for a
//! message that does not parse or fails validation), a file over
//! `max_size`, a file with segments outside any message or without any
//! message, sends the file to `error_directory` with a sidecar
//! `NAME.error.txt` naming each refused message (index, control id) and
//! the answer it got; the messages of that file that were accepted stay
//! stored, so the corrected file dropped again stores only the new ones.
//! A file is never deleted unless all its messages were accepted. When the
//! store cannot take a message (or the channel is stopped meanwhile), the
//! file stays claimed and is taken again, first, at the next poll.
//!
//! Names that exist already in `move_to` or `error_directory` are not
//! replaced: the file gets `-1`, `-2` ... before its extension.
//!
//! **Shutdown.** On the shutdown signal the source takes no new file and
//! finishes the one in hand (its commits and its move).
//!
//! No patient data in the log: file names, counts, message indexes, ACK
//! codes and ERR codes and locations only.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use regex::Regex;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::de::PathBuf as CfgPath;
use crate::config::{ByteSize, ConfigErrors, ContentKind, Duration};
use crate::ingest::{AckOutcome, ChannelIngest, JsonOutcome, Received};

/// The folder, inside the watched folder, holding the files being
/// processed.
pub const CLAIMED_FOLDER: &str = ".plexus-claimed";

/// Messages handed to the ingest path together (they share commits).
const INGEST_CHUNK: usize = 128;

/// Configuration of a `file` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The folder to poll (relative to the config file's folder). It must
    /// exist when the engine starts.
    pub directory: PathBuf,
    /// Which file names to take: a glob with `*` (any characters), `?`
    /// (one character), `[abc]`, `[a-z]`, `[!abc]` and `{hl7,txt}`
    /// (alternatives). Case-sensitive. Default `*`.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// Time between two listings of the folder. Default `5s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// A file modified less than this long ago is left for a later poll
    /// (it may still be being written). Default `1s`.
    #[serde(default = "default_min_age")]
    pub min_age: Duration,
    /// Processing order of the files of one poll: `modified` (oldest first,
    /// the default; ties by name) or `name`.
    #[serde(default)]
    pub sort: FileSort,
    /// What happens to a file once all its messages are stored: `move` (to
    /// `move_to`, the default) or `delete`.
    #[serde(default)]
    pub after: AfterProcessing,
    /// Where processed files go with `after = "move"` (required then). Must
    /// exist when the engine starts.
    #[serde(default)]
    pub move_to: Option<PathBuf>,
    /// Where files go that could not be accepted whole (a refused message,
    /// over `max_size`, no message), each with a `NAME.error.txt` saying
    /// why. Required; must exist when the engine starts.
    pub error_directory: PathBuf,
    /// Larger files are not read; they go to `error_directory`. Default
    /// `64MiB`.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
}

fn default_pattern() -> String {
    "*".to_owned()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_min_age() -> Duration {
    Duration::from_secs(1)
}
fn default_max_size() -> ByteSize {
    ByteSize::mib(64)
}

/// See [`FileSourceConfig::sort`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSort {
    /// Oldest modification time first, then by name.
    #[default]
    Modified,
    /// By name (byte order).
    Name,
}

/// See [`FileSourceConfig::after`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterProcessing {
    /// Move the file to `move_to`.
    #[default]
    Move,
    /// Delete the file.
    Delete,
}

impl FileSourceConfig {
    /// Checks the settings (no I/O: the folders are checked at start).
    pub fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.directory.as_os_str().is_empty() {
            errors.push(path.key("directory").to_string(), "must not be empty");
        }
        if let Err(e) = glob_regex(&self.pattern) {
            errors.push(path.key("pattern").to_string(), e);
        }
        if self.interval.get().is_zero() {
            errors.push(path.key("interval").to_string(), "must be more than 0");
        }
        if self.max_size.0 == 0 {
            errors.push(path.key("max_size").to_string(), "must be more than 0");
        }
        match (self.after, &self.move_to) {
            (AfterProcessing::Move, None) => errors.push(
                path.key("move_to").to_string(),
                "required with after = \"move\" (the default); or set after = \"delete\"",
            ),
            (AfterProcessing::Delete, Some(_)) => {
                errors.push(path.key("move_to").to_string(), "only used with after = \"move\"")
            }
            (AfterProcessing::Move, Some(to)) if to.as_os_str().is_empty() => {
                errors.push(path.key("move_to").to_string(), "must not be empty")
            }
            (AfterProcessing::Move, Some(to)) if same_folder(to, &self.directory) => errors.push(
                path.key("move_to").to_string(),
                "must differ from `directory` (processed files would be read again)",
            ),
            _ => {}
        }
        if self.error_directory.as_os_str().is_empty() {
            errors.push(path.key("error_directory").to_string(), "must not be empty");
        } else if same_folder(&self.error_directory, &self.directory) {
            errors.push(
                path.key("error_directory").to_string(),
                "must differ from `directory` (refused files would be read again)",
            );
        }
    }

    /// Checks the folders and prepares the claim folder: the I/O of
    /// starting. Relative paths are resolved against `base_dir`.
    pub async fn build(&self, base_dir: &Path, ingest: Arc<ChannelIngest>) -> Result<FileSource, FileSourceError> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
        let directory = resolve(&self.directory);
        let error_directory = resolve(&self.error_directory);
        let move_to = match self.after {
            AfterProcessing::Move => self.move_to.as_deref().map(resolve),
            AfterProcessing::Delete => None,
        };
        let pattern = glob_regex(&self.pattern).map_err(|reason| FileSourceError::Pattern { reason })?;
        let mut folders = vec![("directory", directory.clone()), ("error_directory", error_directory.clone())];
        if let Some(to) = &move_to {
            folders.push(("move_to", to.clone()));
        }
        let claimed = directory.join(CLAIMED_FOLDER);
        let claim_dir = claimed.clone();
        tokio::task::spawn_blocking(move || -> Result<(), FileSourceError> {
            for (key, folder) in folders {
                match std::fs::metadata(&folder) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(FileSourceError::Folder { key, path: folder, reason: "not a folder".into() });
                    }
                    Err(e) => return Err(FileSourceError::Folder { key, path: folder, reason: e.to_string() }),
                }
            }
            match std::fs::create_dir(&claim_dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && claim_dir.is_dir() => Ok(()),
                Err(e) => Err(FileSourceError::Folder { key: "directory", path: claim_dir, reason: e.to_string() }),
            }
        })
        .await
        .map_err(|e| FileSourceError::Folder {
            key: "directory",
            path: directory.clone(),
            reason: e.to_string(),
        })??;
        Ok(FileSource {
            settings: Arc::new(Settings {
                directory,
                claimed,
                pattern,
                interval: self.interval.get(),
                min_age: self.min_age.get(),
                sort: self.sort,
                move_to,
                error_directory,
                max_size: self.max_size.0,
                tag: claim_tag(),
            }),
            ingest,
        })
    }
}

/// Whether two configured folders are the same, lexically (`a/b`, `a/b/`,
/// `./a/b`): configuration does no I/O, so links are not followed.
fn same_folder(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_owned())
            .collect()
    };
    norm(a) == norm(b)
}

/// A `file` source could not start.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// A folder is missing, not a folder, or not readable.
    #[error("{key} {path:?}: {reason} (the folder must exist when the engine starts)")]
    Folder {
        /// The config key naming it.
        key: &'static str,
        /// The resolved path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pattern does not compile (checked by the config already).
    #[error("pattern: {reason}")]
    Pattern {
        /// Why.
        reason: String,
    },
}

/// Translates a file-name glob into an anchored regular expression.
fn glob_regex(glob: &str) -> Result<Regex, String> {
    if glob.is_empty() {
        return Err("must not be empty".into());
    }
    if glob.contains('/') || glob.contains('\\') {
        return Err("matches file names only: no `/` or `\\`".into());
    }
    let mut re = String::from("^(?s:");
    let mut chars = glob.chars().peekable();
    let mut in_braces = false;
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                re.push('[');
                if matches!(chars.peek(), Some('!') | Some('^')) {
                    chars.next();
                    re.push('^');
                }
                let mut closed = false;
                let mut first = true;
                for c in chars.by_ref() {
                    if c == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    // `-` keeps its range meaning; everything else is literal.
                    if c == '-' {
                        re.push('-');
                    } else {
                        let _ = write!(re, "{}", regex::escape(&c.to_string()));
                    }
                }
                if !closed {
                    return Err(format!("`[` without `]` in {glob:?}"));
                }
                re.push(']');
            }
            '{' if !in_braces => {
                in_braces = true;
                re.push_str("(?:");
            }
            '{' => return Err(format!("nested `{{` in {glob:?}")),
            ',' if in_braces => re.push('|'),
            '}' if in_braces => {
                in_braces = false;
                re.push(')');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    if in_braces {
        return Err(format!("`{{` without `}}` in {glob:?}"));
    }
    re.push_str(")$");
    Regex::new(&re).map_err(|e| format!("not a valid pattern: {e}"))
}

/// Numbers the sources of this process, so that two sources on one folder
/// (two engines in one process, as tests run them) tell their claims apart.
static SOURCES_STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A new claim tag for a source of this process: `PID.N@HOST`.
pub fn claim_tag() -> String {
    let host: String = crate::runtime::host_name()
        .chars()
        .map(|c| if matches!(c, '~' | '/' | '\\' | '@') { '_' } else { c })
        .collect();
    let n = SOURCES_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}@{host}", std::process::id())
}

#[derive(Debug)]
struct Settings {
    directory: PathBuf,
    claimed: PathBuf,
    pattern: Regex,
    interval: std::time::Duration,
    min_age: std::time::Duration,
    sort: FileSort,
    move_to: Option<PathBuf>,
    error_directory: PathBuf,
    max_size: u64,
    tag: String,
}

impl Settings {
    /// Whether a claimed file's tag is this process's, or that of a process
    /// of this host that is gone (it crashed or was stopped mid-file).
    fn is_ours(&self, tag: &str) -> bool {
        if tag == self.tag {
            return true;
        }
        let (Some((pid, host)), Some((_, own_host))) = (tag.split_once('@'), self.tag.split_once('@')) else {
            return false;
        };
        let pid = pid.split_once('.').map_or(pid, |(pid, _)| pid);
        host == own_host && pid.parse::<u32>().is_ok() && !process_alive(pid)
    }
}

/// Whether the process `pid` of this host is running. Without `/proc`
/// (not Linux) a process cannot be looked up, and its files are left to
/// it rather than risk reading a file twice at once.
fn process_alive(pid: &str) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid).exists()
}

/// A started `file` source, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct FileSource {
    settings: Arc<Settings>,
    ingest: Arc<ChannelIngest>,
}

/// A file found by a poll.
#[derive(Debug)]
struct Candidate {
    name: String,
    modified: SystemTime,
}

/// What became of one file.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Every message stored (or a duplicate of a stored one).
    Accepted { messages: usize, duplicates: usize },
    /// At least one message refused, or the file unusable: the report for
    /// the sidecar and a log summary without patient data.
    Refused { report: String, summary: String },
    /// The store could not take a message (or the channel was stopped):
    /// taken again at the next poll.
    Retry,
}

impl FileSource {
    /// The folder polled.
    pub fn directory(&self) -> &Path {
        &self.settings.directory
    }

    /// Polls until `shutdown`, finishing the file in hand.
    pub async fn run(self, shutdown: CancellationToken) {
        let channel = self.ingest.name().to_string();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.ingest.switch().is_stopped() {
                self.poll(&shutdown).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        info!(channel = %channel, "file source stopped");
    }

    /// One poll: this process's claimed files first (left by a crash or
    /// waiting for the store), then the folder's new files.
    async fn poll(&self, shutdown: &CancellationToken) {
        let settings = Arc::clone(&self.settings);
        let listed = tokio::task::spawn_blocking(move || (list_claimed(&settings), list_new(&settings))).await;
        let Ok((claimed, new)) = listed else { return };
        let channel = self.ingest.name();
        match claimed {
            Ok(claimed) => {
                for (claimed_name, name) in claimed {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    let path = self.settings.claimed.join(&claimed_name);
                    // Claimed again under this process's tag, so that no
                    // other starting process of this host takes it too.
                    let own = self.settings.claimed.join(format!("{}~{name}", self.settings.tag));
                    if path != own && (own.symlink_metadata().is_ok() || std::fs::rename(&path, &own).is_err()) {
                        continue;
                    }
                    if !self.process(&own, &name).await {
                        return;
                    }
                }
            }
            Err(e) => warn!(channel = %channel, error = %e, "listing the claimed files failed"),
        }
        let new = match new {
            Ok(new) => new,
            Err(e) => {
                warn!(channel = %channel, folder = %self.settings.directory.display(), error = %e, "listing the folder failed");
                return;
            }
        };
        for candidate in new {
            if shutdown.is_cancelled() || self.ingest.switch().is_stopped() {
                return;
            }
            let from = self.settings.directory.join(&candidate.name);
            let to = self.settings.claimed.join(format!("{}~{}", self.settings.tag, candidate.name));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    debug!(channel = %channel, file = %candidate.name, "taken by another node");
                    continue;
                }
                Err(e) => {
                    warn!(channel = %channel, file = %candidate.name, error = %e, "claiming a file failed");
                    continue;
                }
            }
            if !self.process(&to, &candidate.name).await {
                return;
            }
        }
    }

    /// Reads, ingests and moves one claimed file. False when the file is
    /// kept for a retry (the rest of the poll waits too, keeping order).
    async fn process(&self, claimed: &Path, name: &str) -> bool {
        let channel = self.ingest.name();
        let verdict = self.ingest_file(claimed, name).await;
        match verdict {
            Verdict::Retry => {
                warn!(channel = %channel, file = %name, "the store did not take every message of the file; it is read again at the next poll");
                false
            }
            Verdict::Accepted { messages, duplicates } => {
                let done = match &self.settings.move_to {
                    Some(to) => move_unclobbered(claimed, to, name).map(Some),
                    None => std::fs::remove_file(claimed).map(|()| None),
                };
                match done {
                    Ok(moved) => info!(channel = %channel, file = %name, messages, duplicates,
                        moved_to = moved.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        "file processed"),
                    // Stays claimed: the next poll reads it again and finds
                    // duplicates only.
                    Err(e) => warn!(channel = %channel, file = %name, error = %e, "moving a processed file failed"),
                }
                true
            }
            Verdict::Refused { report, summary } => {
                match move_unclobbered(claimed, &self.settings.error_directory, name) {
                    Ok(moved) => {
                        let sidecar = sidecar_path(&moved);
                        if let Err(e) = std::fs::write(&sidecar, report) {
                            warn!(channel = %channel, file = %name, error = %e, "writing the error report failed");
                        }
                        warn!(channel = %channel, file = %name, reason = %summary,
                              moved_to = %moved.display(), "file refused; moved to the error folder");
                    }
                    Err(e) => {
                        warn!(channel = %channel, file = %name, reason = %summary, error = %e,
                              "file refused, and moving it to the error folder failed")
                    }
                }
                true
            }
        }
    }

    async fn ingest_file(&self, claimed: &Path, name: &str) -> Verdict {
        let size = match std::fs::metadata(claimed) {
            Ok(m) => m.len(),
            Err(e) => return refused(name, format!("the file could not be read: {e}"), "unreadable".into()),
        };
        if size > self.settings.max_size {
            let why = format!("the file is {size} bytes, over max_size ({} bytes)", self.settings.max_size);
            return refused(name, why.clone(), why);
        }
        let bytes = match tokio::fs::read(claimed).await {
            Ok(b) => b,
            Err(e) => return refused(name, format!("the file could not be read: {e}"), "unreadable".into()),
        };
        let peer = Some(format!("file:{name}"));
        match self.ingest.content() {
            ContentKind::Hl7v2 => self.ingest_hl7(name, &bytes, peer).await,
            ContentKind::Json | ContentKind::Fhir => self.ingest_json(name, bytes, peer).await,
        }
    }

    async fn ingest_hl7(&self, name: &str, bytes: &[u8], peer: Option<String>) -> Verdict {
        let split = split_hl7(bytes);
        let channel = self.ingest.name();
        for issue in &split.envelope_issues {
            warn!(channel = %channel, file = %name, issue = %issue, "batch envelope");
        }
        if !split.stray.is_empty() || split.messages.is_empty() {
            let mut report = format!("file: {name}\n");
            if split.messages.is_empty() && split.stray.is_empty() {
                report.push_str("the file holds no HL7 v2 message (no MSH segment)\n");
            }
            for line in &split.stray {
                let _ = writeln!(report, "line {line}: a segment outside any message (before the first MSH)");
            }
            report.push_str("nothing of this file was stored\n");
            let summary = if split.messages.is_empty() && split.stray.is_empty() {
                "no HL7 v2 message".to_owned()
            } else {
                format!("{} segment(s) outside any message", split.stray.len())
            };
            return Verdict::Refused { report, summary };
        }
        let total = split.messages.len();
        let mut duplicates = 0;
        let mut report = String::new();
        let mut refused_count = 0;
        let mut first_reason = String::new();
        let mut index = 0;
        let mut messages = split.messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<Received> =
                messages.by_ref().take(INGEST_CHUNK).map(|m| Received::now(m, peer.clone())).collect();
            for answer in self.ingest.ingest_hl7_many(chunk).await {
                index += 1;
                if answer.store_failed {
                    return Verdict::Retry;
                }
                if answer.outcome == AckOutcome::Accepted {
                    duplicates += usize::from(answer.duplicate);
                    continue;
                }
                refused_count += 1;
                let ack = answer.ack.as_deref().and_then(|a| hl7v2::Message::parse(a).ok());
                let code = answer.code.map(|c| c.as_str().to_owned()).unwrap_or_else(|| match answer.outcome {
                    AckOutcome::Rejected => "rejected".into(),
                    _ => "errored".into(),
                });
                let control_id = ack.as_ref().and_then(|a| a.get("MSA-2")).map(|c| c.into_owned()).unwrap_or_default();
                let errs = ack.as_ref().map(err_summary).unwrap_or_default();
                if first_reason.is_empty() {
                    first_reason = format!("message {index}: {code}{errs}");
                }
                let _ = writeln!(
                    report,
                    "message {index} of {total} (control id {}): {code}{errs}",
                    if control_id.is_empty() { "unknown" } else { &control_id }
                );
                if let Some(ack) = &answer.ack {
                    for segment in String::from_utf8_lossy(ack).split('\r').filter(|s| !s.is_empty()) {
                        let _ = writeln!(report, "    {segment}");
                    }
                }
            }
        }
        if refused_count == 0 {
            return Verdict::Accepted { messages: total, duplicates };
        }
        let report = format!(
            "file: {name}\n{refused_count} of {total} message(s) refused; the others were stored \
             (dropping the corrected file again stores only what is new)\n{report}"
        );
        Verdict::Refused { report, summary: format!("{refused_count} of {total} refused, first {first_reason}") }
    }

    async fn ingest_json(&self, name: &str, bytes: Vec<u8>, peer: Option<String>) -> Verdict {
        use sha2::Digest as _;
        let key = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        let received = Received { idempotency_key: Some(key), ..Received::now(bytes, peer) };
        match self.ingest.ingest_json(received).await {
            JsonOutcome::Stored { duplicate, .. } => {
                Verdict::Accepted { messages: 1, duplicates: usize::from(duplicate) }
            }
            JsonOutcome::Unavailable(_) => Verdict::Retry,
            JsonOutcome::Invalid(reason) => refused(name, reason, "invalid document".into()),
            JsonOutcome::KeyReused { original } => refused(
                name,
                format!("the document's key was used by message {original} with another body"),
                "key reused".into(),
            ),
        }
    }
}

fn refused(name: &str, why: String, summary: String) -> Verdict {
    Verdict::Refused { report: format!("file: {name}\n{why}\nnothing of this file was stored\n"), summary }
}

/// ` (ERR 101 at PID^1^3; ...)` from a NAK's ERR segments: codes and
/// locations, never values.
fn err_summary(ack: &hl7v2::Message) -> String {
    let mut parts = Vec::new();
    for i in 1..=ack.segments().filter(|s| s.name() == "ERR").count() {
        let at = |p: &str| ack.get(format!("ERR({i}){p}")).map(|v| v.into_owned()).unwrap_or_default();
        // 2.5 and later: ERR-3 code, ERR-2 location; up to 2.4: ERR-1.
        let (code, location) = match at("-3-1") {
            c if !c.is_empty() => (c, at("-2").replace('^', "-")),
            _ => (at("-1-4-1"), [at("-1-1"), at("-1-2"), at("-1-3")].join("-")),
        };
        let location = location.trim_end_matches('-').to_owned();
        if code.is_empty() {
            continue;
        }
        parts.push(if location.is_empty() { code } else { format!("{code} at {location}") });
        if parts.len() == 3 {
            break;
        }
    }
    if parts.is_empty() { String::new() } else { format!(" (ERR {})", parts.join("; ")) }
}

/// An HL7 v2 file split into messages.
#[derive(Debug, Default)]
struct Split {
    /// Each message, its segments ended by CR.
    messages: Vec<Vec<u8>>,
    /// Line numbers (1-based) of segments before the first MSH that are
    /// not envelope segments.
    stray: Vec<usize>,
    /// BTS/FTS counts that do not match, and the like.
    envelope_issues: Vec<String>,
}

/// Splits a file at each `MSH` segment; lines end in CR, LF or CRLF.
fn split_hl7(bytes: &[u8]) -> Split {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut split = Split::default();
    let mut current: Option<Vec<u8>> = None;
    let mut envelope = false;
    let mut normalized = Vec::with_capacity(bytes.len() + 1);
    let segment_is =
        |line: &[u8], name: &[u8]| line.starts_with(name) && line.get(3).is_none_or(|b| !b.is_ascii_alphanumeric());
    for (number, line) in lines(bytes).enumerate() {
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            continue;
        }
        normalized.extend_from_slice(line);
        normalized.push(b'\r');
        if segment_is(line, b"MSH") {
            if let Some(m) = current.take() {
                split.messages.push(m);
            }
            current = Some(Vec::with_capacity(line.len() * 8));
        } else if [b"FHS", b"BHS", b"BTS", b"FTS"].iter().any(|n| segment_is(line, *n)) {
            envelope = true;
            if let Some(m) = current.take() {
                split.messages.push(m);
            }
            continue;
        }
        match current.as_mut() {
            Some(m) => {
                m.extend_from_slice(line);
                m.push(b'\r');
            }
            None => split.stray.push(number + 1),
        }
    }
    if let Some(m) = current.take() {
        split.messages.push(m);
    }
    if envelope
        && split.stray.is_empty()
        && let Ok(file) = hl7v2::batch::BatchFile::parse(&normalized)
    {
        split.envelope_issues = file.issues().into_iter().map(|i| i.to_string()).collect();
    }
    split
}

/// The lines of `bytes`, each ended by CR, LF or CRLF (terminator removed).
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        let next = if rest[end..].starts_with(b"\r\n") { end + 2 } else { (end + 1).min(rest.len()) };
        rest = &rest[next..];
        Some(line)
    })
}

/// This process's claimed files (and those of gone processes of this
/// host): (claimed name, original name), in claim-name order.
fn list_claimed(settings: &Settings) -> std::io::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&settings.claimed)? {
        let entry = entry?;
        let Ok(claimed) = entry.file_name().into_string() else { continue };
        let Some((tag, name)) = claimed.split_once('~') else { continue };
        if !name.is_empty() && settings.is_ours(tag) && entry.file_type().is_ok_and(|t| t.is_file()) {
            found.push((claimed.clone(), name.to_owned()));
        }
    }
    found.sort();
    Ok(found)
}

/// The folder's files to take, in processing order.
fn list_new(settings: &Settings) -> std::io::Result<Vec<Candidate>> {
    let now = SystemTime::now();
    let mut found = Vec::new();
    let mut skipped_names = HashSet::new();
    for entry in std::fs::read_dir(&settings.directory)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            skipped_names.insert(entry.file_name());
            continue;
        };
        if name.starts_with('.') || !settings.pattern.is_match(&name) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        // A clock step backwards makes the age negative: not old enough.
        let old_enough = now.duration_since(modified).is_ok_and(|age| age >= settings.min_age);
        if old_enough {
            found.push(Candidate { name, modified });
        }
    }
    if !skipped_names.is_empty() {
        debug!(count = skipped_names.len(), "file names that are not UTF-8 are skipped");
    }
    match settings.sort {
        FileSort::Modified => found.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.name.cmp(&b.name))),
        FileSort::Name => found.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    Ok(found)
}

/// Moves `from` into `folder` as `name`, or `stem-N.ext` when that name is
/// taken, copying when the folder is on another file system. Returns the
/// new path.
fn move_unclobbered(from: &Path, folder: &Path, name: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000u32 {
        let candidate = if n == 0 { folder.join(name) } else { folder.join(format!("{stem}-{n}{ext}")) };
        // The sidecar of an earlier refused file of that name counts too.
        if candidate.symlink_metadata().is_ok() || sidecar_path(&candidate).symlink_metadata().is_ok() {
            continue;
        }
        match std::fs::rename(from, &candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                // Copied under a hidden name, made durable, then renamed, so
                // a reader of that folder never sees half a file.
                let temp = folder.join(format!(".{name}.plexus-moving"));
                std::fs::copy(from, &temp)?;
                std::fs::File::open(&temp)?.sync_all()?;
                std::fs::rename(&temp, &candidate)?;
                std::fs::remove_file(from)?;
                return Ok(candidate);
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("no free name for {name}")))
}

/// `NAME.error.txt` beside `file`.
fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".error.txt");
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn compile(source: &str) -> Result<Config, String> {
        let text = format!(
            "version = 1\n[channels.lab]\n[channels.lab.source]\ntype = \"file\"\n{source}\n\
             [[channels.lab.destinations]]\nname = \"out\"\ntype = \"file\"\ndirectory = \"out\"\n"
        );
        Config::from_toml_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_source_compiles_with_its_defaults() {
        let config =
            compile("directory = \"in\"\nmove_to = \"done\"\nerror_directory = \"error\"").expect("valid config");
        let crate::sources::SourceConfig::File(c) = &config.channels[0].source else { panic!("file source") };
        assert_eq!(c.pattern, "*");
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.min_age, Duration::from_secs(1));
        assert_eq!((c.sort, c.after), (FileSort::Modified, AfterProcessing::Move));
        assert_eq!(c.max_size, ByteSize::mib(64));
        assert_eq!(config.channels[0].source.kind(), "file");
        assert!(config.channels[0].source.own_listener().is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let e = compile(
            "directory = \"in\"\npattern = \"*.[hl7\"\ninterval = \"0s\"\nerror_directory = \"./in\"\nsort = \"size\"",
        )
        .unwrap_err();
        assert!(e.contains("sort"), "{e}");
        let e = compile("directory = \"in\"\npattern = \"*.[hl7\"\ninterval = \"0s\"\nerror_directory = \"./in/\"")
            .unwrap_err();
        for expected in [
            "source.pattern: `[` without `]`",
            "source.interval: must be more than 0",
            "source.move_to: required with after = \"move\"",
            "source.error_directory: must differ from `directory`",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in {e}");
        }
        let e = compile("directory = \"in\"\nafter = \"delete\"\nmove_to = \"done\"\nerror_directory = \"err\"")
            .unwrap_err();
        assert!(e.contains("source.move_to: only used with after = \"delete\"") || e.contains("only used"), "{e}");
        let e = compile("directory = \"in\"\nmove_to = \"in\"\nerror_directory = \"err\"").unwrap_err();
        assert!(e.contains("source.move_to: must differ from `directory`"), "{e}");
        let e = compile("directory = \"in\"\nafter = \"delete\"").unwrap_err();
        assert!(e.contains("error_directory"), "{e}");
        let e =
            compile("directory = \"in\"\nafter = \"delete\"\nerror_directory = \"e\"\nrecursive = true").unwrap_err();
        assert!(e.contains("recursive"), "{e}");
    }

    #[test]
    fn a_json_channel_may_read_files() {
        let text = "version = 1\n[channels.docs]\ncontent = \"fhir\"\n[channels.docs.source]\ntype = \"file\"\n\
                    directory = \"in\"\nafter = \"delete\"\nerror_directory = \"err\"\n";
        Config::from_toml_str(text).expect("a fhir channel with a file source");
    }

    #[test]
    fn globs_match_file_names() {
        let cases = [
            ("*.hl7", "a.hl7", true),
            ("*.hl7", "a.hl7.tmp", false),
            ("*.hl7", "a.HL7", false),
            ("lab_??.txt", "lab_01.txt", true),
            ("lab_??.txt", "lab_1.txt", false),
            ("*.{hl7,txt}", "x.txt", true),
            ("*.{hl7,txt}", "x.json", false),
            ("[!x]*.hl7", "a.hl7", true),
            ("[!x]*.hl7", "x.hl7", false),
            ("[a-c]1", "b1", true),
            ("a+b(1).hl7", "a+b(1).hl7", true),
            ("a+b(1).hl7", "aab(1).hl7", false),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(glob_regex(glob).unwrap().is_match(name), expected, "{glob} vs {name}");
        }
        for bad in ["", "in/*.hl7", "*.[hl7", "*.{a,b", "{a{b}}"] {
            assert!(glob_regex(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn files_split_at_each_msh_whatever_the_line_endings() {
        let a = "MSH|^~\\&|LAB|H|EHR|H|20261121||ORU^R01|A1|P|2.5\rPID|1||1\r";
        let b = "MSH|^~\\&|LAB|H|EHR|H|20261121||ORU^R01|A2|P|2.5\rPID|1||2\r";
        for ending in ["\r", "\n", "\r\n"] {
            let text = format!("\u{feff}{a}\n{b}\n").replace('\r', "\u{1}").replace('\n', "\u{1}");
            let text = text.replace('\u{1}', ending);
            let split = split_hl7(text.as_bytes());
            assert!(split.stray.is_empty(), "{ending:?}");
            assert_eq!(split.messages, vec![a.as_bytes().to_vec(), b.as_bytes().to_vec()], "{ending:?}");
        }
    }

    #[test]
    fn batch_envelopes_are_left_out_and_their_counts_checked() {
        let text = "FHS|^~\\&|LAB\nBHS|^~\\&|LAB\nMSH|^~\\&|LAB|H|||||ORU^R01|B1|P|2.5\nPID|1\n\
                    MSH|^~\\&|LAB|H|||||ORU^R01|B2|P|2.5\nPID|2\nBTS|3\nFTS|1\n";
        let split = split_hl7(text.as_bytes());
        assert_eq!(split.messages.len(), 2);
        assert!(split.messages[1].starts_with(b"MSH") && split.messages[1].ends_with(b"PID|2\r"));
        assert_eq!(split.envelope_issues.len(), 1, "{:?}", split.envelope_issues);
        assert!(split.envelope_issues[0].contains("BTS-1"), "{:?}", split.envelope_issues);

        let stray = split_hl7(b"PID|1\nMSH|^~\\&|A\n");
        assert_eq!((stray.stray, stray.messages.len()), (vec![1], 1));
        assert!(split_hl7(b"\n \n").messages.is_empty());
    }

    #[test]
    fn claims_of_gone_processes_of_this_host_are_taken_back() {
        let settings = Settings {
            directory: PathBuf::new(),
            claimed: PathBuf::new(),
            pattern: glob_regex("*").unwrap(),
            interval: std::time::Duration::from_secs(1),
            min_age: std::time::Duration::ZERO,
            sort: FileSort::Name,
            move_to: None,
            error_directory: PathBuf::new(),
            max_size: 1,
            tag: "100.0@node-a".into(),
        };
        assert!(settings.is_ours("100.0@node-a"));
        assert!(!settings.is_ours("4194305.0@node-b"), "another host's claim is left alone");
        assert!(settings.is_ours("4194305.3@node-a"), "no such process: taken back");
        assert!(settings.is_ours("4194305@node-a"));
        let own = std::process::id().to_string();
        assert!(!settings.is_ours(&format!("{own}.7@node-a")), "a live process keeps its claims");
        assert!(!settings.is_ours("node-a"));
    }

    #[test]
    fn moves_never_replace_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("a.hl7"), "old").unwrap();
        std::fs::write(dst.join("a-1.hl7.error.txt"), "old report").unwrap();
        std::fs::write(src.join("a.hl7"), "new").unwrap();
        let moved = move_unclobbered(&src.join("a.hl7"), &dst, "a.hl7").unwrap();
        assert_eq!(moved, dst.join("a-2.hl7"));
        assert_eq!(std::fs::read_to_string(dst.join("a.hl7")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "new");
        assert_eq!(sidecar_path(&moved), dst.join("a-2.hl7.error.txt"));
    }
}
