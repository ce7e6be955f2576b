//! [`AnyHandshake`]: a handshake whose static key is in process ([`Handshake`]) or in the
//! key agent ([`DelegatedHandshake`]), behind one set of methods, so that a driver (the
//! nginx layer's) runs either without knowing which.
//!
//! Invariant: a local handshake never asks for a key operation
//! ([`AnyHandshake::pending_key_op`] is always `None` for it).

use super::{AgentError, DelegatedHandshake, KeyOp};
use crate::core::error::{Error, Result};
use crate::core::handshake::{Established, Handshake, Verdict};
use crate::core::protocol::{Protocol, Role};
use crate::core::trace::Step;

/// See the module doc.
pub enum AnyHandshake {
    Local(Handshake),
    Delegated(DelegatedHandshake),
}

impl From<Handshake> for AnyHandshake {
    fn from(hs: Handshake) -> Self {
        AnyHandshake::Local(hs)
    }
}

impl From<DelegatedHandshake> for AnyHandshake {
    fn from(hs: DelegatedHandshake) -> Self {
        AnyHandshake::Delegated(hs)
    }
}

macro_rules! either {
    ($self:expr, $hs:ident => $e:expr) => {
        match $self {
            AnyHandshake::Local($hs) => $e,
            AnyHandshake::Delegated($hs) => $e,
        }
    };
}

impl AnyHandshake {
    pub fn read(&mut self, input: &[u8]) -> Result<usize> {
        either!(self, hs => hs.read(input))
    }

    pub fn pending_output(&self) -> &[u8] {
        either!(self, hs => hs.pending_output())
    }

    pub fn consume_output(&mut self, n: usize) {
        either!(self, hs => hs.consume_output(n))
    }

    pub fn pending_verdict(&self) -> Option<[u8; 32]> {
        either!(self, hs => hs.pending_verdict())
    }

    pub fn resolve(&mut self, verdict: Verdict) -> Result<()> {
        either!(self, hs => hs.resolve(verdict))
    }

    pub fn eof(&mut self) -> Error {
        either!(self, hs => hs.eof())
    }

    pub fn is_done(&self) -> bool {
        either!(self, hs => hs.is_done())
    }

    pub fn padding(&self) -> usize {
        either!(self, hs => hs.padding())
    }

    pub fn role(&self) -> Role {
        either!(self, hs => hs.role())
    }

    pub fn protocol(&self) -> Option<&Protocol> {
        either!(self, hs => hs.protocol())
    }

    pub fn trace(&mut self) {
        either!(self, hs => hs.trace())
    }

    pub fn take_steps(&mut self) -> Vec<Step> {
        either!(self, hs => hs.take_steps())
    }

    pub fn finish(self) -> Result<Established> {
        either!(self, hs => hs.finish())
    }

    /// The X25519 the handshake waits for from the key agent (never for a local one).
    pub fn pending_key_op(&self) -> Option<KeyOp> {
        match self {
            AnyHandshake::Local(_) => None,
            AnyHandshake::Delegated(hs) => hs.pending_key_op(),
        }
    }

    /// The agent's answer to [`AnyHandshake::pending_key_op`]; see
    /// [`DelegatedHandshake::provide`].
    pub fn provide(&mut self, answer: std::result::Result<[u8; 32], AgentError>) -> Result<()> {
        match self {
            AnyHandshake::Local(_) => Err(Error::Internal(
                "key agent answer for an in-process key".into(),
            )),
            AnyHandshake::Delegated(hs) => hs.provide(answer),
        }
    }
}
