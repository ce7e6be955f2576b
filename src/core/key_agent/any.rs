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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::handshake::Settings;
    use crate::core::keys::Secret;
    use crate::core::negotiation::codec::Codec;
    use crate::core::negotiation::{Credentials, Policy};

    fn policy(key: Secret, agent: Option<[u8; 32]>) -> Arc<Policy> {
        let protocol = Protocol::parse("Noise_XX_25519_ChaChaPoly_BLAKE2s").unwrap();
        let credentials = Credentials {
            static_key: Some(key),
            remote_static: None,
            psks: Vec::new(),
            fixed_ephemeral: None,
        };
        let p = Policy::new(vec![protocol], Codec::Virgil, credentials).unwrap();
        Arc::new(match agent {
            Some(public) => p.with_agent_keys(&[public]),
            None => p,
        })
    }

    #[test]
    fn a_local_handshake_never_waits_for_the_agent_and_a_delegated_one_does() {
        let settings = Arc::new(Settings::default());
        let server_key = Secret::from_bytes([3; 32]);
        let public = server_key.public_key();
        let mut client: AnyHandshake =
            Handshake::initiator(policy(Secret::from_bytes([4; 32]), None), settings.clone())
                .unwrap()
                .into();
        assert!(client.pending_key_op().is_none());
        assert!(
            client.provide(Ok([1; 32])).is_err(),
            "no agent for a local key"
        );
        let mut server: AnyHandshake = DelegatedHandshake::responder(
            policy(Secret::from_bytes(public), Some(public)),
            settings,
            Arc::from(vec![public]),
        )
        .into();
        let message1 = client.pending_output().to_vec();
        client.consume_output(message1.len());
        server.read(&message1).unwrap();
        let op = server.pending_key_op().expect("XX's es is the agent's");
        assert_eq!(op.public_key, public);
        assert!(server.pending_output().is_empty(), "message 2 waits");
        let shared = crate::core::crypto::HeldKey::new(&server_key)
            .unwrap()
            .dh(&op.point)
            .unwrap();
        server.provide(Ok(*shared)).unwrap();
        let message2 = server.pending_output().to_vec();
        server.consume_output(message2.len());
        assert_eq!(client.read(&message2).unwrap(), message2.len());
        let message3 = client.pending_output().to_vec();
        server.read(&message3).unwrap();
        assert!(client.is_done() && server.is_done());
        assert_eq!(server.padding(), 0);
        assert!(server.finish().is_ok() && client.finish().is_ok());
    }
}
