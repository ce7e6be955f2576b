//! `noise_limit_conn_per_key`: concurrent established connections per client static key,
//! across workers, in the shared zone `noise_limit_conn_per_key` (docs/nginx-integration.md
//! §11). The table itself is [`crate::core::key_limit`]; this module owns the zone, its
//! lock (the slab pool's mutex, as `ngx_stream_limit_conn_module` uses) and the holds.
//!
//! * The zone is added only when a configuration uses the directive, with a fixed size, so
//!   nginx keeps it across reloads (same name, size and tag) and the init callback takes
//!   the old table over: connections that old workers still serve stay counted.
//! * A [`Hold`] is one counted connection. It lives in the connection's
//!   [`crate::nginx::conn::NoiseConn`], which its pool drops on every close (normal, error,
//!   graceful shutdown of an old worker); dropping the hold releases the count in the zone
//!   it was taken in.
//! * A worker that exits drops what it still holds ([`forget_own`]: connections left open at
//!   exit are never dropped by their pools); a worker that starts drops the counts of
//!   processes that are gone ([`start_worker`]: a crashed worker's, when the master replaces it);
//!   and before a key is refused, the counts of that key held by processes that are gone
//!   are dropped. So a crash cannot pin a key's counts for longer than until the next
//!   worker starts or that key next reaches its limit.
//!
//! Each worker finds the zone in its cycle's shared memory list when it starts
//! ([`start_worker`]); the zone stays mapped for the life of every process that inherited
//! it. The master keeps no pointer: a reload that drops the directive frees the zone there.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_pid, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock,
    ngx_slab_calloc, ngx_slab_pool_t, NGX_ERROR, NGX_OK,
};

pub use crate::core::key_limit::Denied;
use crate::core::key_limit::{Entry, Header, Table};
use crate::nginx::util::shm;

const ZONE_NAME: &str = "noise_limit_conn_per_key";
/// The zone: about 31,000 (client key, worker) pairs at once.
pub const ZONE_SIZE: usize = 2 * 1024 * 1024;
/// The table: the zone less room for the slab allocator's own pages.
const TABLE_BYTES: usize = ZONE_SIZE - 64 * 1024;
const ENTRIES: usize = (TABLE_BYTES - std::mem::size_of::<Header>()) / std::mem::size_of::<Entry>();

static POOL: AtomicPtr<ngx_slab_pool_t> = AtomicPtr::new(std::ptr::null_mut());
static TABLE: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());

/// One counted connection of a key; released when dropped.
pub struct Hold {
    key: [u8; 32],
    pool: *mut ngx_slab_pool_t,
    table: *mut Header,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // SAFETY: the pointers are the zone this hold was taken in, mapped for the life of
        // this process (module doc).
        unsafe { locked(self.pool, self.table, |t| t.release(&self.key, pid())) };
    }
}

fn pid() -> i32 {
    // SAFETY: a plain read of nginx's pid of this process, set before any connection.
    unsafe { ngx_pid }
}

/// Whether process `pid` exists (EPERM: it does, under another user).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Runs `f` on the table under the zone's lock.
///
/// # Safety
/// `pool` and `table` must be this process's mapping of one zone that [`init_zone`] set up.
unsafe fn locked<R>(
    pool: *mut ngx_slab_pool_t,
    table: *mut Header,
    f: impl FnOnce(&mut Table<'_>) -> R,
) -> R {
    // SAFETY: the caller's promise: the header is followed by ENTRIES entries in the zone;
    // every process touches them only under the pool's mutex, held here.
    unsafe {
        ngx_shmtx_lock(&mut (*pool).mutex);
        let entries = std::slice::from_raw_parts_mut(table.add(1).cast::<Entry>(), ENTRIES);
        let mut t = Table::open(&mut *table, entries);
        let r = f(&mut t);
        ngx_shmtx_unlock(&mut (*pool).mutex);
        r
    }
}

/// The zone of this process, if set up.
fn zone() -> Option<(*mut ngx_slab_pool_t, *mut Header)> {
    let (pool, table) = (POOL.load(Ordering::Relaxed), TABLE.load(Ordering::Relaxed));
    (!pool.is_null() && !table.is_null()).then_some((pool, table))
}

/// Counts a connection of `key`, unless it holds `limit` already.
pub fn acquire(key: &[u8; 32], limit: u32) -> Result<Hold, Denied> {
    let (pool, table) = zone().ok_or(Denied::NoZone)?;
    // SAFETY: the zone set up by init_zone, mapped in this process.
    unsafe { locked(pool, table, |t| t.acquire(key, pid(), limit.into(), alive)) }
        .map_err(Denied::Refused)?;
    Ok(Hold {
        key: *key,
        pool,
        table,
    })
}

/// Worker start: finds the zone of the worker's cycle, if it has one, and drops the counts
/// of processes that are gone (a crashed worker's).
///
/// # Safety
/// `cycle` must be the worker's live cycle, its shared zones mapped and initialised.
pub unsafe fn start_worker(cycle: *mut ngx_cycle_t) {
    // SAFETY: the caller's promise; each_zone gives live entries of this cycle.
    unsafe {
        shm::each_zone(cycle, |z| {
            let z = &*z;
            if z.shm.name.as_bytes() == ZONE_NAME.as_bytes() && !z.data.is_null() {
                POOL.store(z.shm.addr.cast(), Ordering::Relaxed);
                TABLE.store(z.data.cast(), Ordering::Relaxed);
            }
        })
    }
    if let Some((pool, table)) = zone() {
        // SAFETY: as in acquire.
        unsafe { locked(pool, table, |t| t.sweep(alive)) };
    }
}

/// Worker exit: drops what this process still holds (connections left open at exit).
pub fn forget_own() {
    if let Some((pool, table)) = zone() {
        // SAFETY: as in acquire.
        unsafe { locked(pool, table, |t| t.forget(pid())) };
    }
}

/// Adds the zone to the configuration being read (a configuration that uses the directive).
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn add_zone(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: the caller's promise.
    let zone = unsafe { shm::add_zone(cf, ZONE_NAME.as_bytes(), ZONE_SIZE, init_zone) };
    if zone.is_null() {
        return NGX_ERROR as ngx_int_t;
    }
    NGX_OK as ngx_int_t
}

/// Zone init: takes over the previous cycle's table, or places an empty one.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls init with this cycle's zone, mapped, its slab pool at the start
    // of the mapping; data is the previous cycle's zone data for a reused zone (the same
    // mapping).
    unsafe {
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        if !data.is_null() {
            (*zone).data = data;
            return NGX_OK as ngx_int_t;
        }
        // Zeroed and page-aligned (larger than half a page).
        let p = ngx_slab_calloc(pool, TABLE_BYTES);
        if p.is_null() || p.align_offset(std::mem::align_of::<Header>()) != 0 {
            return NGX_ERROR as ngx_int_t;
        }
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            return NGX_ERROR as ngx_int_t;
        }
        let header = p.cast::<Header>();
        let entries = std::slice::from_raw_parts_mut(header.add(1).cast::<Entry>(), ENTRIES);
        Table::init(&mut *header, entries, seed);
        (*zone).data = p;
    }
    NGX_OK as ngx_int_t
}
