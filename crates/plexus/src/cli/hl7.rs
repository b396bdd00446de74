//! `plexus hl7`: look at HL7 v2 files from the command line.
//!
//! - `inspect FILE`: the message as a tree, every value with the path that
//!   reads it (the same paths filters, transforms and `get` take), leaves
//!   decoded (escapes and character set), composite values as written.
//! - `validate FILE...`: every issue with its location and table-0357 code;
//!   exits 1 when any file has an error (warnings alone do not fail).
//! - `get FILE PATH`: the decoded value; exits 1 when the path is absent.
//! - `ack FILE [--code AA|AE|AR|CA|CE|CR]`: the acknowledgement Plexus would
//!   answer, segments on separate lines for a terminal (`--raw` for the
//!   exact bytes with CR separators).
//!
//! A FILE may hold several messages (each starting with `MSH`, as in a log
//! dump, or in an FHS/BHS batch); `-` reads standard input. The file is split
//! here rather than with `hl7v2::batch::BatchFile`, which refuses the whole
//! file when one message does not parse: a validator must report that
//! message and still check the others. `validate` also checks a batch
//! envelope's counts with `BatchFile::issues` when the file parses as one.
//! Everything here is printed for the user at the terminal, so unlike the
//! server's log it shows message content.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hl7v2::ack::{Ack, AckCode, AckMode};
use hl7v2::{Issue, Message, Path, Presence, Severity};

/// `plexus hl7` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Hl7Command {
    /// Print a message as a tree of paths and decoded values.
    Inspect(InspectArgs),
    /// Validate messages; exit 1 if any has an error.
    Validate(ValidateArgs),
    /// Print the decoded value at a path (e.g. PID-5-1); exit 1 if absent.
    Get(GetArgs),
    /// Print the acknowledgement (ACK) for a message.
    Ack(AckArgs),
}

/// `plexus hl7 inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The file (`-` for standard input).
    pub file: PathBuf,
    /// Also list empty fields.
    #[arg(long)]
    pub all: bool,
}

/// `plexus hl7 validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The files (`-` for standard input).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print only the files with issues.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `plexus hl7 get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The file (`-` for standard input).
    pub file: PathBuf,
    /// A path such as `PID-5-1`, `PID-3(2)-1`, `OBX(3)-5`.
    pub path: String,
    /// Print the value as written (escapes and deeper separators kept)
    /// instead of decoded.
    #[arg(long)]
    pub raw: bool,
}

/// `plexus hl7 ack`.
#[derive(Debug, clap::Args)]
pub struct AckArgs {
    /// The file (`-` for standard input).
    pub file: PathBuf,
    /// The acknowledgement code. Default: what Plexus would answer after
    /// validation, in the mode MSH-15/MSH-16 ask for.
    #[arg(long, value_enum, ignore_case = true)]
    pub code: Option<CodeArg>,
    /// MSA-3 text (versions before 2.7).
    #[arg(long)]
    pub text: Option<String>,
    /// MSH-10 of the ACK (default: generated from the clock).
    #[arg(long)]
    pub control_id: Option<String>,
    /// MSH-7 of the ACK, e.g. 20261121120000 (default: now, UTC).
    #[arg(long)]
    pub timestamp: Option<String>,
    /// Print the exact bytes, segments separated by CR.
    #[arg(long)]
    pub raw: bool,
}

/// An acknowledgement code on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(clippy::upper_case_acronyms)]
pub enum CodeArg {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept (enhanced mode).
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl From<CodeArg> for AckCode {
    fn from(c: CodeArg) -> AckCode {
        match c {
            CodeArg::AA => AckCode::ApplicationAccept,
            CodeArg::AE => AckCode::ApplicationError,
            CodeArg::AR => AckCode::ApplicationReject,
            CodeArg::CA => AckCode::CommitAccept,
            CodeArg::CE => AckCode::CommitError,
            CodeArg::CR => AckCode::CommitReject,
        }
    }
}

/// Runs a `plexus hl7` subcommand.
pub fn run(cmd: Hl7Command) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match cmd {
        Hl7Command::Inspect(args) => inspect(&args, &mut out),
        Hl7Command::Validate(args) => validate(&args, &mut out),
        Hl7Command::Get(args) => get(&args, &mut out),
        Hl7Command::Ack(args) => ack(&args, &mut out),
    };
    let flushed = out.flush().map_err(anyhow::Error::from);
    match result.and_then(|code| flushed.map(|()| code)) {
        Ok(code) => Ok(code),
        // `plexus hl7 inspect big.hl7 | head` is not an error.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

// ---------------------------------------------------------------------------
// Reading files.

/// One message of a file: where it came from, for people.
struct Input {
    /// `a.hl7`, or `a.hl7 #2` when the file holds several messages.
    label: String,
    bytes: Vec<u8>,
}

fn read_file(file: &FsPath) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        io::stdin().read_to_end(&mut buf).context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// The messages of a file: split before every line that starts with `MSH`,
/// skipping batch envelope lines. A file with no MSH line is one input (so
/// that parsing says what is wrong with it).
fn read_messages(file: &FsPath) -> anyhow::Result<Vec<Input>> {
    Ok(messages_of(file, &read_file(file)?))
}

fn display_name(file: &FsPath) -> String {
    if file.as_os_str() == "-" { "<stdin>".to_owned() } else { file.display().to_string() }
}

fn messages_of(file: &FsPath, bytes: &[u8]) -> Vec<Input> {
    let name = display_name(file);
    let parts = split_messages(bytes);
    let many = parts.len() > 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Input {
            label: if many { format!("{name} #{}", i + 1) } else { name.clone() },
            bytes: bytes.to_vec(),
        })
        .collect()
}

/// Whether the file starts with a batch envelope (FHS or BHS).
fn is_batch(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let head = &bytes[start..];
    head.starts_with(b"FHS") || head.starts_with(b"BHS")
}

fn split_messages(bytes: &[u8]) -> Vec<&[u8]> {
    // Line starts: offset 0 and every byte after CR or LF.
    let line_starts = std::iter::once(0)
        .chain(bytes.iter().enumerate().filter(|(_, b)| matches!(b, b'\r' | b'\n')).map(|(i, _)| i + 1));
    let mut starts = Vec::new();
    let mut envelope = Vec::new();
    for start in line_starts {
        let line = &bytes[start.min(bytes.len())..];
        if line.starts_with(b"MSH") {
            starts.push(start);
        } else if [&b"FHS"[..], b"BHS", b"BTS", b"FTS"].iter().any(|s| line.starts_with(s)) {
            envelope.push(start);
        }
    }
    if starts.is_empty() {
        return vec![bytes];
    }
    let mut out = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let mut end = starts.get(i + 1).copied().unwrap_or(bytes.len());
        // A batch trailer (BTS/FTS) between two messages ends the first.
        if let Some(&e) = envelope.iter().find(|&&e| e > start && e < end) {
            end = e;
        }
        out.push(&bytes[start..end]);
    }
    out
}

/// Parses one input; `Err` is the parse error's text with where it is.
fn parse(input: &Input) -> Result<Message, hl7v2::ParseError> {
    Message::parse(input.bytes.clone())
}

fn describe_parse_error(e: &hl7v2::ParseError) -> String {
    // ParseError's Display names positions, never content.
    e.to_string()
}

// ---------------------------------------------------------------------------
// inspect

fn inspect(args: &InspectArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let inputs = read_messages(&args.file)?;
    let mut failed = false;
    for (i, input) in inputs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        match parse(input) {
            Ok(msg) => write_tree(&msg, &input.label, args.all, out)?,
            Err(e) => {
                failed = true;
                writeln!(out, "{}: does not parse: {}", input.label, describe_parse_error(&e))?;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// One line of the tree: depth, path, and the value shown.
struct Row {
    depth: usize,
    path: String,
    value: String,
}

fn write_tree(msg: &Message, label: &str, all: bool, out: &mut impl Write) -> io::Result<()> {
    let kind = msg
        .message_type()
        .map(|t| {
            [t.code, t.trigger, t.structure]
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join("^")
        })
        .unwrap_or_else(|| "(no MSH-9)".to_owned());
    writeln!(
        out,
        "{label}: {kind}, control id {}, version {}, character set {}, {} segments",
        shown(msg.control_id().as_deref().unwrap_or("(none)")),
        shown(msg.version().as_deref().unwrap_or("(none)")),
        msg.charset().msh18(),
        msg.segment_count()
    )?;
    let rows = tree_rows(msg, all);
    let width = rows.iter().map(|r| r.depth * 2 + r.path.len()).max().unwrap_or(0);
    for r in rows {
        let indent = r.depth * 2;
        if r.value.is_empty() && r.depth == 0 {
            writeln!(out, "{:indent$}{}", "", r.path)?;
        } else {
            let pad = width - indent - r.path.len() + 2;
            writeln!(out, "{:indent$}{}{:pad$}{}", "", r.path, "", r.value)?;
        }
    }
    Ok(())
}

fn tree_rows(msg: &Message, all: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for segment in msg.segments() {
        let name = segment.name();
        // `OBX(2)` when the segment repeats, plain `PID` otherwise: both are
        // paths `get` and filters accept.
        let seg = if msg.segments_named(name).nth(1).is_some() {
            format!("{name}({})", segment.occurrence())
        } else {
            name.to_owned()
        };
        rows.push(Row { depth: 0, path: seg.clone(), value: String::new() });
        for (n, field) in (1..=segment.field_count()).filter_map(|n| segment.field(n).map(|f| (n, f))) {
            if field.is_empty() && !all {
                continue;
            }
            let field_path = format!("{seg}-{n}");
            let reps: Vec<_> = field.repetitions().collect();
            if segment.is_header() && n <= 2 {
                // MSH-1 and MSH-2 are the delimiters themselves.
                rows.push(Row { depth: 1, path: field_path, value: raw_text(field.raw()) });
                continue;
            }
            let repeated = reps.len() > 1;
            if repeated {
                rows.push(Row { depth: 1, path: field_path.clone(), value: raw_text(field.raw()) });
            }
            for (r, rep) in reps.iter().enumerate() {
                if repeated && rep.is_empty() && !all {
                    continue;
                }
                let (rep_path, depth) =
                    if repeated { (format!("{field_path}({})", r + 1), 2) } else { (field_path.clone(), 1) };
                let components: Vec<_> = rep.components().collect();
                if components.len() <= 1 {
                    let subs: Vec<_> = components.first().map(|c| c.subcomponents().collect()).unwrap_or_default();
                    if subs.len() <= 1 {
                        rows.push(Row { depth, path: rep_path, value: leaf(rep.presence(), rep.text()) });
                    } else {
                        // A field whose only component has sub-components:
                        // paths need the component number.
                        rows.push(Row { depth, path: rep_path.clone(), value: raw_text(rep.raw()) });
                        for (s, sub) in subs.iter().enumerate() {
                            if sub.is_empty() && !all {
                                continue;
                            }
                            rows.push(Row {
                                depth: depth + 1,
                                path: format!("{rep_path}-1-{}", s + 1),
                                value: leaf(sub.presence(), sub.text()),
                            });
                        }
                    }
                    continue;
                }
                rows.push(Row { depth, path: rep_path.clone(), value: raw_text(rep.raw()) });
                for (c, component) in components.iter().enumerate() {
                    if component.is_empty() && !all {
                        continue;
                    }
                    let comp_path = format!("{rep_path}-{}", c + 1);
                    let subs: Vec<_> = component.subcomponents().collect();
                    if subs.len() <= 1 {
                        rows.push(Row {
                            depth: depth + 1,
                            path: comp_path,
                            value: leaf(component.presence(), component.text()),
                        });
                        continue;
                    }
                    rows.push(Row { depth: depth + 1, path: comp_path.clone(), value: raw_text(component.raw()) });
                    for (s, sub) in subs.iter().enumerate() {
                        if sub.is_empty() && !all {
                            continue;
                        }
                        rows.push(Row {
                            depth: depth + 2,
                            path: format!("{comp_path}-{}", s + 1),
                            value: leaf(sub.presence(), sub.text()),
                        });
                    }
                }
            }
        }
    }
    rows
}

/// A leaf's shown value: decoded text, `""` marked as the explicit null.
fn leaf(presence: Presence, text: Cow<'_, str>) -> String {
    match presence {
        Presence::Null => "\"\" (explicit null)".to_owned(),
        Presence::Empty | Presence::Absent => String::new(),
        Presence::Valued => shown(&text),
    }
}

/// A composite node as written (escapes and separators kept).
fn raw_text(raw: &[u8]) -> String {
    shown(&String::from_utf8_lossy(raw))
}

/// One line's worth: line breaks and other control characters made
/// visible, so a decoded `\.br\` cannot break the tree.
fn shown(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => s.push_str("\\r"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

// ---------------------------------------------------------------------------
// validate

fn validate(args: &ValidateArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut invalid = 0usize;
    let mut total = 0usize;
    for file in &args.files {
        let bytes = match read_file(file) {
            Ok(bytes) => bytes,
            Err(e) => {
                invalid += 1;
                total += 1;
                writeln!(out, "{}: cannot be read: {e:#}", file.display())?;
                continue;
            }
        };
        if is_batch(&bytes)
            && let Ok(batch) = hl7v2::batch::BatchFile::parse(&bytes)
        {
            let issues = batch.issues();
            if !issues.is_empty() {
                // The envelope counts as one more thing that must be valid.
                total += 1;
                invalid += usize::from(issues.iter().any(|i| i.severity >= Severity::Error));
                writeln!(out, "{} (batch envelope): invalid: {}", display_name(file), count_issues(issues.len(), 0))?;
                for issue in &issues {
                    writeln!(out, "  {}", describe_issue(issue))?;
                }
            }
        }
        for input in messages_of(file, &bytes) {
            total += 1;
            let msg = match parse(&input) {
                Ok(m) => m,
                Err(e) => {
                    invalid += 1;
                    writeln!(out, "{}: invalid: does not parse: {}", input.label, describe_parse_error(&e))?;
                    continue;
                }
            };
            let issues = hl7v2::validate::validate(&msg);
            let errors = issues.iter().filter(|i| i.severity >= Severity::Error).count();
            let warnings = issues.len() - errors;
            if errors > 0 {
                invalid += 1;
            }
            if issues.is_empty() {
                if !args.quiet {
                    writeln!(out, "{}: valid", input.label)?;
                }
                continue;
            }
            let verdict = if errors > 0 { "invalid" } else { "valid" };
            writeln!(out, "{}: {verdict}: {}", input.label, count_issues(errors, warnings))?;
            for issue in &issues {
                writeln!(out, "  {}", describe_issue(issue))?;
            }
        }
    }
    if total > 1 {
        writeln!(out, "{} of {total} messages valid", total - invalid)?;
    }
    Ok(if invalid > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn count_issues(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match (errors, warnings) {
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}

/// `PID(1)-7: 102 Data type error: ... (E)`, plus the diagnostic if any.
fn describe_issue(issue: &Issue) -> String {
    match &issue.diagnostic {
        Some(d) => format!("{issue} [{d}]"),
        None => issue.to_string(),
    }
}

// ---------------------------------------------------------------------------
// get

fn get(args: &GetArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let path = Path::parse(&args.path).map_err(|e| {
        anyhow::anyhow!("invalid path {:?}: expected {} at character {}", args.path, e.reason, e.position + 1)
    })?;
    let inputs = read_messages(&args.file)?;
    let many = inputs.len() > 1;
    let mut missing = false;
    for input in &inputs {
        let msg = parse(input)
            .map_err(|e| anyhow::anyhow!("{}: does not parse: {}", input.label, describe_parse_error(&e)))?;
        let prefix = if many { format!("{}: ", input.label) } else { String::new() };
        if args.raw {
            match msg.get_raw(path) {
                Some(raw) => {
                    out.write_all(prefix.as_bytes())?;
                    out.write_all(raw)?;
                    writeln!(out)?;
                }
                None => missing = true,
            }
        } else {
            match msg.get(path) {
                Some(value) => writeln!(out, "{prefix}{value}")?,
                None => missing = true,
            }
        }
        if missing && !many {
            eprintln!("{path} is not in the message");
        }
    }
    Ok(if missing { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

// ---------------------------------------------------------------------------
// ack

fn ack(args: &AckArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let inputs = read_messages(&args.file)?;
    let timestamp = args.timestamp.clone().unwrap_or_else(hl7_timestamp_now);
    for (i, input) in inputs.iter().enumerate() {
        let control_id = match &args.control_id {
            Some(id) if inputs.len() > 1 => format!("{id}-{}", i + 1),
            Some(id) => id.clone(),
            None => generated_control_id(i),
        };
        let ack = match parse(input) {
            Err(e) => {
                let code = args.code.map_or(AckCode::ApplicationError, AckCode::from);
                let mut ack = Ack::new(code, &control_id, &timestamp);
                if let Some(t) = &args.text {
                    ack = ack.text(t);
                }
                ack.for_parse_error(&e, &input.bytes)
            }
            Ok(msg) => {
                let issues = hl7v2::validate::validate(&msg);
                let code = match args.code {
                    Some(c) => AckCode::from(c),
                    None => {
                        let outcome = hl7v2::validate::outcome(&issues);
                        let mode = AckMode::of(&msg);
                        match mode.immediate(outcome).or_else(|| mode.application(outcome)) {
                            Some(code) => code,
                            None => {
                                eprintln!(
                                    "{}: MSH-15/MSH-16 ask for no acknowledgement of this outcome ({outcome:?}); use --code to build one anyway",
                                    input.label
                                );
                                continue;
                            }
                        }
                    }
                };
                // An accepting ACK carries only warnings: an error ERR in
                // an AA would contradict MSA-1.
                let shown: Vec<Issue> = if code.is_accept() {
                    issues.into_iter().filter(|i| i.severity < Severity::Error).collect()
                } else {
                    issues
                };
                let mut ack = Ack::new(code, &control_id, &timestamp).issues(&shown);
                if let Some(t) = &args.text {
                    ack = ack.text(t);
                }
                ack.for_message(&msg)
            }
        };
        let bytes = ack.to_standard_form();
        if args.raw {
            out.write_all(&bytes)?;
        } else {
            for segment in bytes.split(|&b| b == b'\r').filter(|s| !s.is_empty()) {
                out.write_all(segment)?;
                writeln!(out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ACK` and the UTC time to the millisecond (and the message's position
/// when a file holds several), unique enough for a command-line tool.
fn generated_control_id(index: usize) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = civil(now.as_secs());
    let id = format!("ACK{date}{time}{:03}", now.subsec_millis());
    if index == 0 { id } else { format!("{id}-{}", index + 1) }
}

/// Now as an HL7 DTM in UTC: `YYYYMMDDHHMMSS+0000`.
fn hl7_timestamp_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let (date, time) = civil(secs);
    format!("{date}{time}+0000")
}

/// Seconds since the Unix epoch to (`YYYYMMDD`, `HHMMSS`) in UTC, by Howard
/// Hinnant's days-to-civil algorithm (no date crate needed for one stamp).
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), ("19700101".to_owned(), "000000".to_owned()));
        // 2026-11-21 12:34:56 UTC
        assert_eq!(civil(1_795_264_496), ("20261121".to_owned(), "123456".to_owned()));
        // 2000-02-29, a leap day in a century leap year.
        assert_eq!(civil(951_782_400).0, "20000229");
    }

    #[test]
    fn files_split_before_each_msh_and_drop_batch_envelopes() {
        let file = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\nPID|2\nBTS|2\rFTS|1\r";
        let parts = split_messages(file);
        assert_eq!(parts, [&b"MSH|^~\\&|A\rPID|1\r"[..], &b"MSH|^~\\&|B\nPID|2\n"[..]]);
        assert_eq!(split_messages(b"garbage"), [&b"garbage"[..]]);
        assert_eq!(split_messages(b"MSH|^~\\&|A\r"), [&b"MSH|^~\\&|A\r"[..]]);
    }

    #[test]
    fn shown_keeps_one_value_on_one_line() {
        assert_eq!(shown("a\nb\rc\u{1}"), "a\\nb\\rc\\u{1}");
    }

    #[test]
    fn tree_rows_give_paths_that_read_the_shown_values() {
        let msg = Message::parse(
            "MSH|^~\\&|A|B|C|D|20261121||ORU^R01^ORU_R01|1|P|2.5.1\r\
             PID|1||12345^^^H&1.2&ISO^MR~999^^^SSA||Doe\\T\\Roe^Jane||\"\"\r\
             OBX|1|NM|718-7^Hgb^LN||13.5\r\
             OBX|2|ST|X^Y||a\\.br\\b",
        )
        .unwrap();
        let rows = tree_rows(&msg, false);
        let find = |p: &str| rows.iter().find(|r| r.path == p).map(|r| r.value.as_str());
        assert_eq!(find("MSH-9-2"), Some("R01"));
        assert_eq!(find("PID-3(1)-1"), Some("12345"));
        assert_eq!(find("PID-3(1)-4-2"), Some("1.2"));
        assert_eq!(find("PID-3(2)-4"), Some("SSA"));
        assert_eq!(find("PID-5-1"), Some("Doe&Roe"), "leaves are decoded");
        assert_eq!(find("PID-5"), Some("Doe\\T\\Roe^Jane"), "composites are shown as written");
        assert_eq!(find("PID-7"), Some("\"\" (explicit null)"));
        assert_eq!(find("OBX(2)-5"), Some("a\\nb"));
        assert_eq!(find("PID-2"), None, "empty fields are left out");
        // Every leaf path reads its shown value back through Message::get.
        // A leaf is a field row (not MSH-1/MSH-2) with no deeper row after it.
        let leaves: Vec<_> = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| r.depth > 0 && rows.get(i + 1).is_none_or(|next| next.depth <= r.depth))
            .map(|(_, r)| r)
            .filter(|r| !r.value.contains("explicit null") && !matches!(r.path.as_str(), "MSH-1" | "MSH-2"))
            .collect();
        assert!(leaves.len() > 20, "{}", leaves.len());
        for row in leaves {
            let got = msg.get(row.path.as_str()).map(|v| shown(&v));
            assert_eq!(got.as_deref(), Some(row.value.as_str()), "{}", row.path);
        }
    }
}
