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
//!   waits for the connect ([`crate::nginx::upstream::connect_state`]: TCP or unix-domain), re-arms the timer
//!   for the handshake (`noise_upstream_handshake_timeout` when set, else the
//!   `proxy_connect_timeout` the proxy armed, as `proxy_ssl` bounds its handshake), sends the
//!   PROXY protocol header in clear if the proxy would send one ([`crate::nginx::upstream::proxy_header`]) and
//!   runs the handshake, which starts at once (back ends that speak first work). On success
//!   it gives the handlers back and calls the proxy's connect handler, which sees a connected
//!   socket and starts relaying, with our I/O functions installed. On failure or timeout it
//!   marks the write event timed out and calls the same handler: the proxy counts a failed
//!   attempt (`max_fails`) and moves to the next server (`proxy_next_upstream`), exactly as
//!   for a refused connect. Handshake time is part of `$upstream_connect_time`.
//! * Fail closed: a `proxy_pass` to a variable whose value is not an upstream group is
//!   refused before anything connects ([`crate::nginx::upstream::target_guard`]); behind it, a stream filter
//!   refuses to send toward an upstream connection that is not NoiseSocket; the session ends
//!   with an error-log line.
//!
//! The per-session wrapper lives in the session pool ([`crate::nginx::util::pool`]); dropping it
//! unposts its event.

use std::ffi::c_void;
use std::ops::ControlFlow;
use std::sync::Arc;

use nginx_sys::{
    ngx_add_timer, ngx_chain_t, ngx_close_connection, ngx_conf_t, ngx_connection_t, ngx_del_timer,
    ngx_delete_posted_event, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_handler_pt,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_int_t, ngx_peer_connection_t,
    ngx_post_event, ngx_posted_events, ngx_stream_core_srv_conf_t, ngx_stream_filter_pt,
    ngx_stream_session_t, ngx_stream_top_filter, ngx_stream_upstream_srv_conf_t, ngx_uint_t,
    NGX_AGAIN, NGX_DECLINED, NGX_ERROR, NGX_OK,
};
use nginx_sys::{ngx_current_msec, ngx_msec_t};

use crate::core::handshake::{Handshake, HandshakeInfo};
use crate::core::key_agent::{AnyHandshake, DelegatedHandshake};
use crate::metrics::{Reason, Side, State};
use crate::nginx::conf::pins::Server;
use crate::nginx::conf::rules::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::nginx::conf::stream_conf::{self, noise_index, Confs};
use crate::nginx::conf::{HostPort, UpstreamSide};
use crate::nginx::conn::handshake::{drive, Failure, Progress};
use crate::nginx::conn::{self, NoiseConn};
use crate::nginx::upstream::connect_state::{self, State as Connect};
use crate::nginx::upstream::proxy_header::{self, Header, Sent};
use crate::nginx::{
    conn::gate, upstream::peers, upstream::proxy_pass, upstream::target_guard, util::counters,
    util::log, util::pool, util::sockaddr,
};

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
    /// The upstream group (live for the configuration), for the pins' view of its peers.
    group: *const ngx_stream_upstream_srv_conf_t,
    /// The group has a `server ... resolve` (its addresses are not known in advance).
    resolving: bool,
    session: *mut ngx_stream_session_t,
    pc: *mut ngx_peer_connection_t,
    /// The connection being handshaken, and its number (the slot may be reused).
    conn: *mut ngx_connection_t,
    number: nginx_sys::ngx_atomic_uint_t,
    /// The family of the peer's address (how connectedness is decided).
    family: i32,
    connected: bool,
    /// The proxy's `proxy_connect_timeout`, read off the timer it armed for this attempt;
    /// bounds the handshake unless `noise_upstream_handshake_timeout` is set.
    connect_timeout: ngx_msec_t,
    /// The PROXY protocol header to send in clear before the handshake (this attempt's).
    proxy_header: Option<Header>,
    saved_read: ngx_event_handler_pt,
    saved_write: ngx_event_handler_pt,
    event: ngx_event_t,
    /// What the last successful handshake established.
    info: Option<HandshakeInfo>,
}

/// Wraps every upstream group's `peer.init` and installs the fail-closed filter
/// (postconfiguration of the stream block whose confs are `confs`).
pub fn install(cf: &mut ngx_conf_t, mut confs: Confs) -> ngx_int_t {
    let umcf = confs.upstream_main();
    // SAFETY: the upstream module's main conf lists every group (implicit ones from
    // proxy_pass included) as ngx_stream_upstream_srv_conf_t pointers, each live for the
    // configuration and with peer.init already set by its balancer.
    let groups = unsafe {
        (*umcf)
            .upstreams
            .as_slice::<*mut ngx_stream_upstream_srv_conf_t>()
    };
    // SAFETY: postconfiguration runs alone; nothing else holds our main conf.
    let main = unsafe { confs.noise_main_mut() };
    let mut resolve_names = Vec::new();
    for &uscf in groups {
        // SAFETY: uscf is a live group (above), changed only here, during configuration.
        let peer = unsafe { &mut (*uscf).peer };
        if let Some(init) = peer.init {
            main.init_peers.push((uscf as usize, init));
            peer.init = Some(init_peer);
        }
        // SAFETY: as above.
        let names = unsafe { peers::resolve_names(uscf) };
        if !names.is_empty() {
            main.resolving_groups.push(uscf as usize);
        }
        resolve_names.extend(names.iter().filter_map(|n| HostPort::parse(n)));
    }
    // A name pin that did not resolve must name a `server ... resolve`: anything else is a
    // typo or a name nginx will never connect to.
    if let Some((name, at)) = main
        .unresolved_pins
        .iter()
        .find(|(name, _)| !resolve_names.contains(name))
    {
        let msg = format!(
            "\"noise_upstream_server_key\": cannot resolve \"{name}\" and no upstream has \"server {name} resolve\" in {at}"
        );
        // SAFETY: cf->log is live.
        unsafe { log::write(cf.log, log::EMERG, &msg) };
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: the filter chain is plain data, set up during postconfiguration, one module
    // after the other.
    unsafe {
        NEXT_FILTER = ngx_stream_top_filter;
        ngx_stream_top_filter = Some(fail_closed_filter);
    }
    let cmcf = confs.core_main();
    // SAFETY: the core main conf lists every server's ngx_stream_core_srv_conf_t.
    let servers = unsafe {
        (*cmcf)
            .servers
            .as_slice::<*mut ngx_stream_core_srv_conf_t>()
    };
    for &cscf in servers {
        // SAFETY: every entry is a live server conf of this configuration, changed only here,
        // during configuration.
        if let Err(msg) = check_server(cf, unsafe { &mut *cscf }, groups) {
            // SAFETY: cf->log is live.
            unsafe { log::write(cf.log, log::EMERG, &msg) };
            return NGX_ERROR as ngx_int_t;
        }
    }
    NGX_OK as ngx_int_t
}

/// Configuration-time checks of a `noise_upstream on` server against its `proxy_pass`:
/// every server of its group must have a key when the pattern needs one, and a variable
/// target gets a warning (targets that are not groups are refused at run time).
fn check_server(
    cf: &mut ngx_conf_t,
    cscf: &mut ngx_stream_core_srv_conf_t,
    groups: &[*mut ngx_stream_upstream_srv_conf_t],
) -> Result<(), String> {
    // SAFETY: a server's core conf points at the server's own conf context; configuration
    // runs alone, so nothing else holds its confs.
    let mut confs = Confs::of_ctx(unsafe { &*cscf.ctx });
    let conf = confs.noise_srv();
    let Some(side) = conf.upstream_side.as_ref() else {
        return Ok(());
    };
    // SAFETY: file_name is nginx's NUL-terminated configuration file name.
    let at = unsafe { stream_conf::server_position(cscf) };
    match proxy_pass::target(cf, conf, groups) {
        proxy_pass::Target::Variable => {
            let msg = format!(
                "\"noise_upstream on\" with \"proxy_pass\" to a variable in the server at {at}: targets that are not upstream groups will be refused"
            );
            // SAFETY: cf->log is live.
            unsafe { log::write(cf.log, log::WARN, &msg) };
            // SAFETY: see above (no other reference to this server's conf is live).
            target_guard::install(cf, cscf, unsafe { confs.noise_srv_mut() })
                .map_err(|e| format!("{e} (server at {at})"))?;
        }
        proxy_pass::Target::Group(uscf) if side.needs_server_key() => {
            let mut missing = None;
            // SAFETY: target() returned one of the live groups; a group's peer.data is its
            // round-robin peer lists (set by its balancer's init, which runs before
            // postconfiguration); no session runs yet.
            unsafe {
                peers::visit(uscf, std::ptr::null(), |p| {
                    if side.server_key(&p.server()).is_some() {
                        return ControlFlow::Continue(());
                    }
                    missing = Some(p.name.map_or_else(|| p.address.to_string(), str::to_owned));
                    ControlFlow::Break(())
                })
            };
            if let Some(server) = missing {
                // SAFETY: as above.
                let group = unsafe { String::from_utf8_lossy((*uscf).host.as_bytes()) };
                return Err(format!(
                    "no \"noise_upstream_server_key\" for {server} of upstream \"{group}\", which \"{}\" needs (server at {at})",
                    side.protocol
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The wrapped `peer.init`: the original, then our functions for noise sessions.
unsafe extern "C" fn init_peer(
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

impl Drop for PeerWrap {
    /// The session is ending (its pool goes): our event must not fire after it.
    fn drop(&mut self) {
        if self.event.posted() != 0 {
            // SAFETY: the event is in nginx's posted queue, which we take it out of.
            unsafe { ngx_delete_posted_event(&mut self.event) };
        }
    }
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

/// The posted event: runs after the proxy installed its connect handler and timer.
unsafe extern "C" fn take_over(ev: *mut ngx_event_t) {
    // SAFETY: ev is our PeerWrap's event (its data is the wrap), which lives as long as
    // the session and unposts the event when it goes.
    let w = unsafe { &mut *((*ev).data as *mut PeerWrap) };
    // SAFETY: w.pc is the session's peer connection, live with the session.
    let c = unsafe { (*w.pc).connection };
    // SAFETY: non-null and ours (same pointer as when posted): the connection is live;
    // its number tells a reused slot.
    if c != w.conn || c.is_null() || unsafe { (*c).number } != w.number {
        return;
    }
    // SAFETY: c is live (above), so are its events; the proxy installed its handlers.
    let (rev, wev) = unsafe { (&mut *(*c).read, &mut *(*c).write) };
    // The proxy has just armed proxy_connect_timeout on the write event, in this same turn
    // of the event loop (ngx_current_msec has not moved since): what is left is its value.
    w.connect_timeout = if wev.timer_set() != 0 {
        // SAFETY: nginx's clock, read in its own thread.
        let now = unsafe { ngx_current_msec };
        (wev.timer.key as ngx_msec_t).saturating_sub(now).max(1)
    } else {
        DEFAULT_HANDSHAKE_TIMEOUT
    };
    w.saved_read = rev.handler;
    w.saved_write = wev.handler;
    rev.handler = Some(handshake_event);
    wev.handler = Some(handshake_event);
    step(w);
}

/// The session's [`PeerWrap`], if our wrapper was installed for it.
fn wrap_of(s: &ngx_stream_session_t) -> *mut PeerWrap {
    // SAFETY: s->ctx has a slot per stream module; ours is set only by init_peer (nginx
    // zeroes the array when it creates the session).
    unsafe { *s.ctx.add(noise_index()) as *mut PeerWrap }
}

/// Read and write events of the connection while it handshakes.
unsafe extern "C" fn handshake_event(ev: *mut ngx_event_t) {
    // SAFETY: ev belongs to an upstream connection whose data is the session (set by the
    // proxy); these handlers are installed only by take_over, on a wrapped session.
    let (c, s) = unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        (c, &*((*c).data as *const ngx_stream_session_t))
    };
    let w = wrap_of(s);
    if w.is_null() {
        // SAFETY: c is the connection whose event is running, so it and its log are live.
        unsafe {
            log::write(
                (*c).log,
                log::ALERT,
                "noise: upstream handshake event without its session state",
            )
        };
        return;
    }
    // SAFETY: non-null: the session's live wrap.
    step(unsafe { &mut *w });
}

/// The upstream connection being handshaken and its two events.
///
/// # Safety
/// `c` must be a wrap's `conn` while an event of that connection or the posted take-over
/// runs: [`take_over`] checked it, and only the proxy closes it, after we hand it back.
/// The three are distinct objects and nothing else touches them meanwhile (one thread, no
/// re-entry); the references must not be used after [`hand_back`].
unsafe fn connection<'a>(
    c: *mut ngx_connection_t,
) -> (
    &'a mut ngx_connection_t,
    &'a mut ngx_event_t,
    &'a mut ngx_event_t,
) {
    // SAFETY: see above.
    unsafe { (&mut *c, &mut *(*c).read, &mut *(*c).write) }
}

/// Gives the proxy its handlers back and calls its connect handler, successful or not.
/// That handler may finish the session (and drop `w` with its pool): nothing may use `w`
/// after this call.
fn hand_back(w: &mut PeerWrap, failed: bool) {
    // SAFETY: called from step/fail, on the wrap's checked connection.
    let (_, rev, wev) = unsafe { connection(w.conn) };
    rev.handler = w.saved_read;
    wev.handler = w.saved_write;
    if failed {
        wev.set_timedout(1);
    }
    if wev.timer_set() == 0 {
        // The proxy's handler deletes the timer unconditionally.
        // SAFETY: wev is live and not in the timer tree.
        unsafe { ngx_add_timer(wev, w.handshake_timeout()) };
    }
    if let Some(h) = w.saved_write {
        // SAFETY: the proxy's own write handler, on its own connection's event.
        unsafe { h(wev) };
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
fn fail(w: &mut PeerWrap, reason: &str, why: Reason) {
    count_failure(w, why);
    // SAFETY: called from step, on the wrap's checked connection.
    let (c, _, _) = unsafe { connection(w.conn) };
    // SAFETY: w.pc is the session's live peer connection; a non-null name is the
    // balancer's peer name.
    let name = unsafe {
        let pc = &*w.pc;
        if pc.name.is_null() {
            String::from("(unknown)")
        } else {
            String::from_utf8_lossy((*pc.name).as_bytes()).into_owned()
        }
    };
    let line = format!("noise: NoiseSocket handshake with upstream {name} failed: {reason}");
    // SAFETY: c->log is live.
    unsafe { log::write(c.log, log::UPSTREAM_FAILURE, &line) };
    // SAFETY: the session pool outlives the connection; the copy is a plain C struct.
    unsafe {
        let pool = (*(*w.session).connection).pool;
        let quiet = nginx_sys::ngx_palloc(pool, std::mem::size_of::<nginx_sys::ngx_log_t>())
            as *mut nginx_sys::ngx_log_t;
        if !quiet.is_null() {
            std::ptr::copy_nonoverlapping(c.log, quiet, 1);
            (*quiet).log_level = nginx_sys::NGX_LOG_CRIT as ngx_uint_t;
            c.log = quiet;
        }
    }
    hand_back(w, true);
}

impl PeerWrap {
    /// What bounds the handshake: `noise_upstream_handshake_timeout` when it is set, else the
    /// proxy's `proxy_connect_timeout` (as `proxy_ssl` bounds its TLS handshake).
    fn handshake_timeout(&self) -> ngx_msec_t {
        self.side.handshake_timeout.unwrap_or(self.connect_timeout)
    }
}

/// Counts a failed attempt, and stops counting its connection (its state stays in the
/// session pool until the session ends).
fn count_failure(w: &PeerWrap, why: Reason) {
    counters::failed(Side::Upstream, why);
    // SAFETY: w.conn is the wrap's live connection; the reference ends in this statement.
    if let Some(st) = unsafe { conn::get(w.conn) } {
        st.uncount();
        // A question to the key agent ends with the attempt.
        st.agent_wait = None;
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
fn step(w: &mut PeerWrap) {
    // SAFETY: step runs from take_over or an event of w.conn (checked there).
    let (c, rev, wev) = unsafe { connection(w.conn) };
    if !w.connected {
        if wev.timedout() != 0 || rev.timedout() != 0 {
            wev.set_timedout(1);
            count_failure(w, Reason::Connect);
            return hand_back(w, true); // the proxy's own connect timeout
        }
        if wev.ready() == 0 {
            return;
        }
        match connect_state::of(c.fd, w.family) {
            Connect::Pending => return,
            Connect::Connected => {}
            // The connect failed. Never hand a socket that did not handshake to the proxy
            // as connected, even if no error is pending: say what happened and count a
            // failed attempt.
            Connect::Failed => return fail(w, &connect_state::failure(c.fd), Reason::Connect),
        }
        w.connected = true;
        // SAFETY: wev is live; its timer is deleted only if set, then set anew.
        unsafe {
            if wev.timer_set() != 0 {
                ngx_del_timer(wev);
            }
            ngx_add_timer(wev, w.handshake_timeout());
        }
        crate::noise_debug!(c.log, "noise upstream: connected, handshaking");
    }
    if wev.timedout() != 0 || rev.timedout() != 0 {
        return fail(w, "timed out", Reason::Timeout);
    }
    if let Some(header) = &w.proxy_header {
        match header.send(c.fd) {
            Ok(Sent::Done) => {
                crate::noise_debug!(c.log, "noise upstream: sent \"{}\" in clear", header.text());
                w.proxy_header = None;
            }
            Ok(Sent::Again) => {
                // SAFETY: wev is live.
                if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as ngx_int_t {
                    fail(w, "cannot wait for the write event", Reason::Local);
                }
                return;
            }
            Err(e) => return fail(w, &e.to_string(), Reason::Socket),
        }
    }
    // SAFETY: c is live with the state get_peer attached.
    match unsafe { drive(c, None) } {
        Progress::Done => {
            // SAFETY: c is live; the reference ends in this block.
            if let Some(st) = unsafe { conn::get(c) } {
                if let Some(info) = st.info.as_deref() {
                    counters::ok(Side::Upstream, info.protocol.name());
                    w.info = Some(info.clone());
                }
                st.count_as(State::Established);
            }
            // drive() left rev.ready saying whether there may be something to read.
            wev.set_ready(1);
            hand_back(w, false);
        }
        Progress::WantRead => {
            // SAFETY: rev is live.
            if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as ngx_int_t {
                fail(w, "cannot wait for the read event", Reason::Local);
            }
        }
        Progress::WantWrite => {
            // SAFETY: wev is live.
            if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as ngx_int_t {
                fail(w, "cannot wait for the write event", Reason::Local);
            }
        }
        // The key agent's answer posts the read event (the handshake timer still runs).
        Progress::WantKeyOp => {}
        // Nothing pauses an initiator (no `decide` is given): fail closed all the same.
        Progress::WantVerdict => fail(w, "the handshake paused for a verdict", Reason::Local),
        Progress::Failed(failure) => fail(w, &reason(&failure), failure.reason()),
    }
}

/// What the upstream handshake of session `s` established (for variables).
pub fn session_info(s: &ngx_stream_session_t) -> Option<&HandshakeInfo> {
    let w = wrap_of(s);
    // SAFETY: non-null is the session's wrap, in the session pool as long as the session.
    (!w.is_null())
        .then(|| unsafe { (*w).info.as_ref() })
        .flatten()
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
