//! The module's counters in shared memory, counted by both sides and shown by the http
//! `noise_status` handler (`crate::nginx::http::status`; `docs/nginx-integration.md` §10).
//!
//! One shared zone, `noise_status`, holds a [`Counters`] (`src/metrics.rs`). The
//! stream module adds it in preconfiguration, the `noise_status` directive adds it too (the
//! same name, size and tag give the same zone), so the http side works with or without a
//! stream block. nginx keeps a zone with the same name, size and tag across reloads, and
//! the init callback then takes the old counters over: they survive reloads as nginx's own
//! zones do. Workers add into their own slot (`ngx_worker`): no lock on the hot path.
//!
//! The counters pointer is set by the init callback in the master before workers fork, and
//! the zone stays mapped for the life of every process that inherited it.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_conf_t, ngx_int_t, ngx_shm_zone_t, ngx_slab_calloc, ngx_slab_pool_t, ngx_worker, NGX_ERROR,
    NGX_OK,
};

use crate::metrics::{Counters, Direction, Reason, Side, State};
use crate::nginx::util::shm;

/// The zone: the counters plus the slab allocator's own pages.
const ZONE_SIZE: usize = 128 * 1024;

static COUNTERS: AtomicPtr<Counters> = AtomicPtr::new(std::ptr::null_mut());

/// The counters, once the zone is set up.
pub fn counters() -> Option<&'static Counters> {
    let p = COUNTERS.load(Ordering::Relaxed);
    // SAFETY: non-null is the Counters the init callback placed in the shared zone, which
    // stays mapped for the life of this process (module doc); all of it is atomics.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn worker() -> usize {
    // SAFETY: a plain read of nginx's worker index, written before the worker's event loop.
    unsafe { ngx_worker }
}

/// A handshake succeeded.
pub fn ok(side: Side, protocol: &str) {
    if let Some(c) = counters() {
        c.handshake_ok(worker(), side, protocol);
    }
}

/// A handshake failed.
pub fn failed(side: Side, reason: Reason) {
    if let Some(c) = counters() {
        c.handshake_failed(worker(), side, reason);
    }
}

/// A connection entered (1) or left (-1) a state.
pub fn connection(side: Side, state: State, delta: i64) {
    if let Some(c) = counters() {
        c.connection(worker(), side, state, delta);
    }
}

pub use crate::metrics::AuthResult;

/// A `noise_auth_request` lookup ended so.
pub fn auth_result(result: AuthResult) {
    if let Some(c) = counters() {
        c.auth_result(worker(), result);
    }
}

/// A `miss=lookup` server's zone had the key (`hit`) or not.
pub fn auth_cache(hit: bool) {
    if let Some(c) = counters() {
        c.auth_cache(worker(), hit);
    }
}

/// Plaintext bytes in or out.
pub fn bytes(side: Side, direction: Direction, n: usize) {
    if let Some(c) = counters() {
        c.bytes(worker(), side, direction, n as u64);
    }
}

/// Adds the shared zone to the configuration being read (stream or http).
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn add_zone(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: the caller's promise.
    let zone = unsafe { shm::add_zone(cf, b"noise_status", ZONE_SIZE, init_zone) };
    if zone.is_null() {
        return NGX_ERROR as ngx_int_t;
    }
    NGX_OK as ngx_int_t
}

/// Zone init: takes over the previous cycle's counters, or places new ones.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls init with this cycle's zone, mapped, its slab pool set up at the
    // start of the mapping; data is the previous cycle's zone data for a reused zone.
    unsafe {
        if !data.is_null() {
            (*zone).data = data;
            COUNTERS.store(data.cast(), Ordering::Relaxed);
            return NGX_OK as ngx_int_t;
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        // Zeroed, page-aligned (larger than half a page): a valid, empty Counters.
        let p = ngx_slab_calloc(pool, std::mem::size_of::<Counters>());
        if p.is_null() || p.align_offset(std::mem::align_of::<Counters>()) != 0 {
            return NGX_ERROR as ngx_int_t;
        }
        (*zone).data = p;
        COUNTERS.store(p.cast(), Ordering::Relaxed);
    }
    NGX_OK as ngx_int_t
}
