//! The upstream side's last line of defence: a stream filter that refuses to send toward
//! an upstream connection of a `noise_upstream on` server that does not speak NoiseSocket
//! (one that bypassed the upstream group, e.g. `proxy_pass` to a variable that is a bare
//! address, which [`super::target_guard`] refuses first); the session ends with an
//! error-log line.

use nginx_sys::{
    ngx_chain_t, ngx_int_t, ngx_stream_filter_pt, ngx_stream_session_t, ngx_stream_top_filter,
    ngx_uint_t, NGX_ERROR, NGX_OK,
};

use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conn;
use crate::nginx::util::log;

static mut NEXT_FILTER: ngx_stream_filter_pt = None;

/// Puts the filter at the top of the stream filter chain (postconfiguration).
pub fn install() {
    // SAFETY: the filter chain is plain data, set up during postconfiguration, one module
    // after the other.
    unsafe {
        NEXT_FILTER = ngx_stream_top_filter;
        ngx_stream_top_filter = Some(fail_closed_filter);
    }
}

/// Refuses to send toward an upstream connection that does not speak NoiseSocket.
unsafe extern "C" fn fail_closed_filter(
    s: *mut ngx_stream_session_t,
    chain: *mut ngx_chain_t,
    from_upstream: ngx_uint_t,
) -> ngx_int_t {
    {
        // SAFETY: nginx runs filters with a live session.
        let session = unsafe { &*s };
        if from_upstream == 0
            && Confs::of_session(session)
                .noise_srv()
                .upstream_side
                .is_some()
        {
            let u = session.upstream;
            let pc = if u.is_null() {
                std::ptr::null_mut()
            } else {
                // SAFETY: a non-null upstream is the session's live one.
                unsafe { (*u).peer.connection }
            };
            // SAFETY: a non-null peer connection is live; the state reference ends here.
            let noise = !pc.is_null()
                && unsafe { conn::get(pc) }.is_some_and(|st| st.transport().is_some());
            if !pc.is_null() && !noise {
                // SAFETY: the client connection's log is live.
                unsafe {
                    log::write(
                        (*session.connection).log,
                        log::ERR,
                        "noise: refusing to send plaintext upstream: this connection bypassed the upstream group (proxy_pass to a variable that is a bare address?)",
                    )
                };
                return NGX_ERROR as ngx_int_t;
            }
        }
    }
    // SAFETY: NEXT_FILTER was set at postconfiguration, before any session; it is the
    // next filter, called as nginx would.
    match unsafe { NEXT_FILTER } {
        // SAFETY: see above.
        Some(next) => unsafe { next(s, chain, from_upstream) },
        None => NGX_OK as ngx_int_t,
    }
}
