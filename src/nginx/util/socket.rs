//! Raw non-blocking socket reads and writes on a connection's fd.
//!
//! The replacement I/O functions manage `ready`/`eof`/`error` themselves (EOF must stay
//! hidden while plaintext is buffered), so they cannot call nginx's `ngx_unix_recv`, which
//! sets those flags at once; these wrappers only retry EINTR and classify the result.

use nginx_sys::ngx_socket_t;

/// Outcome of one syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// This many bytes moved (never 0).
    Done(usize),
    /// The kernel has nothing to give or no room (EAGAIN).
    Again,
    /// The peer closed its side (reads only).
    Eof,
    /// Failed with this errno.
    Failed(i32),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn classify(n: isize) -> Option<Io> {
    match n {
        n if n > 0 => Some(Io::Done(n as usize)),
        0 => Some(Io::Eof),
        _ => match errno() {
            libc::EINTR => None,
            libc::EAGAIN => Some(Io::Again),
            e => Some(Io::Failed(e)),
        },
    }
}

/// `recv(2)` into `buf` (which must not be empty).
pub fn recv(fd: ngx_socket_t, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// `recv(2)` with `MSG_PEEK` of at most `buf.len()` bytes (not empty): what the socket
/// holds, without taking it.
pub fn peek(fd: ngx_socket_t, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// `send(2)` of `buf` (which must not be empty).
pub fn send(fd: ngx_socket_t, buf: &[u8]) -> Io {
    loop {
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        match classify(n) {
            Some(Io::Eof) => return Io::Again,
            Some(io) => return io,
            None => {}
        }
    }
}

/// `pread(2)` of a file buffer into `buf`.
pub fn pread(fd: i32, buf: &mut [u8], offset: i64) -> Result<usize, i32> {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// The socket's pending error (`SO_ERROR`, which reading clears), as nginx's own connect
/// tests read it; `Err` with the errno when `getsockopt` itself fails.
pub fn take_error(fd: ngx_socket_t) -> Result<i32, i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into err.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(err)
    } else {
        Err(errno())
    }
}
