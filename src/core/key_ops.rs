//! What one delegated handshake knows of its static-key operations: the key agent's public
//! keys, the DH results the agent gave, the operation it waits for, and (so that the
//! handshake can be run again from its first byte with the same outcome) the ephemeral keys
//! it generated and their DH results.
//!
//! crypto's static-key `Dh` reads a result from here or records the one it lacks
//! ([`KeyOps::missing`]); the handshake fails that message with [`Error::KeyOpPending`], and
//! [`crate::core::key_agent::DelegatedHandshake`] asks, stores the answer and replays.
//!
//! Invariants: a stored result is the agent's answer for exactly that key and point, never
//! all zeros; a low-order point is never asked about ([`is_low_order`], checked first);
//! at most [`MAX_KEY_OPS`] answers per handshake; [`KeyOps::close`] wipes everything.
//!
//! [`Error::KeyOpPending`]: crate::core::Error::KeyOpPending

use std::sync::{Arc, Mutex};

use aws_lc_rs::agreement::PrivateKey;
use zeroize::Zeroizing;

use super::agent_error::AgentError;

/// Most agent answers one handshake may use: each message needs at most two per key tried
/// (IK's `es` then `ss`), a responder tries at most 8 of its keys and a few peer keys.
pub const MAX_KEY_OPS: usize = 32;

/// One X25519 the handshake needs from the agent: our key `index` (in the order of
/// [`KeyOps::keys`]), its public key, and the peer's point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOp {
    pub index: usize,
    pub public_key: [u8; 32],
    pub point: [u8; 32],
}

/// An ephemeral key generated during the handshake, kept for its replays.
#[derive(Clone)]
pub(crate) struct Ephemeral {
    pub private: Zeroizing<[u8; 32]>,
    pub key: Arc<PrivateKey>,
    pub public: [u8; 32],
}

/// A DH result, `None` for a low-order point (as crypto's).
type Shared = Option<Zeroizing<[u8; 32]>>;

/// The state of one delegated handshake; see the module doc.
pub struct KeyOps {
    keys: Arc<[[u8; 32]]>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    results: Vec<(usize, [u8; 32], Zeroizing<[u8; 32]>)>,
    missing: Option<KeyOp>,
    ephemerals: Vec<Ephemeral>,
    /// The next ephemeral `generate` returns: rewound to 0 for each replay.
    cursor: usize,
    ephemeral_dh: Vec<(usize, [u8; 32], Shared)>,
    closed: bool,
}

/// Ephemeral DH results kept for replays: a handshake does at most a few per protocol run.
const EPHEMERAL_DH: usize = 16;

impl KeyOps {
    /// `keys`: the agent's public keys this handshake may use, ours in order (index 0 is the
    /// one the negotiator's credentials name, then the alternates).
    pub fn new(keys: Arc<[[u8; 32]]>) -> Arc<Self> {
        Arc::new(KeyOps {
            keys,
            state: Mutex::new(State::default()),
        })
    }

    pub fn keys(&self) -> &[[u8; 32]] {
        &self.keys
    }

    /// The agent key named by `placeholder` (its public key, as the negotiator hands it to
    /// snow in place of a private key).
    pub(crate) fn agent_key(&self, placeholder: &[u8]) -> Option<usize> {
        self.keys.iter().position(|k| k[..] == *placeholder)
    }

    /// The agent's answer for `index` and `point`, if given; else records it as missing.
    pub(crate) fn result_or_ask(&self, index: usize, point: &[u8; 32]) -> Option<[u8; 32]> {
        let mut state = self.state.lock().ok()?;
        if let Some((_, _, r)) = state
            .results
            .iter()
            .find(|(i, p, _)| *i == index && p == point)
        {
            return Some(**r);
        }
        if state.missing.is_none() && !state.closed {
            state.missing = Some(KeyOp {
                index,
                public_key: *self.keys.get(index)?,
                point: *point,
            });
        }
        None
    }

    /// The operation the handshake waits for.
    pub fn missing(&self) -> Option<KeyOp> {
        self.state.lock().ok()?.missing
    }

    /// Stores the agent's `result` for the missing operation `op`.
    pub(crate) fn answer(&self, op: &KeyOp, result: &[u8; 32]) -> Result<(), AgentError> {
        let mut state = self.state.lock().map_err(|_| AgentError::Internal)?;
        if state.missing.as_ref() != Some(op) {
            return Err(AgentError::Internal);
        }
        if result.iter().all(|&b| b == 0) {
            return Err(AgentError::ZeroResult);
        }
        if state.results.len() >= MAX_KEY_OPS {
            return Err(AgentError::TooManyOperations);
        }
        state
            .results
            .push((op.index, op.point, Zeroizing::new(*result)));
        state.missing = None;
        Ok(())
    }

    /// Before a replay: ephemeral keys are handed out again from the first.
    pub(crate) fn rewind(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.cursor = 0;
            state.missing = None;
        }
    }

    /// The next ephemeral key: the one generated at this point before (replay), or `fresh`.
    pub(crate) fn next_ephemeral(
        &self,
        fresh: impl FnOnce() -> Option<Ephemeral>,
    ) -> Option<(usize, Ephemeral)> {
        let mut state = self.state.lock().ok()?;
        let at = state.cursor;
        if at == state.ephemerals.len() {
            if state.closed {
                return None;
            }
            state.ephemerals.push(fresh()?);
        }
        let found = (at, state.ephemerals.get(at)?.clone());
        state.cursor += 1;
        Some(found)
    }

    pub(crate) fn ephemeral_dh(&self, index: usize, point: &[u8; 32]) -> Option<Shared> {
        let state = self.state.lock().ok()?;
        state
            .ephemeral_dh
            .iter()
            .find(|(i, p, _)| *i == index && p == point)
            .map(|(_, _, shared)| shared.clone())
    }

    pub(crate) fn put_ephemeral_dh(&self, index: usize, point: &[u8; 32], shared: &Shared) {
        if let Ok(mut state) = self.state.lock() {
            if !state.closed && state.ephemeral_dh.len() < EPHEMERAL_DH {
                state.ephemeral_dh.push((index, *point, shared.clone()));
            }
        }
    }

    /// The handshake is over: every secret is wiped and nothing more is kept.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State {
                closed: true,
                ..State::default()
            };
        }
    }
}

/// The X25519 points of small order (RFC 7748 §7), with the top bit cleared: 0, 1, the two
/// points of order 8, p-1, p and p+1. X25519 ignores the top bit, and with a clamped scalar
/// exactly these give an all-zero result: a worker refuses them before asking the agent.
const LOW_ORDER: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    t[1][0] = 1;
    t[2] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    t[3] = [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ];
    let mut i = 4;
    while i < 7 {
        let mut b = 1;
        while b < 31 {
            t[i][b] = 0xff;
            b += 1;
        }
        t[i][31] = 0x7f;
        t[i][0] = 0xec + (i as u8 - 4);
        i += 1;
    }
    t
};

/// Whether X25519 with `point` gives all zeros whatever our key: a low-order point. Compares
/// the peer's own public bytes, so the early exit tells it nothing it did not send.
pub fn is_low_order(point: &[u8; 32]) -> bool {
    let mut masked = *point;
    masked[31] &= 0x7f;
    LOW_ORDER.contains(&masked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::agreement::{agree, UnparsedPublicKey, X25519};

    fn refused_by_aws_lc(point: &[u8; 32]) -> bool {
        let key = PrivateKey::from_private_key(&X25519, &[7; 32]).unwrap();
        agree(&key, UnparsedPublicKey::new(&X25519, point), (), |_| Ok(())).is_err()
    }

    #[test]
    fn the_low_order_table_is_what_x25519_refuses() {
        for point in LOW_ORDER {
            assert!(refused_by_aws_lc(&point), "{point:02x?}");
            let mut high = point;
            high[31] |= 0x80;
            assert!(is_low_order(&high), "top bit ignored");
        }
        for b in 2..40u8 {
            let point = crate::core::keys::Secret::from_bytes([b; 32]).public_key();
            assert!(!is_low_order(&point));
            assert!(!refused_by_aws_lc(&point));
        }
    }

    #[test]
    fn answers_are_kept_for_the_asked_operation_only() {
        let ops = KeyOps::new(Arc::from(vec![[1u8; 32], [2u8; 32]]));
        assert_eq!(ops.agent_key(&[2u8; 32]), Some(1));
        assert_eq!(ops.result_or_ask(1, &[9; 32]), None);
        let op = ops.missing().unwrap();
        assert_eq!((op.index, op.public_key, op.point), (1, [2; 32], [9; 32]));
        let other = KeyOp {
            point: [8; 32],
            ..op
        };
        assert!(ops.answer(&other, &[5; 32]).is_err(), "not the one asked");
        assert_eq!(ops.answer(&op, &[0; 32]), Err(AgentError::ZeroResult));
        ops.answer(&op, &[5; 32]).unwrap();
        assert_eq!(ops.missing(), None);
        assert_eq!(ops.result_or_ask(1, &[9; 32]), Some([5; 32]));
        ops.close();
        assert_eq!(ops.result_or_ask(1, &[9; 32]), None, "wiped");
        assert_eq!(ops.missing(), None, "closed: asks no more");
    }
}
