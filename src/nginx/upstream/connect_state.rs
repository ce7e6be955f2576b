//! Whether a non-blocking connect to a back end has finished, per address family, without
//! consuming a pending connect error (docs/nginx-integration.md §5.3).
//!
//! * TCP (IPv4, IPv6): the kernel's TCP state (`TCP_INFO`). `SYN_SENT` is still connecting;
//!   `ESTABLISHED` is connected, and so is `CLOSE_WAIT` (the back end already sent and
//!   closed: the handshake reads what it sent, and fails on it); anything else failed.
//! * Unix-domain sockets have no TCP state. On Linux their connect never stays pending
//!   (`connect()` completes or fails at once; nginx itself counts its `EAGAIN` as a refusal),
//!   so by the time the write event is ready the socket has a peer (`getpeername()`
//!   succeeds) or the connect failed.
//!
//! Invariant: only [`State::Connected`] lets a handshake start; an unknown family or a
//! failed query is [`State::Failed`], never "connected".

/// Where a connect stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Still connecting (TCP `SYN_SENT`): wait for the next event.
    Pending,
    /// Connected: the handshake can start.
    Connected,
    /// The connect failed (or the socket is in no state to handshake).
    Failed,
}

/// Linux TCP states (include/net/tcp_states.h), which libc does not export.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE_WAIT: i32 = 8;

/// The connect state of socket `fd`, whose peer address has family `family`.
pub fn of(fd: i32, family: i32) -> State {
    match family {
        libc::AF_INET | libc::AF_INET6 => match tcp_state(fd) {
            Some(TCP_SYN_SENT) => State::Pending,
            Some(TCP_ESTABLISHED | TCP_CLOSE_WAIT) => State::Connected,
            _ => State::Failed,
        },
        libc::AF_UNIX if has_peer(fd) => State::Connected,
        _ => State::Failed,
    }
}

/// Why a connect failed, in nginx's words ("connect() failed (111: Connection refused)"),
/// from the socket's pending error (consumed: the proxy is told by a failed attempt).
pub fn failure(fd: i32) -> String {
    match crate::nginx::util::socket::take_error(fd) {
        Ok(err) if err != 0 => format!(
            "connect() failed ({})",
            crate::nginx::util::log::errno_text(err)
        ),
        _ => "connect() failed (the connection closed before the handshake)".into(),
    }
}

/// The kernel's TCP state of a socket. Unlike `SO_ERROR` it does not consume a pending
/// connect error, which nginx's own `test_connect` must still see.
fn tcp_state(fd: i32) -> Option<i32> {
    // SAFETY: tcp_info is a plain C struct; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        (rc == 0).then_some(i32::from(info.tcpi_state))
    }
}

/// Whether a socket is connected to a peer (`getpeername()`; `ENOTCONN` when not). Reads
/// no pending error.
fn has_peer(fd: i32) -> bool {
    // SAFETY: sockaddr_storage is a plain C struct large enough for any address;
    // getpeername writes at most `len` bytes into it.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getpeername(fd, (&raw mut addr).cast(), &mut len) == 0
    }
}
