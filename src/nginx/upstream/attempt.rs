//! One attempt to reach an upstream server: connect, then handshake, on the connection the
//! balancer wrapper opened ([`super::peer`]; docs/nginx-integration.md §5).
//!
//! A posted event takes the connection's handlers over (keeping the proxy's): it waits for
//! the connect ([`super::connect_state`]: TCP or unix-domain), re-arms the timer for the
//! handshake (`noise_upstream_handshake_timeout` when set, else the `proxy_connect_timeout`
//! the proxy armed, as `proxy_ssl` bounds its handshake), sends the PROXY protocol header
//! in clear if the proxy would send one ([`super::proxy_header`]) and runs the handshake,
//! which starts at once (back ends that speak first work). On success it gives the handlers
//! back and calls the proxy's connect handler, which sees a connected socket and starts
//! relaying, with our I/O functions installed. On failure or timeout it marks the write
//! event timed out and calls the same handler: the proxy counts a failed attempt
//! (`max_fails`) and moves to the next server (`proxy_next_upstream`), exactly as for a
//! refused connect. Handshake time is part of `$upstream_connect_time`.

use nginx_sys::{
    ngx_add_timer, ngx_connection_t, ngx_del_timer, ngx_event_t, ngx_handle_read_event,
    ngx_handle_write_event, ngx_int_t, ngx_stream_session_t, ngx_uint_t, NGX_OK,
};
use nginx_sys::{ngx_current_msec, ngx_msec_t};

use crate::core::handshake::HandshakeInfo;
use crate::metrics::{Reason, Side};
use crate::nginx::conf::rules::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::nginx::conn;
use crate::nginx::conn::handshake::{self, drive, Failure, Progress};
use crate::nginx::upstream::connect_state::{self, State as Connect};
use crate::nginx::upstream::proxy_header::Sent;
use crate::nginx::{util::counters, util::log};

use super::wrap::{wrap_of, PeerWrap};

/// The posted event: runs after the proxy installed its connect handler and timer.
pub(super) unsafe extern "C" fn take_over(ev: *mut ngx_event_t) {
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
            // SAFETY: c is live with the state whose handshake drive() has just finished.
            w.info = unsafe { handshake::established(c, HandshakeInfo::clone) };
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
