//! Transform steps: built-in field steps and sandboxed JavaScript.
//!
//! A channel (and each destination) lists transform steps; a destination's
//! worker applies them at delivery time, in order, to a parsed copy of the
//! stored message, then sends the result. Steps are configured as a list of
//! tables tagged by `type`:
//!
//! ```toml
//! [[channels.adt-in.transform]]
//! type = "set"                      # write a value (escaped for HL7)
//! path = "MSH-5"
//! value = "EHR"
//!
//! [[channels.adt-in.transform]]
//! type = "copy"                     # copy a node, as it is, to another place
//! from = "PID-3(1)-1"
//! to = "PID-2-1"
//!
//! [[channels.adt-in.transform]]
//! type = "delete"                   # clear a field / component, or remove segments
//! path = "ZPI"
//!
//! [[channels.adt-in.transform]]
//! type = "map"                      # map a value through a table
//! path = "PV1-2"
//! table = { I = "INPATIENT", O = "OUTPATIENT" }
//! default = "UNKNOWN"
//!
//! [[channels.adt-in.transform]]
//! type = "route"                    # send to these destinations only
//! when = 'MSH-9-1 == "ORU"'
//! to = ["lab"]
//!
//! [[channels.adt-in.transform]]
//! type = "javascript"
//! script = '''
//! var family = msg.get("PID-5-1");
//! msg.set("PID-5-1", family.toUpperCase());
//! channelMap.put("mrn", msg.get("PID-3-1"));
//! '''
//! timeout_ms = 500
//!
//! [[channels.adt-in.transform]]
//! type = "hl7_to_fhir"              # send a FHIR R4 transaction Bundle instead
//! identifier_systems = { HOSP = "https://hospital.example/mrn" }
//! code_tables = { "0001" = { X = "other" } }
//! ```
//!
//! and, for `json` and `fhir` channels (see [`Content`]):
//!
//! ```toml
//! [[channels.pms-in.transform]]
//! type = "mapping_rules"            # JSON to JSON (or FHIR) by a rule file
//! rules = "pms-patient.yaml"
//! reverse = false
//!
//! [[channels.pms-in.transform]]
//! type = "fhir_to_hl7"              # FHIR R4 to an HL7 v2 message
//! message = "ADT_A08"
//! ```
//!
//! Every built-in step may have a `when` rule (a [`Filter`] expression): the
//! step runs only when the message matches it at that point.
//!
//! # What each step does
//!
//! - **set** `path`, `value`: writes `value` at the first leaf under `path`
//!   (Terser convention: `PID-5` writes PID-5-1-1), escaping HL7 delimiters,
//!   creating the field, repetition, component or segment if needed.
//! - **copy** `from`, `to`: copies the node `from` names, exactly at that
//!   depth and as encoded (components, repetitions and escapes kept), to the
//!   node `to` names. `to` may not be deeper than `from` (a whole field with
//!   components cannot go into one component); that is checked when the
//!   configuration is loaded. When `from` is absent the target is cleared if
//!   it exists, so the target always reflects the source.
//! - **delete** `path`: a path (`PID-19`, `PID-3(2)`, `PID-5-3`) clears that
//!   node; a segment name (`ZPI`) removes every such segment, with an
//!   occurrence (`NTE(2)`) only that one. Deleting what is absent does
//!   nothing. MSH cannot be deleted.
//! - **map** `path`, `table`, optional `to` and `default`: reads the value at
//!   `path` (absent, empty and the explicit null read as `""`), looks it up
//!   in `table` (exact, case-sensitive) and writes the result at `to`
//!   (default: `path` itself). Without a match it writes `default` if given,
//!   and otherwise leaves the message unchanged.
//! - **route** `to`: from now on this message goes only to the listed
//!   destinations (of the channel). Several route steps that fire narrow the
//!   set further (their intersection). A destination left out completes the
//!   delivery as filtered, with the step as the reason.
//! - **javascript** (`script` inline, or `file`), `timeout_ms` (default
//!   1000), `memory_limit_mb` (default 32), `stack_limit_kb` (default 256):
//!   see [below](#javascript).
//! - **hl7_to_fhir** (optional `identifier_systems`, `code_systems`,
//!   `code_tables`, `unknown_authority_prefix`, `default_offset`, the keys
//!   of [`convert::Hl7ToFhirOptions`]): converts the message as transformed
//!   so far to a FHIR R4 transaction Bundle, which the destination sends
//!   instead of the HL7 v2 message, as `application/fhir+json`
//!   ([`TransformOutcome::converted`]). Only `route` steps may follow it. A
//!   message the converter cannot convert (an unsupported type or event, a
//!   missing PID) fails the delivery permanently with the converter's reason.
//! - **fhir_to_hl7** `message` and the keys of [`FhirToHl7Step`]: converts
//!   FHIR R4 JSON to that HL7 v2 message, which later steps edit as any
//!   other.
//! - **mapping_rules** `rules`, `reverse`: maps JSON through a rule file
//!   ([`convert::rules`]).
//!
//! # JavaScript
//!
//! Scripts are what Mirth Connect users write in transformers, run by
//! QuickJS (rquickjs) in a sandbox. The script is the body of a function, so
//! a top-level `return` ends it early. It sees:
//!
//! - `msg.get(path)`: the decoded value (`""` when absent),
//!   `msg.exists(path)` (has a value), `msg.set(path, value)` (any value is
//!   converted to a string; `null`/`undefined` clear it),
//!   `msg.delete(path_or_segment)`, `msg.count("OBX")`,
//!   `msg.addSegment("ZPI|1|x")` (raw, already encoded), `msg.toString()`
//!   (the whole message, segments separated by `\r`).
//! - `channelMap.get(key)`, `.put(key, value)`, `.containsKey(key)`,
//!   `.remove(key)`: a per-message map of strings (Mirth's channel map),
//!   carried in [`TransformContext::channel_map`] to later steps.
//! - `destinationSet.removeAllExcept([names])`, `.remove(name)`,
//!   `.removeAll()`: Mirth's routing calls, the same as a route step.
//! - `logger.debug/info/warn/error(text)`: goes to the log **at debug level
//!   only**, because scripts routinely log field values and patient data
//!   must not reach the log at info or above.
//!
//! The sandbox: each run gets a fresh QuickJS runtime and context (nothing
//! survives from one message to the next, so one message cannot influence
//! another), a memory limit, a native stack limit and a deadline checked by
//! QuickJS's interrupt handler. There is no `std` or `os` module, no
//! `require`, no module loader (`import()` fails), no file, network, timer or
//! process access: the only way out is the objects above. A script that
//! throws, or is stopped by a limit, fails the delivery permanently with the
//! script's message and line ([`TransformError`]); the message is kept and
//! can be replayed after the script is fixed.
//!
//! QuickJS reports an exhausted memory limit as an uncaught `null` when it
//! cannot even allocate the error object; an uncaught `null` or `undefined`
//! is therefore reported as [`TransformError::MemoryLimit`] (a script that
//! throws `null` itself is reported the same way).
//!
//! # Determinism
//!
//! Steps run at delivery time and run again on every retry and replay, so a
//! transform must be a deterministic function of the message: the built-in
//! steps are. JavaScript can reach `Date` and `Math.random`; a script that
//! uses them produces different content on a retry, which is allowed but
//! should be a conscious choice.
//!
//! # Running from async code
//!
//! [`Transform::apply`] is synchronous and may run for up to the sum of the
//! scripts' time limits: call it from `spawn_blocking` (or
//! [`Transform::apply_blocking`], which does so only when the transform has
//! a script). It must run on a thread with at least 2 MiB of stack (tokio's
//! and std's default) since QuickJS's stack limit is measured on the thread
//! it runs on.

mod content;
mod conversion;
mod fhir_to_hl7;
mod rules;
mod script;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hl7v2::{Message, Path};
use serde::{Deserialize, Serialize};
use store::FailureClass;

use crate::config::ConfigErrors;
use crate::filter::Filter;

use script::Script;

pub use content::{Content, ContentStage, Stage, Staged, json_media_type, run_json_stages};
pub use conversion::{Converted, FHIR_JSON, Hl7ToFhirStep};
pub use fhir_to_hl7::FhirToHl7Step;
pub use rules::MappingRulesStep;

/// Default per-run time limit of a JavaScript step.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default memory limit of a JavaScript step.
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 32;
/// Default native stack limit of a JavaScript step.
pub const DEFAULT_STACK_LIMIT_KB: u64 = 256;

/// Largest accepted `timeout_ms`: a script that needs more than a minute per
/// message is a batch job, not a transform.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Largest accepted `memory_limit_mb`.
const MAX_MEMORY_LIMIT_MB: u64 = 1024;
/// Largest accepted `stack_limit_kb`: QuickJS measures the limit on the
/// thread's real stack, so it must stay well under the 2 MiB of a tokio
/// blocking thread or a deep recursion would overflow the thread instead of
/// raising a RangeError.
const MAX_STACK_LIMIT_KB: u64 = 1024;

// ---------------------------------------------------------------------------
// Configuration.

/// One transform step as written in the configuration, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepConfig {
    /// Write a value.
    Set(SetStep),
    /// Copy a node to another place.
    Copy(CopyStep),
    /// Clear a node or remove segments.
    Delete(DeleteStep),
    /// Map a value through a table.
    Map(MapStep),
    /// Route to some destinations only.
    Route(RouteStep),
    /// Run a JavaScript transformer.
    Javascript(JavascriptStep),
    /// Convert the message to a FHIR R4 transaction Bundle.
    Hl7ToFhir(Hl7ToFhirStep),
    /// Convert FHIR R4 JSON to an HL7 v2 message.
    FhirToHl7(FhirToHl7Step),
    /// Map JSON through a rule file.
    MappingRules(MappingRulesStep),
}

/// `type = "set"`: write `value` at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStep {
    /// Where to write, e.g. `MSH-5` or `PID-5-1`.
    pub path: String,
    /// The text to write (escaped for HL7 when written).
    pub value: String,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// `type = "copy"`: copy the node `from` names to the node `to` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyStep {
    /// The source node, e.g. `PID-3(1)-1` or `PV1-3`.
    pub from: String,
    /// The target node; not deeper than `from`.
    pub to: String,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// `type = "delete"`: clear a node, or remove segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteStep {
    /// A path (`PID-19`, `PID-3(2)`) or a segment (`ZPI`, `NTE(2)`).
    pub path: String,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// `type = "map"`: replace a value by its entry in a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    /// The value to look up.
    pub path: String,
    /// Where to write the result (default: `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Value in, value out (exact, case-sensitive keys).
    pub table: BTreeMap<String, String>,
    /// Written when the value is not in the table; without it such a
    /// message is left unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// `type = "route"`: send the message to these destinations only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteStep {
    /// Destination names of the channel.
    pub to: Vec<String>,
    /// Only when the message matches this filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// `type = "javascript"`: a script, inline or from a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JavascriptStep {
    /// The script's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// A file holding the script (UTF-8). Read by [`load_script_files`]
    /// (relative to the configuration's folder) or, failing that, by
    /// [`Transform::compile`] relative to the current directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Time limit per message, in milliseconds (1 to 60000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory limit of the script's heap, in MiB (1 to 1024).
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Native stack limit, in KiB (16 to 1024): bounds recursion depth.
    #[serde(default = "default_stack_limit_kb")]
    pub stack_limit_kb: u64,
    /// The file [`load_script_files`] read `script` from (it clears `file`),
    /// so errors still name the file.
    #[serde(skip)]
    loaded_from: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_memory_limit_mb() -> u64 {
    DEFAULT_MEMORY_LIMIT_MB
}
fn default_stack_limit_kb() -> u64 {
    DEFAULT_STACK_LIMIT_KB
}

impl JavascriptStep {
    /// An inline script with the default limits.
    pub fn inline(script: impl Into<String>) -> Self {
        JavascriptStep {
            script: Some(script.into()),
            file: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_limit_mb: DEFAULT_MEMORY_LIMIT_MB,
            stack_limit_kb: DEFAULT_STACK_LIMIT_KB,
            loaded_from: None,
        }
    }

    /// A script read from `file` (by [`load_script_files`] or by
    /// [`Transform::compile`]) with the default limits.
    pub fn from_file(file: impl Into<PathBuf>) -> Self {
        JavascriptStep { script: None, file: Some(file.into()), ..JavascriptStep::inline("") }
    }
}

/// Reads the `file` of every JavaScript step into its `script`, resolving
/// relative names against `base_dir` (the configuration file's folder).
/// This is the I/O half of compiling a transform, for the loader to call
/// before [`Transform::compile`]; errors are recorded at
/// `{path_prefix}[i].file`. A step that has both `script` and `file` is left
/// alone (compile reports it); a loaded step keeps the file's name for
/// error messages.
pub fn load_script_files(
    steps: &mut [StepConfig],
    base_dir: &std::path::Path,
    path_prefix: &str,
    errors: &mut ConfigErrors,
) {
    for (i, step) in steps.iter_mut().enumerate() {
        if let StepConfig::MappingRules(m) = step {
            if m.text.is_none()
                && let Err(e) = m.load(base_dir)
            {
                errors.push(format!("{path_prefix}[{i}].rules"), e);
            }
            continue;
        }
        let StepConfig::Javascript(js) = step else { continue };
        let (None, Some(file)) = (&js.script, &js.file) else { continue };
        let full = base_dir.join(file);
        match std::fs::read_to_string(&full) {
            Ok(text) => {
                js.script = Some(text);
                js.loaded_from = js.file.take();
            }
            Err(e) => errors.push(format!("{path_prefix}[{i}].file"), format!("cannot read {}: {e}", full.display())),
        }
    }
}

// ---------------------------------------------------------------------------
// Context and outcome.

/// What a transform run knows besides the message, and what it leaves for
/// later steps and stages.
#[derive(Debug, Clone, Default)]
pub struct TransformContext {
    /// The channel's name.
    pub channel: String,
    /// The stored message's id (for log lines; not patient data).
    pub message_id: String,
    /// Mirth's channel map: per-message values scripts share with later
    /// steps (and, if the caller carries the context on, later stages).
    pub channel_map: BTreeMap<String, String>,
    /// When the message was received: MSH-7 of a `fhir_to_hl7` conversion
    /// whose input holds no time.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TransformContext {
    /// A context for one message of `channel`, with an empty channel map.
    pub fn new(channel: &str, message_id: &str) -> Self {
        TransformContext {
            channel: channel.to_owned(),
            message_id: message_id.to_owned(),
            channel_map: BTreeMap::new(),
            received_at: None,
        }
    }
}

/// Which destinations a message goes to after a transform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformOutcome {
    /// `None`: every destination. `Some(set)`: only those.
    only: Option<BTreeSet<String>>,
    /// Destinations taken out explicitly (JavaScript `destinationSet.remove`).
    removed: BTreeSet<String>,
    /// The step that last narrowed the routing, e.g.
    /// `channel "adt-in".transform[3] (route)`.
    routed_by: Option<String>,
    /// What a conversion step made of the message, sent instead of it.
    pub(crate) converted: Option<Converted>,
    /// A JSON step (`mapping_rules`, `fhir_to_hl7`) rewrote the content of
    /// [`Transform::apply_content`].
    pub(crate) rewritten: bool,
}

impl TransformOutcome {
    /// Every destination (no step restricted the routing).
    pub fn all() -> Self {
        TransformOutcome::default()
    }

    /// Whether the message goes to `destination`.
    pub fn routes_to(&self, destination: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(destination)) && !self.removed.contains(destination)
    }

    /// Whether a step restricted the routing at all.
    pub fn is_restricted(&self) -> bool {
        self.only.is_some() || !self.removed.is_empty()
    }

    /// The step that restricted the routing (the reason to record when a
    /// destination is left out).
    pub fn routed_by(&self) -> Option<&str> {
        self.routed_by.as_deref()
    }

    /// The content a conversion step (`hl7_to_fhir`) made of the message:
    /// when present, the destination sends it, with its content type,
    /// instead of the HL7 v2 message.
    pub fn converted(&self) -> Option<&Converted> {
        self.converted.as_ref()
    }

    /// Takes the converted content out (see [`converted`](Self::converted)).
    pub fn take_converted(&mut self) -> Option<Converted> {
        self.converted.take()
    }

    /// Keeps only `names` (intersected with an earlier restriction).
    pub(crate) fn keep_only<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, step: &str) {
        let names: BTreeSet<String> = names.into_iter().map(str::to_owned).collect();
        self.only = Some(match self.only.take() {
            None => names,
            Some(before) => before.intersection(&names).cloned().collect(),
        });
        self.routed_by = Some(step.to_owned());
    }

    /// Takes `name` out.
    pub(crate) fn remove(&mut self, name: &str, step: &str) {
        self.removed.insert(name.to_owned());
        self.routed_by = Some(step.to_owned());
    }

    /// Takes every destination out.
    pub(crate) fn remove_all(&mut self, step: &str) {
        self.only = Some(BTreeSet::new());
        self.routed_by = Some(step.to_owned());
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// Why a transform failed for one message. Always a permanent failure of
/// the delivery ([`class`](TransformError::class)): steps are deterministic,
/// so running them again would fail the same way.
///
/// The text of [`Script`](TransformError::Script) is the script author's
/// message and may hold whatever the script put in it: it goes to the store
/// (read through the API), and should not be logged at info level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The script threw (or did not compile).
    #[error("{step}: script error{}: {message}", at(*line, *column))]
    Script {
        /// The step, e.g. `channel "adt-in".transform[2]`.
        step: String,
        /// The exception's name and message, e.g. `TypeError: x is undefined`.
        message: String,
        /// 1-based line in the script, when QuickJS reported one.
        line: Option<u32>,
        /// 1-based column in that line, when QuickJS reported one.
        column: Option<u32>,
    },
    /// The script ran past its time limit and was interrupted.
    #[error("{step}: script stopped after its time limit of {} ms", limit.as_millis())]
    Timeout {
        /// The step.
        step: String,
        /// The limit that was reached.
        limit: Duration,
    },
    /// The script used more memory than its limit.
    #[error("{step}: script stopped at its memory limit of {} MiB", limit_bytes / (1024 * 1024))]
    MemoryLimit {
        /// The step.
        step: String,
        /// The limit that was reached, in bytes.
        limit_bytes: usize,
    },
    /// A built-in step could not write the message (e.g. a character the
    /// message's MSH-18 character set cannot represent).
    #[error("{step}: cannot write {path}: {reason}")]
    Edit {
        /// The step.
        step: String,
        /// The path written.
        path: String,
        /// Why (names positions and rules, not values).
        reason: String,
    },
    /// A conversion step could not convert the message (an unsupported
    /// message type or event, a required segment missing, ...).
    #[error("{step}: cannot convert the message: {reason}")]
    Convert {
        /// The step.
        step: String,
        /// The converter's reason (names types and positions, not values).
        reason: String,
    },
    /// QuickJS itself could not be started (out of memory at start-up).
    #[error("{step}: the JavaScript engine could not start: {reason}")]
    Engine {
        /// The step.
        step: String,
        /// What failed.
        reason: String,
    },
}

fn at(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl TransformError {
    /// How the delivery fails: always [`FailureClass::Permanent`].
    pub fn class(&self) -> FailureClass {
        FailureClass::Permanent
    }

    /// The step that failed, e.g. `channel "adt-in".transform[2]`.
    pub fn step(&self) -> &str {
        match self {
            TransformError::Script { step, .. }
            | TransformError::Timeout { step, .. }
            | TransformError::MemoryLimit { step, .. }
            | TransformError::Edit { step, .. }
            | TransformError::Convert { step, .. }
            | TransformError::Engine { step, .. } => step,
        }
    }

    /// A short name of the error's kind, safe to log at any level.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::Script { .. } => "script_error",
            TransformError::Timeout { .. } => "script_timeout",
            TransformError::MemoryLimit { .. } => "script_memory_limit",
            TransformError::Edit { .. } => "edit_error",
            TransformError::Convert { .. } => "convert_error",
            TransformError::Engine { .. } => "script_engine",
        }
    }
}

// ---------------------------------------------------------------------------
// Compiled transform.

/// A compiled list of steps. `Send + Sync`: share it in an `Arc` between a
/// destination's workers.
#[derive(Debug, Clone, Default)]
pub struct Transform {
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
struct Step {
    /// `{path_prefix}[i]`, for errors and routing reasons.
    name: String,
    when: Option<Filter>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Set { path: Path, value: String },
    Copy { from: Path, to: Path },
    ClearNode(Path),
    RemoveSegments { name: String, occurrence: Option<usize> },
    Map { from: Path, to: Path, table: BTreeMap<String, String>, default: Option<String> },
    Route(Vec<String>),
    Script(Arc<Script>),
    Hl7ToFhir(Arc<convert::Hl7ToFhirOptions>),
    FhirToHl7(Arc<fhir_to_hl7::FhirToHl7>),
    MappingRules(rules::MappingRulesRun),
}

impl Transform {
    /// Compiles `steps`, reporting every problem at once with its path
    /// (`{path_prefix}[i].field`). Paths and `when` rules are parsed and
    /// scripts syntax-checked here, so a message never meets a typo.
    ///
    /// Compiling does no I/O, except for a JavaScript step that names a
    /// `file` whose text was not loaded by [`load_script_files`]: that file
    /// is read here, relative to the current directory.
    pub fn compile(steps: &[StepConfig], path_prefix: &str) -> Result<Transform, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut compiled = Vec::with_capacity(steps.len());
        for (i, config) in steps.iter().enumerate() {
            let name = format!("{path_prefix}[{i}]");
            let mut c = Compiler { name: &name, errors: &mut errors };
            if let Some(step) = c.step(config) {
                compiled.push(step);
            }
        }
        check_after_conversion(steps, path_prefix, &mut errors);
        errors.into_result(Transform { steps: compiled })
    }

    /// True when there are no steps (the message passes unchanged).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when a step runs JavaScript (and so may take up to its time
    /// limit: run it on a blocking thread).
    pub fn has_scripts(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.action, Action::Script(_)))
    }

    /// True when a step converts the message (`hl7_to_fhir`), so what is
    /// sent is no longer the HL7 v2 message.
    pub fn converts(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.action, Action::Hl7ToFhir(_)))
    }

    /// Records an error for every step of this (destination) transform but
    /// `route` when `channel`, which runs before it, converts the message:
    /// such a step would edit an HL7 v2 message that is no longer sent.
    pub fn check_after(&self, channel: &Transform, errors: &mut ConfigErrors) {
        let Some(conversion) = channel.steps.iter().find(|s| matches!(s.action, Action::Hl7ToFhir(_))) else { return };
        for step in self.steps.iter().filter(|s| !matches!(s.action, Action::Route(_))) {
            errors.push(
                step.name.clone(),
                format!(
                    "comes after the conversion at {}; only route steps may follow a conversion (the HL7 v2 message is \
                     no longer what is sent): move this step into the channel transform, before the conversion",
                    conversion.name
                ),
            );
        }
    }

    /// Records an error for every route step naming a destination that is
    /// not in `known` (the channel's destination names). For the config
    /// loader, which knows the destinations; route targets set by scripts
    /// can only be checked at run time.
    pub fn check_destinations(&self, known: &[&str], errors: &mut ConfigErrors) {
        for step in &self.steps {
            if let Action::Route(names) = &step.action {
                for (j, name) in names.iter().enumerate() {
                    if !known.contains(&name.as_str()) {
                        errors.push(
                            format!("{}.to[{j}]", step.name),
                            format!("no destination named {name:?} in this channel (it has: {})", known.join(", ")),
                        );
                    }
                }
            }
        }
    }

    /// Applies every step in order to `msg`.
    ///
    /// On error the message may be partly transformed: discard it (the
    /// stored original is unchanged). Synchronous, and a JavaScript step may
    /// run up to its time limit: from async code use
    /// [`apply_blocking`](Transform::apply_blocking) or `spawn_blocking`.
    pub fn apply(&self, msg: &mut Message, ctx: &mut TransformContext) -> Result<TransformOutcome, TransformError> {
        let mut outcome = TransformOutcome::all();
        for step in &self.steps {
            if let Some(when) = &step.when
                && !when.matches(msg)
            {
                continue;
            }
            step.run(msg, ctx, &mut outcome)?;
        }
        Ok(outcome)
    }

    /// [`apply`](Transform::apply) for async callers: runs on tokio's
    /// blocking pool when the transform has a script (so a slow script never
    /// stalls the runtime), inline otherwise. Gives the message and context
    /// back with the outcome.
    pub async fn apply_blocking(
        self: Arc<Self>,
        msg: Message,
        ctx: TransformContext,
    ) -> Result<(Message, TransformContext, TransformOutcome), TransformError> {
        self.off_runtime_if_scripted(msg, ctx, Transform::apply).await
    }

    /// Runs `apply` over `value` on tokio's blocking pool when the transform
    /// has a script, inline otherwise; the one place that decides it for
    /// HL7 v2 messages and for JSON content alike.
    pub(crate) async fn off_runtime_if_scripted<T: Send + 'static>(
        self: Arc<Self>,
        mut value: T,
        mut ctx: TransformContext,
        apply: fn(&Transform, &mut T, &mut TransformContext) -> Result<TransformOutcome, TransformError>,
    ) -> Result<(T, TransformContext, TransformOutcome), TransformError> {
        if !self.has_scripts() {
            let outcome = apply(&self, &mut value, &mut ctx)?;
            return Ok((value, ctx, outcome));
        }
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = apply(&self, &mut value, &mut ctx)?;
            Ok((value, ctx, outcome))
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(TransformError::Engine {
                step: "transform".to_owned(),
                reason: format!("the blocking task ended abnormally: {e}"),
            }),
        }
    }
}

impl Step {
    fn run(
        &self,
        msg: &mut Message,
        ctx: &mut TransformContext,
        outcome: &mut TransformOutcome,
    ) -> Result<(), TransformError> {
        let edit_error = |path: &Path, e: hl7v2::EditError| TransformError::Edit {
            step: self.name.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        };
        match &self.action {
            Action::Set { path, value } => msg.set(path, value).map_err(|e| edit_error(path, e)),
            Action::Copy { from, to } => {
                let raw = msg.get_raw(from).map(<[u8]>::to_vec);
                match raw {
                    Some(raw) => msg.set_raw(to, &raw).map_err(|e| edit_error(to, e)),
                    None => clear(msg, to).map_err(|e| edit_error(to, e)),
                }
            }
            Action::ClearNode(path) => clear(msg, path).map_err(|e| edit_error(path, e)),
            Action::RemoveSegments { name, occurrence } => {
                remove_segments(msg, name, *occurrence);
                Ok(())
            }
            Action::Map { from, to, table, default } => {
                let value = msg.valued(from).unwrap_or_default();
                let mapped = table.get(value.as_ref()).or(default.as_ref()).cloned();
                match mapped {
                    Some(v) => msg.set(to, &v).map_err(|e| edit_error(to, e)),
                    None => Ok(()),
                }
            }
            Action::Route(names) => {
                outcome.keep_only(names.iter().map(String::as_str), &format!("{} (route)", self.name));
                Ok(())
            }
            Action::Script(script) => script.run(&self.name, msg, ctx, outcome),
            Action::Hl7ToFhir(options) => conversion::run(&self.name, options, msg, outcome),
            // Checked at load (Transform::check_content): these never meet
            // an HL7 v2 message in a valid configuration.
            Action::FhirToHl7(_) | Action::MappingRules(_) => Err(TransformError::Convert {
                step: self.name.clone(),
                reason: "this step reads JSON and the content is an HL7 v2 message".to_owned(),
            }),
        }
    }
}

/// Clears the node `path` names if it is in the message (never creates it).
fn clear(msg: &mut Message, path: &Path) -> Result<(), hl7v2::EditError> {
    if msg.get_raw(path).is_some_and(|raw| !raw.is_empty()) { msg.set_raw(path, b"") } else { Ok(()) }
}

/// Removes every segment named `name`, or only its `occurrence`th.
/// Returns how many were removed.
fn remove_segments(msg: &mut Message, name: &str, occurrence: Option<usize>) -> usize {
    let indexes: Vec<usize> = match occurrence {
        Some(n) => msg.segment_occurrence(name, n).map(|s| s.index()).into_iter().collect(),
        None => msg.segments_named(name).map(|s| s.index()).collect(),
    };
    // From the last, so earlier indexes stay valid.
    indexes.iter().rev().filter(|&&i| msg.remove_segment(i).is_ok()).count()
}

/// `PID` or `NTE(2)`: a bare segment reference (not a path).
fn segment_ref(text: &str) -> Option<(&str, Option<usize>)> {
    let (name, occurrence) = match text.split_once('(') {
        None => (text, None),
        Some((name, rest)) => (name, Some(rest.strip_suffix(')')?.parse::<usize>().ok().filter(|n| *n >= 1)?)),
    };
    let b = name.as_bytes();
    let ok = b.len() == 3
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    ok.then_some((name, occurrence))
}

/// How deep a path reaches: 0 a whole field, 1 a repetition, 2 a component,
/// 3 a sub-component. Raw bytes from depth `d` hold only separators of
/// deeper levels, so they can be written at any depth `<= d`.
fn depth(path: &Path) -> u8 {
    if path.subcomponent().is_some() {
        3
    } else if path.component().is_some() {
        2
    } else if path.field_repetition().is_some() {
        1
    } else {
        0
    }
}

struct Compiler<'a> {
    name: &'a str,
    errors: &'a mut ConfigErrors,
}

impl Compiler<'_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(format!("{}.{field}", self.name), message);
    }

    /// A path that may be written: valid, and not MSH-1/MSH-2 (the
    /// delimiters).
    fn path(&mut self, field: &str, text: &str, writable: bool) -> Option<Path> {
        match Path::parse(text) {
            Ok(p) if writable && matches!(p.segment(), "MSH" | "FHS" | "BHS") && p.field() <= 2 => {
                self.error(field, format!("{text} holds the delimiters and cannot be written"));
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                self.error(
                    field,
                    format!("invalid path {text:?}: expected {} at character {}", e.reason, e.position + 1),
                );
                None
            }
        }
    }

    fn when(&mut self, when: &Option<String>) -> Option<Option<Filter>> {
        match when {
            None => Some(None),
            Some(text) => {
                match Filter::compile(text) {
                    // Steps with `when` run on HL7 v2 only (steps on JSON content
                    // take none), where a json: path would read as absent and
                    // the rule silently never (or always) match.
                    Ok(f) if f.reads() == crate::filter::Reads::Json => {
                        self.error(
                        "when",
                        format!("{text:?} reads json: paths, but a `when` rule reads the HL7 v2 message (PID-8, MSH-9-1)"),
                    );
                        None
                    }
                    Ok(f) => Some(Some(f)),
                    Err(e) => {
                        self.error("when", format!("{e} in {text:?}"));
                        None
                    }
                }
            }
        }
    }

    fn step(&mut self, config: &StepConfig) -> Option<Step> {
        let (when, action) = match config {
            StepConfig::Set(s) => {
                let when = self.when(&s.when);
                let path = self.path("path", &s.path, true);
                (when?, Action::Set { path: path?, value: s.value.clone() })
            }
            StepConfig::Copy(s) => {
                let when = self.when(&s.when);
                let from = self.path("from", &s.from, false);
                let to = self.path("to", &s.to, true);
                let (from, to) = (from?, to?);
                if depth(&to) > depth(&from) {
                    self.error(
                        "to",
                        format!(
                            "{to} is deeper than {from}: a whole {} cannot be written into one {}; copy {from} to a path at the same level, or copy a deeper part of {from}",
                            level_name(depth(&from)),
                            level_name(depth(&to))
                        ),
                    );
                    return None;
                }
                (when?, Action::Copy { from, to })
            }
            StepConfig::Delete(s) => {
                let when = self.when(&s.when);
                let action = match segment_ref(&s.path) {
                    Some(("MSH", _)) => {
                        self.error("path", "the MSH segment cannot be deleted");
                        None
                    }
                    Some((name, occurrence)) => Some(Action::RemoveSegments { name: name.to_owned(), occurrence }),
                    None => self.path("path", &s.path, true).map(Action::ClearNode),
                };
                (when?, action?)
            }
            StepConfig::Map(s) => {
                let when = self.when(&s.when);
                let from = self.path("path", &s.path, false);
                let to = match &s.to {
                    Some(t) => self.path("to", t, true),
                    None => self.path("path", &s.path, true),
                };
                if s.table.is_empty() && s.default.is_none() {
                    self.error("table", "is empty and there is no default: the step would do nothing");
                    return None;
                }
                (when?, Action::Map { from: from?, to: to?, table: s.table.clone(), default: s.default.clone() })
            }
            StepConfig::Route(s) => {
                let when = self.when(&s.when);
                if s.to.is_empty() {
                    self.error("to", "lists no destination (to drop messages, use a filter)");
                    return None;
                }
                (when?, Action::Route(s.to.clone()))
            }
            StepConfig::Javascript(s) => (None, Action::Script(Arc::new(self.script(s)?))),
            StepConfig::Hl7ToFhir(s) => {
                let when = self.when(&s.when);
                let problems = s.problems();
                for (field, message) in &problems {
                    self.error(field, message);
                }
                let options = if problems.is_empty() { s.options().ok() } else { None };
                (when?, Action::Hl7ToFhir(Arc::new(options?)))
            }
            StepConfig::FhirToHl7(s) => match s.compile() {
                Ok(c) => (None, Action::FhirToHl7(Arc::new(c))),
                Err(problems) => {
                    for (field, message) in problems {
                        self.error(&field, message);
                    }
                    return None;
                }
            },
            StepConfig::MappingRules(s) => match s.compile() {
                Ok(r) => (None, Action::MappingRules(r)),
                Err(e) => {
                    self.error("rules", e);
                    return None;
                }
            },
        };
        Some(Step { name: self.name.to_owned(), when, action })
    }

    fn script(&mut self, s: &JavascriptStep) -> Option<Script> {
        let mut ok = true;
        if !(1..=MAX_TIMEOUT_MS).contains(&s.timeout_ms) {
            self.error("timeout_ms", format!("must be from 1 to {MAX_TIMEOUT_MS}"));
            ok = false;
        }
        if !(1..=MAX_MEMORY_LIMIT_MB).contains(&s.memory_limit_mb) {
            self.error("memory_limit_mb", format!("must be from 1 to {MAX_MEMORY_LIMIT_MB}"));
            ok = false;
        }
        if !(16..=MAX_STACK_LIMIT_KB).contains(&s.stack_limit_kb) {
            self.error("stack_limit_kb", format!("must be from 16 to {MAX_STACK_LIMIT_KB}"));
            ok = false;
        }
        let (source, label) = match (&s.script, &s.file) {
            (Some(_), Some(_)) => {
                self.error("script", "give either `script` or `file`, not both");
                return None;
            }
            (Some(text), None) => (text.clone(), s.loaded_from.as_ref().map(|f| f.display().to_string())),
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(text) => (text, Some(file.display().to_string())),
                Err(e) => {
                    self.error("file", format!("cannot read {}: {e}", file.display()));
                    return None;
                }
            },
            (None, None) => {
                self.error("script", "required (or `file`)");
                return None;
            }
        };
        if !ok {
            return None;
        }
        let limits = script::Limits {
            timeout: Duration::from_millis(s.timeout_ms),
            memory_bytes: usize::try_from(s.memory_limit_mb * 1024 * 1024).unwrap_or(usize::MAX),
            stack_bytes: usize::try_from(s.stack_limit_kb * 1024).unwrap_or(usize::MAX),
        };
        let script = Script::new(source, label.unwrap_or_else(|| self.name.to_owned()), limits);
        if let Err(e) = script.check_syntax() {
            let field = if s.file.is_some() || s.loaded_from.is_some() { "file" } else { "script" };
            self.error(field, e);
            return None;
        }
        Some(script)
    }
}

/// Records an error for every step after a conversion step but `route`:
/// such a step would edit the HL7 v2 message, which is no longer what the
/// destination sends.
fn check_after_conversion(steps: &[StepConfig], path_prefix: &str, errors: &mut ConfigErrors) {
    let Some(first) = steps.iter().position(|s| matches!(s, StepConfig::Hl7ToFhir(_))) else { return };
    for (i, step) in steps.iter().enumerate().skip(first + 1) {
        if !matches!(step, StepConfig::Route(_)) {
            errors.push(
                format!("{path_prefix}[{i}]"),
                format!(
                    "comes after the conversion at {path_prefix}[{first}]; only route steps may follow a conversion \
                     (the HL7 v2 message is no longer what is sent): move this step before it"
                ),
            );
        }
    }
}

fn level_name(depth: u8) -> &'static str {
    match depth {
        0 => "field",
        1 => "repetition",
        2 => "component",
        _ => "sub-component",
    }
}

#[cfg(test)]
mod tests;
