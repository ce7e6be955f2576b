//! The module's counters in shared memory, and the http `noise_status` handler that shows
//! them (`docs/nginx-integration.md` §10).
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

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_chain_t, ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t,
    ngx_http_core_module, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_shm_zone_t, ngx_slab_calloc,
    ngx_slab_pool_t, ngx_str_t, ngx_worker, NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_OK,
};
use ngx::core::{Buffer, Pool, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ngx_string;

use crate::metrics::{self, Counters, Direction, Reason, Side, State};
use crate::nginx::{keys::zone, util::shm};

/// The zone: the counters plus the slab allocator's own pages.
const ZONE_SIZE: usize = 128 * 1024;

static COUNTERS: AtomicPtr<Counters> = AtomicPtr::new(std::ptr::null_mut());

fn counters() -> Option<&'static Counters> {
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

/// The `noise_status` directive (http location): our content handler, and the zone.
///
/// # Safety
/// Called only by nginx, through the http module's directive table.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_noise_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: a location directive: cf->ctx is the location's http conf context, whose
    // loc_conf array holds the http core module's conf.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let clcf =
            *(*ctx).loc_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_loc_conf_t;
        (*clcf).handler = Some(handler);
        if add_zone(cf) != NGX_OK as ngx_int_t {
            return NGX_CONF_ERROR;
        }
    }
    NGX_CONF_OK
}

/// The content handler: the counters as Prometheus text.
unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let mut text = match counters() {
        Some(c) => metrics::render(c),
        None => "# the noise_status zone is not set up\n".to_string(),
    };
    // SAFETY: a worker's ngx_cycle is its live cycle, zones initialised.
    text.push_str(&key_zones(&unsafe { zone::sizes(nginx_sys::ngx_cycle) }));
    // SAFETY: as above.
    unsafe {
        send_body(
            r,
            NGX_HTTP_OK as usize,
            ngx_string!("text/plain; version=0.0.4; charset=utf-8"),
            &text,
        )
    }
}

/// Sends a whole response: status, content type and body (this handler's and the key
/// zone API's).
///
/// # Safety
/// `r` must be a live request whose response has not been sent.
pub unsafe fn send_body(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: ngx_str_t,
    text: &str,
) -> ngx_int_t {
    // SAFETY: the caller's promise.
    let req = unsafe { &mut *r };
    req.headers_out.status = status;
    req.headers_out.content_length_n = text.len() as i64;
    req.headers_out.content_type = content_type;
    req.headers_out.content_type_len = content_type.len;
    // SAFETY: as above.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || req.header_only() != 0 {
        return rc;
    }
    // SAFETY: the request pool lives until the response is sent.
    let pool = unsafe { Pool::from_ngx_pool(req.pool) };
    let Some(mut body) = pool.create_buffer_from_str(text) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    body.set_last_buf(true);
    body.set_last_in_chain(true);
    let mut out = ngx_chain_t {
        buf: body.as_ngx_buf_mut(),
        next: std::ptr::null_mut(),
    };
    // SAFETY: as nginx's own handlers do: the filters copy the chain links they keep.
    unsafe { ngx_http_output_filter(r, &mut out) }
}

/// The key zones' sizes as two gauges (one line of each per `noise_keys_zone`).
fn key_zones(zones: &[(String, usize, usize)]) -> String {
    let mut text = String::new();
    if !zones.is_empty() {
        let keys = zones.iter().map(|z| (z.0.as_str(), z.1));
        gauge(
            &mut text,
            "keys",
            "Client keys held by each noise_keys_zone.",
            keys,
        );
        let capacity = zones.iter().map(|z| (z.0.as_str(), z.2));
        gauge(
            &mut text,
            "capacity",
            "Client keys each noise_keys_zone can hold.",
            capacity,
        );
    }
    text
}

/// One `nginx_noise_key_zone_SUFFIX` gauge, a line per zone.
fn gauge<'a>(
    text: &mut String,
    suffix: &str,
    help: &str,
    zones: impl Iterator<Item = (&'a str, usize)>,
) {
    let series = format!("nginx_noise_key_zone_{suffix}");
    text.push_str(&format!("# HELP {series} {help}\n# TYPE {series} gauge\n"));
    for (name, n) in zones {
        let name = name.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("{series}{{zone=\"{name}\"}} {n}\n"));
    }
}
