//! The server side: the `NGX_STREAM_SSL_PHASE` work for a connection that arrived on a
//! `noise_listen` socket. It runs the responder handshake, non-blocking and resumable, like
//! `ngx_stream_ssl_init_connection` and its handshake handler:
//!
//! * first call: TCP_NODELAY (when the server's `tcp_nodelay` is on), state attached to `c->pool`, the handshake timer on `c->read`,
//!   and both events routed to the phase runner (`ngx_stream_session_handler`);
//! * every call: a timed-out read event ends it, otherwise the handshake is driven; NGX_AGAIN
//!   suspends the phase until the next event;
//! * done, for protocols whose first message could be a replay (IK, KK, ...): the client
//!   counts as authenticated only once its first transport frame opens, so the phase waits
//!   for it under the same timer (docs/protocol.md §4.6);
//! * done: the timer is deleted (the preread phase skips connections with a read timer),
//!   both events are marked ready as `ngx_ssl_handshake` does, and the phase says NGX_OK;
//! * done, with `noise_limit_conn_per_key`: the client's key is counted in, or the
//!   connection refused with status 503 ([`admit`]);
//! * `noise_keys ... miss=lookup`: a key the zone does not have pauses the handshake while
//!   `noise_auth_request` asks (`Progress::WantVerdict`): the phase says NGX_AGAIN and
//!   reads nothing from the client until the lookup posts the client's read event with its
//!   answer; the handshake timer keeps running (and its end cancels the lookup);
//! * `noise_key_agent`: the handshake is the core's delegated one; a static-key DH pauses it
//!   (`Progress::WantKeyOp`) as a lookup does, until [`crate::nginx::keys::agent`] posts the
//!   client's read event with the agent's answer (the handshake timer keeps running, and
//!   its end cancels the question);
//! * failure: one log line (`info` for the peer's fault, `error` for ours) and status 400 or
//!   500, which finalizes the session.

use nginx_sys::{
    ngx_add_timer, ngx_connection_t, ngx_del_timer, ngx_handle_read_event, ngx_handle_write_event,
    ngx_int_t, ngx_stream_session_t, ngx_tcp_nodelay, NGX_AGAIN, NGX_OK, NGX_STREAM_BAD_REQUEST,
    NGX_STREAM_INTERNAL_SERVER_ERROR, NGX_STREAM_SERVICE_UNAVAILABLE,
};

use crate::core::handshake::{Handshake, Verdict};
use crate::core::key_agent::DelegatedHandshake;
use crate::core::key_limit::Refusal;
use crate::core::keys;
use crate::core::Error;
use crate::metrics::{Reason, Side};
use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conf::Miss;
use crate::nginx::conf::ServerSide;
use crate::nginx::conn::handshake::{self, await_first_frame, drive, Decision, Failure, Progress};
use crate::nginx::conn::{self, NoiseConn, Phase};
use crate::nginx::keys::limit::{self, Denied};
use crate::nginx::keys::zone::Zone;
use crate::nginx::{keys::auth_request, keys::zone, util::counters, util::log};
use crate::noise_debug;

extern "C" {
    /// nginx's stream session event handler (`ngx_stream.h`): runs the session's phases.
    fn ngx_stream_session_handler(ev: *mut nginx_sys::ngx_event_t);
}

const ERROR: ngx_int_t = NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t;

/// Runs (or resumes) the server handshake of session `s`, in its SSL phase, accepted on a
/// NoiseSocket address. Returns a phase handler result.
pub fn handshake_phase(s: &ngx_stream_session_t, side: &ServerSide) -> ngx_int_t {
    let (c, ssl) = (s.connection, s.ssl() != 0);
    // SAFETY: as above.
    let (rev, wev, log) = unsafe { ((*c).read, (*c).write, (*c).log) };
    if ssl {
        // SAFETY: log is live.
        unsafe {
            log::write(
                log,
                log::ERR,
                "noise: a noise_listen socket cannot also be ssl",
            )
        };
        return ERROR;
    }
    // SAFETY: s is the live session of the phase, so its connection is live; the state
    // reference lives only in this match.
    match unsafe { conn::get(c) } {
        None => {
            noise_debug!(log, "noise handshake handler: start");
            let state = match &side.agent {
                Some(agent) => {
                    let hs = DelegatedHandshake::responder(
                        side.policy.clone(),
                        side.settings.clone(),
                        agent.keys.clone(),
                    );
                    let mut state = NoiseConn::new(hs, Side::Server);
                    state.agent = Some(agent.clone());
                    state
                }
                None => NoiseConn::new(
                    Handshake::responder(side.policy.clone(), side.settings.clone()),
                    Side::Server,
                ),
            };
            // SAFETY: c and its pool are live; the pool outlives every use of c.
            if unsafe { conn::attach(c, (*c).pool, state) }.is_none() {
                return ERROR;
            }
            // SAFETY: c, its events and log are live.
            unsafe {
                // As ngx_stream_ssl_init_connection: only where the server wants it.
                let cscf = Confs::of_session(s).core_srv();
                if (*cscf).tcp_nodelay != 0 && ngx_tcp_nodelay(c) != NGX_OK as ngx_int_t {
                    return ERROR;
                }
                (*log).action = c"NoiseSocket handshaking".as_ptr().cast_mut();
                // Both events resume the phases. Not a copy of rev->handler: after a PROXY
                // protocol header that is still nginx's header reader, which would parse
                // our handshake bytes as another header.
                (*rev).handler = Some(ngx_stream_session_handler);
                (*wev).handler = Some(ngx_stream_session_handler);
                ngx_add_timer(rev, side.handshake_timeout);
            }
        }
        Some(NoiseConn {
            phase: Phase::Transport(_),
            awaiting_first_frame: false,
            lookup: None,
            answer: None,
            info,
            ..
        }) if !info.as_ref().is_some_and(|i| i.verdict_pending) => return NGX_OK as ngx_int_t,
        Some(_) => {
            noise_debug!(log, "noise handshake handler: resume");
        }
    }
    // SAFETY: c is live; the reference ends here.
    let confirming = unsafe { conn::get(c) }.is_some_and(|st| st.awaiting_first_frame);
    // SAFETY: rev is live.
    if unsafe { (*rev).timedout() } != 0 {
        let msg = if confirming {
            "noise: handshake timed out waiting for the client's first transport message, which this protocol needs to authenticate it (a replayed handshake message?)"
        } else {
            "noise: handshake timed out"
        };
        // SAFETY: log is live.
        unsafe { log::write(log, log::INFO, msg) };
        // A client that never sent its first transport frame: counted as a replay, as it is
        // however else its connection ends.
        counters::failed(
            Side::Server,
            if confirming {
                Reason::Replay
            } else {
                Reason::Timeout
            },
        );
        return NGX_STREAM_BAD_REQUEST as ngx_int_t;
    }
    // SAFETY: c is live; the reference ends in this statement.
    if unsafe { conn::get(c) }.is_some_and(|st| st.lookup.is_some()) {
        // SAFETY: c and its events are live.
        return unsafe { wait_for_lookup(c) };
    }
    // The answer of a lookup that has ended, if this is the resume it posted.
    // SAFETY: c is live; the reference ends in this statement.
    let mut ready = unsafe { conn::get(c) }.and_then(|st| st.answer.take());
    let attrs = std::cell::RefCell::new(None);
    let started = std::cell::RefCell::new(None);
    let mut decide = |key: &[u8; 32], protocol: &str| {
        if let Some(answer) = ready.take() {
            *attrs.borrow_mut() = answer.attrs;
            return Decision::Now(answer.verdict);
        }
        let Some(keys) = &side.keys else {
            return Decision::Now(Verdict::Unavailable("no noise_keys zone".into()));
        };
        let lookup = keys.miss == Miss::Lookup;
        match zone::decide(keys, key) {
            Zone::Decided(verdict, found) => {
                if lookup {
                    counters::auth_cache(true);
                }
                *attrs.borrow_mut() = found;
                Decision::Now(verdict)
            }
            Zone::Lookup => {
                counters::auth_cache(false);
                let Some(auth) = &side.auth else {
                    return Decision::Now(Verdict::Unavailable("no noise_auth_request".into()));
                };
                // SAFETY: c is the live client; its state holds the handle (below).
                match unsafe {
                    auth_request::start(c, conn::LOOKUP_WAITER, auth, keys.zone, key, protocol)
                } {
                    Ok(handle) => {
                        *started.borrow_mut() = Some(handle);
                        Decision::Pending
                    }
                    Err(answer) => {
                        *attrs.borrow_mut() = answer.attrs;
                        Decision::Now(answer.verdict)
                    }
                }
            }
        }
    };
    // SAFETY: c is live with state attached.
    let mut progress = if confirming {
        // SAFETY: as above, the state is established.
        unsafe { await_first_frame(c) }
    } else {
        // SAFETY: as above.
        unsafe { drive(c, Some(&mut decide)) }
    };
    if matches!(progress, Progress::Done) && !confirming {
        // SAFETY: c is live; the reference ends here.
        if unsafe { conn::get(c) }.is_some_and(|st| st.awaiting_first_frame) {
            // SAFETY: as above.
            progress = unsafe { await_first_frame(c) };
        }
    }
    if matches!(progress, Progress::Done) {
        // Keys proven only by the first transport frame are decided now (§4.7).
        // SAFETY: c is live; the reference ends in this block.
        if let Some(st) = unsafe { conn::get(c) } {
            let pending = st.info.as_deref().filter(|i| i.verdict_pending);
            if let Some((key, protocol)) =
                pending.and_then(|i| Some((i.remote_static?, i.protocol.name().to_string())))
            {
                progress = match decide(&key, &protocol) {
                    Decision::Now(Verdict::Allow) => Progress::Done,
                    Decision::Now(Verdict::Deny) => {
                        Progress::Failed(Failure::Noise(Error::Unauthorized { key }))
                    }
                    Decision::Now(Verdict::Unavailable(why)) => {
                        Progress::Failed(Failure::Noise(Error::VerdictUnavailable { key, why }))
                    }
                    Decision::Pending => Progress::WantVerdict,
                };
            }
            if let Some(info) = st.info.as_deref_mut() {
                if !matches!(progress, Progress::WantVerdict) {
                    info.verdict_pending = false;
                }
            }
        }
    }
    if let Some(handle) = started.borrow_mut().take() {
        // SAFETY: c is live; the reference ends in this statement.
        match unsafe { conn::get(c) } {
            Some(st) => st.lookup = Some(handle),
            None => drop(handle), // cannot happen: cancels the lookup
        }
    }
    if let Some(found) = attrs.borrow_mut().take() {
        // SAFETY: c is live; the reference ends in this statement.
        if let Some(st) = unsafe { conn::get(c) } {
            st.key_attrs = Some(Box::new(found));
        }
    }
    match progress {
        Progress::Done => {
            if let Some(limit) = side.limit_per_key {
                // SAFETY: c and its log are live.
                if let Err(rc) = unsafe { admit(c, limit) } {
                    return rc;
                }
            }
            // SAFETY: c is live with the state whose handshake has just finished.
            unsafe { handshake::established(c, |_| ()) };
            // SAFETY: events are live; the timer is deleted only if set.
            unsafe {
                if (*rev).timer_set() != 0 {
                    ngx_del_timer(rev);
                }
                (*log).action = std::ptr::null_mut();
            }
            // A multiplexed link stays parked here; its streams are sessions of their own.
            let session = std::ptr::from_ref(s).cast_mut();
            // SAFETY: s is the live session, established just now.
            if let Some(rc) = unsafe { crate::nginx::mux::link::take_over(session, side) } {
                return rc;
            }
            NGX_OK as ngx_int_t
        }
        Progress::WantRead => {
            // SAFETY: rev is live.
            if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as ngx_int_t {
                return ERROR;
            }
            NGX_AGAIN as ngx_int_t
        }
        Progress::WantWrite => {
            // SAFETY: wev is live.
            if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as ngx_int_t {
                return ERROR;
            }
            NGX_AGAIN as ngx_int_t
        }
        Progress::WantKeyOp => {
            noise_debug!(log, "noise handshake handler: waiting for the key agent");
            // SAFETY: c and its events are live; the state holds the question.
            unsafe { wait_for_lookup(c) }
        }
        Progress::WantVerdict => {
            noise_debug!(
                log,
                "noise handshake handler: waiting for noise_auth_request"
            );
            // SAFETY: c and its events are live; the state holds the lookup.
            unsafe { wait_for_lookup(c) }
        }
        Progress::Failed(failure) => {
            // SAFETY: log is live.
            unsafe { report(log, &failure) };
            counters::failed(Side::Server, failure.reason());
            match failure {
                Failure::Noise(e) if !e.is_peer_fault() => ERROR,
                _ => NGX_STREAM_BAD_REQUEST as ngx_int_t,
            }
        }
    }
}

/// While a lookup is in flight the handshake is not driven: nothing is read from the client
/// and its timer still runs. An end of file is not acted on either: TCP cannot tell a
/// client that half-closed after its last handshake message (and waits for its answer)
/// from one that went away, so both wait for the resume, which reads the end like any
/// other byte; the wait is bounded by `noise_auth_request_timeout` and the handshake timer.
///
/// # Safety
/// `c` must be the live client connection of a session in its SSL phase.
unsafe fn wait_for_lookup(c: *mut ngx_connection_t) -> ngx_int_t {
    // SAFETY: the caller's promise; the read event is live with c.
    let (rev, log) = unsafe { ((*c).read, (*c).log) };
    // A client that can never finish ends its wait now, which cancels the lookup (or takes
    // it out of the queue) with the session.
    // SAFETY: c is live.
    let gone = unsafe { conn::gone_while_waiting(c) };
    if let Some(why) = gone {
        // SAFETY: the connection's log is live.
        unsafe {
            log::write(
                log,
                log::INFO,
                &format!("noise: handshake failed: {why} while its key was being looked up (noise_auth_request)"),
            )
        };
        counters::failed(Side::Server, Reason::Closed);
        return NGX_STREAM_BAD_REQUEST as ngx_int_t;
    }
    // Level-triggered event methods would report the unread bytes again and again: this
    // takes the read event out while it is ready (edge-triggered epoll: nothing to do).
    // SAFETY: rev is live.
    if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as ngx_int_t {
        return ERROR;
    }
    NGX_AGAIN as ngx_int_t
}

/// `noise_limit_conn_per_key`: counts the authenticated client's key in, or refuses the
/// connection (status 503, as `limit_conn`) with one line: `info` when the key is at its
/// limit, `error` when the zone cannot count it (fail closed). Connections without a
/// client static key have no identity to count and go on.
///
/// # Safety
/// `c` must be a live connection with an established state.
unsafe fn admit(c: *mut ngx_connection_t, limit: u32) -> Result<(), ngx_int_t> {
    // SAFETY: the caller's promise; the reference ends with this function.
    let Some(st) = (unsafe { conn::get(c) }) else {
        return Err(ERROR);
    };
    let Some(key) = st.established().and_then(|i| i.remote_static) else {
        return Ok(());
    };
    let denied = match limit::acquire(&key, limit) {
        Ok(hold) => {
            st.key_hold = Some(hold);
            return Ok(());
        }
        Err(d) => d,
    };
    let fingerprint = keys::fingerprint(&key);
    let msg = match &denied {
        Denied::Refused(Refusal::Over { held }) => format!(
            "noise: client key {fingerprint} already has {held} connection(s), the noise_limit_conn_per_key limit of {limit}; closing"
        ),
        Denied::Refused(Refusal::Full { capacity }) => format!(
            "noise: the noise_limit_conn_per_key zone is full ({capacity} client keys by worker); refusing client key {fingerprint}"
        ),
        Denied::NoZone => format!(
            "noise: the noise_limit_conn_per_key zone is not set up; refusing client key {fingerprint}"
        ),
    };
    // SAFETY: c's log is live.
    unsafe { log::write((*c).log, log::level_of_denied(&denied), &msg) };
    counters::failed(Side::Server, Reason::Limit);
    Err(NGX_STREAM_SERVICE_UNAVAILABLE as ngx_int_t)
}

/// Logs a handshake failure once, at the level of whose fault it is.
///
/// # Safety
/// `log` must be a live nginx log.
pub unsafe fn report(log: *mut nginx_sys::ngx_log_t, failure: &Failure) {
    // SAFETY: forwarded.
    unsafe {
        match failure {
            Failure::Noise(e) => log::error(log, "handshake failed", e),
            Failure::Socket { doing, errno } => {
                log::errno(log, &format!("handshake: {doing}"), *errno)
            }
        }
    }
}
