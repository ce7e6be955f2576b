//! The http side of the .so (`ngx_http_noise_module`, `nginx-module/ngx_http_noise_module.c`):
//! `$noise_client_key`, `$noise_protocol`, `$noise_handshake_hash`, `$noise_server_key` and
//! `$noise_key_attr_NAME` (attribute NAME of the client's key in the stream server's key
//! zone, as the handshake found it) for requests on connections that a stream
//! `noise_listen` server handed to `http` with `pass`.
//!
//! `pass` gives http the very connection the stream module accepted, with our I/O
//! functions and our state still attached ([`crate::nginx::conn`] finds it by slot and number),
//! so each request sees the NoiseSocket identity of its own connection. On any other
//! connection, or before the client is authenticated, the values are empty (so that
//! `proxy_set_header` drops the header and `map` sees ""), never another connection's.

use nginx_sys::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_t,
    ngx_http_variable_value_t, ngx_int_t, ngx_str_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE,
    NGX_HTTP_VAR_PREFIX,
};
use ngx::ngx_string;

use crate::nginx::conn;
use crate::nginx::http::variables::{attr_value, fill, register, value, Which};

/// Names and what each shows; a variable's `data` is its index here.
const VARIABLES: [(ngx_str_t, Which); 4] = [
    (ngx_string!("noise_protocol"), Which::Protocol),
    (ngx_string!("noise_client_key"), Which::ClientKey),
    (ngx_string!("noise_handshake_hash"), Which::HandshakeHash),
    (ngx_string!("noise_server_key"), Which::ServerKey),
];

/// Registers the variables (preconfiguration of the http configuration `cf`).
///
/// # Safety
/// Called only by nginx, through the http module definition, with its own argument.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_noise_preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    let names = VARIABLES.map(|(name, _)| name);
    let flags = |prefix: bool| {
        (NGX_HTTP_VAR_NOCACHEABLE | if prefix { NGX_HTTP_VAR_PREFIX } else { 0 }) as usize
    };
    // SAFETY: cf is the http configuration being read; nginx copies each name and returns
    // its own variables.
    unsafe {
        register(
            &names,
            |name, prefix| ngx_http_add_variable(cf, name, flags(prefix)),
            |v: &mut ngx_http_variable_t, index| match index {
                None => v.get_handler = Some(get_attr),
                Some(index) => {
                    v.get_handler = Some(get);
                    v.data = index;
                }
            },
        )
    }
}

/// The connection the client's bytes arrived on. HTTP/2 runs each stream on a connection
/// of its own (`r->connection` is the stream's); the client's is the h2 connection's.
fn client_connection(r: &ngx_http_request_t) -> *mut nginx_sys::ngx_connection_t {
    #[cfg(ngx_feature = "http_v2")]
    if !r.stream.is_null() {
        // SAFETY: a request of an h2 stream points at its live stream, whose h2 connection
        // owns the client connection.
        return unsafe { (*(*r.stream).connection).connection };
    }
    r.connection
}

/// The getter of every variable; `data` is its index in [`VARIABLES`].
unsafe extern "C" fn get(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    let Some((_, which)) = VARIABLES.get(data) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: nginx calls getters with a live request, its connection and the value slot.
    let (r, v) = unsafe { (&*r, &mut *v) };
    // SAFETY: the request's client connection is live; the state reference ends in this
    // statement.
    let text = unsafe { conn::get(client_connection(r)) }
        .and_then(|st| st.established())
        .map(|info| value(info, *which))
        .unwrap_or_default();
    // SAFETY: the request pool outlives every use of the value.
    unsafe { fill(v, r.pool, &text) }
}

/// The getter of `$noise_key_attr_NAME`; nginx passes the variable's whole name as `data`
/// (an `ngx_str_t`) for prefix variables. Empty, as the other variables here, when the
/// connection has no such attribute.
unsafe extern "C" fn get_attr(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls getters with a live request and value slot, and a prefix
    // variable's data is the ngx_str_t of the name being read, live for the call.
    let (r, v, name) = unsafe { (&*r, &mut *v, (*(data as *const ngx_str_t)).as_bytes()) };
    // SAFETY: the request's client connection is live; the state reference ends in this
    // statement.
    let text = unsafe { conn::get(client_connection(r)) }
        .filter(|st| st.established().is_some())
        .and_then(|st| st.key_attrs.as_deref())
        .and_then(|attrs| attr_value(attrs, name))
        .map(str::to_string)
        .unwrap_or_default();
    // SAFETY: the request pool outlives every use of the value.
    unsafe { fill(v, r.pool, &text) }
}
