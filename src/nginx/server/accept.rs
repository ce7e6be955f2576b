//! Which listening sockets are NoiseSocket addresses ([`classify`]), and the connection
//! handler put in front of the stream module's on those sockets ([`take_over`]), which
//! gates every accepted connection before nginx sees it: layers 1 and 3 of the fail-closed
//! gate ([`crate::nginx::conn::gate`], docs/nginx-integration.md §2.4).

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_connection_t, ngx_listening_t, ngx_stream_in6_addr_t, ngx_stream_in_addr_t,
    ngx_stream_port_t,
};

use crate::nginx::conf::MainConf;
use crate::nginx::conn::gate::install;
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
