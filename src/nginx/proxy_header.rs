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
//! writes the header with nginx's own `ngx_proxy_protocol_write` and clears the flag, so the
//! proxy never sends a second header inside the stream. The next attempt sets the flag
//! anew. Invariant: a header is sent whole, in one `send`, or the attempt fails (the
//! specification asks for atomic headers, and nginx refuses a short write the same way).

use nginx_sys::{ngx_connection_t, ngx_proxy_protocol_write, ngx_stream_session_t};

use super::socket::{self, Io};

/// The longest PROXY protocol v1 header (`NGX_PROXY_PROTOCOL_V1_MAX_HEADER` on nginx
/// versions that name it): what `ngx_proxy_protocol_write` writes at most.
const MAX: usize = 107;

/// A PROXY protocol header waiting to be sent in clear.
pub struct Header {
    bytes: [u8; MAX],
    len: usize,
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
    if u.proxy_protocol() == 0 || pc.type_ != libc::SOCK_STREAM {
        return Ok(None);
    }
    u.set_proxy_protocol(0);
    let mut header = Header {
        bytes: [0; MAX],
        len: 0,
    };
    let start = header.bytes.as_mut_ptr();
    // SAFETY: nginx writes at most MAX bytes between start and last (bounds it checks), from
    // the live client connection's addresses; the pointers are into our array.
    let end = unsafe { ngx_proxy_protocol_write((*s).connection, start, start.add(MAX)) };
    if end.is_null() {
        return Err(HeaderError::Write);
    }
    // SAFETY: end is within [start, start + MAX] (nginx returns where it stopped writing).
    header.len = unsafe { end.offset_from(start) } as usize;
    Ok(Some(header))
}

impl Header {
    /// Sends the header on `fd` in one `send()`, as nginx does for `proxy_ssl`.
    pub fn send(&self, fd: i32) -> Result<Sent, HeaderError> {
        let bytes = &self.bytes[..self.len];
        match socket::send(fd, bytes) {
            Io::Done(n) if n == bytes.len() => Ok(Sent::Done),
            Io::Done(_) => Err(HeaderError::Short),
            Io::Again | Io::Eof => Ok(Sent::Again),
            Io::Failed(errno) => Err(HeaderError::Send(errno)),
        }
    }

    /// The header's text without its CRLF, for debug logs.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len])
            .trim_end()
            .to_string()
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
                super::log::errno_text(*errno)
            ),
        }
    }
}
