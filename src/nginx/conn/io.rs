//! The connection I/O functions that replace `c->recv`, `c->send`, `c->recv_chain` and
//! `c->send_chain` once a NoiseSocket handshake is done, so every nginx handler above sees
//! plaintext. They follow the rules of `ngx_event_openssl.c` (docs/nginx-integration.md §3):
//!
//! * Return bytes, 0 for EOF, `NGX_AGAIN` or `NGX_ERROR`; `send_chain` returns the unsent
//!   chain, NULL when all of it was taken, or `NGX_CHAIN_ERROR`.
//! * `ready` drops to 0 only when the kernel says EAGAIN; while plaintext or a whole frame
//!   is buffered it stays 1, because an edge-triggered event will not come again.
//! * EOF and errors are sticky and reported only after buffered plaintext is drained; EOF
//!   inside a frame is truncation (an error).
//! * Plaintext counts as sent once sealed; while ciphertext waits, the [`BUFFERED`] bit of
//!   `c->buffered` (inside `NGX_LOWLEVEL_BUFFERED`) makes nginx's write filters call
//!   `send_chain(c, NULL)` to flush it. `c->sent` counts plaintext, as SSL does.
//! * File buffers (`sendfile` off is forced, but `http` may still pass `in_file` buffers)
//!   are read with `pread` straight into the frame being sealed.
//!
//! Safety contract of this file ("the call contract" below): nginx calls these functions,
//! and our handshake code calls [`install`] and [`send_empty_frame`], with a connection that
//! is live for the whole call; its `read` and `write` events and its `log` were allocated
//! with it and live as long; a chain passed in is nginx's, valid for the call; and the
//! connection's [`NoiseConn`] is referenced by nothing else during the call (one thread,
//! these functions do not call each other re-entrantly).

use std::slice;

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_t, ngx_event_flags, ngx_event_t, ngx_uint_t,
    ngx_use_epoll_rdhup, off_t, NGX_AGAIN, NGX_ERROR, NGX_MAX_SIZE_T_VALUE, NGX_USE_EPOLL_EVENT,
};

use crate::core::send_buffer::SendBuffer;
use crate::core::transport::Sealer;
use crate::metrics::Direction;
use crate::nginx::conn::{self, NoiseConn};
use crate::nginx::util::counters;
use crate::nginx::util::log;
use crate::nginx::util::socket::{self, Io};
use crate::noise_debug;

/// Our bit of `c->buffered` while ciphertext waits (0x01 is SSL's, 0x02 HTTP/2's).
pub const BUFFERED: u32 = 0x08;

/// `NGX_CHAIN_ERROR`.
fn chain_error() -> *mut ngx_chain_t {
    NGX_ERROR as isize as *mut ngx_chain_t
}

/// Installs the four functions on `c` and turns `sendfile` off.
///
/// # Safety
/// `c` must be a live connection with an established [`NoiseConn`].
pub unsafe fn install(c: *mut ngx_connection_t) {
    // SAFETY: the call contract (module doc): c is live for this call.
    unsafe {
        (*c).recv = Some(noise_recv);
        (*c).send = Some(noise_send);
        (*c).recv_chain = Some(noise_recv_chain);
        (*c).send_chain = Some(noise_send_chain);
        (*c).set_sendfile(0);
    }
}

/// Seals one empty frame and flushes what the socket takes now; the rest leaves with the
/// next write (the `BUFFERED` bit asks nginx for that flush). False when that failed
/// (already logged).
///
/// # Safety
/// `c` must be live and `st` its established state.
pub unsafe fn send_empty_frame(c: *mut ngx_connection_t, st: &mut NoiseConn) -> bool {
    let mut first = true;
    // SAFETY: forwarded.
    unsafe {
        seal_and_flush(c, st, |sealer, output| {
            if std::mem::take(&mut first) {
                output.seal_empty(sealer)?;
            }
            Ok(false)
        })
        .is_ok()
    }
}

/// `c->recv`.
///
/// # Safety
/// Called by nginx with a live connection and a buffer of `size` bytes.
pub unsafe extern "C" fn noise_recv(c: *mut ngx_connection_t, buf: *mut u8, size: usize) -> isize {
    // SAFETY: the call contract; `recv` is given what nginx gave us, with c's state.
    unsafe {
        counted(c, Direction::In, "noise_recv", size, |st| {
            recv(c, st, buf, size)
        })
    }
}

/// The frame of `c->recv` and `c->send`: `c`'s state for `io`, the plaintext bytes it moved
/// counted in `noise_status`, and one debug line, as `ngx_ssl_recv` / `ngx_ssl_write` log.
///
/// # Safety
/// `c` is a live connection whose state no one else references during this call; `io`
/// keeps the promises of the function it stands for.
#[inline(always)]
unsafe fn counted(
    c: *mut ngx_connection_t,
    direction: Direction,
    what: &str,
    size: usize,
    io: impl FnOnce(&mut NoiseConn) -> isize,
) -> isize {
    // SAFETY: the caller's promise; the reference ends with this call.
    let Some(st) = (unsafe { conn::get(c) }) else {
        return NGX_ERROR as isize;
    };
    let n = io(st);
    if n > 0 {
        counters::bytes(st.side, direction, n as usize);
    }
    // SAFETY: the caller's promise: c is live for this call.
    noise_debug!(unsafe { (*c).log }, "{what}: {n} of {size}");
    n
}

/// [`noise_recv`] without its counting and debug line; `st` is `c`'s state.
///
/// # Safety
/// As [`noise_recv`].
unsafe fn recv(c: *mut ngx_connection_t, st: &mut NoiseConn, buf: *mut u8, size: usize) -> isize {
    // SAFETY: the call contract: c and its read event are live for this call.
    let rev = unsafe { &mut *(*c).read };
    if st.read_error {
        rev.set_ready(0);
        rev.set_error(1);
        return NGX_ERROR as isize;
    }
    if size == 0 {
        return 0;
    }
    // SAFETY: nginx gives a writable buffer of `size` bytes.
    let out = unsafe { slice::from_raw_parts_mut(buf, size) };
    // SAFETY: the call contract (module doc): c is live for this call.
    let (fd, log) = unsafe { ((*c).fd, (*c).log) };
    let mut got = 0;
    let mut drained = false;
    loop {
        if !st.read_error {
            let NoiseConn {
                phase: conn::Phase::Transport(tr),
                input,
                ..
            } = &mut *st
            else {
                return NGX_ERROR as isize;
            };
            let opened = input.read_plain(&mut tr.opener, &mut out[got..]);
            // SAFETY: the connection's log is live.
            if unsafe { log::debug_on(log) } {
                for frame in input.take_frames() {
                    noise_debug!(log, "noise recv: opened a frame of {frame} bytes");
                }
            }
            match opened {
                Ok(n) => got += n,
                Err(e) => {
                    // SAFETY: the call contract: the connection's log is live.
                    unsafe { log::error(log, "reading from peer", &e) };
                    st.read_error = true;
                }
            }
        }
        if got == size {
            rev.set_ready(1);
            return got as isize;
        }
        if st.read_error || st.read_eof {
            break;
        }
        if drained {
            // The last read emptied the socket: stop here, as ngx_unix_recv does, instead
            // of paying a recv() that can only say EAGAIN. The next data is a new edge.
            rev.set_ready(0);
            st.input.release();
            return if got == 0 {
                NGX_AGAIN as isize
            } else {
                got as isize
            };
        }
        let spare = st.input.spare();
        let room = spare.len();
        match socket::recv(fd, spare) {
            Io::Done(n) => {
                noise_debug!(log, "noise recv: recv() {n} of {room} bytes");
                st.input.commit(n);
                drained = n < room && short_read_drains(rev);
            }
            Io::Eof => {
                st.read_eof = true;
                if let Err(e) = st.input.check_eof() {
                    // SAFETY: as above.
                    unsafe { log::error(log, "peer closed the connection", &e) };
                    st.read_error = true;
                }
            }
            Io::Again => {
                rev.set_ready(0);
                // Idle until the next event: give the receive buffer back unless part of a
                // frame or of a body is still in it.
                st.input.release();
                if got == 0 {
                    return NGX_AGAIN as isize;
                }
                return got as isize;
            }
            Io::Failed(errno) => {
                // SAFETY: as above.
                unsafe { log::connection_error(c, errno, c"noise: recv() failed") };
                st.read_error = true;
            }
        }
    }
    if got > 0 {
        // The EOF or error comes with the next call.
        rev.set_ready(1);
        return got as isize;
    }
    rev.set_ready(0);
    if st.read_error {
        rev.set_error(1);
        return NGX_ERROR as isize;
    }
    rev.set_eof(1);
    st.input.release();
    0
}

/// Whether a short read means the socket is empty, so that the next data comes with a new
/// event: with epoll and `EPOLLRDHUP`, unless the peer's FIN is pending (then nginx reads on
/// until recv() returns 0), as in `ngx_unix_recv`.
pub fn short_read_drains(rev: &ngx_event_t) -> bool {
    // SAFETY: plain reads of two globals that nginx sets once at event-module init, in
    // this same (single-threaded) worker.
    let (flags, rdhup) = unsafe { (ngx_event_flags, ngx_use_epoll_rdhup) };
    flags & NGX_USE_EPOLL_EVENT as ngx_uint_t != 0 && rdhup != 0 && rev.pending_eof() == 0
}

/// `c->recv_chain`: fills `b->last..b->end` of each buffer within `limit`.
///
/// # Safety
/// Called by nginx with a live connection and a valid chain.
pub unsafe extern "C" fn noise_recv_chain(
    c: *mut ngx_connection_t,
    cl: *mut ngx_chain_t,
    limit: off_t,
) -> isize {
    // SAFETY: the call contract.
    unsafe { recv_into_chain(c, cl, limit, noise_recv) }
}

/// A `c->recv` function.
pub type RecvFn = unsafe extern "C" fn(*mut ngx_connection_t, *mut u8, usize) -> isize;

/// The body of a `c->recv_chain` over any `c->recv`: fills `b->last..b->end` of each buffer
/// within `limit` (for NoiseSocket connections and multiplexed streams alike). A short read
/// with the read event no longer ready ends the call; an end of file or error after some
/// bytes is reported on the next call.
///
/// # Safety
/// As a `recv_chain`: a live connection and a valid chain; `recv` is its connection's.
pub unsafe fn recv_into_chain(
    c: *mut ngx_connection_t,
    mut cl: *mut ngx_chain_t,
    limit: off_t,
    recv: RecvFn,
) -> isize {
    let limit = if limit <= 0 {
        isize::MAX
    } else {
        limit as isize
    };
    let mut total: isize = 0;
    while !cl.is_null() && total < limit {
        // SAFETY: nginx gives a valid chain of valid buffers.
        let b = unsafe { &mut *(*cl).buf };
        let room = (b.end as usize - b.last as usize).min((limit - total) as usize);
        if room == 0 {
            // SAFETY: as above.
            cl = unsafe { (*cl).next };
            continue;
        }
        // SAFETY: b.last..b.end is writable buffer space.
        let n = unsafe { recv(c, b.last, room) };
        if n > 0 {
            // SAFETY: n <= room bytes were written at b.last.
            b.last = unsafe { b.last.add(n as usize) };
            total += n;
            // SAFETY: the call contract (module doc): c is live for this call.
            if (n as usize) < room && unsafe { (*(*c).read).ready() } == 0 {
                break;
            }
            continue;
        }
        if total > 0 {
            if n != NGX_AGAIN as isize {
                // SAFETY: the call contract; the EOF or error is reported on the next call.
                unsafe { (*(*c).read).set_ready(1) };
            }
            return total;
        }
        return n;
    }
    total
}

/// `c->send`: seals what fits and reports it sent.
///
/// # Safety
/// Called by nginx with a live connection and `size` readable bytes at `buf`.
pub unsafe extern "C" fn noise_send(c: *mut ngx_connection_t, buf: *mut u8, size: usize) -> isize {
    // SAFETY: the call contract; `send` is given what nginx gave us, with c's state.
    unsafe {
        counted(c, Direction::Out, "noise_send", size, |st| {
            send(c, st, buf, size)
        })
    }
}

/// [`noise_send`] without its counting and debug line; `st` is `c`'s state.
///
/// # Safety
/// As [`noise_send`].
unsafe fn send(c: *mut ngx_connection_t, st: &mut NoiseConn, buf: *mut u8, size: usize) -> isize {
    if st.write_error {
        return NGX_ERROR as isize;
    }
    // SAFETY: nginx gives `size` readable bytes.
    let data = unsafe { slice::from_raw_parts(buf, size) };
    let mut taken = 0;
    // SAFETY: the call contract (module doc): c is live for this call.
    let result = unsafe {
        seal_and_flush(c, st, |sealer, output| {
            taken += output.seal(sealer, &data[taken..])?;
            // Anything left did not fit: flush, then seal more.
            Ok(taken < data.len())
        })
    };
    match result {
        Err(()) => NGX_ERROR as isize,
        Ok(()) if taken == 0 && size > 0 => NGX_AGAIN as isize,
        Ok(()) => {
            // SAFETY: the call contract (module doc): c is live for this call.
            unsafe { (*c).sent += taken as off_t };
            taken as isize
        }
    }
}

/// `c->send_chain`.
///
/// # Safety
/// Called by nginx with a live connection and a valid chain.
pub unsafe extern "C" fn noise_send_chain(
    c: *mut ngx_connection_t,
    input: *mut ngx_chain_t,
    limit: off_t,
) -> *mut ngx_chain_t {
    // SAFETY: the call contract: c is live and its state unreferenced elsewhere; the
    // reference ends with this call.
    let Some(st) = (unsafe { conn::get(c) }) else {
        return chain_error();
    };
    let side = st.side;
    if st.write_error {
        return chain_error();
    }
    let limit: i64 = if limit <= 0 || limit as u64 > NGX_MAX_SIZE_T_VALUE / 2 {
        (NGX_MAX_SIZE_T_VALUE / 2) as i64
    } else {
        limit
    };
    let mut cl = input;
    let mut sent: i64 = 0;
    // SAFETY: the call contract (module doc): c is live for this call.
    let log = unsafe { (*c).log };
    // SAFETY: c is live; the closure walks nginx's valid chain.
    let result = unsafe {
        seal_and_flush(c, st, |sealer, output| {
            while !cl.is_null() && sent < limit {
                let b: &mut ngx_buf_t = &mut *(*cl).buf;
                let budget = (limit - sent) as usize;
                let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
                let n = if in_memory && b.pos < b.last {
                    let len = (b.last as usize - b.pos as usize).min(budget);
                    output.seal(sealer, slice::from_raw_parts(b.pos, len))?
                } else if !in_memory && b.in_file() != 0 && b.file_pos < b.file_last {
                    let want = ((b.file_last - b.file_pos) as usize).min(budget);
                    let space = output.body_space(sealer, want);
                    if space.is_empty() {
                        0
                    } else {
                        let got = match socket::pread((*b.file).fd, space, b.file_pos) {
                            Ok(0) => Err(crate::core::Error::Internal(
                                "file shrank while sending".into(),
                            )),
                            Ok(n) => Ok(n),
                            Err(errno) => {
                                log::errno(log, "pread() of a file buffer failed", errno);
                                Err(crate::core::Error::Internal("pread".into()))
                            }
                        }?;
                        output.seal_body(sealer, got)?;
                        got
                    }
                } else {
                    // Empty or special buffer: nothing to send.
                    cl = (*cl).next;
                    continue;
                };
                if n == 0 {
                    // The output buffer is full: flush, then come back.
                    return Ok(true);
                }
                if in_memory {
                    b.pos = b.pos.add(n);
                }
                if b.in_file() != 0 {
                    b.file_pos += n as off_t;
                }
                sent += n as i64;
                (*c).sent += n as off_t;
            }
            Ok(false)
        })
    };
    noise_debug!(log, "noise_send_chain: {sent} bytes sealed");
    if sent > 0 {
        counters::bytes(side, Direction::Out, sent as usize);
    }
    match result {
        Err(()) => chain_error(),
        Ok(()) => cl,
    }
}

/// Alternates `fill` (seal more plaintext into the output buffer; returns whether it has
/// more to give once there is room) with writes, until the socket would block or nothing is
/// left. Maintains `write.ready`, the [`BUFFERED`] bit and the sticky write error.
///
/// # Safety
/// `c` must be live and `st` its state.
unsafe fn seal_and_flush(
    c: *mut ngx_connection_t,
    st: &mut NoiseConn,
    mut fill: impl FnMut(&mut Sealer, &mut SendBuffer) -> Result<bool, crate::core::Error>,
) -> Result<(), ()> {
    // SAFETY: the call contract: c and its write event are live for this call.
    let (fd, log, wev) = unsafe { ((*c).fd, (*c).log, &mut *(*c).write) };
    // SAFETY: the connection's log is live.
    let debug = unsafe { log::debug_on(log) };
    let mut more = true;
    loop {
        if more {
            let before = if debug { st.output.pending().len() } else { 0 };
            // Only an established connection seals; in any other phase there is
            // nothing to add, only what is already queued to flush.
            let filled = match st {
                NoiseConn {
                    phase: conn::Phase::Transport(tr),
                    output,
                    ..
                } => fill(&mut tr.sealer, output),
                _ => Ok(false),
            };
            if debug {
                noise_debug!(
                    log,
                    "noise send: sealed {} bytes of frames",
                    st.output.pending().len().saturating_sub(before)
                );
            }
            more = match filled {
                Ok(more) => more,
                Err(e) => {
                    // SAFETY: the call contract: the connection's log is live.
                    unsafe { log::error(log, "sealing", &e) };
                    st.write_error = true;
                    wev.set_error(1);
                    return Err(());
                }
            };
        }
        if st.output.is_empty() {
            break;
        }
        match socket::send(fd, st.output.pending()) {
            Io::Done(n) => {
                noise_debug!(
                    log,
                    "noise send: send() {n} of {} bytes",
                    st.output.pending().len()
                );
                let all = n == st.output.pending().len();
                st.output.consume(n);
                if !all {
                    wev.set_ready(0);
                    break;
                }
            }
            Io::Again | Io::Eof => {
                wev.set_ready(0);
                break;
            }
            Io::Failed(errno) => {
                // SAFETY: as above.
                unsafe { log::connection_error(c, errno, c"noise: send() failed") };
                st.write_error = true;
                wev.set_error(1);
                return Err(());
            }
        }
        if !more {
            break;
        }
    }
    // SAFETY: the call contract (module doc): c is live for this call.
    unsafe {
        let buffered = (*c).buffered();
        if st.output.is_empty() {
            (*c).set_buffered(buffered & !BUFFERED);
            st.output.release();
        } else {
            (*c).set_buffered(buffered | BUFFERED);
            noise_debug!(
                log,
                "noise send: {} bytes of frames wait for the socket (buffered)",
                st.output.pending().len()
            );
        }
    }
    Ok(())
}
