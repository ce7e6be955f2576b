//! `noise_keys_zone`: the shared-memory zone that holds client keys and their verdicts
//! (docs/key-zone.md), read by every worker's handshakes (`noise_keys`) and changed by the
//! http API (`noise_keys_api`) without a reload.
//!
//! * The zone is nginx's: `ngx_shared_memory_add` with the stream module as tag, so the
//!   stream directive that sizes it and the http directive that names it get the same zone,
//!   and nginx keeps it across reloads when name and size stay (the init callback then
//!   takes the old table over as it is).
//! * The table (`src/core/key_table.rs`) fills every free page of the zone's slab pool, once,
//!   at first init; its bytes are only ever touched under the slab pool's own mutex
//!   (`ngx_shmtx`), which is what makes a `&mut [u8]` over shared memory sound.
//! * A miss with `miss=lookup` is put to the authority (`crate::nginx::keys::auth_request`), whose
//!   answer [`cache`] keeps with its ttl: the next handshake with that key is a hit.
//! * Every operation is one short, bounded, locked call: a lookup is under a microsecond
//!   (docs/key-zone.md §4). The one I/O under the lock is a change's append to the zone's
//!   `state=` file: one `write()` of its records, so that the file has the table's order
//!   (the API's changes are [`crate::nginx::keys::change`]; the file's I/O [`crate::nginx::keys::state`]).
//! * The zone's `data` is a [`ZoneConf`] of the cycle (the state file's path), which points
//!   at the [`Shared`] header in the zone; a reload that keeps the zone hands the header on.
//! * A new zone loads its `state=` file in its init, in the master before workers exist
//!   (so the table is its alone), refuses a corrupt one (the cycle fails, naming file and
//!   byte) and, unless `nginx -t`, writes it back compacted, owned by the workers' user.

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use nginx_sys::{
    ngx_conf_t, ngx_core_conf_t, ngx_core_module, ngx_cycle_t, ngx_log_t, ngx_pagesize,
    ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_pool_t, NGX_ERROR,
    NGX_OK,
};

use crate::core::handshake::Verdict;
use crate::core::key_table::{Access, KeyTable, Record, TableError};
use crate::nginx::conf::{KeysConf, Miss};
use crate::nginx::keys::state::{self, StateError};
use crate::nginx::util::shm;
use crate::nginx::{util::log, util::pool};

/// The zone's header in shared memory: where the table lies, and the state file's counters.
#[repr(C)]
pub(super) struct Shared {
    pub(super) table: *mut u8,
    pub(super) len: usize,
    /// Counts the times the state file was replaced by a snapshot: a process whose
    /// descriptor is of an older epoch reopens the file.
    pub(super) epoch: u64,
    /// Records in the state file now.
    pub(super) records: u64,
    /// Do not try to compact again before the file holds this many records (after a
    /// failed compaction).
    pub(super) retry_at: u64,
    /// The pid of the worker compacting the file now, or 0.
    pub(super) compactor: i32,
}

/// The zone's `data`: this cycle's view of it (allocated in the cycle's pool by the
/// directive that sizes the zone).
pub(super) struct ZoneConf {
    pub(super) shared: *mut Shared,
    pub(super) state: Option<PathBuf>,
    /// The cycle being configured, for the `user` to give the state file to.
    pub(super) cycle: *mut ngx_cycle_t,
}

/// Adds (or finds, with `size` 0) the key zone `name` in the configuration being read.
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn add(cf: *mut ngx_conf_t, name: &[u8], size: usize) -> *mut ngx_shm_zone_t {
    // SAFETY: the caller's promise.
    unsafe { shm::add_zone(cf, name, size, init_zone) }
}

/// Adds the key zone `name` of `size` bytes, the one directive that sizes it, with its
/// state file if any.
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn declare(
    cf: *mut ngx_conf_t,
    name: &[u8],
    size: usize,
    state: Option<PathBuf>,
) -> *mut ngx_shm_zone_t {
    // SAFETY: the caller's promise.
    let zone = unsafe { add(cf, name, size) };
    if zone.is_null() {
        return zone;
    }
    let conf = ZoneConf {
        shared: std::ptr::null_mut(),
        state,
        // SAFETY: cf is being read.
        cycle: unsafe { (*cf).cycle },
    };
    // SAFETY: cf's pool lives as long as the cycle that uses the zone.
    match unsafe { pool::allocate((*cf).pool, conf) } {
        Some(conf) => {
            // SAFETY: zone is this cycle's entry, not yet initialised.
            unsafe { (*zone).data = conf.as_ptr().cast() };
            zone
        }
        None => std::ptr::null_mut(),
    }
}

/// The user and group the workers run as, when the master runs as root (then what it
/// writes must be given to them).
///
/// # Safety
/// `cycle` must be a cycle whose configuration has been read.
unsafe fn worker_owner(cycle: *mut ngx_cycle_t) -> Option<(u32, u32)> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 || cycle.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: conf_ctx holds the core module's conf at its index.
    let ccf = unsafe { *(*cycle).conf_ctx.add(ngx_core_module.index) as *const ngx_core_conf_t };
    if ccf.is_null() {
        return None;
    }
    // SAFETY: ccf is the core module's conf of the cycle.
    let (user, group) = unsafe { ((*ccf).user, (*ccf).group) };
    // NGX_CONF_UNSET_UINT: no `user` (nginx not run as root, or user root).
    (user != nginx_sys::ngx_uid_t::MAX).then_some((user, group))
}

/// Whether this is `nginx -t`, which must not change files.
fn testing() -> bool {
    // SAFETY: a global nginx sets before reading the configuration, never changed after.
    unsafe { nginx_sys::ngx_test_config != 0 }
}

/// Zone init: takes the previous cycle's table over, or lays out a new one and loads the
/// state file into it.
unsafe extern "C" fn init_zone(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> nginx_sys::ngx_int_t {
    // SAFETY: nginx calls init with this cycle's zone, mapped, its slab pool set up at the
    // start of the mapping, and its data our ZoneConf (set by the sizing directive; nginx
    // refuses a zone nobody sized). A non-null data is the previous cycle's ZoneConf, whose
    // cycle is still alive during this init, for a zone of the same name, size and tag, so
    // its header lies in this same mapping.
    unsafe {
        let conf = (*zone).data as *mut ZoneConf;
        if conf.is_null() {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        }
        let log = (*zone).shm.log;
        if !data.is_null() {
            let old = &*(data as *const ZoneConf);
            (*conf).shared = old.shared;
            // A state file added or moved by this reload: it gets the zone's keys now.
            if (*conf).state.is_some() && (*conf).state != old.state && !testing() {
                return kept_zone_to_new_file(zone, &*conf, log);
            }
            return NGX_OK as nginx_sys::ngx_int_t;
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        let header = ngx_slab_alloc(pool, std::mem::size_of::<Shared>()) as *mut Shared;
        if header.is_null() {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        }
        // Every page left: the table is the zone's whole purpose.
        let len = (*pool).pfree * ngx_pagesize;
        let table = ngx_slab_alloc(pool, len) as *mut u8;
        if table.is_null() {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        }
        let mut secret = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        }
        let bytes = std::slice::from_raw_parts_mut(table, len);
        let Ok(mut t) = KeyTable::create(bytes, secret) else {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        };
        header.write(Shared {
            table,
            len,
            epoch: 0,
            records: 0,
            retry_at: 0,
            compactor: 0,
        });
        (*conf).shared = header;
        if let Some(path) = &(*conf).state {
            // No other process maps the zone yet: the table is ours alone.
            match load_state(path, &mut t, &mut *header, worker_owner((*conf).cycle)) {
                Ok((level, msg)) => {
                    log::write(log, level, &format!("key zone \"{}\": {msg}", name(zone)))
                }
                Err(e) => {
                    log::write(
                        log,
                        log::EMERG,
                        &format!("key zone \"{}\": {e}", name(zone)),
                    );
                    return NGX_ERROR as nginx_sys::ngx_int_t;
                }
            }
        }
    }
    NGX_OK as nginx_sys::ngx_int_t
}

/// Loads the state file into a new zone's table and (unless `nginx -t`) writes it back
/// compacted; the text says what was loaded.
fn load_state(
    path: &Path,
    t: &mut KeyTable<'_>,
    shared: &mut Shared,
    owner: Option<(u32, u32)>,
) -> Result<(nginx_sys::ngx_uint_t, String), String> {
    let now = now();
    let loaded = state::load(path, t, now).map_err(|e| {
        format!("{e}; nginx refuses to start without the keys it holds: restore it, or move it away to start with an empty zone")
    })?;
    let mut msg = format!(
        "{} keys loaded from \"{}\" ({} records)",
        t.len(),
        path.display(),
        loaded.records
    );
    let mut level = log::NOTICE;
    if loaded.empty {
        level = log::WARN;
        msg.push_str(
            "; the file is empty, without even its header (created by hand, or its disk lost it?): the zone starts empty",
        );
    }
    if let Some(at) = loaded.torn {
        level = log::WARN;
        // The one change a crash cut short was never acknowledged: it is dropped.
        msg.push_str(&format!(
            "; its last record, at byte {at}, was cut short (a write interrupted by a crash) and is ignored"
        ));
    }
    if !testing() {
        shared.records = state::snapshot(path, t, now, owner).map_err(|e| e.to_string())?;
        shared.epoch += 1;
    }
    if let Some((uid, gid)) = owner {
        if state::dir_writable_by(path, uid, gid) == Some(false) {
            level = log::WARN;
            msg.push_str(&format!(
                "; the workers' user (uid {uid}) cannot create files in its directory, so the file will not be compacted while nginx runs: give the directory to that user"
            ));
        }
    }
    Ok((level, msg))
}

/// A reload kept the zone but gave it a new state file: write the zone's keys there.
///
/// # Safety
/// `zone` is the zone being initialised, `conf` its data, `log` its log.
unsafe fn kept_zone_to_new_file(
    zone: *mut ngx_shm_zone_t,
    conf: &ZoneConf,
    log: *mut ngx_log_t,
) -> nginx_sys::ngx_int_t {
    let Some(path) = conf.state.as_deref() else {
        return NGX_OK as nginx_sys::ngx_int_t;
    };
    // SAFETY: the caller's promise: conf's cycle has read its configuration.
    let owner = unsafe { worker_owner(conf.cycle) };
    // SAFETY: the caller's promise; the old cycle's workers may still use the zone, so this
    // goes through its lock.
    let done = unsafe {
        locked(zone, |t, shared, _| {
            let n = state::snapshot(path, t, now(), owner)?;
            shared.records = n;
            shared.epoch += 1;
            Ok::<_, StateError>(n)
        })
    };
    let (level, msg) = match done {
        Ok(Ok(n)) => (
            log::NOTICE,
            format!("{n} keys written to \"{}\"", path.display()),
        ),
        Ok(Err(e)) => (log::EMERG, e.to_string()),
        Err(e) => (log::EMERG, e.to_string()),
    };
    // SAFETY: the zone's log is the cycle's.
    unsafe { log::write(log, level, &format!("key zone \"{}\": {msg}", name(zone))) };
    if level == log::EMERG {
        NGX_ERROR as nginx_sys::ngx_int_t
    } else {
        NGX_OK as nginx_sys::ngx_int_t
    }
}

/// Runs `f` on the zone's table, its header and conf, under the zone's lock.
///
/// # Safety
/// `zone` must be a zone added in the running cycle whose init has run.
pub(super) unsafe fn locked<R>(
    zone: *mut ngx_shm_zone_t,
    f: impl FnOnce(&mut KeyTable<'_>, &mut Shared, &ZoneConf) -> R,
) -> Result<R, TableError> {
    // SAFETY: the caller's promise: a mapped zone whose data is our ZoneConf, its shared
    // header set by init (a null one cannot happen in a running cycle but is refused).
    unsafe {
        let conf = (*zone).data as *const ZoneConf;
        if conf.is_null() || (*conf).shared.is_null() {
            return Err(TableError::Layout(0));
        }
        let shared = (*conf).shared;
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        ngx_shmtx_lock(&mut (*pool).mutex);
        // While the mutex is held no process touches these bytes: the slice and the header
        // are exclusive.
        let bytes = std::slice::from_raw_parts_mut((*shared).table, (*shared).len);
        let result = KeyTable::open(bytes).map(|mut t| f(&mut t, &mut *shared, &*conf));
        ngx_shmtx_unlock(&mut (*pool).mutex);
        result
    }
}

/// Runs `f` on the zone's table, under the zone's lock.
///
/// # Safety
/// `zone` must be a zone added by [`add`] in the running cycle (its init has run).
pub unsafe fn with_table<R>(
    zone: *mut ngx_shm_zone_t,
    f: impl FnOnce(&mut KeyTable<'_>) -> R,
) -> Result<R, TableError> {
    // SAFETY: the caller's promise.
    unsafe { locked(zone, |t, _, _| f(t)) }
}

/// Every key zone of `cycle` with how many keys it holds and can hold, for `noise_status`.
///
/// # Safety
/// `cycle` must be a live cycle whose zones are initialised.
pub unsafe fn sizes(cycle: *mut ngx_cycle_t) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let ours: shm::Init = init_zone;
    // SAFETY: the caller's promise; a zone whose init is ours and whose data is set was
    // added by `add` and initialised, as `with_table` needs.
    unsafe {
        shm::each_zone(cycle, |zone| {
            let is_key_zone = (*zone).init.is_some_and(|f| std::ptr::fn_addr_eq(f, ours));
            if is_key_zone && !(*zone).data.is_null() {
                if let Ok((keys, capacity)) = with_table(zone, |t| (t.len(), t.capacity())) {
                    out.push((name(zone), keys, capacity));
                }
            }
        })
    };
    out
}

/// The zone's name, for messages.
///
/// # Safety
/// `zone` must be a live zone entry.
pub unsafe fn name(zone: *mut ngx_shm_zone_t) -> String {
    // SAFETY: the caller's promise; the name lives in the cycle pool.
    String::from_utf8_lossy(unsafe { (*zone).shm.name.as_bytes() }).into_owned()
}

/// The current Unix time in seconds, for expiry: nginx's cached time (`ngx_time()`),
/// updated once per event loop turn, so a lookup costs no system call.
pub fn now() -> u64 {
    // SAFETY: ngx_cached_time points at one of nginx's time slots from ngx_time_init on
    // (before any configuration is read); its `sec` is a plain integer.
    let sec = unsafe {
        let t = nginx_sys::ngx_cached_time;
        if t.is_null() {
            0
        } else {
            (*t).sec
        }
    };
    u64::try_from(sec).unwrap_or(0)
}

/// What the server's key zone says of a proven client key.
pub enum Zone {
    /// Decided: by an entry (with its attributes) or by `miss=deny|allow`.
    Decided(Verdict, Option<Vec<(String, String)>>),
    /// Not in the zone, and `miss=lookup`: ask the authority.
    Lookup,
}

/// The verdict of the server's key zone on a proven client key, and the key's attributes
/// when the zone has it (a miss gets `noise_keys miss=`).
pub fn decide(keys: &KeysConf, key: &[u8; 32]) -> Zone {
    let zone = keys.zone as *mut ngx_shm_zone_t;
    // SAFETY: the zone was added by `noise_keys` in this cycle's configuration, which the
    // session's server conf belongs to; its init ran before any worker started.
    match unsafe { with_table(zone, |t| t.get(key, now())) } {
        Ok(Some(record)) => {
            let verdict = match record.access {
                Access::Allow => Verdict::Allow,
                Access::Deny => Verdict::Deny,
            };
            Zone::Decided(verdict, Some(record.attrs))
        }
        Ok(None) => match keys.miss {
            Miss::Allow => Zone::Decided(Verdict::Allow, None),
            Miss::Deny => Zone::Decided(Verdict::Deny, None),
            Miss::Lookup => Zone::Lookup,
        },
        Err(e) => Zone::Decided(
            Verdict::Unavailable(format!("key zone \"{}\": {e}", keys.zone_name)),
            None,
        ),
    }
}

/// Keeps an authority's answer on `key` in the zone, unless the key got an entry
/// meanwhile (an entry written through the API wins over a cached answer). True when kept.
///
/// # Safety
/// `zone` must be a zone added by [`add`] in the running cycle.
pub unsafe fn cache(
    zone: *mut ngx_shm_zone_t,
    key: &[u8; 32],
    record: &Record,
) -> Result<bool, TableError> {
    // SAFETY: the caller's promise.
    unsafe {
        with_table(zone, |t| {
            if t.get(key, now()).is_some() {
                return Ok(false);
            }
            t.cache(key, record, now()).map(|_| true)
        })
    }
    .and_then(|r| r)
}
