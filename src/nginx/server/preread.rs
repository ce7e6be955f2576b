//! Preread phase handlers (`ssl_preread`, njs `js_preread`) see plaintext on NoiseSocket
//! connections (docs/nginx-integration.md §2.6).
//!
//! From nginx 1.25.5 the preread phase checker, `ngx_stream_core_preread_phase`, peeks at
//! the raw socket (`recv(MSG_PEEK)`) when the connection has no `c->ssl`, so that `pass`
//! can hand the untouched bytes on; on a NoiseSocket connection that would show the
//! handlers ciphertext. A checker is a plain field of each entry of the stream phase
//! engine (`ngx_stream_phase_handler_t`, `ngx_stream.h`), which nginx builds after
//! postconfiguration: at `init_module` every entry whose checker is nginx's preread checker
//! gets [`checker`] instead. For connections without NoiseSocket state it calls nginx's own
//! checker, unchanged. For NoiseSocket connections it runs the reading form of the same
//! checker, which nginx itself uses for TLS connections: bytes come through `c->recv` (our
//! decrypting one) into `c->buffer`, where they stay for the proxy to send on first. As with
//! TLS, `pass` then refuses the connection ("cannot pass connection with preread data").

use nginx_sys::{
    ngx_add_timer, ngx_create_temp_buf, ngx_del_timer, ngx_handle_read_event, ngx_int_t,
    ngx_log_error_core, ngx_stream_core_content_phase, ngx_stream_core_main_conf_t,
    ngx_stream_core_preread_phase, ngx_stream_finalize_session, ngx_stream_phase_handler_t,
    ngx_stream_session_t, ngx_uint_t, NGX_AGAIN, NGX_DECLINED, NGX_DONE, NGX_ERROR, NGX_LOG_ERR,
    NGX_OK, NGX_STREAM_BAD_REQUEST, NGX_STREAM_INTERNAL_SERVER_ERROR, NGX_STREAM_OK,
};

use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conn;

extern "C" {
    /// nginx's stream session event handler (`ngx_stream.h`): runs the session's phases.
    fn ngx_stream_session_handler(ev: *mut nginx_sys::ngx_event_t);
}

const AGAIN: ngx_int_t = NGX_AGAIN as ngx_int_t;

/// Puts [`checker`] on every preread entry of the phase engine of `cmcf` (the stream core
/// main conf of the cycle being initialised). Returns how many entries it took over.
///
/// # Safety
/// `cmcf` must be the stream core main conf of a cycle whose configuration is complete
/// (its phase engine built) and whose sessions have not started.
pub unsafe fn take_over(cmcf: &mut ngx_stream_core_main_conf_t) -> usize {
    let nginx = ngx_stream_core_preread_phase as unsafe extern "C" fn(_, _) -> _;
    let content = ngx_stream_core_content_phase as unsafe extern "C" fn(_, _) -> _;
    let mut ph = cmcf.phase_engine.handlers;
    let mut taken = 0;
    if ph.is_null() {
        return 0;
    }
    // SAFETY: the engine is an array of entries that ends with the content phase's; only
    // this function changes it, before any session runs.
    unsafe {
        while let Some(check) = (*ph).checker {
            if std::ptr::fn_addr_eq(check, nginx) {
                (*ph).checker = Some(checker);
                taken += 1;
            }
            if std::ptr::fn_addr_eq(check, content) {
                break;
            }
            ph = ph.add(1);
        }
    }
    taken
}

/// The preread checker of every session.
unsafe extern "C" fn checker(
    s: *mut ngx_stream_session_t,
    ph: *mut ngx_stream_phase_handler_t,
) -> ngx_int_t {
    // SAFETY: nginx runs checkers with a live session and its connection; the state
    // reference ends in this statement.
    let noise = unsafe { conn::get((*s).connection) }.is_some_and(|st| st.transport().is_some())
        // SAFETY: as above. A multiplexed stream's fd is not its own: never peeked at.
        || unsafe { crate::nginx::mux::stream::is_stream((*s).connection) };
    if !noise {
        // SAFETY: nginx's own checker, with nginx's arguments.
        return unsafe { ngx_stream_core_preread_phase(s, ph) };
    }
    // SAFETY: as above; ph is the engine entry being run.
    unsafe { reading_checker(s, ph) }
}

/// `ngx_stream_core_preread_phase` without the peek: the form nginx runs for TLS
/// connections (reads through `c->recv` into `c->buffer`).
///
/// # Safety
/// As [`checker`].
unsafe fn reading_checker(
    s: *mut ngx_stream_session_t,
    ph: *mut ngx_stream_phase_handler_t,
) -> ngx_int_t {
    // SAFETY: nginx's arguments: a live session, its connection with its events, pool and
    // log, and the engine entry being run, whose handler is a preread handler. This is
    // nginx's own checker logic on nginx's objects, which the handler and `c->recv` it calls
    // change too: holding Rust references across those calls would claim an exclusivity
    // nginx does not give, so the function stays on raw pointers, in one block.
    unsafe {
        let c = (*s).connection;
        let rev = (*c).read;
        (*(*c).log).action = c"prereading client data".as_ptr().cast_mut();
        let cscf = &*Confs::of_session(&*s).core_srv();
        let rc = 'done: {
            if (*rev).timedout() != 0 {
                break 'done NGX_STREAM_OK as ngx_int_t;
            }
            let Some(handler) = (*ph).handler else {
                break 'done NGX_ERROR as ngx_int_t;
            };
            if (*rev).timer_set() == 0 {
                let rc = handler(s);
                if rc != AGAIN {
                    break 'done rc;
                }
            }
            if (*c).buffer.is_null() {
                (*c).buffer = ngx_create_temp_buf((*c).pool, cscf.preread_buffer_size);
                if (*c).buffer.is_null() {
                    break 'done NGX_ERROR as ngx_int_t;
                }
            }
            let b = &mut *(*c).buffer;
            while (*rev).ready() != 0 {
                let Some(recv) = (*c).recv else {
                    break 'done NGX_ERROR as ngx_int_t;
                };
                let room = b.end as usize - b.last as usize;
                let n = recv(c, b.last, room);
                if n == AGAIN {
                    break 'done AGAIN;
                }
                if n == NGX_ERROR as isize || n == 0 {
                    break 'done NGX_STREAM_OK as ngx_int_t;
                }
                b.last = b.last.add(n as usize);
                let rc = handler(s);
                if rc != AGAIN {
                    break 'done rc;
                }
                if b.last == b.end {
                    ngx_log_error_core(
                        NGX_LOG_ERR as ngx_uint_t,
                        (*c).log,
                        0,
                        c"preread buffer full".as_ptr(),
                    );
                    break 'done NGX_STREAM_BAD_REQUEST as ngx_int_t;
                }
            }
            AGAIN
        };
        if rc == AGAIN {
            if ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t {
                ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_uint_t);
                return NGX_OK as ngx_int_t;
            }
            if (*rev).timer_set() == 0 {
                ngx_add_timer(rev, cscf.preread_timeout);
            }
            (*rev).handler = Some(ngx_stream_session_handler);
            return NGX_OK as ngx_int_t;
        }
        if (*rev).timer_set() != 0 {
            ngx_del_timer(rev);
        }
        if rc == NGX_OK as ngx_int_t {
            (*s).phase_handler = (*ph).next as ngx_int_t;
            return AGAIN;
        }
        if rc == NGX_DECLINED as ngx_int_t {
            (*s).phase_handler += 1;
            return AGAIN;
        }
        if rc == NGX_DONE as ngx_int_t {
            return NGX_OK as ngx_int_t;
        }
        let rc = if rc == NGX_ERROR as ngx_int_t {
            NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t
        } else {
            rc
        };
        ngx_stream_finalize_session(s, rc as ngx_uint_t);
        NGX_OK as ngx_int_t
    }
}
