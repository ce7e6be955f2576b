//! The http `noise_status` handler: the module's counters
//! ([`crate::nginx::util::counters`]) and the key zones' sizes as Prometheus text
//! (`docs/nginx-integration.md` §10).

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_chain_t, ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t,
    ngx_http_core_module, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_str_t, NGX_ERROR, NGX_HTTP_GET,
    NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_OK,
};
use ngx::core::{Buffer, Pool, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ngx_string;

use crate::metrics;
use crate::nginx::{keys::zone, util::counters};

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
        if counters::add_zone(cf) != NGX_OK as ngx_int_t {
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
    let mut text = match counters::counters() {
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
