//! What a local configuration lacks for a protocol, as [`crate::core::requirements`] finds
//! it and [`crate::core::Error::Config`] reports it. A leaf, so that the error type can name
//! these facts while the rules that find them return errors.

use std::fmt;

/// Something a protocol needs that the configuration may lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Our own static key.
    PrivateKey,
    /// The peer's static key, before the handshake.
    PeerKey,
    /// A pre-shared key per psk modifier (the last one given serves the rest).
    Psk,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::PrivateKey => "a private key",
            Need::PeerKey => "the peer's public key in advance",
            Need::Psk => "a psk",
        })
    }
}

/// Trusted keys a responder may try, one after the other, on an encrypted first message
/// whose pattern needs the initiator's key in advance (KK): each try costs two DH.
pub const MAX_TRIED_PEER_KEYS: usize = 32;

/// Why a responder's trusted keys cannot supply the initiator's key ([`crate::core::requirements::peer_key_candidates`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKeysProblem {
    /// No trusted keys at all.
    None,
    /// A cleartext first message and not exactly one key.
    NotExactlyOne,
    /// More than [`MAX_TRIED_PEER_KEYS`].
    TooMany,
    /// Every trusted key is also revoked.
    AllRevoked,
}

impl PeerKeysProblem {
    /// Says what is wrong with `count` trusted keys.
    pub fn describe(self, count: usize) -> String {
        match self {
            PeerKeysProblem::None => {
                "needs the initiator's key before the handshake: set trusted keys".into()
            }
            PeerKeysProblem::NotExactlyOne => {
                format!(
                    "can take the initiator's key only from exactly one trusted key, not {count}"
                )
            }
            PeerKeysProblem::TooMany => format!(
                "tries each trusted key in turn; list at most {MAX_TRIED_PEER_KEYS}, not {count}"
            ),
            PeerKeysProblem::AllRevoked => format!(
                "needs the initiator's key before the handshake, and all {count} trusted keys are revoked: trust a key that is not"
            ),
        }
    }
}
