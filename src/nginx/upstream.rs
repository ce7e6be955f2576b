//! NoiseSocket to upstream servers from stock `proxy_pass`, on unpatched nginx
//! (docs/nginx-integration.md §5).
//!
//! * Postconfiguration wraps `peer.init` of every upstream group (the keepalive module's
//!   way). For sessions of a `noise_upstream on` server, the wrapper replaces the balancer's
//!   `get/free/notify/set_session/save_session` with ours, keeping the originals.
//! * `get` asks the original balancer for a peer, connects it itself with
//!   `ngx_event_connect_peer`, attaches an initiator handshake and answers NGX_AGAIN, so the
//!   proxy installs its connect handler and connect timer as for any pending connect.
//! * A posted event then takes the connection's handlers over (keeping the proxy's): it
//!   waits for the TCP connect, re-arms the timer with `noise_upstream_handshake_timeout` and
//!   runs the handshake, which starts at once (back ends that speak first work). On success
//!   it gives the handlers back and calls the proxy's connect handler, which sees a connected
//!   socket and starts relaying, with our I/O functions installed. On failure or timeout it
//!   marks the write event timed out and calls the same handler: the proxy counts a failed
//!   attempt (`max_fails`) and moves to the next server (`proxy_next_upstream`), exactly as
//!   for a refused connect. Handshake time is part of `$upstream_connect_time`.
//! * Fail closed: a stream filter refuses to send toward an upstream connection that is not
//!   NoiseSocket (a `proxy_pass` to a variable that resolved to a bare address bypasses
//!   the balancer); the session ends with an error-log line.
//!
//! The per-session wrapper lives in the session pool; its cleanup unposts its event.

use std::ffi::c_void;
use std::sync::Arc;

use nginx_sys::{
    ngx_add_timer, ngx_chain_t, ngx_close_connection, ngx_conf_t, ngx_connection_t, ngx_del_timer,
    ngx_delete_posted_event, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_handler_pt,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_int_t, ngx_peer_connection_t,
    ngx_pool_cleanup_add, ngx_post_event, ngx_posted_events, ngx_stream_conf_ctx_t,
    ngx_stream_core_main_conf_t, ngx_stream_core_module, ngx_stream_core_srv_conf_t,
    ngx_stream_filter_pt, ngx_stream_session_t, ngx_stream_top_filter,
    ngx_stream_upstream_main_conf_t, ngx_stream_upstream_module, ngx_stream_upstream_rr_peers_t,
    ngx_stream_upstream_srv_conf_t, ngx_uint_t, NGX_AGAIN, NGX_DECLINED, NGX_ERROR, NGX_OK,
};

use super::conf::SrvConf;
use super::conn::{self, NoiseConn};
use super::gate;
use super::handshake::{drive, Failure, Progress};
use super::listen::MainConf;
use super::upstream_side::UpstreamSide;
use super::{log, proxy_pass};
use crate::core::handshake::{Handshake, HandshakeInfo};

extern "C" {
    static mut ngx_stream_noise_module: nginx_sys::ngx_module_t;
}

/// The original `peer.init` of each upstream group, kept in the main conf.
pub type InitPeer = unsafe extern "C" fn(
    *mut ngx_stream_session_t,
    *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t;

static mut NEXT_FILTER: ngx_stream_filter_pt = None;

/// Per-session wrapper around the balancer. Our peer functions get it as `peer.data`;
/// everything else finds it in the session's module context (`s->ctx`), which is null for
/// sessions whose balancer we did not wrap: nothing is inferred from what `peer.data`
/// points at.
struct PeerWrap {
    data: *mut c_void,
    get: nginx_sys::ngx_event_get_peer_pt,
    free: nginx_sys::ngx_event_free_peer_pt,
    notify: nginx_sys::ngx_event_notify_peer_pt,
    set_session: nginx_sys::ngx_event_set_peer_session_pt,
    save_session: nginx_sys::ngx_event_save_peer_session_pt,
    side: Arc<UpstreamSide>,
    session: *mut ngx_stream_session_t,
    pc: *mut ngx_peer_connection_t,
    /// The connection being handshaken, and its number (the slot may be reused).
    conn: *mut ngx_connection_t,
    number: nginx_sys::ngx_atomic_uint_t,
    connected: bool,
    saved_read: ngx_event_handler_pt,
    saved_write: ngx_event_handler_pt,
    event: ngx_event_t,
    /// What the last successful handshake established.
    info: Option<HandshakeInfo>,
}

unsafe fn main_conf<'a>(s: *mut ngx_stream_session_t) -> &'a MainConf {
    // SAFETY: s is live; its main_conf array holds ours at our ctx_index.
    unsafe { &*(*(*s).main_conf.add(ngx_stream_noise_module.ctx_index) as *const MainConf) }
}

unsafe fn srv_conf<'a>(s: *mut ngx_stream_session_t) -> &'a SrvConf {
    // SAFETY: s is live; its srv_conf array holds ours at our ctx_index.
    unsafe { &*(*(*s).srv_conf.add(ngx_stream_noise_module.ctx_index) as *const SrvConf) }
}

/// Wraps every upstream group's `peer.init` and installs the fail-closed filter.
///
/// # Safety
/// `cf` must be the stream configuration, in postconfiguration.
pub unsafe fn install(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: cf->ctx is the stream main context; the upstream module's main conf lists
    // every group (implicit ones from proxy_pass included) with peer.init already set.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_stream_conf_ctx_t;
        let main =
            &mut *(*(*ctx).main_conf.add(ngx_stream_noise_module.ctx_index) as *mut MainConf);
        let umcf = *(*ctx).main_conf.add(ngx_stream_upstream_module.ctx_index)
            as *mut ngx_stream_upstream_main_conf_t;
        let groups = std::slice::from_raw_parts(
            (*umcf).upstreams.elts as *const *mut ngx_stream_upstream_srv_conf_t,
            (*umcf).upstreams.nelts,
        );
        for &uscf in groups {
            if let Some(init) = (*uscf).peer.init {
                main.init_peers.push((uscf as usize, init));
                (*uscf).peer.init = Some(init_peer);
            }
        }
        NEXT_FILTER = ngx_stream_top_filter;
        ngx_stream_top_filter = Some(fail_closed_filter);
        let cmcf = *(*ctx).main_conf.add(ngx_stream_core_module.ctx_index)
            as *mut ngx_stream_core_main_conf_t;
        let servers = std::slice::from_raw_parts(
            (*cmcf).servers.elts as *const *mut ngx_stream_core_srv_conf_t,
            (*cmcf).servers.nelts,
        );
        for &cscf in servers {
            if let Err(msg) = check_server(cf, cscf, groups) {
                log::write((*cf).log, log::EMERG, &msg);
                return NGX_ERROR as ngx_int_t;
            }
        }
    }
    NGX_OK as ngx_int_t
}

/// Configuration-time checks of a `noise_upstream on` server against its `proxy_pass`:
/// every server of its group must have a key when the pattern needs one, and a variable
/// target gets a warning (targets that are not groups are refused at run time).
///
/// # Safety
/// `cf` and `cscf` must belong to the stream configuration being finished.
unsafe fn check_server(
    cf: *mut ngx_conf_t,
    cscf: *mut ngx_stream_core_srv_conf_t,
    groups: &[*mut ngx_stream_upstream_srv_conf_t],
) -> Result<(), String> {
    // SAFETY: cscf->ctx is the server's conf context; ours sits at our ctx_index.
    unsafe {
        let ctx = (*cscf).ctx;
        let conf = &*(*(*ctx).srv_conf.add(ngx_stream_noise_module.ctx_index) as *const SrvConf);
        let Some(side) = conf.upstream_side.as_ref() else {
            return Ok(());
        };
        let at = format!(
            "{}:{}",
            std::ffi::CStr::from_ptr((*cscf).file_name.cast()).to_string_lossy(),
            (*cscf).line
        );
        match proxy_pass::target(cf, conf, groups) {
            proxy_pass::Target::Variable => log::write(
                (*cf).log,
                log::WARN,
                &format!(
                    "\"noise_upstream on\" with \"proxy_pass\" to a variable in the server at {at}: targets that are not upstream groups will be refused"
                ),
            ),
            proxy_pass::Target::Group(uscf) if side.needs_server_key() => {
                let peers = (*uscf).peer.data as *const ngx_stream_upstream_rr_peers_t;
                let mut list = peers;
                while !list.is_null() {
                    let mut peer = (*list).peer;
                    while !peer.is_null() {
                        let raw = std::slice::from_raw_parts((*peer).sockaddr as *const u8, (*peer).socklen as usize);
                        if side.server_key(raw).is_none() {
                            return Err(format!(
                                "no \"noise_upstream_server_key\" for {} of upstream \"{}\", which \"{}\" needs (server at {at})",
                                String::from_utf8_lossy((*peer).name.as_bytes()),
                                String::from_utf8_lossy((*uscf).host.as_bytes()),
                                side.protocol
                            ));
                        }
                        peer = (*peer).next;
                    }
                    list = (*list).next;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The wrapped `peer.init`: the original, then our functions for noise sessions.
unsafe extern "C" fn init_peer(
    s: *mut ngx_stream_session_t,
    us: *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: s is a live session; main conf recorded every group's original init.
    unsafe {
        let Some(&(_, original)) = main_conf(s)
            .init_peers
            .iter()
            .find(|(u, _)| *u == us as usize)
        else {
            return NGX_ERROR as ngx_int_t;
        };
        let rc = original(s, us);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let Some(side) = srv_conf(s).upstream_side.clone() else {
            return rc;
        };
        let u = (*s).upstream;
        let pc: *mut ngx_peer_connection_t = &mut (*u).peer;
        let wrap = PeerWrap {
            data: (*pc).data,
            get: (*pc).get,
            free: (*pc).free,
            notify: (*pc).notify,
            set_session: (*pc).set_session,
            save_session: (*pc).save_session,
            side,
            session: s,
            pc,
            conn: std::ptr::null_mut(),
            number: 0,
            connected: false,
            saved_read: None,
            saved_write: None,
            event: std::mem::zeroed(),
            info: None,
        };
        let cleanup = ngx_pool_cleanup_add((*(*s).connection).pool, 0);
        if cleanup.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let raw = Box::into_raw(Box::new(wrap));
        (*cleanup).handler = Some(release_wrap);
        (*cleanup).data = raw.cast();
        (*raw).event.data = raw.cast();
        (*raw).event.handler = Some(take_over);
        (*raw).event.log = (*(*s).connection).log;
        *(*s).ctx.add(ngx_stream_noise_module.ctx_index) = raw.cast();
        (*pc).data = raw.cast();
        (*pc).get = Some(get_peer);
        (*pc).free = Some(free_peer);
        (*pc).notify = (*raw)
            .notify
            .map(|_| notify_peer as unsafe extern "C" fn(_, _, _));
        (*pc).set_session = (*raw)
            .set_session
            .map(|_| set_session as unsafe extern "C" fn(_, _) -> _);
        (*pc).save_session = (*raw)
            .save_session
            .map(|_| save_session as unsafe extern "C" fn(_, _));
        rc
    }
}

unsafe extern "C" fn release_wrap(data: *mut c_void) {
    // SAFETY: data came from Box::into_raw in init_peer and is released once, here.
    unsafe {
        let wrap = Box::from_raw(data.cast::<PeerWrap>());
        if wrap.event.posted() != 0 {
            ngx_delete_posted_event(&wrap.event as *const ngx_event_t as *mut ngx_event_t);
        }
        drop(wrap);
    }
}

/// The wrapped `peer.get`: the balancer's choice, connected by us, with a handshake.
unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: data is our PeerWrap (set by init_peer); pc is the session's peer.
    unsafe {
        let w = &mut *(data as *mut PeerWrap);
        let Some(get) = w.get else {
            return NGX_ERROR as ngx_int_t;
        };
        let rc = get(pc, w.data);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let saved = (*pc).get;
        (*pc).get = Some(ngx_event_get_peer);
        let rc = ngx_event_connect_peer(pc);
        (*pc).get = saved;
        if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
            return rc; // NGX_ERROR or NGX_DECLINED: pc->connection is already NULL
        }
        let c = (*pc).connection;
        let sockaddr =
            std::slice::from_raw_parts((*pc).sockaddr as *const u8, (*pc).socklen as usize);
        let log = (*c).log;
        let name = String::from_utf8_lossy((*(*pc).name).as_bytes()).into_owned();
        let hs = w
            .side
            .policy_for(sockaddr)
            .and_then(|policy| Handshake::initiator(Arc::new(policy), w.side.settings.clone()));
        let hs = match hs {
            Ok(hs) => hs,
            Err(e) => {
                log::write(
                    log,
                    log::ERR,
                    &format!("noise: upstream {name}: {e} (see \"noise_upstream_server_key\")"),
                );
                ngx_close_connection(c);
                (*pc).connection = std::ptr::null_mut();
                return NGX_DECLINED as ngx_int_t;
            }
        };
        if conn::attach(c, (*(*w.session).connection).pool, NoiseConn::new(hs)).is_none() {
            ngx_close_connection(c);
            (*pc).connection = std::ptr::null_mut();
            return NGX_ERROR as ngx_int_t;
        }
        (*c).set_sendfile(0);
        // Fail closed: until the handshake installs NoiseSocket I/O, the proxy can neither
        // read the back end's bytes nor write the client's (docs/nginx-integration.md §5.6).
        gate::install(c);
        w.conn = c;
        w.number = (*c).number;
        w.connected = false;
        ngx_post_event(&mut w.event, &raw mut ngx_posted_events);
        NGX_AGAIN as ngx_int_t
    }
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

/// The posted event: runs after the proxy installed its connect handler and timer.
unsafe extern "C" fn take_over(ev: *mut ngx_event_t) {
    // SAFETY: ev is our PeerWrap's event; the wrap lives as long as the session.
    unsafe {
        let w = &mut *((*ev).data as *mut PeerWrap);
        let c = (*w.pc).connection;
        if c != w.conn || c.is_null() || (*c).number != w.number {
            return;
        }
        w.saved_read = (*(*c).read).handler;
        w.saved_write = (*(*c).write).handler;
        (*(*c).read).handler = Some(handshake_event);
        (*(*c).write).handler = Some(handshake_event);
        step(w);
    }
}

/// The session's [`PeerWrap`], if our wrapper was installed for it.
///
/// # Safety
/// `s` must be a live session.
unsafe fn wrap_of(s: *mut ngx_stream_session_t) -> *mut PeerWrap {
    // SAFETY: s is live; s->ctx has a slot per stream module, ours set only by init_peer.
    unsafe { *(*s).ctx.add(ngx_stream_noise_module.ctx_index) as *mut PeerWrap }
}

/// Read and write events of the connection while it handshakes.
unsafe extern "C" fn handshake_event(ev: *mut ngx_event_t) {
    // SAFETY: ev belongs to an upstream connection whose data is the session (set by the
    // proxy); these handlers are installed only by take_over, on a wrapped session.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let s = (*c).data as *mut ngx_stream_session_t;
        let w = wrap_of(s);
        if w.is_null() {
            log::write(
                (*c).log,
                log::ALERT,
                "noise: upstream handshake event without its session state",
            );
            return;
        }
        step(&mut *w);
    }
}

/// Gives the proxy its handlers back and calls its connect handler, successful or not.
unsafe fn hand_back(w: &mut PeerWrap, failed: bool) {
    // SAFETY: w.conn is the live upstream connection; saved_* are the proxy's handlers.
    unsafe {
        let c = w.conn;
        (*(*c).read).handler = w.saved_read;
        (*(*c).write).handler = w.saved_write;
        if failed {
            (*(*c).write).set_timedout(1);
        }
        if (*(*c).write).timer_set() == 0 {
            // The proxy's handler deletes the timer unconditionally.
            ngx_add_timer((*c).write, w.side.handshake_timeout);
        }
        if let Some(h) = w.saved_write {
            h((*c).write);
        }
    }
}

/// A failed handshake with the back end: one `error` line that says what happened, then a
/// failed attempt for the proxy (`max_fails`, `proxy_next_upstream`).
///
/// The proxy learns of the failure as a connect timeout, the only failure it can be told
/// of without a socket error, and would log "upstream timed out" about this connection. So
/// for that call the connection gets a copy of its log that passes only `crit` and worse:
/// our line is the one the operator reads. Lines about the session (the client connection's
/// log, e.g. "no live upstreams") are not affected.
unsafe fn fail(w: &mut PeerWrap, reason: &str) {
    // SAFETY: w.conn is the live upstream connection, w.pc its peer; the quiet log lives
    // in the session pool, which outlives the connection.
    unsafe {
        let c = w.conn;
        let name = if (*w.pc).name.is_null() {
            String::from("(unknown)")
        } else {
            String::from_utf8_lossy((*(*w.pc).name).as_bytes()).into_owned()
        };
        log::write(
            (*c).log,
            log::UPSTREAM_FAILURE,
            &format!("noise: NoiseSocket handshake with upstream {name} failed: {reason}"),
        );
        let pool = (*(*w.session).connection).pool;
        let quiet = nginx_sys::ngx_palloc(pool, std::mem::size_of::<nginx_sys::ngx_log_t>())
            as *mut nginx_sys::ngx_log_t;
        if !quiet.is_null() {
            std::ptr::copy_nonoverlapping((*c).log, quiet, 1);
            (*quiet).log_level = nginx_sys::NGX_LOG_CRIT as ngx_uint_t;
            (*c).log = quiet;
        }
        hand_back(w, true);
    }
}

/// The reason text of a handshake failure.
fn reason(failure: &Failure) -> String {
    match failure {
        Failure::Noise(e) => e.to_string(),
        Failure::Socket { doing, errno } => format!("{doing} ({})", log::errno_text(*errno)),
    }
}

/// Advances connect-then-handshake.
unsafe fn step(w: &mut PeerWrap) {
    // SAFETY: w.conn is the live upstream connection (checked by the callers' paths).
    unsafe {
        let c = w.conn;
        let (rev, wev) = ((*c).read, (*c).write);
        if !w.connected {
            if (*wev).timedout() != 0 || (*rev).timedout() != 0 {
                (*wev).set_timedout(1);
                return hand_back(w, true); // the proxy's own connect timeout
            }
            if (*wev).ready() == 0 {
                return;
            }
            match tcp_state((*c).fd) {
                Some(TCP_SYN_SENT) => return,
                // Connected; in CLOSE_WAIT the back end already sent and closed: the
                // handshake reads what it sent, and fails on it.
                Some(TCP_ESTABLISHED | TCP_CLOSE_WAIT) => {}
                // Any other state: the connect failed. Never hand a socket that did not
                // handshake to the proxy as connected, even if no error is pending: say
                // what happened and count a failed attempt.
                _ => return fail(w, &connect_failure((*c).fd)),
            }
            w.connected = true;
            if (*wev).timer_set() != 0 {
                ngx_del_timer(wev);
            }
            ngx_add_timer(wev, w.side.handshake_timeout);
        }
        if (*wev).timedout() != 0 || (*rev).timedout() != 0 {
            return fail(w, "timed out");
        }
        match drive(c) {
            Progress::Done => {
                if let Some(info) = conn::get(c).and_then(|st| st.info.as_deref()) {
                    w.info = Some(info.clone());
                }
                // drive() left rev.ready saying whether there may be something to read.
                (*wev).set_ready(1);
                hand_back(w, false);
            }
            Progress::WantRead => {
                if ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t {
                    fail(w, "cannot wait for the read event");
                }
            }
            Progress::WantWrite => {
                if ngx_handle_write_event(wev, 0) != NGX_OK as ngx_int_t {
                    fail(w, "cannot wait for the write event");
                }
            }
            Progress::Failed(failure) => fail(w, &reason(&failure)),
        }
    }
}

/// Linux TCP states (include/net/tcp_states.h), which libc does not export.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE_WAIT: i32 = 8;

/// Why a connect failed, in nginx's words ("connect() failed (111: Connection refused)"),
/// from the socket's pending error (consumed: the proxy is told by a failed attempt).
fn connect_failure(fd: i32) -> String {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into err.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    if rc != 0 || err == 0 {
        return "connect() failed (the connection closed before the handshake)".into();
    }
    format!("connect() failed ({})", log::errno_text(err))
}

/// The kernel's TCP state of a socket. Unlike `SO_ERROR` it does not consume a pending
/// connect error, which nginx's own `test_connect` must still see.
fn tcp_state(fd: i32) -> Option<i32> {
    // SAFETY: tcp_info is a plain C struct; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        (rc == 0).then_some(i32::from(info.tcpi_state))
    }
}

/// What the upstream handshake of session `s` established (for variables).
///
/// # Safety
/// `s` must be a live session.
pub unsafe fn session_info<'a>(s: *mut ngx_stream_session_t) -> Option<&'a HandshakeInfo> {
    // SAFETY: s is live; the wrap lives in the session pool as long as the session.
    unsafe {
        let w = wrap_of(s);
        if w.is_null() {
            return None;
        }
        (*w).info.as_ref()
    }
}

/// Refuses to send toward an upstream connection that does not speak NoiseSocket.
unsafe extern "C" fn fail_closed_filter(
    s: *mut ngx_stream_session_t,
    chain: *mut ngx_chain_t,
    from_upstream: ngx_uint_t,
) -> ngx_int_t {
    // SAFETY: s is live; NEXT_FILTER was set at postconfiguration, before any session.
    unsafe {
        if from_upstream == 0 && srv_conf(s).upstream_side.is_some() {
            let u = (*s).upstream;
            let pc = if u.is_null() {
                std::ptr::null_mut()
            } else {
                (*u).peer.connection
            };
            let noise = !pc.is_null() && conn::get(pc).is_some_and(|st| st.transport().is_some());
            if !pc.is_null() && !noise {
                log::write(
                    (*(*s).connection).log,
                    log::ERR,
                    "noise: refusing to send plaintext upstream: this connection bypassed the upstream group (proxy_pass to a variable that is a bare address?)",
                );
                return NGX_ERROR as ngx_int_t;
            }
        }
        match NEXT_FILTER {
            Some(next) => next(s, chain, from_upstream),
            None => NGX_OK as ngx_int_t,
        }
    }
}
