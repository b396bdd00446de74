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
//! With `if_exists = "fail"` (the default) the final step is a hard link,
//! which fails rather than replace an existing file: the temporary file is
//! removed and the delivery fails for good, naming the file. (On a file
//! system without hard links, the name is looked up, then renamed to.) An existing file holding
//! exactly the message's content is taken as delivered instead (it is made
//! durable and the delivery succeeds): it is what an earlier attempt of the
//! same delivery left when it failed, or stopped, after its link.
//!
//! A folder the name makes (`${date:%Y/%m/%d}/...`) is an entry in its
//! parent folder like a file is: a power loss could take a folder whose
//! entry is not on disk, and the delivered files in it, away after the
//! deliveries were completed. So the destination remembers, in memory, the
//! sub-folders whose entry it has fsynced in this process; the first time
//! a batch writes into a sub-folder not remembered, created or found
//! (found: an earlier process, or another worker, may have made it and
//! stopped before its fsync), it fsyncs the parents of that folder and of
//! every folder between it and the destination's folder, and completes
//! none of that folder's files unless those fsyncs worked. What is
//! promised: a delivery is completed only once its file, and the entry of
//! every sub-folder between it and the destination's folder, have been
//! fsynced by this process (each entry once, not once per delivery). The
//! memory is bounded: it is forgotten at 4096 folders and then rebuilt, at
//! the cost of one more fsync per parent; a remembered folder a batch had
//! to create again (it was removed meanwhile) is forgotten and fsynced in
//! again.
//!
//! The destination's own folder: start-up creates it when asked, fsyncing
//! the parent of every folder it creates (a failure fails the start-up),
//! and fsyncs the parent of a folder it finds as well, since an earlier
//! start may have created it and stopped before that fsync; that fsync
//! failing for a found folder is only logged (a parent the engine may not
//! read). Folders above the destination's own parent that an earlier start
//! created without the fsync are not found again: that one gap remains.
//! With `create_directory = false` the folder is the operator's, and
//! nothing above it is fsynced.
//!
//! A worker hands over the deliveries it claimed together
//! ([`FileDestination::send_named`]): their files are written one after the
//! other, then each is fsynced and renamed, and each folder is fsynced once
//! for all of them, in one blocking task. A delivery is answered (and so
//! completed) only after its own file and its folder entry are durable; the
//! batch saves a folder fsync and a thread hand-off per file. The worker
//! hands the contents over rather than lending them, so the blocking task
//! needs no copy of each body.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// What to do when the file already exists with other content: `fail`
    /// (the default: a permanent error naming the file, so a name two
    /// messages share, such as `${control_id}.hl7` after MSH-10 was reused,
    /// never replaces another message's file without a word) or
    /// `overwrite` (replace it). Either way a retry or replay of the same
    /// delivery, finding its own file, succeeds. See [`IfExists`].
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

/// See [`FileConfig::if_exists`]: Mirth's File Writer "file exists"
/// choice, without its `append`, which cannot be made safe to retry (an
/// attempt that appended and then failed to be recorded appends again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfExists {
    /// Replace the existing file atomically: for names that only this
    /// message can have (`${message_id}`), or a folder the reader empties
    /// and where the latest version is what counts.
    Overwrite,
    /// Leave a file with other content and fail the delivery permanently
    /// (the delivery is kept, failed or dead-lettered by `retry`, with the
    /// file named, for an operator); a file with exactly this content is
    /// this delivery's own, written by an earlier attempt, and is taken as
    /// delivered.
    #[default]
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
                create_durably(&dir, &RealDisk).map_err(|e| e.to_string())?;
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
        let folders = Arc::new(DurableFolders::new(directory.clone()));
        Ok(FileDestination { directory, template, if_exists: self.if_exists, folders })
    }
}

/// A built `file` destination.
#[derive(Debug)]
pub struct FileDestination {
    directory: PathBuf,
    template: NameTemplate,
    if_exists: IfExists,
    folders: Arc<DurableFolders>,
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
        answers.pop().unwrap_or_else(|| Err(nothing_written()))
    }

    /// Writes several messages atomically, answering each in order (see
    /// [`FileDestination::send_named`]). The contents are borrowed, so each
    /// is copied for the blocking task; a caller that owns them saves that
    /// copy with [`FileDestination::file_name`] and `send_named`.
    pub async fn send_many(&self, outs: &[Outbound<'_>]) -> Vec<Result<DeliveryResponse, DeliveryError>> {
        let mut answers: Vec<Option<Result<DeliveryResponse, DeliveryError>>> = Vec::with_capacity(outs.len());
        let mut files = Vec::with_capacity(outs.len());
        let mut slots = Vec::with_capacity(outs.len());
        for out in outs {
            match self.file_name(out) {
                Ok(name) => {
                    slots.push(answers.len());
                    files.push(NamedContent { name, content: out.content.to_vec() });
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        for (slot, answer) in slots.into_iter().zip(self.send_named(files).await) {
            answers[slot] = Some(answer);
        }
        answers.into_iter().map(|a| a.unwrap_or_else(|| Err(nothing_written()))).collect()
    }

    /// The name `out` is written under, relative to the folder: an error
    /// (permanent) when the template cannot name it.
    pub fn file_name(&self, out: &Outbound<'_>) -> Result<String, DeliveryError> {
        self.template.render(out)
    }

    /// Writes files named by [`FileDestination::file_name`], taking their
    /// contents, and answers each in order: every file is written and
    /// fsynced, then renamed, then each folder (and the parent of each
    /// folder created) is fsynced once. An answer is `Ok` only once its
    /// file is durable under its final name; a failure affects only the
    /// files it concerns (a failed folder fsync fails every file that
    /// relies on it).
    pub async fn send_named(&self, files: Vec<NamedContent>) -> Vec<Result<DeliveryResponse, DeliveryError>> {
        let count = files.len();
        if count == 0 {
            return Vec::new();
        }
        let directory = self.directory.clone();
        let if_exists = self.if_exists;
        let folders = Arc::clone(&self.folders);
        let first = directory.join(&files[0].name);
        let written = tokio::task::spawn_blocking(move || {
            let pending: Vec<PendingFile> = files
                .into_iter()
                .map(|f| PendingFile { target: directory.join(&f.name), relative: f.name, content: f.content })
                .collect();
            let results = write_batch(&pending, if_exists, &RealDisk, &folders);
            // The names go back for the answers; the contents are dropped
            // here, off the async threads.
            pending.into_iter().map(|f| f.relative).zip(results).collect::<Vec<_>>()
        })
        .await;
        let answers: Vec<_> = match written {
            Ok(written) => written
                .into_iter()
                .map(|(relative, result)| {
                    result.map(|()| DeliveryResponse {
                        kind: ResponseKind::Local,
                        summary: format!("wrote {relative}"),
                        body: None,
                    })
                })
                .collect(),
            Err(e) => {
                // The blocking task panicked or was cancelled: nothing is
                // known to be durable, so every file is retried (under
                // `if_exists = "fail"`, a retry that finds its own file,
                // linked before the panic, takes it: see `publish`).
                let reason = e.to_string();
                warn!(files = count, "file batch task failed; every file of it is retried");
                (0..count)
                    .map(|_| {
                        Err(DeliveryError::File {
                            op: "writing",
                            path: first.clone(),
                            source: std::io::Error::other(reason.clone()),
                        })
                    })
                    .collect()
            }
        };
        debug!(files = count, "file batch written");
        answers
    }
}

/// A message for [`FileDestination::send_named`]: its file name and its
/// content, handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedContent {
    /// What [`FileDestination::file_name`] made of the message.
    pub name: String,
    /// The bytes to write.
    pub content: Vec<u8>,
}

fn nothing_written() -> DeliveryError {
    DeliveryError::Content { reason: "nothing was written".to_owned() }
}

/// One file of a batch: where it goes and what it holds.
struct PendingFile {
    /// The rendered name, relative to the folder (for the response).
    relative: String,
    target: PathBuf,
    content: Vec<u8>,
}

impl PendingFile {
    fn folder(&self) -> &Path {
        parent_of(&self.target)
    }
}

/// The folder `path` is an entry of (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The file system calls of a batch that the unit tests watch or make
/// fail: which folders are fsynced cannot be seen from outside short of a
/// power loss, and a temporary file that cannot be removed cannot be
/// arranged on a real disk by a test running as root.
trait Disk {
    /// fsyncs a folder, making the entries in it durable.
    fn sync_folder(&self, folder: &Path) -> std::io::Result<()>;
    /// Removes a (temporary) file.
    fn remove_file(&self, path: &Path) -> std::io::Result<()>;
}

/// The real file system.
struct RealDisk;

impl Disk for RealDisk {
    fn sync_folder(&self, folder: &Path) -> std::io::Result<()> {
        std::fs::File::open(folder).and_then(|d| d.sync_all())
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Creates `folder` and the folders missing above it (like
/// `create_dir_all`), adding every folder it created itself to `created`,
/// outermost first: each is a new entry in its parent, which must be
/// fsynced for it to survive a power loss. A folder another process
/// creates meanwhile counts as found, not created.
fn create_folder(folder: &Path, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    match std::fs::create_dir(folder) {
        Ok(()) => {
            created.push(folder.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = folder.parent().filter(|p| !p.as_os_str().is_empty()) else { return Err(e) };
            create_folder(parent, created)?;
            match std::fs::create_dir(folder) {
                Ok(()) => {
                    created.push(folder.to_path_buf());
                    Ok(())
                }
                Err(_) if folder.is_dir() => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(_) if folder.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `folder` and the folders missing above it, each made durable in
/// its parent (the destination's folder at start-up: files completed into
/// it later must not vanish with it). A `folder` found rather than created
/// has its parent fsynced too (an earlier start may have created it and
/// stopped before its fsync); that one failing is only logged, as a folder
/// the operator made may lie in a parent the engine cannot open.
fn create_durably(folder: &Path, disk: &dyn Disk) -> std::io::Result<()> {
    let mut created = Vec::new();
    create_folder(folder, &mut created)?;
    // Deepest first, as the batches do; each parent once.
    for new in created.iter().rev() {
        disk.sync_folder(parent_of(new))?;
    }
    if !created.iter().any(|c| c == folder)
        && let Err(e) = disk.sync_folder(parent_of(folder))
    {
        warn!(
            folder = %folder.display(), error = %e,
            "the file destination's folder was found but its entry could not be fsynced in its parent"
        );
    }
    Ok(())
}

/// At most this many sub-folders are remembered as durable: date folders
/// add one a day, but a template such as `${control_id}/...` adds one per
/// message, and forgetting costs only one more fsync per parent.
const KNOWN_FOLDERS_MAX: usize = 4096;

/// The sub-folders of a destination's folder whose entry in their parent
/// this process has fsynced, shared by its workers. A folder not in the
/// set (created by a batch, or found: made by an earlier process or by
/// another worker that has not fsynced yet) has its parent fsynced by the
/// next batch writing below it before any file there is completed.
#[derive(Debug)]
struct DurableFolders {
    /// The destination's folder: made durable at start-up, and the top of
    /// the folders a batch fsyncs.
    root: PathBuf,
    known: Mutex<std::collections::HashSet<PathBuf>>,
}

impl DurableFolders {
    fn new(root: PathBuf) -> DurableFolders {
        DurableFolders { root, known: Mutex::default() }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        // A panic elsewhere leaves the set as valid as it was.
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates `folder` as [`create_folder`] does. A folder it had to
    /// create is forgotten: one remembered was removed since, and its new
    /// entry is not durable.
    fn create(&self, folder: &Path) -> std::io::Result<()> {
        let mut created = Vec::new();
        let result = create_folder(folder, &mut created);
        if !created.is_empty() {
            let mut known = self.known();
            for new in &created {
                known.remove(new);
            }
        }
        result
    }

    /// The folders one of `files` lies in, below the root, whose entry in
    /// their parent is not known to be durable: each file's folder and
    /// those between it and the root.
    fn unsettled(&self, files: &[PendingFile]) -> Vec<PathBuf> {
        let known = self.known();
        let mut unsettled: Vec<PathBuf> = Vec::new();
        for file in files {
            for folder in file.folder().ancestors() {
                if folder == self.root || !folder.starts_with(&self.root) {
                    break;
                }
                if !known.contains(folder) && !unsettled.iter().any(|u| u == folder) {
                    unsettled.push(folder.to_path_buf());
                }
            }
        }
        unsettled
    }

    /// `settled` are durable in their parents now.
    fn settle(&self, settled: Vec<PathBuf>) {
        if settled.is_empty() {
            return;
        }
        let mut known = self.known();
        if known.len() + settled.len() > KNOWN_FOLDERS_MAX {
            known.clear();
        }
        known.extend(settled);
    }
}

/// Writes a batch of files atomically (see the module documentation):
/// temp file + write for each, fsync each, rename (or link) each, then one
/// fsync per folder, including the parent of every folder created. Returns
/// one result per file, in order; a temporary file whose delivery failed is
/// removed.
fn write_batch(
    files: &[PendingFile],
    if_exists: IfExists,
    disk: &dyn Disk,
    folders_state: &DurableFolders,
) -> Vec<Result<(), DeliveryError>> {
    let err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DeliveryError::File { op, path, source }
    };
    // Folders of this batch's files: created (or found) once each.
    let mut folders: Vec<(&Path, Result<(), String>)> = Vec::new();
    let mut results: Vec<Result<(), DeliveryError>> = Vec::with_capacity(files.len());
    let mut temps: Vec<Option<(PathBuf, std::fs::File)>> = Vec::with_capacity(files.len());

    // 1. Write every temporary file.
    for file in files {
        let parent = file.folder();
        let made = match folders.iter().find(|(f, _)| *f == parent) {
            Some((_, r)) => r.clone(),
            None => {
                let r = folders_state.create(parent).map_err(|e| e.to_string());
                folders.push((parent, r.clone()));
                r
            }
        };
        if let Err(reason) = made {
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
                let _ = disk.remove_file(&temp);
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
        let done = synced
            .map_err(err("syncing", &path))
            .and_then(|()| publish(&path, &file.target, &file.content, if_exists, disk));
        if let Err(e) = done {
            let _ = disk.remove_file(&path);
            *result = Err(e);
        }
    }

    // 4. The renames are durable once their folders' entries are on disk,
    //    and a folder not known durable once its parent's entry is: each
    //    such folder is fsynced once, and its failure fails the files
    //    relying on it.
    let unsettled = folders_state.unsettled(files);
    let mut settled = Vec::new();
    for (folder, relying) in folders_to_sync(files, &unsettled) {
        if !relying.iter().any(|&i| results[i].is_ok()) {
            continue;
        }
        match disk.sync_folder(&folder) {
            Ok(()) => settled.extend(unsettled.iter().filter(|u| parent_of(u) == folder).cloned()),
            Err(e) => {
                let reason = e.to_string();
                for i in relying {
                    if results[i].is_ok() {
                        results[i] = Err(DeliveryError::File {
                            op: "syncing folder",
                            path: folder.clone(),
                            source: std::io::Error::new(e.kind(), reason.clone()),
                        });
                    }
                }
            }
        }
    }
    folders_state.settle(settled);
    results
}

/// The folders to fsync after the renames, each with the files (by index)
/// whose durability needs it: a file's own folder, and the parent of every
/// unsettled folder the file lies in. Deepest first, each once.
fn folders_to_sync(files: &[PendingFile], unsettled: &[PathBuf]) -> Vec<(PathBuf, Vec<usize>)> {
    let mut needs: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    let mut need = |folder: &Path, index: usize| match needs.iter_mut().find(|(f, _)| f == folder) {
        Some((_, relying)) => {
            if !relying.contains(&index) {
                relying.push(index);
            }
        }
        None => needs.push((folder.to_path_buf(), vec![index])),
    };
    for (index, file) in files.iter().enumerate() {
        need(file.folder(), index);
        for new in unsettled.iter().filter(|c| file.target.starts_with(c)) {
            need(parent_of(new), index);
        }
    }
    needs.sort_by_key(|(folder, _)| std::cmp::Reverse(folder.components().count()));
    needs
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
/// when the name exists (the caller then removes the temporary file),
/// after which the temporary name is removed. Once the link is made the
/// message is delivered: a temporary name that cannot be removed then is
/// only logged (a hidden leftover readers skip), because failing the
/// delivery would have its retry find its own file and fail for good.
///
/// An existing name that already holds exactly `content` is taken as this
/// delivery's own file, written by an attempt that linked it and then
/// failed before it was answered (its folder fsync failed, its task
/// panicked, the process stopped): the retry makes that file durable and
/// succeeds instead of failing for good with the content in place.
/// Unlinking the name when the folder fsync fails was the alternative,
/// but it covers only that one path (not a panic or a crash between the
/// link and the answer), the unlink is no more durable than the link was
/// (after a power loss the name can be back), and a reader may already
/// have taken the file. Nothing is replaced either way; a different
/// message with byte-identical content is the same delivery to a reader.
fn publish(
    temp: &Path,
    target: &Path,
    content: &[u8],
    if_exists: IfExists,
    disk: &dyn Disk,
) -> Result<(), DeliveryError> {
    match if_exists {
        IfExists::Overwrite => std::fs::rename(temp, target).map_err(|source| DeliveryError::File {
            op: "renaming to",
            path: target.to_path_buf(),
            source,
        }),
        IfExists::Fail => {
            match std::fs::hard_link(temp, target) {
                Ok(()) => {}
                // A file system without hard links (FAT, some network
                // shares: EPERM or ENOTSUP): look, then rename. Only a
                // writer outside Plexus racing for the same name between
                // the two steps can be replaced, where the link could not.
                Err(source)
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
                    ) && !target.exists() =>
                {
                    return std::fs::rename(temp, target).map_err(|source| DeliveryError::File {
                        op: "renaming to",
                        path: target.to_path_buf(),
                        source,
                    });
                }
                Err(source)
                    if source.kind() == std::io::ErrorKind::AlreadyExists
                        || matches!(
                            source.kind(),
                            std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
                        ) =>
                {
                    match holds_exactly(target, content) {
                        // Its own file from an earlier attempt: its
                        // temporary name goes as after a fresh link, and
                        // the caller fsyncs the folder.
                        Ok(true) => debug!("the file was delivered by an earlier attempt"),
                        Ok(false) => return Err(DeliveryError::FileExists { path: target.to_path_buf() }),
                        Err(source) => {
                            return Err(DeliveryError::File { op: "reading", path: target.to_path_buf(), source });
                        }
                    }
                }
                Err(source) => {
                    return Err(DeliveryError::File { op: "linking to", path: target.to_path_buf(), source });
                }
            }
            if let Err(e) = disk.remove_file(temp) {
                // The folder, not the name: names may carry message values.
                warn!(
                    folder = %parent_of(temp).display(), error = %e,
                    "a delivered file's temporary name could not be removed; it stays as a hidden file"
                );
            }
            Ok(())
        }
    }
}

/// Whether `path` is a regular file holding exactly `content`; when it is,
/// its content is fsynced (the attempt that linked it may have stopped
/// before its folder fsync, but its content was fsynced before the link;
/// fsyncing again costs little and does not rely on that).
fn holds_exactly(path: &Path, content: &[u8]) -> std::io::Result<bool> {
    use std::io::Read as _;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() != content.len() as u64 {
        return Ok(false);
    }
    let mut file = std::fs::File::open(path)?;
    let mut found = Vec::with_capacity(content.len());
    // One byte more than expected: a file that grew since is not ours.
    (&mut file).take(content.len() as u64 + 1).read_to_end(&mut found)?;
    if found != content {
        return Ok(false);
    }
    file.sync_all()?;
    Ok(true)
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

    /// Watches the folder fsyncs of a batch; the named folder's fsync and
    /// every temporary file's removal fail when asked to.
    #[derive(Default)]
    struct WatchedDisk {
        synced: std::sync::Mutex<Vec<PathBuf>>,
        failing_folder: Option<PathBuf>,
        removal_fails: bool,
    }

    impl Disk for WatchedDisk {
        fn sync_folder(&self, folder: &Path) -> std::io::Result<()> {
            self.synced.lock().unwrap().push(folder.to_path_buf());
            if self.failing_folder.as_deref() == Some(folder) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            RealDisk.sync_folder(folder)
        }

        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            if self.removal_fails {
                return Err(std::io::Error::other("injected removal failure"));
            }
            RealDisk.remove_file(path)
        }
    }

    fn pending(root: &Path, names: &[&str]) -> Vec<PendingFile> {
        names
            .iter()
            .map(|n| PendingFile { relative: (*n).to_owned(), target: root.join(n), content: n.as_bytes().to_vec() })
            .collect()
    }

    fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
        paths.sort();
        paths
    }

    #[test]
    fn new_folders_are_made_durable_in_their_parents_once_per_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let disk = WatchedDisk::default();
        let files = pending(root, &["2026/11/21/a.hl7", "2026/11/21/b.hl7", "2026/11/22/c.hl7"]);
        let folders = DurableFolders::new(root.to_path_buf());
        let results = write_batch(&files, IfExists::Overwrite, &disk, &folders);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // The root holds the new "2026", which holds "11", which holds the
        // two day folders; each day folder holds its files. Each is fsynced
        // exactly once, the deeper ones first.
        let synced = disk.synced.lock().unwrap().clone();
        let expected: Vec<PathBuf> =
            ["", "2026", "2026/11", "2026/11/21", "2026/11/22"].iter().map(|f| root.join(f)).collect();
        assert_eq!(sorted(synced.clone()), sorted(expected), "{synced:?}");
        let depth = |p: &PathBuf| p.components().count();
        assert!(synced.windows(2).all(|w| depth(&w[0]) >= depth(&w[1])), "{synced:?}");

        // Known durable now: a later batch fsyncs only the file's folder.
        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["2026/11/21/d.hl7"]), IfExists::Overwrite, &disk, &folders);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("2026/11/21")]);
    }

    /// A process that finds a sub-folder it has not made durable itself
    /// (an earlier process made it and stopped before fsyncing its parent)
    /// fsyncs the parents up to the destination's folder the first time it
    /// writes there, and only the file's folder after that.
    #[test]
    fn a_folder_found_by_a_new_process_has_its_parents_fsynced_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("2026/11/21")).unwrap();
        let folders = DurableFolders::new(root.to_path_buf());
        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["2026/11/21/a.hl7"]), IfExists::Overwrite, &disk, &folders);
        assert!(results[0].is_ok(), "{results:?}");
        let expected: Vec<PathBuf> = ["2026/11/21", "2026/11", "2026", ""].iter().map(|f| root.join(f)).collect();
        assert_eq!(*disk.synced.lock().unwrap(), expected);

        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["2026/11/21/b.hl7"]), IfExists::Overwrite, &disk, &folders);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("2026/11/21")]);

        // A remembered folder removed and made again is fsynced in again.
        std::fs::remove_dir_all(root.join("2026/11")).unwrap();
        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["2026/11/21/c.hl7"]), IfExists::Overwrite, &disk, &folders);
        assert!(results[0].is_ok(), "{results:?}");
        let expected: Vec<PathBuf> = ["2026/11/21", "2026/11", "2026"].iter().map(|f| root.join(f)).collect();
        assert_eq!(*disk.synced.lock().unwrap(), expected);
    }

    #[test]
    fn the_memory_of_durable_folders_is_bounded() {
        let folders = DurableFolders::new(PathBuf::from("/out"));
        for day in 0..KNOWN_FOLDERS_MAX + 10 {
            folders.settle(vec![PathBuf::from(format!("/out/{day}"))]);
            assert!(folders.known().len() <= KNOWN_FOLDERS_MAX);
        }
        assert!(folders.known().contains(Path::new(&format!("/out/{}", KNOWN_FOLDERS_MAX + 9))));
    }

    #[test]
    fn the_destinations_folder_is_made_durable_where_it_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("a")).unwrap();
        let disk = WatchedDisk::default();
        create_durably(&root.join("a/b/c"), &disk).unwrap();
        assert!(root.join("a/b/c").is_dir());
        // "b" is new in "a", "c" new in "b"; "a" was there.
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("a/b"), root.join("a")]);
        // Found, not created: an earlier start may have stopped before its
        // fsync, so its parent is fsynced again.
        let disk = WatchedDisk::default();
        create_durably(&root.join("a/b/c"), &disk).unwrap();
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("a/b")]);
        // Found, and the fsync fails: logged, the start goes on.
        let disk = WatchedDisk { failing_folder: Some(root.join("a/b")), ..WatchedDisk::default() };
        create_durably(&root.join("a/b/c"), &disk).unwrap();
    }

    #[test]
    fn a_failed_fsync_of_a_new_folders_parent_fails_the_files_below_it_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("old")).unwrap();
        // "old" is known durable in this process; "new" is created by the
        // batch, and its entry lives in the root.
        let folders = DurableFolders::new(root.to_path_buf());
        folders.settle(vec![root.join("old")]);
        let disk = WatchedDisk { failing_folder: Some(root.to_path_buf()), ..WatchedDisk::default() };
        let files = pending(root, &["new/a.hl7", "old/b.hl7", "new/deeper/c.hl7"]);
        let results = write_batch(&files, IfExists::Overwrite, &disk, &folders);
        for i in [0, 2] {
            match &results[i] {
                Err(DeliveryError::File { op: "syncing folder", path, .. }) => assert_eq!(path, root),
                other => panic!("file {i}: {other:?}"),
            }
        }
        assert!(results[1].is_ok(), "{results:?}");
    }

    /// A folder whose entry is not known to be durable yet (its creator's
    /// fsync of the parent failed, or another worker made it a moment ago
    /// and has not fsynced yet) is found existing by the next batch, which
    /// fsyncs its parent as well; once that worked, it is settled.
    #[test]
    fn a_found_folder_not_yet_durable_has_its_parent_fsynced_by_the_next_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let new_folders = DurableFolders::new(root.to_path_buf());
        let disk = WatchedDisk { failing_folder: Some(root.to_path_buf()), ..WatchedDisk::default() };
        let results = write_batch(&pending(root, &["day/a.hl7"]), IfExists::Overwrite, &disk, &new_folders);
        assert!(results[0].is_err(), "{results:?}");
        assert!(root.join("day").is_dir());

        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["day/b.hl7"]), IfExists::Overwrite, &disk, &new_folders);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("day"), root.to_path_buf()]);

        let disk = WatchedDisk::default();
        let results = write_batch(&pending(root, &["day/c.hl7"]), IfExists::Overwrite, &disk, &new_folders);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(*disk.synced.lock().unwrap(), [root.join("day")], "settled by the batch before");
    }

    #[test]
    fn a_linked_file_is_delivered_even_if_its_temporary_name_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let disk = WatchedDisk { removal_fails: true, ..WatchedDisk::default() };
        let results =
            write_batch(&pending(root, &["a.hl7"]), IfExists::Fail, &disk, &DurableFolders::new(root.to_path_buf()));
        // The name is there with the content: failing the delivery would
        // have its retry find this very file and fail for good.
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(std::fs::read(root.join("a.hl7")).unwrap(), b"a.hl7");
        let hidden = std::fs::read_dir(root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".a.hl7."))
            .count();
        assert_eq!(hidden, 1, "the temporary name is left, hidden");
    }

    /// Under `if_exists = "fail"`, a folder fsync that fails after the
    /// link fails the delivery as transient; its retry finds its own file
    /// and completes instead of failing for good with the content there.
    /// A different content under the name still fails for good.
    #[test]
    fn a_retry_after_a_failed_folder_fsync_takes_its_own_linked_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let disk = WatchedDisk { failing_folder: Some(root.to_path_buf()), ..WatchedDisk::default() };
        let results =
            write_batch(&pending(root, &["a.hl7"]), IfExists::Fail, &disk, &DurableFolders::new(root.to_path_buf()));
        match &results[0] {
            Err(e @ DeliveryError::File { op: "syncing folder", .. }) => {
                assert_eq!(e.class(), super::super::ErrorClass::Transient);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(root.join("a.hl7")).unwrap(), b"a.hl7", "linked before the fsync failed");

        let disk = WatchedDisk::default();
        let results =
            write_batch(&pending(root, &["a.hl7"]), IfExists::Fail, &disk, &DurableFolders::new(root.to_path_buf()));
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(*disk.synced.lock().unwrap(), [root.to_path_buf()], "the folder entry is made durable");
        let names: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.hl7"], "no temporary file left");

        let mut other = pending(root, &["a.hl7"]);
        other[0].content = b"a.hl8".to_vec();
        let results =
            write_batch(&other, IfExists::Fail, &WatchedDisk::default(), &DurableFolders::new(root.to_path_buf()));
        assert!(matches!(&results[0], Err(DeliveryError::FileExists { .. })), "{results:?}");
        assert_eq!(std::fs::read(root.join("a.hl7")).unwrap(), b"a.hl7");
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
