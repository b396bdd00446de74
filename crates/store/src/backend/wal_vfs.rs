//! "plexus-wal": a SQLite VFS that wraps the default one ("unix") and
//! writes a commit's write-ahead-log frames with one system call.
//!
//! Why: SQLite writes each log frame as two `pwrite` calls (its 24-byte
//! header, then the page). A one-message accept commits ~22 frames of
//! 2 KiB, so ~44 calls, and with 32 producers writing frames was 28% of the
//! writer thread's time, most of it per-call kernel work rather than
//! copying (docs/benchmarks.md, helper A, session 5). Here the log file's
//! writes are gathered in a buffer while they are contiguous and written
//! with one `pwrite` per [`WRITE_CHUNK`] bytes (through the inner VFS's own
//! xWrite, which keeps its error handling) when:
//! - xSync is called (the commit's flush; the buffer goes first, then the
//!   inner xSync);
//! - a write is not contiguous with the buffer (a write that falls wholly
//!   inside the buffer, SQLite rewriting a frame of the same transaction,
//!   is applied to the buffer instead), or the buffer would pass
//!   [`FLUSH_BOUND`];
//! - before xRead, xFileSize, xTruncate, xFileControl, xFetch and xClose,
//!   which could observe or change the file.
//!
//! Only files opened with `SQLITE_OPEN_WAL` are wrapped. Every other file
//! (the database, temporary files) is opened by the inner VFS in place, in
//! the memory SQLite gave us, with the inner VFS's own methods: nothing of
//! this module runs for them. Locks, shared memory and the wal-index are the
//! inner VFS's, so connections on "unix" (the sqlx readers and the
//! checkpointer) and the writer on "plexus-wal" share them as before.
//!
//! **Why no other connection can see frames still in the buffer.** Other
//! connections learn of new frames only through the wal-index header
//! (`mxFrame`), which SQLite's `walFrames` updates after it wrote the frames
//! and, with `synchronous=FULL`, after `sqlite3OsSync` on the log
//! (`walIndexAppend` and `walIndexWriteHdr` come after the sync; SQLite
//! 3.50, `walFrames`). Our xSync writes the buffer before it syncs, so every
//! frame a reader or a checkpointer can be told about is in the file (and
//! durable) first; frames past `mxFrame` are ignored by every reader. With
//! `synchronous=NORMAL` a commit does not call xSync, the header would
//! announce frames still in our buffer, and readers would read stale bytes:
//! **the writer opens this VFS only with `synchronous=FULL`**
//! ([`super::sqlite_writer::open_connection`]). Frames written before the
//! commit (a transaction larger than the page cache spills) stay buffered
//! until the commit's sync or until the writer reads them back (xRead
//! flushes first).
//!
//! **Crashes.** Nothing buffered is ever acknowledged: the commit that
//! would make it visible returns only after the flush and the sync. After a
//! crash, recovery reads the log as SQLite wrote it; a buffer lost with the
//! process is a transaction whose commit frame never reached the file, as
//! if the process had died before its `pwrite`s.
//!
//! **Errors.** A failed deferred write is returned by the call that
//! flushed: from xSync it fails the COMMIT, SQLite rolls the transaction
//! back, and the writer answers every request of the batch with the error,
//! never with an ACK. The buffer is dropped either way: the frames of a
//! failed transaction are past `mxFrame` and will be written over.
//!
//! The buffer belongs to one open file of one connection; SQLite calls a
//! file's methods from one thread at a time (the writer thread), so it needs
//! no lock.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use rusqlite::ffi;

/// The name the writer's connection opens the database with.
pub(crate) const VFS_NAME: &str = "plexus-wal";
const VFS_NAME_C: &CStr = c"plexus-wal";

/// The most bytes held before they are written. A 32-producer batch
/// writes ~300 KiB of frames; a bigger transaction (retention, a large
/// batch) is written in pieces of this size.
const FLUSH_BOUND: usize = 1 << 20;

/// The most bytes handed to the inner xWrite at once. The unix VFS masks
/// a write's length to 17 bits (`seekAndWriteFd`: `nBuf &= 0x1ffff`; SQLite
/// itself never writes more than a page), so a longer write would be cut
/// short and reported as a full disk. 124 KiB: ~60 frames of 2 KiB pages.
const WRITE_CHUNK: usize = 0x1f000;

/// The VFS this one wraps (the process's default, "unix" on Linux).
static INNER: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Registers "plexus-wal" once per process (not as the default VFS: sqlx's
/// connections keep "unix"). Returns SQLite's result code on failure.
pub(crate) fn register() -> Result<(), c_int> {
    static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();
    // SAFETY: see `register_once`.
    *REGISTERED.get_or_init(|| unsafe { register_once() })
}

/// # Safety
/// Called once (under the `OnceLock`); reads the inner VFS's struct, which
/// SQLite never frees, and leaks ours, which SQLite keeps a pointer to.
unsafe fn register_once() -> Result<(), c_int> {
    // SAFETY: FFI calls with valid arguments; `inner` is checked for null
    // before it is read.
    unsafe {
        let rc = ffi::sqlite3_initialize();
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
        let inner = ffi::sqlite3_vfs_find(ptr::null());
        if inner.is_null() {
            return Err(ffi::SQLITE_ERROR);
        }
        INNER.store(inner, Ordering::Release);
        // Everything but the name, the file size and xOpen is the inner
        // VFS's, pAppData included, so its methods (xDelete, xAccess,
        // xFullPathname ...) behave the same when called with our pointer.
        let mut vfs: ffi::sqlite3_vfs = *inner;
        vfs.zName = VFS_NAME_C.as_ptr();
        vfs.pNext = ptr::null_mut();
        vfs.szOsFile =
            c_int::try_from(HEADER + usize::try_from((*inner).szOsFile).unwrap_or(0)).map_err(|_| ffi::SQLITE_ERROR)?;
        vfs.xOpen = Some(x_open);
        let vfs = Box::into_raw(Box::new(vfs));
        let rc = ffi::sqlite3_vfs_register(vfs, 0);
        if rc != ffi::SQLITE_OK {
            drop(Box::from_raw(vfs));
            return Err(rc);
        }
        Ok(())
    }
}

/// An open log file: SQLite's `sqlite3_file` first (its methods are
/// [`LOG_METHODS`]), then the inner VFS's file, which lives right after
/// this struct in the same allocation, at offset [`HEADER`].
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Bytes written by SQLite and not yet by us, for the file range
    /// `pending_at .. pending_at + pending.len()`.
    pending: Vec<u8>,
    pending_at: i64,
    #[cfg(test)]
    path: String,
}

/// Where the inner file starts: after `LogFile`, 16-byte aligned.
const HEADER: usize = size_of::<LogFile>().next_multiple_of(16);

static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(log_close),
    xRead: Some(log_read),
    xWrite: Some(log_write),
    xTruncate: Some(log_truncate),
    xSync: Some(log_sync),
    xFileSize: Some(log_file_size),
    xLock: Some(log_lock),
    xUnlock: Some(log_unlock),
    xCheckReservedLock: Some(log_check_reserved_lock),
    xFileControl: Some(log_file_control),
    xSectorSize: Some(log_sector_size),
    xDeviceCharacteristics: Some(log_device_characteristics),
    xShmMap: Some(log_shm_map),
    xShmLock: Some(log_shm_lock),
    xShmBarrier: Some(log_shm_barrier),
    xShmUnmap: Some(log_shm_unmap),
    xFetch: Some(log_fetch),
    xUnfetch: Some(log_unfetch),
};

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let inner_vfs = INNER.load(Ordering::Acquire);
    // SAFETY: `file` points to `szOsFile` bytes (HEADER + the inner VFS's
    // size), so both the inner file in place and the inner file after our
    // header fit; the inner VFS is the one SQLite gave us at registration.
    unsafe {
        let Some(open) = (*inner_vfs).xOpen else { return ffi::SQLITE_ERROR };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not the log: the inner VFS's file, its methods, untouched.
            return open(inner_vfs, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(HEADER).cast::<ffi::sqlite3_file>();
        let rc = open(inner_vfs, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK && (*inner).pMethods.is_null() {
            // Nothing to close: SQLite will not call xClose either.
            (*file).pMethods = ptr::null();
            return rc;
        }
        // (If the inner open failed but left methods set, SQLite calls our
        // xClose, which closes it.)
        ptr::write(
            file.cast::<LogFile>(),
            LogFile {
                base: ffi::sqlite3_file { pMethods: &LOG_METHODS },
                inner,
                pending: Vec::new(),
                pending_at: 0,
                #[cfg(test)]
                path: if name.is_null() { String::new() } else { CStr::from_ptr(name).to_string_lossy().into_owned() },
            },
        );
        rc
    }
}

/// # Safety
/// `file` must be a file opened by `x_open` with `LOG_METHODS`.
unsafe fn log<'a>(file: *mut ffi::sqlite3_file) -> &'a mut LogFile {
    // SAFETY: the caller's promise; SQLite does not call one file's methods
    // concurrently.
    unsafe { &mut *file.cast::<LogFile>() }
}

impl LogFile {
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the inner file was opened successfully or left its
        // methods set (see `x_open`), and they are static in the inner VFS.
        unsafe { &*(*self.inner).pMethods }
    }

    /// Writes the buffered bytes (one inner xWrite per [`WRITE_CHUNK`])
    /// and empties the buffer, whatever the outcome.
    fn flush(&mut self) -> c_int {
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        #[cfg(test)]
        if let Some(rc) = hooks::on_flush(&self.path) {
            self.pending.clear();
            return rc;
        }
        let pending = std::mem::take(&mut self.pending);
        let rc = self.write_through(&pending, self.pending_at);
        // Keep the allocation for the next commit.
        self.pending = pending;
        self.pending.clear();
        rc
    }

    /// Writes `bytes` at `offset` with the inner xWrite, in chunks it
    /// accepts whole.
    fn write_through(&self, bytes: &[u8], offset: i64) -> c_int {
        let Some(write) = self.methods().xWrite else { return ffi::SQLITE_IOERR_WRITE };
        let mut at = offset;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            #[cfg(test)]
            hooks::on_write(&self.path);
            // SAFETY: a chunk is at most WRITE_CHUNK bytes, so its length
            // fits a c_int, and it lives across the call.
            let rc = unsafe { write(self.inner, chunk.as_ptr().cast(), chunk.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            at += chunk.len() as i64;
        }
        ffi::SQLITE_OK
    }

    fn pending_end(&self) -> i64 {
        self.pending_at + self.pending.len() as i64
    }
}

unsafe extern "C" fn log_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls xClose once, last; the LogFile is dropped here
    // and its memory is SQLite's to free.
    unsafe {
        let f = log(file);
        let flushed = f.flush();
        let closed = match f.methods().xClose {
            Some(close) => close(f.inner),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(file.cast::<LogFile>());
        (*file).pMethods = ptr::null();
        if flushed != ffi::SQLITE_OK { flushed } else { closed }
    }
}

unsafe extern "C" fn log_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match f.methods().xRead {
            Some(read) => read(f.inner, buf, amount, offset),
            None => ffi::SQLITE_IOERR_READ,
        }
    }
}

unsafe extern "C" fn log_write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    unsafe {
        let f = log(file);
        let Ok(len) = usize::try_from(amount) else { return ffi::SQLITE_IOERR_WRITE };
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        let end = offset + i64::from(amount);
        if !f.pending.is_empty() && offset >= f.pending_at && end <= f.pending_end() {
            // A frame of this transaction written again (walFrames rewrites
            // pages and checksums in place): patch the buffer.
            let at = (offset - f.pending_at) as usize;
            f.pending[at..at + len].copy_from_slice(bytes);
            return ffi::SQLITE_OK;
        }
        if !f.pending.is_empty() && (offset != f.pending_end() || f.pending.len() + len > FLUSH_BOUND) {
            let rc = f.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if len > FLUSH_BOUND {
            return f.write_through(bytes, offset);
        }
        if f.pending.is_empty() {
            f.pending_at = offset;
        }
        f.pending.extend_from_slice(bytes);
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn log_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match f.methods().xTruncate {
            Some(truncate) => truncate(f.inner, size),
            None => ffi::SQLITE_IOERR_TRUNCATE,
        }
    }
}

unsafe extern "C" fn log_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        // The commit's flush: the frames go to the file before the sync
        // that makes them durable, and before SQLite announces them.
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        #[cfg(test)]
        hooks::on_sync(&f.path);
        match f.methods().xSync {
            Some(sync) => sync(f.inner, flags),
            None => ffi::SQLITE_IOERR_FSYNC,
        }
    }
}

unsafe extern "C" fn log_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match f.methods().xFileSize {
            Some(file_size) => file_size(f.inner, size),
            None => ffi::SQLITE_IOERR_FSTAT,
        }
    }
}

unsafe extern "C" fn log_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        f.methods().xLock.map_or(ffi::SQLITE_OK, |lock| lock(f.inner, level))
    }
}

unsafe extern "C" fn log_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        f.methods().xUnlock.map_or(ffi::SQLITE_OK, |unlock| unlock(f.inner, level))
    }
}

unsafe extern "C" fn log_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        match f.methods().xCheckReservedLock {
            Some(check) => check(f.inner, out),
            None => {
                *out = 0;
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn log_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        f.methods().xFileControl.map_or(ffi::SQLITE_NOTFOUND, |control| control(f.inner, op, arg))
    }
}

unsafe extern "C" fn log_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        f.methods().xSectorSize.map_or(4096, |sector_size| sector_size(f.inner))
    }
}

unsafe extern "C" fn log_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        f.methods().xDeviceCharacteristics.map_or(0, |characteristics| characteristics(f.inner))
    }
}

// SQLite maps the wal-index through the database file, never the log; these
// forward in case it ever asks.

unsafe extern "C" fn log_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        match f.methods() {
            m if m.iVersion >= 2 => {
                m.xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |map| map(f.inner, page, page_size, extend, out))
            }
            _ => ffi::SQLITE_IOERR_SHMMAP,
        }
    }
}

unsafe extern "C" fn log_shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        match f.methods() {
            m if m.iVersion >= 2 => {
                m.xShmLock.map_or(ffi::SQLITE_IOERR_SHMLOCK, |lock| lock(f.inner, offset, n, flags))
            }
            _ => ffi::SQLITE_IOERR_SHMLOCK,
        }
    }
}

unsafe extern "C" fn log_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let m = f.methods();
        if m.iVersion >= 2
            && let Some(barrier) = m.xShmBarrier
        {
            barrier(f.inner);
        }
    }
}

unsafe extern "C" fn log_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        match f.methods() {
            m if m.iVersion >= 2 => m.xShmUnmap.map_or(ffi::SQLITE_OK, |unmap| unmap(f.inner, delete)),
            _ => ffi::SQLITE_OK,
        }
    }
}

unsafe extern "C" fn log_fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match f.methods() {
            m if m.iVersion >= 3 && m.xFetch.is_some() => {
                m.xFetch.map_or(ffi::SQLITE_OK, |fetch| fetch(f.inner, offset, amount, out))
            }
            _ => {
                // No mapping: SQLite reads with xRead instead.
                *out = ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn log_unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe {
        let f = log(file);
        match f.methods() {
            m if m.iVersion >= 3 => m.xUnfetch.map_or(ffi::SQLITE_OK, |unfetch| unfetch(f.inner, offset, p)),
            _ => ffi::SQLITE_OK,
        }
    }
}

/// Test-only observation of one database's log, by path: how many writes
/// reached the file and how many syncs, and a switch that makes every flush
/// fail as a full disk would (the way to test that a failed deferred write
/// fails the commit; no real disk fails on demand).
#[cfg(test)]
pub(crate) mod hooks {
    use std::sync::Mutex;

    use rusqlite::ffi;

    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct LogStats {
        /// Times the buffer was written out.
        pub flushes: u64,
        /// Calls to the inner xWrite (`pwrite`s).
        pub writes: u64,
        pub syncs: u64,
    }

    #[derive(Debug, Default)]
    struct Watch {
        stats: LogStats,
        fail: bool,
    }

    static WATCHED: Mutex<Vec<(String, Watch)>> = Mutex::new(Vec::new());

    fn with<T>(path: &str, f: impl FnOnce(&mut Watch) -> T) -> Option<T> {
        let mut watched = WATCHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.iter_mut().find(|(prefix, _)| path.starts_with(prefix.as_str())).map(|(_, w)| f(w))
    }

    /// Starts watching the logs whose path starts with `prefix` (a
    /// database's path: its log is `<path>-wal`).
    pub(crate) fn watch(prefix: &str) {
        let mut watched = WATCHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.retain(|(p, _)| p != prefix);
        watched.push((prefix.to_owned(), Watch::default()));
    }

    pub(crate) fn stats(prefix: &str) -> LogStats {
        with(prefix, |w| w.stats).unwrap_or_default()
    }

    pub(crate) fn reset(prefix: &str) {
        with(prefix, |w| w.stats = LogStats::default());
    }

    pub(crate) fn fail_flushes(prefix: &str, fail: bool) {
        with(prefix, |w| w.fail = fail);
    }

    pub(super) fn on_flush(path: &str) -> Option<i32> {
        with(path, |w| {
            if w.fail {
                Some(ffi::SQLITE_FULL)
            } else {
                w.stats.flushes += 1;
                None
            }
        })
        .flatten()
    }

    pub(super) fn on_write(path: &str) {
        with(path, |w| w.stats.writes += 1);
    }

    pub(super) fn on_sync(path: &str) {
        with(path, |w| w.stats.syncs += 1);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rusqlite::{Connection, OpenFlags, params};

    use super::*;

    fn open_writer(path: &Path) -> Connection {
        register().expect("register the VFS");
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME).expect("open");
        c.pragma_update(None, "synchronous", "FULL").expect("synchronous");
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
        assert_eq!(mode, "wal");
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)").expect("table");
        c
    }

    fn database(dir: &tempfile::TempDir, name: &str) -> (PathBuf, String) {
        let path = dir.path().canonicalize().expect("canonical temp dir").join(name);
        let key = path.display().to_string();
        hooks::watch(&key);
        (path, key)
    }

    fn insert(c: &Connection, from: i64, n: i64, size: usize) {
        c.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for id in from..from + n {
            c.execute("INSERT INTO t (id, body) VALUES (?1, ?2)", params![id, vec![(id % 251) as u8; size]])
                .expect("insert");
        }
        c.execute_batch("COMMIT").expect("commit");
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
    }

    /// Copies the database and its log as they are on disk now, as a crash
    /// would leave them (no wal-index: the copy recovers from the log).
    fn crash_copy(path: &Path, to: &Path) {
        std::fs::copy(path, to).expect("copy the database");
        let mut log = path.as_os_str().to_owned();
        log.push("-wal");
        let mut to_log = to.as_os_str().to_owned();
        to_log.push("-wal");
        std::fs::copy(&log, &to_log).expect("copy the log");
    }

    #[test]
    fn a_commit_is_one_write_and_one_sync_and_readers_and_recovery_see_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, key) = database(&dir, "w.db");
        let writer = open_writer(&path);
        // The first commit of a new log also writes and syncs its header.
        insert(&writer, 0, 1, 10);
        hooks::reset(&key);

        // ~22 pages of 4 KiB, ~90 KiB: ~44 writes from SQLite, one here.
        insert(&writer, 1, 20, 3000);
        assert_eq!(hooks::stats(&key), hooks::LogStats { flushes: 1, writes: 1, syncs: 1 });
        // ~42 pages, ~170 KiB: more than one write takes (the unix VFS
        // cuts a write at 128 KiB), so two.
        hooks::reset(&key);
        insert(&writer, 21, 40, 3000);
        assert_eq!(hooks::stats(&key), hooks::LogStats { flushes: 1, writes: 2, syncs: 1 });

        // A reader on the plain VFS sees the commit at once.
        let reader = Connection::open(&path).expect("reader");
        assert_eq!(count(&reader), 61);

        // And the bytes are in the file: a copy taken now, as a crash would
        // leave it, recovers every committed row from the log.
        let copy = dir.path().join("copy.db");
        crash_copy(&path, &copy);
        let recovered = Connection::open(&copy).expect("open the copy");
        assert_eq!(count(&recovered), 61);
        let body: Vec<u8> = recovered.query_row("SELECT body FROM t WHERE id = 60", [], |r| r.get(0)).expect("row");
        assert_eq!(body, vec![60u8; 3000]);
        let check: String = recovered.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(check, "ok");

        drop(reader);
        drop(writer);
        // Reopened after a clean close (the log checkpointed away).
        assert_eq!(count(&Connection::open(&path).expect("reopen")), 61);
    }

    #[test]
    fn a_failed_flush_fails_the_commit_and_the_connection_recovers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, key) = database(&dir, "f.db");
        let writer = open_writer(&path);
        insert(&writer, 0, 1, 10);

        hooks::fail_flushes(&key, true);
        writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
        writer.execute("INSERT INTO t (id, body) VALUES (1, x'01')", []).expect("insert");
        let err = writer.execute_batch("COMMIT").expect_err("the commit's flush fails");
        assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull), "{err}");
        if !writer.is_autocommit() {
            writer.execute_batch("ROLLBACK").expect("rollback");
        }
        hooks::fail_flushes(&key, false);

        let reader = Connection::open(&path).expect("reader");
        assert_eq!(count(&reader), 1, "the failed commit is not visible");
        insert(&writer, 2, 1, 10);
        assert_eq!(count(&reader), 2);
        drop(reader);
        drop(writer);
        let reopened = Connection::open(&path).expect("reopen");
        let ids: Vec<i64> = reopened
            .prepare("SELECT id FROM t ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("ids");
        assert_eq!(ids, vec![0, 2]);
    }

    #[test]
    fn frames_spilled_before_the_commit_are_read_back_and_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, key) = database(&dir, "s.db");
        let writer = open_writer(&path);
        // A page cache of a few pages: a big transaction spills frames to
        // the log before its commit, then reads them back and rewrites
        // pages it already wrote (in the buffer, or after a flush).
        writer.pragma_update(None, "cache_size", 10).expect("cache size");
        insert(&writer, 0, 1, 10);
        hooks::reset(&key);
        writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for id in 1..400i64 {
            writer
                .execute("INSERT INTO t (id, body) VALUES (?1, ?2)", params![id, vec![(id % 251) as u8; 700]])
                .expect("insert");
        }
        writer.execute("UPDATE t SET body = x'ff' WHERE id % 3 = 0", []).expect("update");
        let sum: i64 = writer.query_row("SELECT sum(length(body)) FROM t", [], |r| r.get(0)).expect("sum");
        writer.execute_batch("COMMIT").expect("commit");
        // id 0 (10 bytes) is a multiple of 3: it became 1 byte too.
        let expected = 1 + (1..400i64).map(|id| if id % 3 == 0 { 1 } else { 700 }).sum::<i64>();
        assert_eq!(sum, expected);
        assert!(hooks::stats(&key).flushes > 1, "the spilled frames were written before the commit");

        let copy = dir.path().join("copy.db");
        crash_copy(&path, &copy);
        let recovered = Connection::open(&copy).expect("open the copy");
        let check: String = recovered.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(check, "ok");
        let got: i64 = recovered.query_row("SELECT sum(length(body)) FROM t", [], |r| r.get(0)).expect("sum");
        assert_eq!(got, expected);
    }
}
