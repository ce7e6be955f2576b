//! The balancer wrapper: NoiseSocket to upstream servers from stock `proxy_pass`, with
//! every balancer (docs/nginx-integration.md §5).
//!
//! * [`init_peer`] wraps a group's `peer.init` (installed at postconfiguration,
//!   [`super::setup`]): for sessions of a `noise_upstream on` server it replaces the
//!   balancer's `get/free/notify/set_session/save_session` with ours, keeping the
//!   originals in the session's [`PeerWrap`].
//! * `get` asks the original balancer for a peer, decides which pin applies before
//!   anything connects (fail closed), connects it itself with `ngx_event_connect_peer`,
//!   attaches an initiator handshake behind the refusing gate and answers NGX_AGAIN, so the
//!   proxy installs its connect handler and connect timer as for any pending connect; a
//!   posted event then runs the attempt ([`super::attempt`]).
//! * The others call the balancer's own, with its own data.

use std::ffi::c_void;
use std::sync::Arc;

use nginx_sys::{
    ngx_close_connection, ngx_delete_posted_event, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_int_t, ngx_peer_connection_t, ngx_post_event, ngx_posted_events, ngx_stream_session_t,
    ngx_stream_upstream_srv_conf_t, ngx_uint_t, NGX_AGAIN, NGX_DECLINED, NGX_ERROR, NGX_OK,
};

use crate::core::handshake::Handshake;
use crate::core::key_agent::{AnyHandshake, DelegatedHandshake};
use crate::metrics::{Reason, Side};
use crate::nginx::conf::pins::Server;
use crate::nginx::conf::rules::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::nginx::conf::stream_conf::{noise_index, Confs};
use crate::nginx::conn::{self, NoiseConn};
use crate::nginx::upstream::proxy_header;
use crate::nginx::{
    conn::gate, upstream::peers, util::counters, util::log, util::pool, util::sockaddr,
};

use super::attempt::take_over;
use super::wrap::PeerWrap;

/// The wrapped `peer.init`: the original, then our functions for noise sessions.
pub(super) unsafe extern "C" fn init_peer(
    s: *mut ngx_stream_session_t,
    us: *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t {
    let Some(original) = ({
        // SAFETY: nginx calls peer.init with a live session.
        let confs = Confs::of_session(unsafe { &*s });
        confs.noise_main().init_peer_of(us)
    }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the group's own peer.init, with nginx's arguments.
    let rc = unsafe { original(s, us) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    // SAFETY: the session is live, and so is its upstream (set before peer.init); nothing
    // else runs while we change its peer functions.
    let (s, pc) = unsafe { (&mut *s, &mut (*(*s).upstream).peer) };
    let confs = Confs::of_session(s);
    let Some(side) = confs.noise_srv().upstream_side.clone() else {
        return rc;
    };
    let resolving = confs.noise_main().resolving_groups.contains(&(us as usize));
    let wrap = PeerWrap {
        data: pc.data,
        get: pc.get,
        free: pc.free,
        notify: pc.notify,
        set_session: pc.set_session,
        save_session: pc.save_session,
        side,
        group: us,
        resolving,
        session: s,
        pc,
        conn: std::ptr::null_mut(),
        number: 0,
        family: 0,
        connected: false,
        connect_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        proxy_header: None,
        saved_read: None,
        saved_write: None,
        // SAFETY: ngx_event_t is a plain C struct; all-zero is an idle event.
        event: unsafe { std::mem::zeroed() },
        info: None,
    };
    // SAFETY: the client connection's pool is the session's, alive as long as the session
    // that uses the wrapper.
    let Some(raw) = (unsafe { pool::allocate((*s.connection).pool, wrap) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    let raw = raw.as_ptr();
    // SAFETY: raw was just allocated and is ours; s->ctx has a slot per stream module.
    unsafe {
        let w = &mut *raw;
        w.event.data = raw.cast();
        w.event.handler = Some(take_over);
        w.event.log = (*s.connection).log;
        *s.ctx.add(noise_index()) = raw.cast();
    }
    pc.data = raw.cast();
    pc.get = Some(get_peer);
    pc.free = Some(free_peer);
    // SAFETY: raw is live (above).
    let w = unsafe { &*raw };
    pc.notify = w
        .notify
        .map(|_| notify_peer as unsafe extern "C" fn(_, _, _));
    pc.set_session = w
        .set_session
        .map(|_| set_session as unsafe extern "C" fn(_, _) -> _);
    pc.save_session = w
        .save_session
        .map(|_| save_session as unsafe extern "C" fn(_, _));
    rc
}

/// The wrapped `peer.get`: the balancer's choice, connected by us, with a handshake.
unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: data is our PeerWrap (set by init_peer), live as long as the session.
    let w = unsafe { &mut *(data as *mut PeerWrap) };
    let Some(get) = w.get else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the balancer's own get, with its own data.
    let rc = unsafe { get(pc, w.data) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    // SAFETY: pc is the session's live peer connection; the balancer filled it.
    let pc = unsafe { &mut *pc };
    // Which pin applies, decided before anything connects (fail closed).
    // SAFETY: the balancer set sockaddr/socklen and name.
    let (sockaddr, name) = unsafe {
        (
            sockaddr::view(pc.sockaddr, pc.socklen),
            String::from_utf8_lossy((*pc.name).as_bytes()).into_owned(),
        )
    };
    let key = match pin_of(w, pc, sockaddr, &name) {
        Ok(key) => key,
        Err(line) => {
            // SAFETY: the session's client connection and its log are live.
            unsafe { log::write((*(*w.session).connection).log, log::ERR, &line) };
            counters::failed(Side::Upstream, Reason::Local);
            // A failed attempt: the proxy frees the peer as failed (max_fails) and tries
            // the next one (proxy_next_upstream).
            return NGX_DECLINED as ngx_int_t;
        }
    };
    let saved = pc.get;
    pc.get = Some(ngx_event_get_peer);
    // SAFETY: as nginx connects a peer whose address the balancer chose.
    let rc = unsafe { ngx_event_connect_peer(pc) };
    pc.get = saved;
    if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
        return rc; // NGX_ERROR or NGX_DECLINED: pc->connection is already NULL
    }
    let c = pc.connection;
    // SAFETY: the connect made c live.
    let log = unsafe { (*c).log };
    let hs = w.side.policy_for(key).and_then(|policy| {
        let (policy, settings) = (Arc::new(policy), w.side.settings.clone());
        match w.side.agent_keys() {
            Some(keys) => DelegatedHandshake::initiator(policy, settings, Vec::new(), keys)
                .map(AnyHandshake::from),
            None => Handshake::initiator(policy, settings).map(AnyHandshake::from),
        }
    });
    let hs = match hs {
        Ok(hs) => hs,
        Err(e) => {
            // SAFETY: log is live; c is ours to close (the proxy does not know it yet).
            unsafe {
                log::write(
                    log,
                    log::ERR,
                    &format!("noise: upstream {name}: {e} (see \"noise_upstream_server_key\")"),
                );
                ngx_close_connection(c);
            }
            pc.connection = std::ptr::null_mut();
            counters::failed(Side::Upstream, Reason::Local);
            return NGX_DECLINED as ngx_int_t;
        }
    };
    let mut state = NoiseConn::new(hs, Side::Upstream);
    state.agent = w.side.agent.clone();
    // SAFETY: the session pool outlives the connection (nginx closes upstream
    // connections before finalizing the session).
    let attached = unsafe { conn::attach(c, (*(*w.session).connection).pool, state) };
    if attached.is_none() {
        // SAFETY: as above, c is ours to close.
        unsafe { ngx_close_connection(c) };
        pc.connection = std::ptr::null_mut();
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: c is live and not yet seen by the proxy.
    let conn = unsafe { &mut *c };
    // The proxy set this attempt's PROXY protocol flag before asking us for the peer.
    // SAFETY: inside the balancer's get, with the session's live upstream.
    w.proxy_header = match unsafe { proxy_header::take(w.session, conn) } {
        Ok(header) => header,
        Err(e) => {
            // As the proxy does when its own header cannot be written: the session ends
            // (500), no other server would do better.
            // SAFETY: log is live; c is ours to close (the proxy does not know it yet).
            unsafe {
                log::write(log, log::ERR, &format!("noise: upstream {name}: {e}"));
                ngx_close_connection(c);
            }
            pc.connection = std::ptr::null_mut();
            return NGX_ERROR as ngx_int_t;
        }
    };
    conn.set_sendfile(0);
    // Fail closed: until the handshake installs NoiseSocket I/O, the proxy can neither
    // read the back end's bytes nor write the client's (docs/nginx-integration.md §5.6).
    gate::install(conn);
    w.conn = c;
    w.number = conn.number;
    w.family = sockaddr
        .get(..2)
        .map_or(0, |f| i32::from(u16::from_ne_bytes([f[0], f[1]])));
    w.connected = false;
    // SAFETY: our event lives in the wrap, which unposts it when dropped.
    unsafe { ngx_post_event(&mut w.event, &raw mut ngx_posted_events) };
    crate::noise_debug!(
        log,
        "noise upstream: connecting to {name}, handshake posted"
    );
    NGX_AGAIN as ngx_int_t
}

/// The pin for the peer the balancer chose ([`crate::nginx::conf::pins`]), or the error
/// line when the attempt must fail closed: the pattern needs the server's key and none
/// applies, or the group uses pins (a pin applies to one of its servers, or it has a
/// `server ... resolve` and this side has pins) and neither a pin nor
/// `noise_upstream_trusted_keys` vouches for this server.
fn pin_of(
    w: &PeerWrap,
    pc: &ngx_peer_connection_t,
    sockaddr: &[u8],
    address: &str,
) -> Result<Option<[u8; 32]>, String> {
    let side = &w.side;
    if !side.has_pins() && !side.needs_server_key() {
        return Ok(None);
    }
    // SAFETY: w.group is the session's live group; pc->name was just set by its balancer.
    let scan = unsafe { peers::scan(w.group, pc.name, |s| side.server_key(s).is_some()) };
    let server = Server {
        sockaddr,
        name: scan.current.as_deref(),
    };
    if let Some(key) = side.server_key(&server) {
        crate::noise_debug!(
            // SAFETY: the session's client connection and its log are live.
            unsafe { (*(*w.session).connection).log },
            "noise upstream: pin for {} at {address}",
            scan.current.as_deref().unwrap_or("(unnamed server)")
        );
        return Ok(Some(key));
    }
    let uses_pins = side.has_pins() && (scan.any_pinned || w.resolving);
    if !side.needs_server_key() && (side.has_trusted_keys() || !uses_pins) {
        return Ok(None);
    }
    // SAFETY: w.group is live.
    let group = unsafe { String::from_utf8_lossy((*w.group).host.as_bytes()).into_owned() };
    let configured = scan.current.as_deref().unwrap_or(address);
    let why = if side.needs_server_key() {
        format!("\"{}\" needs the server's key in advance", side.protocol)
    } else {
        "the group uses pins and no \"noise_upstream_trusted_keys\" is set".to_string()
    };
    let add = match &scan.current {
        Some(n) if n != address => format!("\"noise_upstream_server_key {n} KEY\" (or {address})"),
        _ => format!("\"noise_upstream_server_key {address} KEY\""),
    };
    Err(format!(
        "noise: upstream \"{group}\" server \"{configured}\" at {address}: no \"noise_upstream_server_key\" applies and {why}; refused: add {add}"
    ))
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: data is our PeerWrap.
    unsafe {
        let w = &mut *(data as *mut PeerWrap);
        if w.event.posted() != 0 {
            ngx_delete_posted_event(&mut w.event);
        }
        if let Some(free) = w.free {
            free(pc, w.data, state);
        }
    }
}

unsafe extern "C" fn notify_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    kind: ngx_uint_t,
) {
    // SAFETY: data is our PeerWrap; installed only when the original exists.
    unsafe {
        let w = &*(data as *const PeerWrap);
        if let Some(notify) = w.notify {
            notify(pc, w.data, kind);
        }
    }
}

unsafe extern "C" fn set_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: as notify_peer.
    unsafe {
        let w = &*(data as *const PeerWrap);
        w.set_session.map_or(NGX_OK as ngx_int_t, |f| f(pc, w.data))
    }
}

unsafe extern "C" fn save_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: as notify_peer.
    unsafe {
        let w = &*(data as *const PeerWrap);
        if let Some(f) = w.save_session {
            f(pc, w.data);
        }
    }
}
