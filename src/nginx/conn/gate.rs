//! The fail-closed gate: which connections arrived on a NoiseSocket address, and what keeps
//! their bytes away from every handler until the handshake has finished
//! (docs/nginx-integration.md §2.4).
//!
//! nginx may give one `noise_listen` address several `ngx_listening_t`: a clone per worker
//! with `reuseport`, sockets inherited across a reload or a binary upgrade. So "ours" is never
//! decided by which `ngx_listening_t` a connection came from, only by the *address* of that
//! socket, compared with every address given to `noise_listen` in the session's own
//! configuration. Three independent layers enforce it:
//!
//! 1. At `init_module`, every listening socket whose address is a NoiseSocket address gets
//!    `crate::nginx::server::accept`'s connection handler in front of the stream module's connection handler. It installs
//!    the refusing I/O functions below before nginx sees the connection, so that any read or
//!    write through `c->recv`/`c->send`/`*_chain` fails (and logs an `alert`) until
//!    [`crate::nginx::conn::io::install`] replaces them after a finished handshake. (Sockets with
//!    `proxy_protocol` get them in layer 2 instead: nginx reads the PROXY header through
//!    `c->recv`.)
//! 2. A `POST_ACCEPT` phase handler installs the same functions on any connection from a
//!    NoiseSocket address that has no state yet.
//! 3. The `SSL` phase handler classifies the connection by address
//!    (`crate::nginx::server::accept::classify`): ours goes through the
//!    handshake and only a finished one lets the session go on; an address the module cannot
//!    classify ends the session with an `alert`.
//!
//! The handshake itself uses raw syscalls ([`crate::nginx::util::socket`]), so the refusing functions
//! never stand in its way.

use nginx_sys::{ngx_chain_t, ngx_connection_t, off_t, NGX_ERROR};

use crate::nginx::util::log;

/// Installs the refusing I/O functions on `c`.
pub fn install(c: &mut ngx_connection_t) {
    c.recv = Some(refuse_recv);
    c.send = Some(refuse_send);
    c.recv_chain = Some(refuse_recv_chain);
    c.send_chain = Some(refuse_send_chain);
}

/// Whether `c` still has the refusing I/O functions (its handshake has not finished).
pub fn is_gated(c: &ngx_connection_t) -> bool {
    let ours = refuse_recv as unsafe extern "C" fn(_, _, _) -> _;
    c.recv.is_some_and(|f| std::ptr::fn_addr_eq(f, ours))
}

/// Fails an I/O call on a connection whose handshake has not finished: a bug somewhere
/// (a phase was skipped), so `alert`, and the connection is marked failed.
///
/// # Safety
/// `c` must be the live connection nginx passed to an I/O function.
unsafe fn refuse(c: *mut ngx_connection_t, what: &str) {
    // SAFETY: c is live, so are its events and log; nothing else uses them during the call.
    let (c, rev, wev) = unsafe { (&mut *c, &mut *(*c).read, &mut *(*c).write) };
    rev.set_error(1);
    rev.set_ready(0);
    wev.set_error(1);
    c.set_error(1);
    // SAFETY: c->log is live.
    unsafe {
        log::write(
            c.log,
            log::ALERT,
            &format!(
                "noise: {what} on a NoiseSocket connection before its handshake finished; closing it"
            ),
        )
    };
}

unsafe extern "C" fn refuse_recv(c: *mut ngx_connection_t, _buf: *mut u8, _size: usize) -> isize {
    // SAFETY: nginx passes a live connection.
    unsafe { refuse(c, "recv") };
    NGX_ERROR as isize
}

unsafe extern "C" fn refuse_send(c: *mut ngx_connection_t, _buf: *mut u8, _size: usize) -> isize {
    // SAFETY: nginx passes a live connection.
    unsafe { refuse(c, "send") };
    NGX_ERROR as isize
}

unsafe extern "C" fn refuse_recv_chain(
    c: *mut ngx_connection_t,
    _chain: *mut ngx_chain_t,
    _limit: off_t,
) -> isize {
    // SAFETY: nginx passes a live connection.
    unsafe { refuse(c, "recv_chain") };
    NGX_ERROR as isize
}

unsafe extern "C" fn refuse_send_chain(
    c: *mut ngx_connection_t,
    _chain: *mut ngx_chain_t,
    _limit: off_t,
) -> *mut ngx_chain_t {
    // SAFETY: nginx passes a live connection.
    unsafe { refuse(c, "send_chain") };
    NGX_ERROR as isize as *mut ngx_chain_t
}
