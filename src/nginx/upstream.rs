//! NoiseSocket to upstream servers (filled in by the upstream issue).

use nginx_sys::{ngx_conf_t, ngx_int_t, ngx_stream_session_t, NGX_OK};

use crate::core::handshake::HandshakeInfo;

/// Wraps the balancers of every upstream group (postconfiguration).
///
/// # Safety
/// `cf` must be the stream configuration.
pub unsafe fn install(_cf: *mut ngx_conf_t) -> ngx_int_t {
    NGX_OK as ngx_int_t
}

/// What the upstream handshake of session `s` established.
///
/// # Safety
/// `s` must be a live session.
pub unsafe fn session_info<'a>(_s: *mut ngx_stream_session_t) -> Option<&'a HandshakeInfo> {
    None
}
