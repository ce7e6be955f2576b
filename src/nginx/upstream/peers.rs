//! The servers of an upstream group as the pins see them ([`crate::nginx::conf::pins`]):
//! each round-robin peer's address and configured name, read through nginx's own fields.
//!
//! * A peer's configured name is its `server` field (the `server` directive's text, which
//!   nginx copies to every address of that server, including the addresses a
//!   `server ... resolve` gets at run time), or `host:port` of an implicit group
//!   (`proxy_pass name:port`), whose peers have none.
//! * The balancer's current peer is found by identity: every stock balancer (round robin,
//!   hash, least_conn, random) points `pc->name` at the chosen peer's `name` field, so the
//!   peer whose `&name` is `pc->name` is the one being connected. Nothing is read by
//!   offset; a balancer that does otherwise finds no peer, and the server is treated as
//!   having no name (only address pins can apply: fail closed).
//! * With a zone the lists live in shared memory, where the resolver of any worker may
//!   change them: they are walked under the list's read lock, as the balancers read them.
//!   Peers chosen by a balancer are referenced until freed, so `pc->name` stays valid.

use std::borrow::Cow;
use std::ops::ControlFlow;

use nginx_sys::{
    ngx_str_t, ngx_stream_upstream_rr_peer_t, ngx_stream_upstream_rr_peers_t,
    ngx_stream_upstream_srv_conf_t,
};

use crate::nginx::conf::pins::Server;
use crate::nginx::util::sockaddr;

/// One peer, borrowed for the visit.
pub struct Peer<'a> {
    pub sockaddr: &'a [u8],
    /// The configured name, if any.
    pub name: Option<&'a str>,
    /// nginx's text of the address (`pc->name` of a connection to it).
    pub address: Cow<'a, str>,
    /// Whether this is the peer `pc->name` points at.
    pub current: bool,
}

impl Peer<'_> {
    pub fn server(&self) -> Server<'_> {
        Server {
            sockaddr: self.sockaddr,
            name: self.name,
        }
    }
}

/// Runs `f` with the list read-locked when it is in a zone.
///
/// # Safety
/// `peers` must be a live peer list of a group.
unsafe fn read_locked<T>(peers: *mut ngx_stream_upstream_rr_peers_t, f: impl FnOnce() -> T) -> T {
    #[cfg(ngx_feature = "stream_upstream_zone")]
    {
        // SAFETY: a live list; shpool is set only for lists in a zone, whose rwlock is
        // the one the balancers and the resolver take.
        let lock = unsafe {
            (!(*peers).shpool.is_null()).then(|| std::ptr::addr_of_mut!((*peers).rwlock))
        };
        if let Some(lock) = lock {
            // SAFETY: see above; nothing here holds it already (balancers unlock before
            // returning), and f does not unwind (no panics in the module).
            unsafe { nginx_sys::ngx_rwlock_rlock(lock) };
        }
        let r = f();
        if let Some(lock) = lock {
            // SAFETY: taken above.
            unsafe { nginx_sys::ngx_rwlock_unlock(lock) };
        }
        r
    }
    #[cfg(not(ngx_feature = "stream_upstream_zone"))]
    {
        let _ = peers;
        f()
    }
}

/// Visits every peer of `uscf` (primary, then backup) until `f` breaks.
///
/// # Safety
/// `uscf` must be a live group whose `peer.data` is its round-robin peer lists (set by the
/// round-robin init that every stock balancer uses); `current` is null or `pc->name` as the
/// group's balancer set it (only compared).
pub unsafe fn visit(
    uscf: *const ngx_stream_upstream_srv_conf_t,
    current: *const ngx_str_t,
    mut f: impl FnMut(&Peer<'_>) -> ControlFlow<()>,
) {
    // SAFETY: uscf is live (caller).
    let (implicit, mut list) = unsafe {
        let g = &*uscf;
        let implicit = (g.port != 0)
            .then(|| format!("{}:{}", String::from_utf8_lossy(g.host.as_bytes()), g.port));
        (implicit, g.peer.data as *mut ngx_stream_upstream_rr_peers_t)
    };
    while !list.is_null() {
        // SAFETY: list is a live peer list (caller); under its read lock its peers and
        // their strings are not freed or relinked.
        let flow = unsafe {
            read_locked(list, || {
                let mut peer: *const ngx_stream_upstream_rr_peer_t = (*list).peer;
                while !peer.is_null() {
                    let p = &*peer;
                    let server = String::from_utf8_lossy(p.server.as_bytes());
                    let name = if p.server.len > 0 {
                        Some(server.as_ref())
                    } else {
                        implicit.as_deref()
                    };
                    let view = Peer {
                        sockaddr: sockaddr::view(p.sockaddr, p.socklen),
                        name,
                        address: String::from_utf8_lossy(p.name.as_bytes()),
                        current: std::ptr::eq(&p.name, current),
                    };
                    if f(&view).is_break() {
                        return ControlFlow::Break(());
                    }
                    peer = p.next;
                }
                ControlFlow::Continue(())
            })
        };
        if flow.is_break() {
            return;
        }
        // SAFETY: live list; next is the backup list or null.
        list = unsafe { (*list).next };
    }
}

/// What one connection attempt needs to know of its group.
pub struct Scan {
    /// The configured name of the peer being connected, if it was found.
    pub current: Option<String>,
    /// Whether any pin applies to any peer of the group now.
    pub any_pinned: bool,
}

/// Scans `uscf` for the peer `current` points at and for pinned peers.
///
/// # Safety
/// As [`visit`].
pub unsafe fn scan(
    uscf: *const ngx_stream_upstream_srv_conf_t,
    current: *const ngx_str_t,
    pinned: impl Fn(&Server<'_>) -> bool,
) -> Scan {
    let mut scan = Scan {
        current: None,
        any_pinned: false,
    };
    let mut found = false;
    // SAFETY: caller.
    unsafe {
        visit(uscf, current, |p| {
            if p.current {
                found = true;
                scan.current = p.name.map(str::to_owned);
            }
            scan.any_pinned |= pinned(&p.server());
            if found && scan.any_pinned {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    };
    scan
}

/// The configured names of the group's `server ... resolve` entries (none before nginx
/// 1.27.3, which has no `resolve` in open source).
///
/// # Safety
/// `uscf` must be a live group of the configuration (its `servers` array, when set, lives
/// in the configuration's pool).
pub unsafe fn resolve_names(uscf: *const ngx_stream_upstream_srv_conf_t) -> Vec<String> {
    #[cfg(ngx_stream_upstream_resolve)]
    {
        // SAFETY: see above; servers is an array of ngx_stream_upstream_server_t.
        unsafe {
            let servers = (*uscf).servers;
            if servers.is_null() {
                return Vec::new();
            }
            (*servers)
                .as_slice::<nginx_sys::ngx_stream_upstream_server_t>()
                .iter()
                .filter(|s| s.host.len > 0)
                .map(|s| String::from_utf8_lossy(s.name.as_bytes()).into_owned())
                .collect()
        }
    }
    #[cfg(not(ngx_stream_upstream_resolve))]
    {
        let _ = uscf;
        Vec::new()
    }
}
