//! `proxy_protocol on` with `noise_upstream on`: the PROXY protocol header goes to the back
//! end in clear, before the NoiseSocket handshake, as nginx sends it before the TLS handshake
//! with `proxy_ssl` (`ngx_stream_proxy_init_upstream`), so that a back end with
//! `noise_listen ... proxy_protocol` (or `listen ... proxy_protocol` in front of any
//! NoiseSocket server) reads it where it expects it (docs/nginx-integration.md §5.7).
//!
//! The proxy decides per attempt: `ngx_stream_proxy_connect` copies its `proxy_protocol`
//! flag into the public `ngx_stream_upstream_t.proxy_protocol` before it asks the balancer
//! for a peer, and `init_upstream` sends the header through the connection's (by then
//! NoiseSocket) `send` while the flag is still set. So [`take`] runs in our `get`: it
//! writes the header with nginx's own writer and clears the flag, so the proxy never sends a
//! second header inside the stream. The next attempt sets the flag anew. Invariant: a header
//! is sent whole, in one `send`, or the attempt fails (the specification asks for atomic
//! headers, and nginx refuses a short write the same way).
//!
//! Which version: the flag is the version the proxy would write. Since nginx 1.31.4
//! (`ngx_stream_proxy_protocol_v2`) `proxy_protocol v2` makes it 2 and the proxy writes a
//! binary v2 header with `ngx_proxy_protocol_v2_write`; so do we, with the same buffer size.
//! Before, the flag is one bit and the header is always v1 (`ngx_proxy_protocol_write`).

use nginx_sys::{ngx_connection_t, ngx_stream_session_t};

use crate::nginx::util::socket::{self, Io};

/// The longest PROXY protocol v1 header (`NGX_PROXY_PROTOCOL_V1_MAX_HEADER` on nginx
/// versions that name it): what `ngx_proxy_protocol_write` writes at most.
const V1_MAX: usize = 107;

/// The buffer the proxy gives `ngx_proxy_protocol_v2_write` (`NGX_PROXY_PROTOCOL_MAX_HEADER`):
/// room for the header and the TLVs nginx adds.
#[cfg(ngx_stream_proxy_protocol_v2)]
const V2_MAX: usize = nginx_sys::NGX_PROXY_PROTOCOL_MAX_HEADER as usize;
#[cfg(not(ngx_stream_proxy_protocol_v2))]
const V2_MAX: usize = V1_MAX;

type Writer = unsafe fn(*mut ngx_connection_t, *mut u8, *mut u8) -> *mut u8;

/// nginx's writer of a v1 header.
unsafe fn write_v1(c: *mut ngx_connection_t, buf: *mut u8, last: *mut u8) -> *mut u8 {
    // SAFETY: the caller's promise (see `write`).
    unsafe { nginx_sys::ngx_proxy_protocol_write(c, buf, last) }
}

/// nginx's writer of a v2 header, called as the proxy calls it: no extra TLVs (null).
#[cfg(ngx_stream_proxy_protocol_v2)]
unsafe fn write_v2(c: *mut ngx_connection_t, buf: *mut u8, last: *mut u8) -> *mut u8 {
    // SAFETY: the caller's promise (see `write`).
    unsafe { nginx_sys::ngx_proxy_protocol_v2_write(c, buf, last, std::ptr::null_mut()) }
}

/// The writer for a binary (v2) or text (v1) header; v1 where nginx has no v2.
fn writer(binary: bool) -> Writer {
    #[cfg(ngx_stream_proxy_protocol_v2)]
    if binary {
        return write_v2;
    }
    let _ = binary;
    write_v1
}

/// A PROXY protocol header waiting to be sent in clear.
pub struct Header {
    bytes: Vec<u8>,
    /// Version 2 (binary) rather than the v1 text line.
    binary: bool,
}

/// Why a header could not be built or sent.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// `ngx_proxy_protocol_write` refused the client connection's addresses.
    Write,
    /// The socket took only part of the header.
    Short,
    /// `send()` failed with this errno.
    Send(i32),
}

/// What one attempt to send the header did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Sent whole; nothing left.
    Done,
    /// No room in the socket yet: wait for the write event and call again.
    Again,
}

/// The header for session `s` if the proxy is about to send one, taking it over from the
/// proxy (its flag is cleared). `Ok(None)`: no header on this attempt.
///
/// # Safety
/// `s` must be a live session with its upstream, inside the balancer's `get` of an attempt
/// (the proxy has set the flag for it); `pc` the attempt's freshly connected connection.
pub unsafe fn take(
    s: *mut ngx_stream_session_t,
    pc: &ngx_connection_t,
) -> Result<Option<Header>, HeaderError> {
    // SAFETY: the caller's promise: s and its upstream are live, nothing else runs.
    let u = unsafe { &mut *(*s).upstream };
    let version = u.proxy_protocol();
    if version == 0 || pc.type_ != libc::SOCK_STREAM {
        return Ok(None);
    }
    u.set_proxy_protocol(0);
    // SAFETY: the session's client connection is live (caller).
    unsafe { write((*s).connection, version) }.map(Some)
}

/// The header nginx's proxy would write for version flag `version` (1, or 2 where nginx has
/// `proxy_protocol v2`), from client connection `c`'s addresses.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn write(c: *mut ngx_connection_t, version: u32) -> Result<Header, HeaderError> {
    let binary = cfg!(ngx_stream_proxy_protocol_v2) && version == 2;
    let size = if binary { V2_MAX } else { V1_MAX };
    let mut bytes = vec![0u8; size];
    let start = bytes.as_mut_ptr();
    // SAFETY: start..start + size is our buffer, which nginx writes within (it checks the
    // bounds it is given), from the live client connection's addresses (caller).
    let end = unsafe { writer(binary)(c, start, start.add(size)) };
    if end.is_null() {
        return Err(HeaderError::Write);
    }
    // SAFETY: end is within [start, start + size] (nginx returns where it stopped writing).
    let len = unsafe { end.offset_from(start) } as usize;
    bytes.truncate(len);
    Ok(Header { bytes, binary })
}

impl Header {
    /// Sends the header on `fd` in one `send()`, as nginx does for `proxy_ssl`.
    pub fn send(&self, fd: i32) -> Result<Sent, HeaderError> {
        let bytes = &self.bytes[..];
        match socket::send(fd, bytes) {
            Io::Done(n) if n == bytes.len() => Ok(Sent::Done),
            Io::Done(_) => Err(HeaderError::Short),
            Io::Again | Io::Eof => Ok(Sent::Again),
            Io::Failed(errno) => Err(HeaderError::Send(errno)),
        }
    }

    /// The header's text without its CRLF (v1), or its version and size (v2), for debug
    /// logs.
    pub fn text(&self) -> String {
        if self.binary {
            return format!("(v2, {} bytes)", self.bytes.len());
        }
        String::from_utf8_lossy(&self.bytes).trim_end().to_string()
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Write => f.write_str("cannot write the PROXY protocol header"),
            HeaderError::Short => f.write_str("could not send PROXY protocol header at once"),
            HeaderError::Send(errno) => write!(
                f,
                "send() of the PROXY protocol header failed ({})",
                crate::nginx::util::log::errno_text(*errno)
            ),
        }
    }
}
