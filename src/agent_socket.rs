//! The socket half of the key agent client (the protocol half is sans-IO in
//! [`crate::core::key_agent`]): a non-blocking `SOCK_SEQPACKET` connection to the agent,
//! one message per request or response, and a blocking [`list_keys`] for configuration
//! time. No unsafe code: rustix wraps the system calls.
//!
//! Invariants: the socket is non-blocking and close-on-exec; a message longer than a
//! response is reported as such (never cut and taken for a shorter one); the end of the
//! connection is reported once as [`Received::Closed`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{
    connect, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use crate::core::key_agent::client::{Ask, Client};
use crate::core::key_agent::wire::RESPONSE_LEN;
use crate::core::key_agent::AgentError;

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A message of this many bytes (at most the buffer; longer ones are `Oversize`).
    Message(usize),
    /// A message longer than the buffer, of this many bytes: not a response.
    Oversize(usize),
    WouldBlock,
    Closed,
}

/// A connection to the key agent.
pub struct AgentSocket {
    fd: OwnedFd,
}

impl AgentSocket {
    /// Connects to the agent's socket at `path`; the connection is non-blocking.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let addr = SocketAddrUnix::new(path)?;
        // A unix socket connects at once or fails (EAGAIN: the agent's backlog is full).
        connect(&fd, &addr)?;
        Ok(AgentSocket { fd })
    }

    /// Sends one message; `Ok(false)` when the socket buffer is full.
    pub fn send(&self, message: &[u8]) -> io::Result<bool> {
        send_on(self.fd.as_fd(), message)
    }

    /// Receives one message into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        recv_on(self.fd.as_fd(), buf)
    }

    /// The connection's descriptor, for an event loop that owns it from now on (nginx's).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Waits until the socket is readable (or `timeout` passes); true if readable.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        Ok(poll(&mut fds, Some(&ts))? > 0)
    }
}

/// Sends one message on a connection to the agent; `Ok(false)` when its buffer is full.
pub fn send_on(fd: BorrowedFd<'_>, message: &[u8]) -> io::Result<bool> {
    match send(fd, message, SendFlags::NOSIGNAL) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::AGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Receives one message from a connection to the agent into `buf`.
pub fn recv_on(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    match recv(fd, &mut *buf, RecvFlags::TRUNC) {
        Ok((_, 0)) => Ok(Received::Closed),
        Ok((_, n)) if n > buf.len() => Ok(Received::Oversize(n)),
        Ok((_, n)) => Ok(Received::Message(n)),
        Err(rustix::io::Errno::AGAIN) => Ok(Received::WouldBlock),
        Err(e) => Err(e.into()),
    }
}

impl AsFd for AgentSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Most keys [`list_keys`] reads (the agent's keys for rotation are few).
pub const MAX_KEYS: u16 = 64;

/// The agent's public keys, in its order, asked one by one (blocking, at most `timeout`
/// in all): for configuration time, never in a worker's event loop.
pub fn list_keys(path: &Path, timeout: Duration) -> Result<Vec<[u8; 32]>, AgentError> {
    let unreachable = |e: io::Error| AgentError::Unreachable(format!("{}: {e}", path.display()));
    let socket = AgentSocket::connect(path).map_err(unreachable)?;
    let start = Instant::now();
    let millis = |t: Instant| t.duration_since(start).as_millis() as u64;
    let mut client = Client::new(1, timeout.as_millis() as u64);
    let mut keys = Vec::new();
    let mut index = 0u16;
    loop {
        let request = client.ask(index, Ask::PublicKey { index }, millis(Instant::now()))?;
        if !socket.send(&request).map_err(unreachable)? {
            return Err(AgentError::Busy);
        }
        let reply = loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(AgentError::Timeout(timeout.as_millis() as u64));
            }
            socket.wait_readable(left).map_err(unreachable)?;
            let mut buf = [0u8; RESPONSE_LEN];
            match socket.recv(&mut buf).map_err(unreachable)? {
                Received::Message(n) => {
                    if let Some((_, outcome)) = client.receive(&buf[..n]) {
                        break outcome;
                    }
                }
                Received::Oversize(_) => return Err(AgentError::Malformed("oversize")),
                Received::WouldBlock => {}
                Received::Closed => return Err(AgentError::Disconnected),
            }
        };
        match reply {
            Ok(reply) => {
                keys.push(reply.value);
                index += 1;
                if index >= reply.count || index >= MAX_KEYS {
                    return Ok(keys);
                }
            }
            Err(AgentError::Refused(crate::core::key_agent::wire::Status::UnknownKey))
                if index > 0 =>
            {
                return Ok(keys)
            }
            Err(e) => return Err(e),
        }
    }
}
