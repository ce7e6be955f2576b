//! The per-session state of a `noise_upstream on` session whose balancer we wrapped
//! ([`PeerWrap`]): the balancer's own functions and data, the attempt in progress, and
//! what the last handshake established.
//!
//! It lives in the session pool ([`crate::nginx::util::pool`]) and is found by our peer
//! functions as `peer.data` and by everything else in the session's module context
//! (`s->ctx`), null for sessions we did not wrap: nothing is inferred from what `peer.data`
//! points at. Dropping it unposts its event.

use std::ffi::c_void;
use std::sync::Arc;

use nginx_sys::ngx_msec_t;
use nginx_sys::{
    ngx_connection_t, ngx_delete_posted_event, ngx_event_handler_pt, ngx_event_t,
    ngx_peer_connection_t, ngx_stream_session_t, ngx_stream_upstream_srv_conf_t,
};

use crate::core::handshake::HandshakeInfo;
use crate::nginx::conf::stream_conf::noise_index;
use crate::nginx::conf::UpstreamSide;
use crate::nginx::upstream::proxy_header::Header;

/// Per-session wrapper around the balancer. Our peer functions get it as `peer.data`;
/// everything else finds it in the session's module context (`s->ctx`), which is null for
/// sessions whose balancer we did not wrap: nothing is inferred from what `peer.data`
/// points at.
pub(super) struct PeerWrap {
    pub(super) data: *mut c_void,
    pub(super) get: nginx_sys::ngx_event_get_peer_pt,
    pub(super) free: nginx_sys::ngx_event_free_peer_pt,
    pub(super) notify: nginx_sys::ngx_event_notify_peer_pt,
    pub(super) set_session: nginx_sys::ngx_event_set_peer_session_pt,
    pub(super) save_session: nginx_sys::ngx_event_save_peer_session_pt,
    pub(super) side: Arc<UpstreamSide>,
    /// The upstream group (live for the configuration), for the pins' view of its peers.
    pub(super) group: *const ngx_stream_upstream_srv_conf_t,
    /// The group has a `server ... resolve` (its addresses are not known in advance).
    pub(super) resolving: bool,
    pub(super) session: *mut ngx_stream_session_t,
    pub(super) pc: *mut ngx_peer_connection_t,
    /// The connection being handshaken, and its number (the slot may be reused).
    pub(super) conn: *mut ngx_connection_t,
    pub(super) number: nginx_sys::ngx_atomic_uint_t,
    /// The family of the peer's address (how connectedness is decided).
    pub(super) family: i32,
    pub(super) connected: bool,
    /// The proxy's `proxy_connect_timeout`, read off the timer it armed for this attempt;
    /// bounds the handshake unless `noise_upstream_handshake_timeout` is set.
    pub(super) connect_timeout: ngx_msec_t,
    /// The PROXY protocol header to send in clear before the handshake (this attempt's).
    pub(super) proxy_header: Option<Header>,
    pub(super) saved_read: ngx_event_handler_pt,
    pub(super) saved_write: ngx_event_handler_pt,
    pub(super) event: ngx_event_t,
    /// What the last successful handshake established.
    pub(super) info: Option<HandshakeInfo>,
}

impl Drop for PeerWrap {
    /// The session is ending (its pool goes): our event must not fire after it.
    fn drop(&mut self) {
        if self.event.posted() != 0 {
            // SAFETY: the event is in nginx's posted queue, which we take it out of.
            unsafe { ngx_delete_posted_event(&mut self.event) };
        }
    }
}

impl PeerWrap {
    /// What bounds the handshake: `noise_upstream_handshake_timeout` when it is set, else the
    /// proxy's `proxy_connect_timeout` (as `proxy_ssl` bounds its TLS handshake).
    pub(super) fn handshake_timeout(&self) -> ngx_msec_t {
        self.side.handshake_timeout.unwrap_or(self.connect_timeout)
    }
}

/// The session's [`PeerWrap`], if our wrapper was installed for it.
pub(super) fn wrap_of(s: &ngx_stream_session_t) -> *mut PeerWrap {
    // SAFETY: s->ctx has a slot per stream module; ours is set only by init_peer (nginx
    // zeroes the array when it creates the session).
    unsafe { *s.ctx.add(noise_index()) as *mut PeerWrap }
}

/// What the upstream handshake of session `s` established (for variables).
pub fn session_info(s: &ngx_stream_session_t) -> Option<&HandshakeInfo> {
    let w = wrap_of(s);
    // SAFETY: non-null is the session's wrap, in the session pool as long as the session.
    (!w.is_null())
        .then(|| unsafe { (*w).info.as_ref() })
        .flatten()
}
