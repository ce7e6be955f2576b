//! One stream of a multiplexed link on B, as a fake `ngx_connection_t` that runs a stream
//! session of its own through all phases (docs/multiplex.md §12).
//!
//! The connection comes from `ngx_get_connection`, as QUIC streams do, so it has a slot in
//! the worker's connection array (counted against `worker_connections`), real read and
//! write events for timers and posting, and nginx's own `ngx_close_connection` frees it. Its
//! fd is not the link's: it is a duplicate of one unconnected unix socket per worker
//! ([`dummy_fd`]), which nginx closes with the connection. It is not `shared` (the stream
//! write filter treats shared connections as datagrams that cannot buffer). Anything that
//! would act on the socket itself (`proxy_half_close`'s `shutdown()`, a peek) fails on that
//! socket instead of touching the link. Both events are `active`, so `ngx_handle_read_event` and
//! `ngx_handle_write_event` do nothing (edge-triggered event methods only; the link refuses
//! to start under others). Readiness is ours: the link posts the events when data, a
//! half-close, a reset or window credit arrives.
//!
//! Ownership: a [`MuxStream`] lives in the fake connection's pool and is found through a
//! per-worker table indexed by the connection's slot and checked with `c->number`, like
//! [`crate::nginx::conn`]. It points at its link while the link lives; the link clears that
//! pointer (and fails the stream) when it goes first. Dropping the state (the session's
//! end) half-closes or resets the stream on the link.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::slice;

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_counter, ngx_connection_t,
    ngx_connection_tcp_nodelay_e_NGX_TCP_NODELAY_DISABLED as NODELAY_DISABLED, ngx_create_pool,
    ngx_cycle, ngx_destroy_pool, ngx_event_t, ngx_get_connection, ngx_log_t, ngx_palloc,
    ngx_post_event, ngx_posted_events, ngx_socket_t, off_t, socklen_t, NGX_AGAIN, NGX_ERROR,
};

use crate::core::handshake::HandshakeInfo;
use crate::core::mux::{Origin, ResetCode, StreamId};
use crate::nginx::util::pool;

/// What a stream needs of the link that carries it. The link implements it
/// (`crate::nginx::mux::link::Link`), so a stream knows nothing else of the link and the
/// imports go one way, link to stream.
pub trait Carrier {
    /// The stream's `send`: bytes taken (0: wait for the write event), `None` on failure.
    fn send(&mut self, id: StreamId, data: &[u8]) -> Option<usize>;
    /// The stream's `recv` took `n` bytes.
    fn consumed(&mut self, id: StreamId, n: usize);
    /// The stream's session ended; `reset` says why when it failed.
    fn stream_ended(&mut self, id: StreamId, local_fin: bool, reset: Option<ResetCode>);
}

/// The B side of one stream.
pub struct MuxStream {
    number: nginx_sys::ngx_atomic_uint_t,
    slot: usize,
    /// The link, while it lives (it nulls this when it goes).
    pub link: Option<NonNull<dyn Carrier>>,
    pub id: StreamId,
    /// Data delivered and not yet read (at most the stream's window).
    pub input: VecDeque<u8>,
    /// A's FIN arrived: EOF after `input`.
    pub remote_fin: bool,
    /// Reset by A, or the link died: every call fails.
    pub failed: bool,
    /// We sent our FIN.
    pub local_fin: bool,
    /// `send` said NGX_AGAIN: post the write event when the window opens.
    pub wants_write: bool,
    pub origin: Origin,
    /// The link's handshake (`$noise_client_key` and friends are the link peer's).
    pub info: Rc<HandshakeInfo>,
    /// The fake connection.
    pub c: *mut ngx_connection_t,
    /// Its stream session, once `ngx_stream_init_connection` made it (in the same pool,
    /// so still readable while the pool's cleanups run).
    pub session: *mut nginx_sys::ngx_stream_session_t,
}

struct Table(UnsafeCell<Vec<*mut MuxStream>>);
// SAFETY: touched only from the worker's single event-loop thread.
unsafe impl Sync for Table {}
static TABLE: Table = Table(UnsafeCell::new(Vec::new()));

struct Dummy(UnsafeCell<ngx_socket_t>);
// SAFETY: as above.
unsafe impl Sync for Dummy {}
static DUMMY: Dummy = Dummy(UnsafeCell::new(-1));

/// The fd every fake connection carries: an unconnected unix socket, created once per
/// worker, so that nothing done to "the connection's socket" reaches the link.
fn dummy_fd() -> ngx_socket_t {
    // SAFETY: single-threaded worker.
    let fd = unsafe { &mut *DUMMY.0.get() };
    if *fd < 0 {
        // SAFETY: plain syscall.
        *fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    }
    *fd
}

/// Worker start, with `noise_multiplex` somewhere in the configuration: the dummy socket.
pub fn start_worker() {
    dummy_fd();
}

/// Worker exit: frees the table and closes the dummy socket.
pub fn free_worker_state() {
    // SAFETY: single-threaded worker; no stream is live at exit.
    unsafe {
        *TABLE.0.get() = Vec::new();
        let fd = &mut *DUMMY.0.get();
        if *fd >= 0 {
            libc::close(*fd);
            *fd = -1;
        }
    }
}

pub(super) fn slot_of(c: *const ngx_connection_t) -> Option<usize> {
    // SAFETY: ngx_cycle is set for the whole life of a worker.
    let (base, n) = unsafe { ((*ngx_cycle).connections, (*ngx_cycle).connection_n) };
    let offset = (c as usize).checked_sub(base as usize)?;
    let slot = offset / std::mem::size_of::<ngx_connection_t>();
    (slot < n).then_some(slot)
}

/// The stream state of `c`, if `c` is a stream of a multiplexed link.
///
/// # Safety
/// `c` must be a live connection; no other reference to its state may be live.
pub unsafe fn get<'a>(c: *mut ngx_connection_t) -> Option<&'a mut MuxStream> {
    let slot = slot_of(c)?;
    // SAFETY: single-threaded access.
    let table = unsafe { &*TABLE.0.get() };
    let p = *table.get(slot)?;
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null slots point at states owned by live pools; the number check rejects
    // a slot reused since.
    let st = unsafe { &mut *p };
    // SAFETY: c is live.
    (st.number == unsafe { (*c).number }).then_some(st)
}

/// Whether `c` is a stream of a multiplexed link (the phase handlers skip it: the link
/// already did the handshake).
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn is_stream(c: *mut ngx_connection_t) -> bool {
    // SAFETY: forwarded.
    unsafe { get(c) }.is_some()
}

/// Posts `ev` unless it is already posted.
///
/// # Safety
/// `ev` must be a live event.
pub unsafe fn post(ev: *mut ngx_event_t) {
    // SAFETY: the caller's promise; the queue is nginx's.
    unsafe {
        if (*ev).posted() == 0 {
            ngx_post_event(ev, &raw mut ngx_posted_events);
        }
    }
}

/// The handler of an event the session does not use (yet), as `ngx_quic_empty_handler`.
unsafe extern "C" fn empty_handler(_ev: *mut ngx_event_t) {}

/// Why a stream could not be made: the link answers A with this reset code.
pub enum NotCreated {
    Refused,
}

/// Makes the fake connection of stream `id` and returns it, ready for
/// `ngx_stream_init_connection` (which the caller runs once it holds no reference to the
/// link: the new session may write at once).
///
/// # Safety
/// `link_c` is the live link connection and `link` its live link state.
pub unsafe fn create(
    link_c: *mut ngx_connection_t,
    link: NonNull<dyn Carrier>,
    id: StreamId,
    origin: Origin,
    info: Rc<HandshakeInfo>,
    trust_origin: bool,
) -> Result<*mut ngx_connection_t, NotCreated> {
    // SAFETY: the caller's promise: link_c and its listening, log and addresses are live.
    unsafe {
        let ls = (*link_c).listening;
        let pool = ngx_create_pool((*ls).pool_size, (*link_c).log);
        if pool.is_null() {
            return Err(NotCreated::Refused);
        }
        let log = ngx_palloc(pool, std::mem::size_of::<ngx_log_t>()) as *mut ngx_log_t;
        if log.is_null() {
            ngx_destroy_pool(pool);
            return Err(NotCreated::Refused);
        }
        // As ngx_event_accept: the listening socket's log, which the session then adjusts.
        std::ptr::copy_nonoverlapping(&raw const (*ls).log, log, 1);
        (*pool).log = log;
        // The peer address: the link's, or the origin A names when trusted to.
        let (sockaddr, socklen) = match (&origin, trust_origin) {
            (Origin::Ip(addr), true) => {
                let (storage, len) = sockaddr_of(addr);
                let p = ngx_palloc(pool, len) as *mut nginx_sys::sockaddr;
                if p.is_null() {
                    ngx_destroy_pool(pool);
                    return Err(NotCreated::Refused);
                }
                std::ptr::copy_nonoverlapping(
                    (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                    p.cast::<u8>(),
                    len,
                );
                (p, len as socklen_t)
            }
            _ => {
                let len = (*link_c).socklen as usize;
                let p = ngx_palloc(pool, len) as *mut nginx_sys::sockaddr;
                if p.is_null() {
                    ngx_destroy_pool(pool);
                    return Err(NotCreated::Refused);
                }
                std::ptr::copy_nonoverlapping((*link_c).sockaddr.cast::<u8>(), p.cast::<u8>(), len);
                (p, (*link_c).socklen)
            }
        };
        // Its own descriptor (nginx closes it with the connection), of the dummy socket.
        let dummy = dummy_fd();
        let fd = if dummy < 0 {
            -1
        } else {
            libc::fcntl(dummy, libc::F_DUPFD_CLOEXEC, 0)
        };
        if fd < 0 {
            ngx_destroy_pool(pool);
            return Err(NotCreated::Refused);
        }
        let c = ngx_get_connection(fd, log);
        if c.is_null() {
            libc::close(fd);
            ngx_destroy_pool(pool);
            return Err(NotCreated::Refused);
        }
        (*c).type_ = libc::SOCK_STREAM;
        (*c).pool = pool;
        (*c).log = log;
        (*c).sockaddr = sockaddr;
        (*c).socklen = socklen;
        (*c).listening = ls;
        (*c).local_sockaddr = (*link_c).local_sockaddr;
        (*c).local_socklen = (*link_c).local_socklen;
        (*c).number = *ngx_connection_counter;
        *ngx_connection_counter += 1;
        (*c).start_time = nginx_sys::ngx_current_msec;
        (*c).set_tcp_nodelay(NODELAY_DISABLED as _);
        (*c).recv = Some(stream_recv);
        (*c).send = Some(stream_send);
        (*c).recv_chain = Some(stream_recv_chain);
        (*c).send_chain = Some(stream_send_chain);
        (*c).set_sendfile(0);
        // $remote_addr text (as ngx_event_accept makes it).
        let text = ngx_palloc(pool, 64) as *mut u8;
        if !text.is_null() {
            let n = nginx_sys::ngx_sock_ntop(sockaddr, socklen, text, 64, 0);
            (*c).addr_text.data = text;
            (*c).addr_text.len = n;
        }
        let (rev, wev) = ((*c).read, (*c).write);
        (*rev).log = log;
        (*wev).log = log;
        // The link may post either event before the session has handlers on both (a reset
        // while it is in preread, say): nginx calls a posted event's handler unchecked.
        (*rev).handler = Some(empty_handler);
        (*wev).handler = Some(empty_handler);
        // Readiness is ours (module doc): nginx must never add these events to epoll.
        (*rev).set_active(1);
        (*wev).set_active(1);
        (*wev).set_ready(1);
        (*log).connection = (*c).number;
        let state = MuxStream {
            number: (*c).number,
            slot: slot_of(c).unwrap_or(usize::MAX),
            link: Some(link),
            id,
            input: VecDeque::new(),
            remote_fin: false,
            failed: false,
            local_fin: false,
            wants_write: false,
            origin,
            info,
            c,
            session: std::ptr::null_mut(),
        };
        let Some(raw) = pool::allocate(pool, state) else {
            nginx_sys::ngx_close_connection(c);
            ngx_destroy_pool(pool);
            return Err(NotCreated::Refused);
        };
        let table = &mut *TABLE.0.get();
        let slot = (*raw.as_ptr()).slot;
        if slot == usize::MAX {
            nginx_sys::ngx_close_connection(c);
            ngx_destroy_pool(pool);
            return Err(NotCreated::Refused);
        }
        if table.len() <= slot {
            table.resize(
                (*ngx_cycle).connection_n.max(slot + 1),
                std::ptr::null_mut(),
            );
        }
        table[slot] = raw.as_ptr();
        Ok(c)
    }
}

impl MuxStream {
    /// The link, if it still lives.
    ///
    /// # Safety
    /// No other reference to the link may be live.
    unsafe fn link<'a>(&self) -> Option<&'a mut dyn Carrier> {
        // SAFETY: set while the link lives (module doc); the caller's promise.
        self.link.map(|mut l| unsafe { l.as_mut() })
    }

    /// The link lost this stream (reset by A, or the link died): later calls fail, and the
    /// session hears of it through both events.
    pub fn fail(&mut self, link_gone: bool) {
        self.failed = true;
        if link_gone {
            self.link = None;
        }
        // SAFETY: c is live while its state is (the state lives in its pool).
        unsafe {
            (*(*self.c).read).set_ready(1);
            (*(*self.c).write).set_ready(1);
            post((*self.c).read);
            post((*self.c).write);
        }
    }
}

impl Drop for MuxStream {
    /// The session ended: our FIN after everything it sent when it ended well, a reset
    /// saying why when not (docs/multiplex.md §12.3).
    fn drop(&mut self) {
        // SAFETY: the session lives in the pool whose cleanup runs this drop: its memory is
        // freed only after every cleanup. status is set by ngx_stream_finalize_session.
        let status = unsafe { self.session.as_ref() }.map(|s| s.status);
        let code = match status.map(|s| s as u32) {
            Some(nginx_sys::NGX_STREAM_BAD_GATEWAY) => Some(ResetCode::CONNECT_FAILED),
            Some(nginx_sys::NGX_STREAM_INTERNAL_SERVER_ERROR) => Some(ResetCode::INTERNAL),
            _ => None,
        };
        // SAFETY: single-threaded; dropping runs from the pool's cleanup, outside any link
        // call.
        if let Some(link) = unsafe { self.link() } {
            link.stream_ended(self.id, self.local_fin, code);
        }
        // SAFETY: single-threaded access.
        let table = unsafe { &mut *TABLE.0.get() };
        let me: *mut MuxStream = self;
        if let Some(p) = table.get_mut(self.slot) {
            if *p == me {
                *p = std::ptr::null_mut();
            }
        }
    }
}

/// Closes a stream connection that never got a session: its fd, its posted events, then
/// its pool (and the state in it).
///
/// # Safety
/// `c` is a live stream connection made by [`create`], with no session.
pub unsafe fn discard(c: *mut ngx_connection_t) {
    // SAFETY: the caller's promise; the pool outlives the connection's last use here.
    unsafe {
        let pool = (*c).pool;
        nginx_sys::ngx_close_connection(c);
        ngx_destroy_pool(pool);
    }
}

/// `c->recv` of a stream: the bytes A sent, then EOF after its FIN.
unsafe extern "C" fn stream_recv(c: *mut ngx_connection_t, buf: *mut u8, size: usize) -> isize {
    // SAFETY: nginx calls recv with a live connection and a buffer of `size` bytes.
    let rev = unsafe { &mut *(*c).read };
    // SAFETY: as above.
    let Some(st) = (unsafe { get(c) }) else {
        return NGX_ERROR as isize;
    };
    if !st.input.is_empty() && size > 0 {
        // SAFETY: nginx gives a writable buffer of `size` bytes.
        let out = unsafe { slice::from_raw_parts_mut(buf, size) };
        let n = size.min(st.input.len());
        for (o, b) in out.iter_mut().zip(st.input.drain(..n)) {
            *o = b;
        }
        // SAFETY: no other link reference is live inside nginx's recv call.
        if let Some(link) = unsafe { st.link() } {
            link.consumed(st.id, n);
        }
        rev.set_ready((!st.input.is_empty() || st.remote_fin || st.failed) as u32);
        return n as isize;
    }
    if st.failed {
        rev.set_ready(0);
        rev.set_error(1);
        return NGX_ERROR as isize;
    }
    if st.remote_fin {
        rev.set_ready(0);
        rev.set_eof(1);
        return 0;
    }
    rev.set_ready(0);
    NGX_AGAIN as isize
}

/// `c->recv_chain`: [`stream_recv`] into each buffer.
unsafe extern "C" fn stream_recv_chain(
    c: *mut ngx_connection_t,
    cl: *mut ngx_chain_t,
    limit: off_t,
) -> isize {
    // SAFETY: nginx calls recv_chain with a live connection and a valid chain.
    unsafe { crate::nginx::conn::io::recv_into_chain(c, cl, limit, stream_recv) }
}

/// `c->send` of a stream: queued on the link as far as the stream's window allows.
unsafe extern "C" fn stream_send(c: *mut ngx_connection_t, buf: *mut u8, size: usize) -> isize {
    // SAFETY: nginx calls send with a live connection and `size` readable bytes.
    let data = unsafe { slice::from_raw_parts(buf, size) };
    // SAFETY: as above.
    let n = unsafe { send_bytes(c, data) };
    if n > 0 {
        // SAFETY: c is live.
        unsafe { (*c).sent += n as off_t };
    }
    n
}

/// The body of `send`: bytes taken, `NGX_AGAIN` or `NGX_ERROR`.
///
/// # Safety
/// `c` is a live connection.
unsafe fn send_bytes(c: *mut ngx_connection_t, data: &[u8]) -> isize {
    // SAFETY: the caller's promise.
    let wev = unsafe { &mut *(*c).write };
    // SAFETY: as above.
    let Some(st) = (unsafe { get(c) }) else {
        return NGX_ERROR as isize;
    };
    // SAFETY: no other link reference is live inside nginx's send call.
    let link = match unsafe { st.link() } {
        Some(link) if !st.failed && !st.local_fin => link,
        _ => {
            wev.set_error(1);
            return NGX_ERROR as isize;
        }
    };
    if data.is_empty() {
        return 0;
    }
    match link.send(st.id, data) {
        Some(0) => {
            st.wants_write = true;
            wev.set_ready(0);
            NGX_AGAIN as isize
        }
        Some(n) => {
            if n < data.len() {
                // The window or the link's queue is full: like a socket that took part of
                // a write, not ready until the link posts the write event.
                st.wants_write = true;
                wev.set_ready(0);
            }
            n as isize
        }
        None => {
            wev.set_error(1);
            NGX_ERROR as isize
        }
    }
}

/// `c->send_chain`: memory buffers through [`send_bytes`]; returns the unsent rest.
unsafe extern "C" fn stream_send_chain(
    c: *mut ngx_connection_t,
    input: *mut ngx_chain_t,
    limit: off_t,
) -> *mut ngx_chain_t {
    let limit = if limit <= 0 { i64::MAX } else { limit };
    let mut cl = input;
    let mut sent: i64 = 0;
    while !cl.is_null() && sent < limit {
        // SAFETY: nginx gives a valid chain of valid buffers.
        let b: &mut ngx_buf_t = unsafe { &mut *(*cl).buf };
        let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
        if !in_memory || b.pos >= b.last {
            if !in_memory && b.in_file() != 0 && b.file_pos < b.file_last {
                // File buffers never reach a stream session (no sendfile here).
                return NGX_ERROR as isize as *mut ngx_chain_t;
            }
            // SAFETY: as above.
            cl = unsafe { (*cl).next };
            continue;
        }
        let len = (b.last as usize - b.pos as usize).min((limit - sent) as usize);
        // SAFETY: b.pos..b.last is readable.
        let n = unsafe { send_bytes(c, slice::from_raw_parts(b.pos, len)) };
        if n == NGX_ERROR as isize {
            return NGX_ERROR as isize as *mut ngx_chain_t;
        }
        if n == NGX_AGAIN as isize || n == 0 {
            break;
        }
        // SAFETY: n <= len bytes were taken.
        b.pos = unsafe { b.pos.add(n as usize) };
        sent += n as i64;
        // SAFETY: c is live.
        unsafe { (*c).sent += n as off_t };
        if (n as usize) < len {
            break;
        }
    }
    cl
}

/// Remembers the session `ngx_stream_init_connection` made for `c`, if `c` still lives.
///
/// # Safety
/// `c` is a stream connection just given to `ngx_stream_init_connection` (it may have been
/// closed since: then its table entry is gone and nothing is read from it).
pub unsafe fn started(c: *mut ngx_connection_t) {
    // SAFETY: the caller's promise; get() checks the entry before c is read.
    if let Some(st) = unsafe { get(c) } {
        // SAFETY: c lives (its state does); c->data is its session.
        st.session = unsafe { (*c).data }.cast();
    }
}

/// The handshake of the link a stream belongs to, for the variables.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn info(c: *mut ngx_connection_t) -> Option<Rc<HandshakeInfo>> {
    // SAFETY: forwarded.
    unsafe { get(c) }.map(|st| st.info.clone())
}

/// `$noise_origin_addr`: the origin address A named for the stream ("" when unknown).
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn origin_text(c: *mut ngx_connection_t) -> Option<String> {
    // SAFETY: forwarded.
    unsafe { get(c) }.map(|st| match st.origin {
        Origin::Unknown => String::new(),
        Origin::Ip(addr) => addr.ip().to_string(),
    })
}

/// What a reset code from A is called in logs.
pub fn reset_name(code: ResetCode) -> &'static str {
    match code {
        ResetCode::CANCEL => "cancelled",
        ResetCode::REFUSED => "refused",
        ResetCode::CONNECT_FAILED => "connect failed",
        ResetCode::ABORTED => "aborted",
        _ => "reset",
    }
}

/// A `sockaddr` for `addr`, as the kernel would give it.
fn sockaddr_of(addr: &std::net::SocketAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (storage, std::mem::size_of::<libc::sockaddr_in>())
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            (storage, std::mem::size_of::<libc::sockaddr_in6>())
        }
    }
}
