//! The `file` destination: one file per message in a folder.
//!
//! ```toml
//! type = "file"
//! directory = "out/adt"
//! file_name = "${date:%Y%m%d}/${control_id}.hl7"
//! ```
//!
//! # Names
//!
//! The file name is a template: literal text plus `${control_id}` (MSH-10),
//! `${message_id}` (the store's id), `${channel}` and `${date:FORMAT}` (the
//! time the message was *received*, in UTC, formatted with strftime
//! specifiers such as `%Y%m%d`). Using the received time rather than the
//! clock keeps the name stable when a delivery is retried, so a retry
//! rewrites the same file instead of adding a second one.
//!
//! The template's literal text, and a date format, may contain `/` to write
//! into sub-folders (created as needed, e.g. `${date:%Y/%m/%d}/...`); the
//! template may not be absolute nor contain `..`. Values are untrusted
//! (most come from the message): between slashes, every character outside
//! `[A-Za-z0-9._-]` becomes `_`, a value of only dots becomes underscores,
//! a dot that would start a name becomes `_` (no hidden files), and each
//! value is cut at 100 bytes, so no message can name a path outside the
//! folder.
//!
//! # Atomicity
//!
//! A reader of the folder never sees a partial file: the content is written
//! to a hidden temporary file in the same folder (`.NAME.UUID.tmp`), flushed
//! to disk with fsync, then renamed over the final name, and the folder
//! itself is fsynced so the rename survives a power loss. Programs that
//! poll the folder should ignore names starting with a dot.
//! With `if_exists = "fail"` the final step is a hard link, which fails
//! rather than replace an existing file.
//!
//! A worker hands over the deliveries it claimed together
//! ([`FileDestination::send_many`]): their files are written one after the
//! other, then each is fsynced and renamed, and each folder is fsynced once
//! for all of them, in one blocking task. A delivery is answered (and so
//! completed) only after its own file and its folder entry are durable; the
//! batch saves a folder fsync and a thread hand-off per file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use tracing::{debug, warn};

use super::{BuildContext, DeliveryError, DeliveryResponse, DestinationError, Outbound, ResponseKind};
use crate::config::ConfigErrors;

/// Configuration of a `file` destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The folder to write into (relative to the config file's folder).
    pub directory: PathBuf,
    /// The file-name template (see the module documentation).
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// What to do when the file already exists: `overwrite` (the default:
    /// a retried delivery rewrites its own file) or `fail` (a permanent
    /// error, the delivery is dead-lettered).
    #[serde(default)]
    pub if_exists: IfExists,
    /// Create the folder at start-up when it is missing (default true).
    #[serde(default = "default_true")]
    pub create_directory: bool,
}

fn default_file_name() -> String {
    "${message_id}.hl7".to_owned()
}

fn default_true() -> bool {
    true
}

/// See [`FileConfig::if_exists`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfExists {
    /// Replace the existing file atomically.
    #[default]
    Overwrite,
    /// Leave it and fail the delivery permanently.
    Fail,
}

impl FileConfig {
    /// Checks the folder and the template (no I/O).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if self.directory.as_os_str().is_empty() {
            errors.push(format!("{path}.directory"), "must not be empty");
        }
        if let Err(e) = NameTemplate::parse(&self.file_name) {
            errors.push(format!("{path}.file_name"), e);
        }
    }

    /// Creates (or checks) the folder.
    pub async fn build(&self, ctx: &BuildContext) -> Result<FileDestination, DestinationError> {
        let template = NameTemplate::parse(&self.file_name).map_err(|e| {
            let mut errors = ConfigErrors::default();
            errors.push("file_name", e);
            DestinationError::Invalid(errors)
        })?;
        let directory = ctx.resolve(&self.directory);
        let create = self.create_directory;
        let dir = directory.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<(), String> {
            if create {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            }
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err("not a folder".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        checked.map_err(|reason| DestinationError::Directory { path: directory.clone(), reason })?;
        Ok(FileDestination { directory, template, if_exists: self.if_exists })
    }
}

/// A built `file` destination.
#[derive(Debug)]
pub struct FileDestination {
    directory: PathBuf,
    template: NameTemplate,
    if_exists: IfExists,
}

impl FileDestination {
    /// The folder written into.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Writes one message atomically; the response names the file
    /// (relative to the folder).
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        let mut answers = self.send_many(std::slice::from_ref(out)).await;
        answers.pop().unwrap_or_else(|| Err(DeliveryError::Content { reason: "nothing was written".to_owned() }))
    }

    /// Writes several messages atomically, answering each in order: every
    /// file is written and fsynced, then renamed, then each folder is
    /// fsynced once. An answer is `Ok` only once its file is durable under
    /// its final name; a failure affects only the files it concerns (a
    /// failed folder fsync fails every file of that folder).
    pub async fn send_many(&self, outs: &[Outbound<'_>]) -> Vec<Result<DeliveryResponse, DeliveryError>> {
        let mut answers: Vec<Option<Result<DeliveryResponse, DeliveryError>>> = Vec::with_capacity(outs.len());
        let mut files = Vec::with_capacity(outs.len());
        for (index, out) in outs.iter().enumerate() {
            match self.template.render(out) {
                Ok(relative) => {
                    let target = self.directory.join(&relative);
                    files.push(PendingFile { index, relative, target, content: out.content.to_vec() });
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        if !files.is_empty() {
            let if_exists = self.if_exists;
            let first = files[0].target.clone();
            let count = files.len();
            let written = tokio::task::spawn_blocking(move || {
                let results = write_batch(&files, if_exists);
                files.into_iter().zip(results).collect::<Vec<_>>()
            })
            .await;
            match written {
                Ok(written) => {
                    for (file, result) in written {
                        answers[file.index] = Some(result.map(|()| DeliveryResponse {
                            kind: ResponseKind::Local,
                            summary: format!("wrote {}", file.relative),
                            body: None,
                        }));
                    }
                }
                Err(e) => {
                    // The blocking task panicked or was cancelled: nothing
                    // is known to be durable, so every file is retried.
                    let reason = e.to_string();
                    warn!(files = count, "file batch task failed; every file of it is retried");
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(Err(DeliveryError::File {
                            op: "writing",
                            path: first.clone(),
                            source: std::io::Error::other(reason.clone()),
                        }));
                    }
                }
            }
        }
        debug!(files = outs.len(), "file batch written");
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(DeliveryError::Content { reason: "nothing was written".to_owned() })))
            .collect()
    }
}

/// One file of a batch: where it goes and what it holds.
struct PendingFile {
    /// Its position in the batch.
    index: usize,
    /// The rendered name, relative to the folder (for the response).
    relative: String,
    target: PathBuf,
    content: Vec<u8>,
}

/// Writes a batch of files atomically (see the module documentation):
/// temp file + write for each, fsync each, rename (or link) each, then one
/// fsync per folder. Returns one result per file, in order; a temporary
/// file whose delivery failed is removed.
fn write_batch(files: &[PendingFile], if_exists: IfExists) -> Vec<Result<(), DeliveryError>> {
    let err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DeliveryError::File { op, path, source }
    };
    // Folders created (or found) in this batch: created once, fsynced once.
    let mut folders: Vec<(&Path, Result<(), String>)> = Vec::new();
    let mut results: Vec<Result<(), DeliveryError>> = Vec::with_capacity(files.len());
    let mut temps: Vec<Option<(PathBuf, std::fs::File)>> = Vec::with_capacity(files.len());

    // 1. Write every temporary file.
    for file in files {
        let parent = file.target.parent().unwrap_or(Path::new("."));
        let created = match folders.iter().find(|(f, _)| *f == parent) {
            Some((_, r)) => r.clone(),
            None => {
                let r = std::fs::create_dir_all(parent).map_err(|e| e.to_string());
                folders.push((parent, r.clone()));
                r
            }
        };
        if let Err(reason) = created {
            results.push(Err(DeliveryError::File {
                op: "creating folder",
                path: parent.to_path_buf(),
                source: std::io::Error::other(reason),
            }));
            temps.push(None);
            continue;
        }
        let name = file.target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = parent.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(err("creating", &temp))
            .and_then(|mut f| f.write_all(&file.content).map(|()| f).map_err(err("writing", &temp)));
        match written {
            Ok(f) => {
                results.push(Ok(()));
                temps.push(Some((temp, f)));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                results.push(Err(e));
                temps.push(None);
            }
        }
    }

    // 2. Make each one's content durable, side by side: one fsync waits
    //    for the disk, and concurrent ones share the file system's journal
    //    commits, where one after the other would pay a disk flush each.
    let synced = sync_all_files(&temps);
    // 3. Give each durable file its name.
    for (((file, result), temp), synced) in files.iter().zip(results.iter_mut()).zip(temps).zip(synced) {
        let Some((path, handle)) = temp else { continue };
        drop(handle);
        let done = synced.map_err(err("syncing", &path)).and_then(|()| publish(&path, &file.target, if_exists));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&path);
            *result = Err(e);
        }
    }

    // 4. The renames are durable once their folders' entries are on disk.
    for (folder, _) in folders.iter().filter(|(_, created)| created.is_ok()) {
        let renamed = files
            .iter()
            .zip(results.iter())
            .any(|(f, r)| r.is_ok() && f.target.parent().unwrap_or(Path::new(".")) == *folder);
        if !renamed {
            continue;
        }
        if let Err(e) = std::fs::File::open(folder).and_then(|d| d.sync_all()) {
            let reason = e.to_string();
            for (file, result) in files.iter().zip(results.iter_mut()) {
                if result.is_ok() && file.target.parent().unwrap_or(Path::new(".")) == *folder {
                    *result = Err(DeliveryError::File {
                        op: "syncing folder",
                        path: folder.to_path_buf(),
                        source: std::io::Error::new(e.kind(), reason.clone()),
                    });
                }
            }
        }
    }
    results
}

/// At most this many threads fsync the files of one batch.
const SYNC_THREADS: usize = 32;

/// fsyncs every open file of `temps` (one result per entry; `Ok` for the
/// empty ones), spreading them over up to [`SYNC_THREADS`] scoped threads.
fn sync_all_files(temps: &[Option<(PathBuf, std::fs::File)>]) -> Vec<std::io::Result<()>> {
    let open = temps.iter().filter(|t| t.is_some()).count();
    if open <= 1 {
        return sync_chunk(temps);
    }
    let per_thread = temps.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        // A thread that cannot start (the process is out of threads) is no
        // reason to fail or abandon the batch: its share is fsynced here.
        let started: Vec<_> = temps
            .chunks(per_thread)
            .map(|chunk| std::thread::Builder::new().spawn_scoped(scope, move || sync_chunk(chunk)).ok())
            .collect();
        started
            .into_iter()
            .zip(temps.chunks(per_thread))
            .flat_map(|(thread, chunk)| match thread {
                Some(h) => h.join().unwrap_or_else(|_| {
                    chunk.iter().map(|_| Err(std::io::Error::other("fsync thread panicked"))).collect()
                }),
                None => sync_chunk(chunk),
            })
            .collect()
    })
}

/// fsyncs the open files of `chunk` one after the other.
fn sync_chunk(chunk: &[Option<(PathBuf, std::fs::File)>]) -> Vec<std::io::Result<()>> {
    chunk.iter().map(|t| t.as_ref().map_or(Ok(()), |(_, f)| f.sync_all())).collect()
}

/// Gives a durable temporary file its final name: a rename (replacing an
/// existing file) or, with `if_exists = "fail"`, a hard link, which fails
/// when the name exists, after which the temporary name is removed.
fn publish(temp: &Path, target: &Path, if_exists: IfExists) -> Result<(), DeliveryError> {
    match if_exists {
        IfExists::Overwrite => std::fs::rename(temp, target).map_err(|source| DeliveryError::File {
            op: "renaming to",
            path: target.to_path_buf(),
            source,
        }),
        IfExists::Fail => {
            std::fs::hard_link(temp, target).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    DeliveryError::FileExists { path: target.to_path_buf() }
                } else {
                    DeliveryError::File { op: "linking to", path: target.to_path_buf(), source }
                }
            })?;
            std::fs::remove_file(temp).map_err(|source| DeliveryError::File {
                op: "removing",
                path: temp.to_path_buf(),
                source,
            })
        }
    }
}

/// A parsed file-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    ControlId,
    MessageId,
    Channel,
    Date(String),
}

/// The longest a single substituted value may be, in bytes.
const VALUE_MAX: usize = 100;
/// The longest file name (one path component) most file systems accept.
const NAME_MAX: usize = 255;

impl NameTemplate {
    /// Parses `${...}` placeholders and checks the literal text is a safe
    /// relative path.
    pub fn parse(template: &str) -> Result<NameTemplate, String> {
        if template.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("unclosed \"${{\" in {template:?}"))?;
            let name = &after[..end];
            parts.push(match name {
                "control_id" => Part::ControlId,
                "message_id" => Part::MessageId,
                "channel" => Part::Channel,
                _ => match name.strip_prefix("date:") {
                    Some(format) => {
                        check_date_format(format)?;
                        Part::Date(format.to_owned())
                    }
                    None => {
                        return Err(format!(
                            "unknown placeholder ${{{name}}} (known: control_id, message_id, channel, date:FORMAT)"
                        ));
                    }
                },
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }

        // The literal skeleton (placeholders stood in by a safe value) must
        // be a plain relative path: no root, no `..`, no empty file name.
        let skeleton: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                _ => "x",
            })
            .collect();
        if skeleton.contains('\\') || skeleton.contains('\0') {
            return Err("must not contain a backslash or NUL".to_owned());
        }
        let path = Path::new(&skeleton);
        for component in path.components() {
            match component {
                Component::Normal(name) if name.to_string_lossy().starts_with('.') => {
                    return Err("a name must not start with \".\" (hidden names are the temporary files)".to_owned());
                }
                Component::Normal(_) => {}
                Component::ParentDir => return Err("must not contain \"..\"".to_owned()),
                Component::CurDir => return Err("must not contain \".\" as a folder".to_owned()),
                Component::RootDir | Component::Prefix(_) => return Err("must be a relative path".to_owned()),
            }
        }
        if skeleton.ends_with('/') {
            return Err("must end with a file name, not \"/\"".to_owned());
        }
        Ok(NameTemplate { parts })
    }

    /// The relative path for `out`, every value sanitised.
    pub fn render(&self, out: &Outbound<'_>) -> Result<String, DeliveryError> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => name.push_str(s),
                Part::ControlId => match out.control_id {
                    Some(id) if !id.is_empty() => push_sanitised(&mut name, id),
                    _ => {
                        return Err(DeliveryError::Content {
                            reason: "the file name uses ${control_id} but the message has none".to_owned(),
                        });
                    }
                },
                Part::MessageId => push_sanitised(&mut name, out.message_id),
                Part::Channel => push_sanitised(&mut name, out.channel),
                Part::Date(format) => {
                    let mut value = String::new();
                    // Checked at parse time; a failure here would be a bug,
                    // reported as an error rather than a panic.
                    write!(value, "{}", out.received_at.format(format))
                        .map_err(|_| DeliveryError::Content { reason: format!("date format {format:?} failed") })?;
                    // The format is configuration, not message content, so
                    // its `/` make sub-folders (`${date:%Y/%m/%d}`); each
                    // part is still sanitised like any value.
                    for (i, piece) in value.split('/').enumerate() {
                        if i > 0 {
                            name.push('/');
                        }
                        push_sanitised(&mut name, piece);
                    }
                }
            }
        }
        if name.split('/').any(|c| c.len() > NAME_MAX) {
            return Err(DeliveryError::Content { reason: format!("a file name is longer than {NAME_MAX} bytes") });
        }
        Ok(name)
    }
}

fn check_date_format(format: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if format.is_empty() {
        return Err("${date:} needs a format, e.g. ${date:%Y%m%d}".to_owned());
    }
    if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        return Err(format!("invalid date format {format:?}"));
    }
    Ok(())
}

/// Appends `value` with every character outside `[A-Za-z0-9._-]` replaced
/// by `_`, cut at [`VALUE_MAX`] bytes; a value of only dots (`.`, `..`)
/// becomes underscores so it cannot name a folder, and a dot that would
/// start a name becomes `_` so no message makes a hidden file (those are
/// the temporary files, which readers skip).
fn push_sanitised(name: &mut String, value: &str) {
    let start = name.len();
    let starts_component = name.is_empty() || name.ends_with('/');
    for c in value.chars().take(VALUE_MAX) {
        name.push(if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' });
    }
    let pushed = &name[start..];
    if pushed.is_empty() {
        name.push('_');
    } else if pushed.bytes().all(|b| b == b'.') {
        let n = pushed.len();
        name.truncate(start);
        name.extend(std::iter::repeat_n('_', n));
    } else if starts_component && pushed.starts_with('.') {
        name.replace_range(start..start + 1, "_");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn outbound<'a>(control_id: Option<&'a str>) -> Outbound<'a> {
        Outbound {
            content: b"MSH|^~\\&|A|B\r",
            content_type: super::super::HL7_V2_CONTENT_TYPE,
            message_id: "0190f0a1-msg",
            channel: "adt-in",
            control_id,
            received_at: chrono::Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 5).unwrap(),
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = NameTemplate::parse("${channel}/${date:%Y%m%d}/${control_id}-${message_id}.hl7").unwrap();
        assert_eq!(t.render(&outbound(Some("CTRL1"))).unwrap(), "adt-in/20261121/CTRL1-0190f0a1-msg.hl7");
    }

    #[test]
    fn control_id_cannot_escape_the_folder() {
        let t = NameTemplate::parse("${control_id}.hl7").unwrap();
        for hostile in ["../../etc/passwd", "/abs", "a\\b", "..", ".", "x\0y", "C:\\x"] {
            let name = t.render(&outbound(Some(hostile))).unwrap();
            assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'), "{name}");
            assert!(!name.starts_with('.'), "{hostile:?} -> {name} would be hidden");
            let path = Path::new(&name);
            assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{hostile:?} -> {name}");
        }
        assert_eq!(t.render(&outbound(Some(".."))).unwrap(), "__.hl7");
    }

    #[test]
    fn date_formats_may_make_sub_folders() {
        let t = NameTemplate::parse("${date:%Y/%m/%d}/${control_id}.hl7").unwrap();
        assert_eq!(t.render(&outbound(Some("C1"))).unwrap(), "2026/11/21/C1.hl7");
        // A format is trusted, but still cannot climb out or hide.
        let t = NameTemplate::parse("${date:../%Y}/x").unwrap();
        assert_eq!(t.render(&outbound(None)).unwrap(), "__/2026/x");
        let t = NameTemplate::parse("${date:.%Y}").unwrap();
        assert_eq!(t.render(&outbound(None)).unwrap(), "_2026");
    }

    #[test]
    fn long_values_are_cut() {
        let t = NameTemplate::parse("${control_id}").unwrap();
        let long = "a".repeat(1000);
        assert_eq!(t.render(&outbound(Some(&long))).unwrap().len(), VALUE_MAX);
    }

    #[test]
    fn missing_control_id_is_a_permanent_error() {
        let t = NameTemplate::parse("${control_id}.hl7").unwrap();
        let err = t.render(&outbound(None)).unwrap_err();
        assert_eq!(err.class(), super::super::ErrorClass::Permanent);
    }

    #[test]
    fn bad_templates_are_rejected() {
        for bad in
            ["", "../x", "/tmp/x", "${nope}", "${control_id", "a/", "${date:}", "a\\b", "x/../y", "./a", ".hidden"]
        {
            assert!(NameTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["x.hl7", "${date:%Y}/${date:%m}/${control_id}.hl7", "a.b/c", "$x{y}.txt"] {
            assert!(NameTemplate::parse(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn validate_reports_the_field() {
        let config = FileConfig {
            directory: "".into(),
            file_name: "${oops}".into(),
            if_exists: IfExists::Overwrite,
            create_directory: true,
        };
        let mut errors = ConfigErrors::default();
        config.validate("d", &mut errors);
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["d.directory", "d.file_name"]);
    }
}
