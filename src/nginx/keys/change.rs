//! Changes to a key zone (the http API's PUT, DELETE and POST chunks): applied to the table
//! and appended to the zone's `state=` file under one hold of the zone's lock, flushed
//! after it, and the file compacted when it has grown past twice the live set
//! (docs/key-zone.md §6).
//!
//! Invariants:
//! * All or nothing: a change the table or the state file refuses leaves the table as it
//!   was (each op's previous record is kept until the file took the batch).
//! * The file's order is the table's: appends happen only under the zone's lock.
//! * A compaction holds the lock only to copy the table and, at the end, to add what other
//!   workers appended meanwhile and rename; one worker compacts at a time (its pid is in
//!   the zone's header; a dead one's is ignored).

use std::path::{Path, PathBuf};

use nginx_sys::ngx_shm_zone_t;

use crate::core::key_journal::{self, Op};
use crate::core::key_table::{KeyTable, Record, TableError};
use crate::nginx::keys::state::{self, StateError};
use crate::nginx::keys::zone::{locked, Shared, ZoneConf};
use crate::nginx::util::log;

/// Compact the state file once it holds this many records more than twice the live set.
const COMPACT_SLACK: u64 = 1024;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Table(#[from] TableError),
    /// The state file could not take it: the table was put back as it was.
    #[error("{0} (the change was not applied)")]
    State(StateError),
    /// Applied and written, but the disk did not confirm it.
    #[error("{0} (the change is applied and written, but may not survive a power loss)")]
    Sync(StateError),
}

/// Applies `ops` in order under one hold of the zone's lock, journals them to the zone's
/// state file before returning, and tells for each whether it found the key new (put) or
/// present (delete). All or nothing: a table that refuses one, or a state file that cannot
/// take them, leaves the table as it was.
///
/// # Safety
/// `zone` must be a key zone of the running cycle (its init has run).
pub unsafe fn change(
    zone: *mut ngx_shm_zone_t,
    ops: &[Op],
    now: u64,
) -> Result<Vec<bool>, ChangeError> {
    // SAFETY: the caller's promise.
    let result = unsafe { locked(zone, |t, shared, conf| apply(t, shared, conf, ops, now)) };
    let (outcome, path, compact_now) = result??;
    if let Some(path) = path {
        state::sync(&path).map_err(ChangeError::Sync)?;
        if compact_now {
            // SAFETY: the caller's promise.
            unsafe { compact(zone, &path, now) };
        }
    }
    Ok(outcome)
}

/// What the locked part of a change found: the outcomes, the state file to flush, and
/// whether this process is to compact it.
type Applied = (Vec<bool>, Option<PathBuf>, bool);

/// The locked part of [`change`].
fn apply(
    t: &mut KeyTable<'_>,
    shared: &mut Shared,
    conf: &ZoneConf,
    ops: &[Op],
    now: u64,
) -> Result<Applied, ChangeError> {
    let mut undo: Vec<([u8; 32], Option<Record>)> = Vec::with_capacity(ops.len());
    let mut outcome = Vec::with_capacity(ops.len());
    let rollback = |t: &mut KeyTable<'_>, undo: Vec<([u8; 32], Option<Record>)>| {
        for (key, prev) in undo.into_iter().rev() {
            match prev {
                // The key is there (just changed), so this replaces: no room needed.
                Some(r) => {
                    let _ = t.put(&key, &r, now);
                }
                None => {
                    t.remove(&key);
                }
            }
        }
    };
    for op in ops {
        let (key, done) = match op {
            Op::Put(key, record) => {
                let prev = t.get(key, now);
                (key, t.put(key, record, now).map(|new| (new, prev)))
            }
            Op::Delete(key) => {
                let prev = t.get(key, now);
                let found = prev.is_some() && t.remove(key);
                (key, Ok((found, prev)))
            }
        };
        match done {
            Ok((flag, prev)) => {
                outcome.push(flag);
                undo.push((*key, prev));
            }
            Err(e) => {
                rollback(t, undo);
                return Err(e.into());
            }
        }
    }
    let Some(path) = conf.state.as_deref() else {
        return Ok((outcome, None, false));
    };
    let mut bytes = Vec::with_capacity(ops.len() * 64);
    let mut n = 0;
    for (op, flag) in ops.iter().zip(&outcome) {
        // A delete of an absent key changed nothing.
        if matches!(op, Op::Delete(_)) && !flag {
            continue;
        }
        if key_journal::encode(op, &mut bytes).is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        if let Err(e) = state::append(path, shared.epoch, &bytes) {
            rollback(t, undo);
            return Err(ChangeError::State(e));
        }
        shared.records += n;
    }
    let live = t.len() as u64;
    let compact_now = shared.records > 2 * live + COMPACT_SLACK
        && shared.records >= shared.retry_at
        && !compactor_alive(shared.compactor);
    if compact_now {
        // SAFETY: plain syscall.
        shared.compactor = unsafe { libc::getpid() };
    }
    Ok((outcome, Some(path.to_path_buf()), compact_now))
}

/// Whether the worker that started a compaction is still there (one that died in the
/// middle leaves its pid behind).
fn compactor_alive(pid: i32) -> bool {
    // SAFETY: plain syscall; signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Rewrites the state file as a snapshot of the live entries, holding the zone's lock only
/// to copy the table and, at the end, to add what was appended meanwhile and rename: the
/// encoding, writing and fsync of a million records happen outside it.
///
/// # Safety
/// As [`change`]; this process was chosen as the compactor by [`apply`].
unsafe fn compact(zone: *mut ngx_shm_zone_t, path: &Path, now: u64) {
    let started = std::time::Instant::now();
    // SAFETY: the caller's promise.
    let size = unsafe { locked(zone, |t, _, _| t.region().len()) }.unwrap_or(0);
    // Touched before the lock is taken, so that the copy under it faults no page in.
    let mut copy = vec![0xffu8; size];
    let held = std::time::Instant::now();
    // SAFETY: the caller's promise.
    let cut = unsafe {
        locked(zone, |t, shared, _| {
            copy.copy_from_slice(t.region());
            (state::length(path), shared.records)
        })
    };
    let mut lock_ms = held.elapsed().as_millis();
    let outcome = match cut {
        Ok((Ok(cut), before)) => {
            let pending = KeyTable::open(&mut copy)
                .map_err(|e| e.to_string())
                .and_then(|t| state::begin(path, &t, now, None).map_err(|e| e.to_string()));
            drop(copy);
            match pending {
                Ok(pending) => {
                    let held = std::time::Instant::now();
                    // SAFETY: the caller's promise.
                    let done = unsafe {
                        locked(zone, |_, shared, _| {
                            let done = state::read_from(path, cut)
                                .and_then(|tail| state::finish(path, pending, &tail));
                            if let Ok(n) = done {
                                shared.records = n;
                                shared.epoch += 1;
                                shared.retry_at = 0;
                            }
                            shared.compactor = 0;
                            done.map(|n| (before, n)).map_err(|e| e.to_string())
                        })
                    };
                    lock_ms += held.elapsed().as_millis();
                    done.map_err(|e| e.to_string()).and_then(|r| r)
                }
                Err(e) => Err(e),
            }
        }
        Ok((Err(e), _)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (level, msg) = match outcome {
        Ok((before, n)) => (
            log::NOTICE,
            format!(
                "noise: key zone state file \"{}\" compacted from {before} to {n} records in {} ms (the zone's lock held {lock_ms} ms)",
                path.display(),
                started.elapsed().as_millis()
            ),
        ),
        Err(e) => {
            // The journal stays whole, only longer; try again once it has grown as much.
            // SAFETY: the caller's promise.
            let _ = unsafe {
                locked(zone, |t, shared, _| {
                    shared.retry_at = shared.records + t.len() as u64 + COMPACT_SLACK;
                    shared.compactor = 0;
                })
            };
            (
                log::ERR,
                format!(
                    "noise: key zone state file \"{}\" not compacted: {e}",
                    path.display()
                ),
            )
        }
    };
    // SAFETY: the cycle's log is live in a worker.
    unsafe { log::write((*nginx_sys::ngx_cycle).log, level, &msg) };
}
