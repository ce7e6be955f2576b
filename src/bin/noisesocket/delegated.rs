//! `--key-agent unix:/path` for `connect` and `listen`: our static key stays in a key
//! agent (docs/key-agent.md) and this process never reads it. The handshake is the core's
//! [`DelegatedHandshake`]; its key operations are asked over the agent's socket, blocking
//! (one connection at a time per thread, as the rest of the CLI).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_noise::agent_socket::{list_keys, AgentSocket, Received};
use nginx_noise::core::handshake::{Established, Handshake};
use nginx_noise::core::key_agent::client::{Ask, Client};
use nginx_noise::core::key_agent::wire::RESPONSE_LEN;
use nginx_noise::core::key_agent::{AgentError, DelegatedHandshake};
use nginx_noise::core::protocol::Role;
use nginx_noise::core::Error;

/// How long one answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The socket path of `unix:/path`.
pub fn socket_path(spec: &str) -> Result<PathBuf, String> {
    spec.strip_prefix("unix:")
        .map(PathBuf::from)
        .ok_or_else(|| format!("--key-agent {spec}: expected unix:/path"))
}

/// The agent's public keys, ours in its order (the first is the one we present).
pub fn keys(path: &Path) -> Result<Arc<[[u8; 32]]>, String> {
    let keys = list_keys(path, TIMEOUT).map_err(|e| format!("--key-agent: {e}"))?;
    Ok(keys.into())
}

/// A handshake the session driver runs: in-process keys or delegated ones.
pub trait Driven {
    fn pending_output(&self) -> &[u8];
    fn consume_output(&mut self, n: usize);
    fn is_done(&self) -> bool;
    fn read(&mut self, input: &[u8]) -> Result<usize, Error>;
    fn eof(&mut self) -> Error;
    fn role(&self) -> Role;
    fn finish(self) -> Result<Established, Error>;
    /// Answers what the handshake waits for from the key agent (nothing, in process).
    fn answer_key_ops(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

impl Driven for Handshake {
    fn pending_output(&self) -> &[u8] {
        Handshake::pending_output(self)
    }
    fn consume_output(&mut self, n: usize) {
        Handshake::consume_output(self, n)
    }
    fn is_done(&self) -> bool {
        Handshake::is_done(self)
    }
    fn read(&mut self, input: &[u8]) -> Result<usize, Error> {
        Handshake::read(self, input)
    }
    fn eof(&mut self) -> Error {
        Handshake::eof(self)
    }
    fn role(&self) -> Role {
        Handshake::role(self)
    }
    fn finish(self) -> Result<Established, Error> {
        Handshake::finish(self)
    }
}

/// A delegated handshake and its connection to the agent.
pub struct Agented {
    pub hs: DelegatedHandshake,
    socket: AgentSocket,
    client: Client<()>,
}

impl Agented {
    pub fn new(hs: DelegatedHandshake, path: &Path) -> Result<Self, String> {
        let socket = AgentSocket::connect(path)
            .map_err(|e| format!("--key-agent {}: {e}", path.display()))?;
        Ok(Agented {
            hs,
            socket,
            client: Client::new(1, TIMEOUT.as_millis() as u64),
        })
    }

    fn ask(&mut self, key: [u8; 32], point: [u8; 32]) -> Result<[u8; 32], AgentError> {
        let start = Instant::now();
        let request = self.client.ask((), Ask::Dh { key, point }, 0)?;
        let unreachable = |e: std::io::Error| AgentError::Unreachable(e.to_string());
        if !self.socket.send(&request).map_err(unreachable)? {
            self.client.disconnected();
            return Err(AgentError::Busy);
        }
        loop {
            let left = TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                self.client.expire(u64::MAX);
                return Err(AgentError::Timeout(TIMEOUT.as_millis() as u64));
            }
            self.socket.wait_readable(left).map_err(unreachable)?;
            let mut buf = [0u8; RESPONSE_LEN];
            match self.socket.recv(&mut buf).map_err(unreachable)? {
                Received::Message(n) => {
                    if let Some(((), outcome)) = self.client.receive(&buf[..n]) {
                        return outcome.map(|r| r.value);
                    }
                }
                Received::Oversize(_) => return Err(AgentError::Malformed("oversize")),
                Received::WouldBlock => {}
                Received::Closed => return Err(AgentError::Disconnected),
            }
        }
    }
}

impl Driven for Agented {
    fn pending_output(&self) -> &[u8] {
        self.hs.pending_output()
    }
    fn consume_output(&mut self, n: usize) {
        self.hs.consume_output(n)
    }
    fn is_done(&self) -> bool {
        self.hs.is_done()
    }
    fn read(&mut self, input: &[u8]) -> Result<usize, Error> {
        self.hs.read(input)
    }
    fn eof(&mut self) -> Error {
        self.hs.eof()
    }
    fn role(&self) -> Role {
        self.hs.role()
    }
    fn finish(self) -> Result<Established, Error> {
        self.hs.finish()
    }
    fn answer_key_ops(&mut self) -> Result<(), Error> {
        while let Some(op) = self.hs.pending_key_op() {
            let answer = self.ask(op.public_key, op.point);
            self.hs.provide(answer)?;
        }
        Ok(())
    }
}
