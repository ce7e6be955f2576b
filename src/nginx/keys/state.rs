//! The file I/O of a key zone's state file (`noise_keys_zone ... state=FILE`,
//! docs/key-zone.md §6); the records themselves are `src/core/key_journal.rs`.
//!
//! * Load: the zone's init (in the master, at start and `nginx -t`, and at a reload that
//!   makes a new zone) replays the whole file into the new table, then writes it back as a
//!   snapshot: `FILE.tmp`, fsync, rename over `FILE`, fsync of the directory, so a crash at
//!   any point leaves the old file or the new one, whole. `nginx -t` only reads.
//! * Append: each process keeps its own descriptor of the file, opened `O_APPEND` when it
//!   first writes and again after a compaction replaced the file (the zone counts
//!   compactions: an epoch). Appends happen under the zone's lock, so the file's order is
//!   the table's. An append never creates the file (the load wrote it, with its header), and
//!   checks first that the path still names the file it has open (device and inode): a file
//!   removed or replaced outside nginx refuses the change instead of losing it.
//! * Owner: the master runs the load as root before it switches user, and chowns what it
//!   writes to the `user` of the configuration, so that workers can append to it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::core::key_journal::{self, JournalError, Op, Tail};
use crate::core::key_table::KeyTable;

/// What went wrong with a state file; the text names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {doing} the state file \"{path}\": {err}")]
    Io {
        doing: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("the state file \"{path}\" is {err}")]
    Journal { path: String, err: JournalError },
    /// The file this process appends to is no longer the one at the path: removed, or
    /// replaced outside nginx. Writing on would lose acknowledged changes (into a deleted
    /// file) or start a file without its header; a restart loads the file at the path.
    #[error("the state file \"{path}\" was {what} outside nginx; changes are refused until a restart (or a reload with a new zone) loads it again")]
    Replaced { path: String, what: &'static str },
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |err| StateError::Io {
        doing,
        path: path.display().to_string(),
        err,
    }
}

/// What a load found.
pub struct Loaded {
    pub records: u64,
    /// The offset of a record cut short at the end, ignored.
    pub torn: Option<u64>,
    /// The file exists but is empty (not even its header).
    pub empty: bool,
}

/// Replays `path` into `table` (a new, empty one); expired entries are left out. A missing
/// file is an empty state.
pub fn load(path: &Path, table: &mut KeyTable<'_>, now: u64) -> Result<Loaded, StateError> {
    let (bytes, empty) = match std::fs::read(path) {
        Ok(b) => {
            let empty = b.is_empty();
            (b, empty)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), false),
        Err(e) => return Err(io("read", path)(e)),
    };
    let replayed = key_journal::replay(&bytes, |op| match op {
        Op::Put(key, record) if record.expires != 0 && record.expires <= now => {
            table.remove(&key);
            Ok(())
        }
        Op::Put(key, record) => table
            .put(&key, &record, now)
            .map(|_| ())
            .map_err(|e| format!("{e}: make the zone larger (noise_keys_zone ... size)")),
        Op::Delete(key) => {
            table.remove(&key);
            Ok(())
        }
    })
    .map_err(|err| StateError::Journal {
        path: path.display().to_string(),
        err,
    })?;
    Ok(Loaded {
        empty,
        records: replayed.records,
        torn: match replayed.tail {
            Tail::Clean => None,
            Tail::Torn(at) => Some(at),
        },
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// A snapshot written to `FILE.tmp` and flushed, not yet in place.
pub struct Pending {
    tmp: PathBuf,
    file: File,
    records: u64,
}

/// Writes the table's live entries to `FILE.tmp` and flushes it, owned by `owner` when
/// given.
pub fn begin(
    path: &Path,
    table: &KeyTable<'_>,
    now: u64,
    owner: Option<(u32, u32)>,
) -> Result<Pending, StateError> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut records = 0u64;
    let mut failed = out.write_all(key_journal::MAGIC).err();
    let mut record = Vec::with_capacity(key_journal::MAX_RECORD);
    table.for_each(now, |key, rec| {
        if failed.is_some() {
            return;
        }
        record.clear();
        // The table only holds records it checked: encoding them cannot fail.
        if key_journal::encode(&Op::Put(*key, rec), &mut record).is_ok() {
            records += 1;
            failed = out.write_all(&record).err();
        }
    });
    if let Some(e) = failed {
        return Err(io("write", &tmp)(e));
    }
    let file = out
        .into_inner()
        .map_err(|e| io("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io("chown", &tmp))?;
    }
    Ok(Pending { tmp, file, records })
}

/// Appends `tail` (whole records written to the old file since the snapshot was taken),
/// then puts the snapshot in place of `path`: rename, fsync of the directory. Returns how
/// many records the file holds.
pub fn finish(path: &Path, mut pending: Pending, tail: &[u8]) -> Result<u64, StateError> {
    let mut records = pending.records;
    if !tail.is_empty() {
        let mut with_magic = key_journal::MAGIC.to_vec();
        with_magic.extend_from_slice(tail);
        records += key_journal::replay(&with_magic, |_| Ok(()))
            .map_err(|err| StateError::Journal {
                path: path.display().to_string(),
                err,
            })?
            .records;
        pending
            .file
            .write_all(tail)
            .map_err(io("write", &pending.tmp))?;
        pending.file.sync_all().map_err(io("fsync", &pending.tmp))?;
    }
    drop(pending.file);
    std::fs::rename(&pending.tmp, path).map_err(io("rename over", path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory of", path))?;
    Ok(records)
}

/// Removes a snapshot that will not be put in place.
pub fn abandon(pending: Pending) {
    drop(pending.file);
    let _ = std::fs::remove_file(&pending.tmp);
}

/// Writes the table's live entries as the new file at once (the zone's lock held, or no
/// other process yet); returns how many records it holds.
pub fn snapshot(
    path: &Path,
    table: &KeyTable<'_>,
    now: u64,
    owner: Option<(u32, u32)>,
) -> Result<u64, StateError> {
    let pending = begin(path, table, now, owner)?;
    finish(path, pending, &[])
}

/// The file's length now (the zone's lock held: every append is whole).
pub fn length(path: &Path) -> Result<u64, StateError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(io("stat", path))
}

/// The bytes of `path` from `offset` on.
pub fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, StateError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(io("open", path))?;
    f.seek(SeekFrom::Start(offset)).map_err(io("read", path))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io("read", path))?;
    Ok(out)
}

/// This process's descriptor of a state file, and the epoch it was opened at.
struct Open {
    path: PathBuf,
    epoch: u64,
    file: File,
    /// The file's device and inode.
    id: (u64, u64),
}

/// Per process (nginx workers are single-threaded; the mutex only satisfies `static`).
static OPEN: Mutex<Vec<Open>> = Mutex::new(Vec::new());

/// Appends `bytes` (whole records) to `path` in one write, reopening the file when the zone's
/// `epoch` says it was replaced since this process opened it. A failed append leaves the
/// file as it was (cut back to its old length).
pub fn append(path: &Path, epoch: u64, bytes: &[u8]) -> Result<(), StateError> {
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    let found = open.iter().position(|o| o.path == path);
    let at = match found {
        Some(i) if open[i].epoch == epoch => i,
        _ => {
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => StateError::Replaced {
                        path: path.display().to_string(),
                        what: "removed",
                    },
                    _ => io("open", path)(e),
                })?;
            let meta = file.metadata().map_err(io("stat", path))?;
            let entry = Open {
                path: path.to_path_buf(),
                epoch,
                file,
                id: (meta.dev(), meta.ino()),
            };
            match found {
                Some(i) => {
                    open[i] = entry;
                    i
                }
                None => {
                    open.push(entry);
                    open.len() - 1
                }
            }
        }
    };
    let replaced = |what| StateError::Replaced {
        path: path.display().to_string(),
        what,
    };
    match std::fs::metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == open[at].id => {}
        Ok(_) => return Err(replaced("replaced")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(replaced("removed")),
        Err(e) => return Err(io("stat", path)(e)),
    }
    let file = &mut open[at].file;
    // Where the file ends now (appends happen under the zone's lock): a write that fails part
    // way is cut back to here, so that no half record sits before later good ones.
    let end = file.metadata().map_err(io("stat", path))?.len();
    file.write_all(bytes).map_err(|e| {
        let _ = file.set_len(end);
        io("append to", path)(e)
    })
}

/// Flushes this process's appends to `path` to the disk.
pub fn sync(path: &Path) -> Result<(), StateError> {
    let open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    match open.iter().find(|o| o.path == path) {
        Some(o) => o.file.sync_data().map_err(io("fsync", path)),
        None => Ok(()),
    }
}

/// Whether this process can write `path` (or create it in its directory), for `nginx -t`.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let access = |p: &Path, mode| {
        let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| "a NUL byte".to_string())?;
        // SAFETY: c is a NUL-terminated path; access() only reads it.
        if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    // The directory too: every load and compaction writes FILE.tmp next to the file.
    access(dir, libc::W_OK | libc::X_OK).map_err(|e| {
        format!(
            "cannot write \"{}\" in \"{}\": {e}",
            path.display(),
            dir.display()
        )
    })?;
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(format!("\"{}\" is not a regular file", path.display())),
        Ok(_) => access(path, libc::R_OK | libc::W_OK)
            .map_err(|e| format!("\"{}\" is not writable: {e}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Whether `uid`/`gid` may create files in the directory of `path` (by its mode bits; the
/// master runs as root, so `access()` would not tell). `None` when the directory is gone.
pub fn dir_writable_by(path: &Path, uid: u32, gid: u32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let m = std::fs::metadata(dir.unwrap_or(Path::new("."))).ok()?;
    let mode = m.mode();
    Some(if m.uid() == uid {
        mode & 0o300 == 0o300
    } else if m.gid() == gid {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    })
}
