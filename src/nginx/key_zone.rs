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
//! * A miss with `miss=lookup` is put to the authority (`super::auth_request`), whose
//!   answer [`cache`] keeps with its ttl: the next handshake with that key is a hit.
//! * Every operation is one short, bounded, locked call: a lookup is under a microsecond
//!   (docs/key-zone.md §4), so the lock is never held across I/O.

use std::ffi::c_void;

use nginx_sys::{
    ngx_conf_t, ngx_pagesize, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc,
    ngx_slab_pool_t, NGX_ERROR, NGX_OK,
};

use crate::core::handshake::Verdict;
use crate::core::key_table::{Access, KeyTable, Record, TableError};
use crate::nginx::conf::{KeysConf, Miss};
use crate::nginx::shm;

/// What the zone's `data` points at: where the table lies, in the zone itself.
#[repr(C)]
struct ZoneData {
    table: *mut u8,
    len: usize,
}

/// Adds (or finds, with `size` 0) the key zone `name` in the configuration being read.
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn add(cf: *mut ngx_conf_t, name: &[u8], size: usize) -> *mut ngx_shm_zone_t {
    // SAFETY: the caller's promise.
    unsafe { shm::add_zone(cf, name, size, init_zone) }
}

/// Zone init: takes the previous cycle's table over, or lays out a new one.
unsafe extern "C" fn init_zone(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> nginx_sys::ngx_int_t {
    // SAFETY: nginx calls init with this cycle's zone, mapped, its slab pool set up at the
    // start of the mapping; a non-null data is the previous cycle's zone data, for a zone of
    // the same name, size and tag, so it describes a table in this same mapping.
    unsafe {
        if !data.is_null() {
            (*zone).data = data;
            return NGX_OK as nginx_sys::ngx_int_t;
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        let header = ngx_slab_alloc(pool, std::mem::size_of::<ZoneData>()) as *mut ZoneData;
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
        if KeyTable::create(bytes, secret).is_err() {
            return NGX_ERROR as nginx_sys::ngx_int_t;
        }
        header.write(ZoneData { table, len });
        (*zone).data = header.cast();
    }
    NGX_OK as nginx_sys::ngx_int_t
}

/// Runs `f` on the zone's table, under the zone's lock.
///
/// # Safety
/// `zone` must be a zone added by [`add`] in the running cycle (its init has run).
pub unsafe fn with_table<R>(
    zone: *mut ngx_shm_zone_t,
    f: impl FnOnce(&mut KeyTable<'_>) -> R,
) -> Result<R, TableError> {
    // SAFETY: the caller's promise: a mapped zone whose data our init set (or null when the
    // zone never initialised, which cannot happen in a running cycle but is refused).
    unsafe {
        let data = (*zone).data as *const ZoneData;
        if data.is_null() {
            return Err(TableError::Layout(0));
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        ngx_shmtx_lock(&mut (*pool).mutex);
        // While the mutex is held no process touches these bytes: the slice is exclusive.
        let bytes = std::slice::from_raw_parts_mut((*data).table, (*data).len);
        let result = KeyTable::open(bytes).map(|mut t| f(&mut t));
        ngx_shmtx_unlock(&mut (*pool).mutex);
        result
    }
}

/// The zone's name, for messages.
///
/// # Safety
/// `zone` must be a live zone entry.
pub unsafe fn name(zone: *mut ngx_shm_zone_t) -> String {
    // SAFETY: the caller's promise; the name lives in the cycle pool.
    String::from_utf8_lossy(unsafe { (*zone).shm.name.as_bytes() }).into_owned()
}

/// The current Unix time in seconds, for expiry.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            t.put(key, record).map(|_| true)
        })
    }
    .and_then(|r| r)
}
