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
//!    [`accept_handler`] in front of the stream module's connection handler. It installs
//!    the refusing I/O functions below before nginx sees the connection, so that any read or
//!    write through `c->recv`/`c->send`/`*_chain` fails (and logs an `alert`) until
//!    [`crate::nginx::conn::io::install`] replaces them after a finished handshake. (Sockets with
//!    `proxy_protocol` get them in layer 2 instead: nginx reads the PROXY header through
//!    `c->recv`.)
//! 2. A `POST_ACCEPT` phase handler installs the same functions on any connection from a
//!    NoiseSocket address that has no state yet.
//! 3. The `SSL` phase handler classifies the connection by address: ours goes through the
//!    handshake and only a finished one lets the session go on; an address the module cannot
//!    classify ends the session with an `alert`.
//!
//! The handshake itself uses raw syscalls ([`crate::nginx::util::socket`]), so the refusing functions
//! never stand in its way.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_chain_t, ngx_connection_t, ngx_listening_t, ngx_stream_in6_addr_t, ngx_stream_in_addr_t,
    ngx_stream_port_t, off_t, NGX_ERROR,
};

use crate::nginx::conf::MainConf;
use crate::nginx::util::log;
use crate::nginx::util::sockaddr::{self, same_address, same_port};

/// How a listening socket relates to the `noise_listen` addresses of its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Its address was given to `noise_listen`: NoiseSocket only.
    Noise,
    /// No `noise_listen` address is served by it.
    Plain,
    /// A wildcard socket on the port of a `noise_listen` address: a connection on it might
    /// be meant for that address. `init_module` refuses such configurations; should one
    /// appear anyway, its connections are refused.
    Undecidable,
}

/// Classifies listening socket `ls` (a connection's `c->listening`, null for connections
/// that were not accepted) against the NoiseSocket addresses of `main`.
///
/// # Safety
/// A non-null `ls` must be a live listening socket.
pub unsafe fn classify(main: &MainConf, ls: *const ngx_listening_t) -> Class {
    if main.addresses.is_empty() {
        return Class::Plain;
    }
    if ls.is_null() {
        return Class::Undecidable;
    }
    // SAFETY: non-null, ls is live (caller's promise); its sockaddr holds socklen bytes.
    let (raw, wildcard) = unsafe {
        let ls = &*ls;
        (sockaddr::view(ls.sockaddr, ls.socklen), ls.wildcard() != 0)
    };
    if main
        .addresses
        .iter()
        .any(|a| same_address(raw, &a.sockaddr))
    {
        return Class::Noise;
    }
    if wildcard && main.addresses.iter().any(|a| same_port(raw, &a.sockaddr)) {
        return Class::Undecidable;
    }
    Class::Plain
}

/// The connection handler that the stream module put on NoiseSocket sockets, which
/// [`accept_handler`] calls. The same for every such socket of every cycle (it is the
/// stream module's `ngx_stream_init_connection`); set by [`take_over`].
static NEXT_ACCEPT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Puts [`accept_handler`] in front of the connection handler of NoiseSocket socket `ls`
/// (a socket of the cycle being initialised: nothing was accepted on it yet).
pub fn take_over(ls: &mut ngx_listening_t) -> Result<(), String> {
    let ours = accept_handler as unsafe extern "C" fn(*mut ngx_connection_t);
    let Some(handler) = ls.handler else {
        return Err("a NoiseSocket listening socket has no connection handler".into());
    };
    if std::ptr::fn_addr_eq(handler, ours) {
        return Ok(());
    }
    let next = NEXT_ACCEPT.load(Ordering::Relaxed);
    if next.is_null() {
        NEXT_ACCEPT.store(handler as *mut c_void, Ordering::Relaxed);
    } else if next != handler as *mut c_void {
        return Err(
            "another module replaced the connection handler of a noise_listen socket".into(),
        );
    }
    ls.handler = Some(ours);
    Ok(())
}

/// Connection handler of NoiseSocket sockets: refusing I/O first, then the stream module's.
unsafe extern "C" fn accept_handler(c: *mut ngx_connection_t) {
    let next = NEXT_ACCEPT.load(Ordering::Relaxed);
    if next.is_null() {
        // Cannot happen (take_over sets it before installing us); fail closed.
        // SAFETY: c is a just-accepted connection, closed here and never used again.
        unsafe {
            log::write((*c).log, log::ALERT, "noise: no stream connection handler");
            nginx_sys::ngx_close_connection(c);
        }
        return;
    }
    // SAFETY: next is the handler take_over found on this kind of socket, a
    // `void (*)(ngx_connection_t *)`.
    let next: unsafe extern "C" fn(*mut ngx_connection_t) = unsafe { std::mem::transmute(next) };
    {
        // SAFETY: c was just accepted on a socket we took over; nothing else uses it yet.
        let conn = unsafe { &mut *c };
        if !reads_proxy_protocol(conn) {
            install(conn);
        }
    }
    // SAFETY: the stream module's handler, with the connection it is always given.
    unsafe { next(c) };
}

/// Whether nginx reads a PROXY protocol header on `c` (through `c->recv`) before the phases.
fn reads_proxy_protocol(c: &ngx_connection_t) -> bool {
    // SAFETY: c was accepted on a stream listening socket: ls->servers is an
    // ngx_stream_port_t; a NoiseSocket socket is never a wildcard shared with other
    // addresses (init_module refuses that), so the first entry is its own address conf.
    // Both entry types start with the address, then the conf.
    unsafe {
        let ls = &*c.listening;
        let port = &*(ls.servers as *const ngx_stream_port_t);
        if port.naddrs == 0 {
            return false;
        }
        let family = i32::from((*ls.sockaddr).sa_family);
        let conf = if family == libc::AF_INET6 {
            &(*(port.addrs as *const ngx_stream_in6_addr_t)).conf
        } else {
            &(*(port.addrs as *const ngx_stream_in_addr_t)).conf
        };
        conf.proxy_protocol() != 0
    }
}

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
