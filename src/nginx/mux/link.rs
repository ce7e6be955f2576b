//! B's side of a multiplexed link (docs/multiplex.md §12): a `noise_listen` connection whose
//! client offered the multiplexing field, on a server with `noise_multiplex on`.
//!
//! When the handshake is done, [`take_over`] keeps the connection's stream session parked in
//! its SSL phase for the life of the link (it is logged as one session when the link ends)
//! and gives both events to this module's handlers, which drive one
//! [`crate::core::mux::Session`]: each transport message is opened with the connection's
//! transport and its body handed to the session; an opened stream becomes a fake connection
//! ([`crate::nginx::mux::stream`]) that nginx runs as a new stream session through all phases; data,
//! half-closes, resets and window credit are delivered to it by posting its events; what the
//! streams send is queued in the session and sealed, one message per body, into the link's
//! own send buffer.
//!
//! Invariants: nginx functions that can run a stream session (`ngx_stream_init_connection`,
//! `ngx_stream_finalize_session`) are called only while no reference to the [`Link`] is
//! live, since a session may call back into it (`send`, its end); the streams' I/O functions
//! take the link by its raw pointer for the length of one call. Bad input from A is
//! link-fatal: one `info` line, the session's go-away sent best effort, every stream failed,
//! the connection closed. A stream's buffered data never exceeds its window (the core's
//! flow control), and the streams' unsent output on the link is bounded by
//! [`QUEUE_LIMIT`] (a stream whose `send` finds the queue full waits for its write event).

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;

use nginx_sys::{
    ngx_connection_t, ngx_event_flags, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event,
    ngx_int_t, ngx_stream_finalize_session, ngx_stream_init_connection, ngx_stream_session_t,
    ngx_uint_t, NGX_AGAIN, NGX_OK, NGX_STREAM_INTERNAL_SERVER_ERROR, NGX_STREAM_OK,
    NGX_USE_CLEAR_EVENT,
};

use crate::core::handshake::HandshakeInfo;
use crate::core::mux::{Config, Event, GoAwayReason, ResetCode, Session, Side, StreamId};
use crate::core::negotiation::multiplex;
use crate::core::payload::MAX_BODY;
use crate::core::send_buffer::SendBuffer;
use crate::nginx::conf::ServerSide;
use crate::nginx::conn::{self, NoiseConn, Phase};
use crate::nginx::mux::stream::{self, Carrier, MuxStream, NotCreated};
use crate::nginx::util::socket::{self, Io};
use crate::nginx::{util::log, util::pool};
use crate::noise_debug;

/// Stream output queued in the session before a stream's `send` says NGX_AGAIN.
pub const QUEUE_LIMIT: usize = 256 * 1024;

/// The state of one link, in its connection's pool.
pub struct Link {
    number: nginx_sys::ngx_atomic_uint_t,
    slot: usize,
    c: *mut ngx_connection_t,
    s: *mut ngx_stream_session_t,
    session: Session,
    streams: HashMap<StreamId, *mut MuxStream>,
    /// Sealed messages waiting for the socket (room for two largest messages).
    out: SendBuffer,
    scratch: Vec<u8>,
    events: Vec<Event>,
    info: Rc<HandshakeInfo>,
    trust_origin: bool,
    /// The peer closed, the socket failed or the session failed: close once flushed.
    closing: bool,
}

struct Table(UnsafeCell<Vec<*mut Link>>);
// SAFETY: touched only from the worker's single event-loop thread.
unsafe impl Sync for Table {}
static TABLE: Table = Table(UnsafeCell::new(Vec::new()));

/// Worker exit: frees the table (every link is gone by then).
pub fn free_table() {
    // SAFETY: single-threaded worker.
    unsafe { *TABLE.0.get() = Vec::new() };
}

/// The link of connection `c`, if it is one.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn find(c: *mut ngx_connection_t) -> Option<*mut Link> {
    let slot = stream::slot_of(c)?;
    // SAFETY: single-threaded access.
    let p = *unsafe { &*TABLE.0.get() }.get(slot)?;
    // SAFETY: non-null entries point at live links (cleared by their drop); the number
    // check rejects a reused slot.
    (!p.is_null() && unsafe { (*p).number == (*c).number }).then_some(p)
}

/// At the end of a successful handshake in session `s`: if the client asked for a
/// multiplexed link and this server has `noise_multiplex on`, the connection becomes a link
/// and this returns the phase result (NGX_AGAIN: the session stays parked); `None` for an
/// ordinary connection, which goes on through the phases.
///
/// # Safety
/// `s` is the live session in its SSL phase, its connection established.
pub unsafe fn take_over(s: *mut ngx_stream_session_t, side: &ServerSide) -> Option<ngx_int_t> {
    if !side.multiplex {
        return None;
    }
    // SAFETY: the caller's promise.
    let c = unsafe { (*s).connection };
    // SAFETY: c is live; the reference ends in this statement.
    let info = unsafe { conn::get(c) }
        .and_then(|st| st.established().cloned())
        .filter(|i| multiplex::agreed(&i.initial_negotiation))?;
    // SAFETY: c and its log are live.
    let log = unsafe { (*c).log };
    // SAFETY: plain read of a global nginx sets at event-module init.
    if unsafe { ngx_event_flags } & NGX_USE_CLEAR_EVENT as ngx_uint_t == 0 {
        // SAFETY: log is live.
        unsafe {
            log::write(
                log,
                log::ERR,
                "noise: noise_multiplex needs an edge-triggered event method (epoll, kqueue); closing the link",
            )
        };
        return Some(NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    // SAFETY: c is live.
    if !unsafe { (*c).proxy_protocol }.is_null() {
        // SAFETY: log is live.
        unsafe {
            log::write(
                log,
                log::ERR,
                "noise: noise_multiplex does not work on a listen with proxy_protocol (each stream would be read for a PROXY header); closing the link",
            )
        };
        return Some(NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    let session = match Session::new(Side::Acceptor, Config::default()) {
        Ok(session) => session,
        Err(e) => {
            // SAFETY: log is live.
            unsafe { log::write(log, log::ERR, &format!("noise: multiplexed link: {e}")) };
            return Some(NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
    };
    let slot = stream::slot_of(c)?;
    let link = Link {
        // SAFETY: c is live.
        number: unsafe { (*c).number },
        slot,
        c,
        s,
        session,
        streams: HashMap::new(),
        out: SendBuffer::new(2 * (MAX_BODY + 64)),
        scratch: Vec::new(),
        events: Vec::new(),
        info: Rc::new(info),
        trust_origin: side.trust_origin,
        closing: false,
    };
    // SAFETY: c's pool outlives the link's users: the table entry is cleared on drop and
    // the streams' pointers by the link's drop.
    let raw = unsafe { pool::allocate((*c).pool, link) }?.as_ptr();
    // SAFETY: single-threaded access.
    let table = unsafe { &mut *TABLE.0.get() };
    if table.len() <= slot {
        // SAFETY: ngx_cycle is valid in a worker.
        table.resize(
            unsafe { (*nginx_sys::ngx_cycle).connection_n }.max(slot + 1),
            std::ptr::null_mut(),
        );
    }
    table[slot] = raw;
    noise_debug!(log, "noise mux: the connection is a multiplexed link");
    // The hello is sealed before any input is read: a link-fatal error in A's first message
    // makes the session drop what it has not handed out, the hello included, and A must
    // see the hello before the go-away (docs/multiplex.md §2.2).
    // SAFETY: the link was just made; nothing else references it or c's state now.
    unsafe { (*raw).flush() };
    // SAFETY: c and its events are live.
    unsafe {
        (*(*c).read).handler = Some(read_handler);
        (*(*c).write).handler = Some(write_handler);
        // A reload or worker exit calls the read handler with c->close (go-away).
        (*c).set_idle(1);
        (*log).action = c"serving a multiplexed link".as_ptr().cast_mut();
        // Messages may already be buffered behind the handshake; the hello waits to go.
        (*(*c).read).set_ready(1);
        stream::post((*c).read);
        stream::post((*c).write);
    }
    Some(NGX_AGAIN as ngx_int_t)
}

unsafe extern "C" fn read_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls event handlers with a live event whose data is the connection.
    let c = unsafe { (*ev).data } as *mut ngx_connection_t;
    // SAFETY: c is live.
    let Some(link) = (unsafe { find(c) }) else {
        return;
    };
    // SAFETY: c is live.
    if unsafe { (*c).close() } != 0 {
        // Reload or worker exit: no new streams; those in flight finish.
        // SAFETY: c is live; the link reference ends in this block.
        unsafe {
            (*c).set_close(0);
            (*c).set_idle(0);
            noise_debug!((*c).log, "noise mux: going away (reload or exit)");
            (*link).session.go_away(GoAwayReason::NORMAL);
        }
    }
    // SAFETY: no link reference is live here; see the module doc.
    unsafe {
        let created = read_input(link);
        for fc in created {
            // A stream reset in the message that opened it gets no session (rapid reset
            // costs no phases, no upstream connection).
            if stream::get(fc).is_some_and(|st| st.failed) {
                stream::discard(fc);
            } else {
                ngx_stream_init_connection(fc);
                stream::started(fc);
            }
        }
        run(link);
    }
}

unsafe extern "C" fn write_handler(ev: *mut ngx_event_t) {
    // SAFETY: as read_handler.
    let c = unsafe { (*ev).data } as *mut ngx_connection_t;
    // SAFETY: c is live.
    if let Some(link) = unsafe { find(c) } {
        // SAFETY: no link reference is live.
        unsafe { run(link) };
    }
}

/// Flushes, wakes streams that wait for room, and closes the link when it is done.
///
/// # Safety
/// `link` is live and unreferenced.
unsafe fn run(link: *mut Link) {
    // SAFETY: the caller's promise; the reference ends before the finalize.
    let (done, s) = unsafe {
        let l = &mut *link;
        l.flush();
        l.wake_writers();
        let done = l.closing
            || l.session.is_failed()
            || (l.session.is_finished() && l.out.is_empty() && !l.session.has_output());
        (done, l.s)
    };
    if done {
        // SAFETY: as above; the link's drop (pool cleanup) fails its streams.
        unsafe {
            (*link).fail_streams();
            ngx_stream_finalize_session(s, NGX_STREAM_OK as ngx_uint_t);
        }
    }
}

/// Opens every buffered message and reads the socket until it would block; returns the
/// stream connections made, for the caller to start.
///
/// # Safety
/// `link` is live and unreferenced.
unsafe fn read_input(link: *mut Link) -> Vec<*mut ngx_connection_t> {
    // SAFETY: the caller's promise; the reference ends with this function, which calls
    // nothing that runs a session.
    let l = unsafe { &mut *link };
    let c = l.c;
    // SAFETY: c is live; the state is referenced only here during this call.
    let Some(st) = (unsafe { conn::get(c) }) else {
        l.closing = true;
        return Vec::new();
    };
    // SAFETY: c and its events are live.
    let (fd, clog, rev) = unsafe { ((*c).fd, (*c).log, (*c).read) };
    let mut created = Vec::new();
    if l.closing || l.session.is_failed() {
        return created;
    }
    loop {
        loop {
            let NoiseConn {
                phase: Phase::Transport(tr),
                input,
                ..
            } = &mut *st
            else {
                l.closing = true;
                return created;
            };
            let body = match input.next(&mut tr.opener) {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    // SAFETY: clog is live.
                    unsafe { log::error(clog, "multiplexed link: reading from peer", &e) };
                    l.closing = true;
                    return created;
                }
            };
            l.events.clear();
            let received = l.session.receive(body, &mut l.events);
            let mut rekey = false;
            let events = std::mem::take(&mut l.events);
            for event in &events {
                // SAFETY: link_c is live; streams in the map are live.
                rekey |= unsafe { l.on_event(link, event, body, &mut created) };
            }
            l.events = events;
            if let Err(e) = received {
                // SAFETY: clog is live.
                unsafe {
                    log::write(
                        clog,
                        log::INFO,
                        &format!(
                            "noise: multiplexed link: {e}; closing the link and its {} stream(s)",
                            l.streams.len()
                        ),
                    )
                };
                return created;
            }
            if rekey {
                if let Err(e) = tr.opener.rekey() {
                    // SAFETY: clog is live.
                    unsafe { log::error(clog, "multiplexed link: rekey", &e) };
                    l.closing = true;
                    return created;
                }
            }
        }
        let spare = st.input.spare();
        let room = spare.len();
        match socket::recv(fd, spare) {
            Io::Done(n) => {
                noise_debug!(clog, "noise mux: recv() {n} of {room} bytes");
                st.input.commit(n);
            }
            Io::Eof => {
                if !l.streams.is_empty() || st.input.check_eof().is_err() {
                    // SAFETY: clog is live.
                    unsafe {
                        log::write(
                            clog,
                            log::INFO,
                            &format!(
                                "noise: multiplexed link closed by the peer with {} stream(s) open",
                                l.streams.len()
                            ),
                        )
                    };
                }
                l.closing = true;
                return created;
            }
            Io::Again => {
                st.input.release();
                // SAFETY: rev is live.
                unsafe {
                    (*rev).set_ready(0);
                    if ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t {
                        l.closing = true;
                    }
                }
                return created;
            }
            Io::Failed(errno) => {
                // SAFETY: c is live.
                unsafe {
                    log::connection_error(c, errno, c"noise: multiplexed link: recv() failed")
                };
                l.closing = true;
                return created;
            }
        }
    }
}

impl Carrier for Link {
    fn send(&mut self, id: StreamId, data: &[u8]) -> Option<usize> {
        Link::send(self, id, data)
    }

    fn consumed(&mut self, id: StreamId, n: usize) {
        Link::consumed(self, id, n)
    }

    fn stream_ended(&mut self, id: StreamId, local_fin: bool, reset: Option<ResetCode>) {
        Link::stream_ended(self, id, local_fin, reset)
    }
}

impl Link {
    /// One event from the session; returns whether it was a rekey.
    ///
    /// # Safety
    /// `me` is this link; the streams in the map are live.
    unsafe fn on_event(
        &mut self,
        me: *mut Link,
        event: &Event,
        body: &[u8],
        created: &mut Vec<*mut ngx_connection_t>,
    ) -> bool {
        let stream = |id: &StreamId| self.streams.get(id).copied();
        match event {
            Event::StreamOpened { id, origin } => {
                // SAFETY: the link connection is live; me is this live link.
                let made = unsafe {
                    stream::create(
                        self.c,
                        NonNull::new_unchecked(me as *mut dyn Carrier),
                        *id,
                        *origin,
                        self.info.clone(),
                        self.trust_origin,
                    )
                };
                match made {
                    Ok(fc) => {
                        // SAFETY: fc was just made with its state.
                        if let Some(ms) = unsafe { stream::get(fc) } {
                            self.streams.insert(*id, ms);
                            created.push(fc);
                        }
                    }
                    Err(NotCreated::Refused) => {
                        let _ = self.session.reset(*id, ResetCode::REFUSED);
                    }
                }
            }
            Event::Data { id, range } => match stream(id) {
                Some(ms) => {
                    // SAFETY: streams in the map are live.
                    unsafe {
                        (*ms).input.extend(&body[range.clone()]);
                        (*(*(*ms).c).read).set_ready(1);
                        stream::post((*(*ms).c).read);
                    }
                }
                // Its session has ended: the bytes are dropped, the credit returned.
                None => {
                    let _ = self.session.consumed(*id, range.len());
                }
            },
            Event::HalfClosed { id } => {
                if let Some(ms) = stream(id) {
                    // SAFETY: as above.
                    unsafe {
                        (*ms).remote_fin = true;
                        (*(*(*ms).c).read).set_ready(1);
                        stream::post((*(*ms).c).read);
                    }
                }
            }
            Event::Reset { id, code } => {
                if let Some(ms) = self.streams.remove(id) {
                    // SAFETY: as above.
                    unsafe {
                        noise_debug!(
                            (*(*ms).c).log,
                            "noise mux: stream {id} {} by the peer",
                            stream::reset_name(*code)
                        );
                        (*ms).fail(true);
                    }
                }
            }
            Event::WindowOpened { id, .. } => {
                if let Some(ms) = stream(id) {
                    // SAFETY: as above.
                    unsafe { wake(ms) };
                }
            }
            Event::Rekey => return true,
            Event::Pong { .. } | Event::GoAway { .. } => {}
        }
        false
    }

    /// A stream's `send`: bytes taken (0: wait for the write event), `None` on failure.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Option<usize> {
        if self.closing || self.session.is_failed() {
            return None;
        }
        if self.session.queued_len() >= QUEUE_LIMIT {
            return Some(0);
        }
        let n = self.session.send(id, data).ok()?;
        if n > 0 {
            self.schedule();
        }
        Some(n)
    }

    /// A stream's `recv` took `n` bytes: credit goes back as the core decides.
    pub fn consumed(&mut self, id: StreamId, n: usize) {
        if self.session.consumed(id, n).is_ok() && self.session.has_output() {
            self.schedule();
        }
    }

    /// A stream's session ended: `reset` says why when it failed (connect failed,
    /// internal); otherwise our FIN after what it sent, and a reset (cancel) if A still
    /// sends (nobody reads any more).
    pub fn stream_ended(&mut self, id: StreamId, local_fin: bool, reset: Option<ResetCode>) {
        self.streams.remove(&id);
        if self.session.is_failed() {
            return;
        }
        if let Some(code) = reset {
            let _ = self.session.reset(id, code);
        }
        if !local_fin && self.session.is_open(id) {
            let _ = self.session.finish(id);
        }
        if self.session.is_open(id) {
            let _ = self.session.reset(id, ResetCode::CANCEL);
        }
        self.schedule();
    }

    /// Asks for a flush on the next turn of the event loop.
    fn schedule(&mut self) {
        // SAFETY: the link connection and its write event live as long as the link.
        unsafe { stream::post((*self.c).write) };
    }

    /// Seals queued bodies (one message each) and writes what the socket takes.
    fn flush(&mut self) {
        // SAFETY: the link connection is live; its state is referenced only here.
        let Some(st) = (unsafe { conn::get(self.c) }) else {
            self.closing = true;
            return;
        };
        let Phase::Transport(tr) = &mut st.phase else {
            self.closing = true;
            return;
        };
        // SAFETY: c and its events are live.
        let (fd, clog, wev) = unsafe { ((*self.c).fd, (*self.c).log, (*self.c).write) };
        loop {
            while self.session.has_output()
                && self.out.body_space(&tr.sealer, MAX_BODY).len() == MAX_BODY
            {
                self.scratch.clear();
                let Some(outgoing) = self.session.poll_message(&mut self.scratch) else {
                    break;
                };
                let len = self.scratch.len();
                let space = self.out.body_space(&tr.sealer, len);
                space[..len].copy_from_slice(&self.scratch);
                let sealed = self.out.seal_body(&mut tr.sealer, len).and_then(|()| {
                    if outgoing.rekey_after {
                        tr.sealer.rekey()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = sealed {
                    // SAFETY: clog is live.
                    unsafe { log::error(clog, "multiplexed link: sealing", &e) };
                    self.closing = true;
                    return;
                }
            }
            if self.out.is_empty() {
                self.out.release();
                return;
            }
            match socket::send(fd, self.out.pending()) {
                Io::Done(n) => {
                    let all = n == self.out.pending().len();
                    self.out.consume(n);
                    if !all {
                        break;
                    }
                }
                Io::Again | Io::Eof => break,
                Io::Failed(errno) => {
                    // SAFETY: c is live.
                    unsafe {
                        log::connection_error(
                            self.c,
                            errno,
                            c"noise: multiplexed link: send() failed",
                        )
                    };
                    self.closing = true;
                    return;
                }
            }
        }
        // SAFETY: wev is live.
        unsafe {
            (*wev).set_ready(0);
            if ngx_handle_write_event(wev, 0) != NGX_OK as ngx_int_t {
                self.closing = true;
            }
        }
    }

    /// Posts the write event of every stream that waits for window or queue room it has.
    fn wake_writers(&mut self) {
        if self.session.queued_len() >= QUEUE_LIMIT {
            return;
        }
        for (id, ms) in &self.streams {
            if self.session.send_window(*id).unwrap_or(0) > 0 {
                // SAFETY: streams in the map are live.
                unsafe { wake(*ms) };
            }
        }
    }

    /// The link ends: every stream it carries fails (its session sees an error on both
    /// events and ends).
    fn fail_streams(&mut self) {
        for (_, ms) in self.streams.drain() {
            // SAFETY: streams in the map are live.
            unsafe { (*ms).fail(true) };
        }
    }
}

/// Posts a stream's write event if its `send` is waiting.
///
/// # Safety
/// `ms` is a live stream.
unsafe fn wake(ms: *mut MuxStream) {
    // SAFETY: the caller's promise.
    unsafe {
        if (*ms).wants_write {
            (*ms).wants_write = false;
            (*(*(*ms).c).write).set_ready(1);
            stream::post((*(*ms).c).write);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.fail_streams();
        // SAFETY: single-threaded access.
        let table = unsafe { &mut *TABLE.0.get() };
        let me: *mut Link = self;
        if let Some(p) = table.get_mut(self.slot) {
            if *p == me {
                *p = std::ptr::null_mut();
            }
        }
    }
}
