//! Noise protocol names and what each one needs.
//!
//! A [`Protocol`] is a parsed, validated full Noise name that this implementation can run:
//! one of the 12 interactive fundamental patterns (NN NK NX XN XK XX KN KK KX IN IK IX),
//! optionally with psk modifiers, DH 25519, cipher ChaChaPoly or AESGCM, hash SHA256, SHA512,
//! BLAKE2s or BLAKE2b. One-way, deferred and fallback patterns are refused at parse time, so
//! everything downstream may assume an interactive pattern.

use std::fmt;
use std::str::FromStr;

use snow::params::{
    CipherChoice, DHChoice, HandshakeModifier, HandshakePattern, HashChoice, NoiseParams,
};

use super::error::{Error, Result};

/// Which side of a Noise handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    pub fn is_initiator(self) -> bool {
        self == Role::Initiator
    }
}

/// A validated Noise protocol.
#[derive(Clone, Debug)]
pub struct Protocol {
    params: NoiseParams,
}

impl PartialEq for Protocol {
    fn eq(&self, other: &Self) -> bool {
        self.params.name == other.params.name
    }
}

impl Eq for Protocol {}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.params.name)
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Protocol::parse(name)
    }
}

/// noise-c identifiers used by the Virgil negotiation format (docs/protocol.md §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseCIds {
    pub dh: u8,
    pub cipher: u8,
    pub hash: u8,
    pub pattern: u8,
}

const PATTERNS: [(HandshakePattern, &str, u8); 12] = [
    (HandshakePattern::NN, "NN", 4),
    (HandshakePattern::NK, "NK", 5),
    (HandshakePattern::NX, "NX", 6),
    (HandshakePattern::XN, "XN", 7),
    (HandshakePattern::XK, "XK", 8),
    (HandshakePattern::XX, "XX", 9),
    (HandshakePattern::KN, "KN", 10),
    (HandshakePattern::KK, "KK", 11),
    (HandshakePattern::KX, "KX", 12),
    (HandshakePattern::IN, "IN", 13),
    (HandshakePattern::IK, "IK", 14),
    (HandshakePattern::IX, "IX", 15),
];

const CIPHERS: [(CipherChoice, &str, u8); 2] = [
    (CipherChoice::ChaChaPoly, "ChaChaPoly", 1),
    (CipherChoice::AESGCM, "AESGCM", 2),
];

const HASHES: [(HashChoice, &str, u8); 4] = [
    (HashChoice::Blake2s, "BLAKE2s", 1),
    (HashChoice::Blake2b, "BLAKE2b", 2),
    (HashChoice::SHA256, "SHA256", 3),
    (HashChoice::SHA512, "SHA512", 4),
];

impl Protocol {
    /// Parses and validates a full Noise protocol name.
    pub fn parse(name: &str) -> Result<Self> {
        let params: NoiseParams = name
            .parse()
            .map_err(|e| Error::Config(format!("invalid Noise protocol name \"{name}\": {e}")))?;
        let unsupported = |what: &str| {
            Err(Error::Config(format!(
                "unsupported Noise protocol \"{name}\": {what}"
            )))
        };
        if !PATTERNS
            .iter()
            .any(|(p, _, _)| *p == params.handshake.pattern)
        {
            return unsupported("only the 12 interactive fundamental patterns are supported");
        }
        if params.handshake.is_fallback() {
            return unsupported("fallback patterns are not supported");
        }
        if params.dh != DHChoice::Curve25519 {
            return unsupported("only DH 25519 is supported");
        }
        if !CIPHERS.iter().any(|(c, _, _)| *c == params.cipher) {
            return unsupported("cipher must be ChaChaPoly or AESGCM");
        }
        if !HASHES.iter().any(|(h, _, _)| *h == params.hash) {
            return unsupported("hash must be SHA256, SHA512, BLAKE2s or BLAKE2b");
        }
        Ok(Protocol { params })
    }

    /// The protocol from its noise-c identifiers, if it is one we support.
    pub fn from_noise_c_ids(ids: NoiseCIds) -> Option<Self> {
        let pattern = PATTERNS.iter().find(|p| p.2 == ids.pattern)?.1;
        let cipher = CIPHERS.iter().find(|c| c.2 == ids.cipher)?.1;
        let hash = HASHES.iter().find(|h| h.2 == ids.hash)?.1;
        if ids.dh != 1 {
            return None;
        }
        Protocol::parse(&format!("Noise_{pattern}_25519_{cipher}_{hash}")).ok()
    }

    /// noise-c identifiers, or `None` for names the Virgil format cannot express (psk variants).
    pub fn noise_c_ids(&self) -> Option<NoiseCIds> {
        if self.has_psk() {
            return None;
        }
        Some(NoiseCIds {
            dh: 1,
            cipher: CIPHERS.iter().find(|c| c.0 == self.params.cipher)?.2,
            hash: HASHES.iter().find(|h| h.0 == self.params.hash)?.2,
            pattern: PATTERNS
                .iter()
                .find(|p| p.0 == self.params.handshake.pattern)?
                .2,
        })
    }

    pub fn name(&self) -> &str {
        &self.params.name
    }

    pub fn params(&self) -> &NoiseParams {
        &self.params
    }

    /// The pattern's name without modifiers (`"XX"`).
    pub fn pattern_name(&self) -> &'static str {
        PATTERNS
            .iter()
            .find(|p| p.0 == self.params.handshake.pattern)
            .map_or("", |p| p.1)
    }

    pub fn cipher(&self) -> CipherChoice {
        self.params.cipher
    }

    pub fn has_psk(&self) -> bool {
        self.params.handshake.is_psk()
    }

    /// psk positions, in the order of the name's modifiers.
    pub fn psk_positions(&self) -> Vec<u8> {
        self.params
            .handshake
            .modifiers
            .list
            .iter()
            .filter_map(|m| match m {
                HandshakeModifier::Psk(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Whether `role` must have its own static key to run this protocol.
    pub fn needs_local_static(&self, role: Role) -> bool {
        self.params
            .handshake
            .pattern
            .needs_local_static_key(role.is_initiator())
    }

    /// Whether `role` must know the peer's static key before the handshake.
    pub fn needs_remote_static(&self, role: Role) -> bool {
        self.params
            .handshake
            .pattern
            .need_known_remote_pubkey(role.is_initiator())
    }

    /// Whether `role` learns the peer's static key (in advance or during the handshake).
    pub fn peer_has_static(&self, role: Role) -> bool {
        let peer = match role {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        };
        self.needs_local_static(peer)
    }

    /// Whether the responder's view of who the initiator is rests only on replayable bytes:
    /// the pattern authenticates the initiator (a static key, `K` or `I`, or a psk) and the
    /// responder writes the last handshake message, so nothing the initiator sent depends on
    /// the responder's ephemeral key. Anyone who recorded message 1 can send it again and be
    /// taken for that initiator until it has to use the session keys. So the responder waits
    /// for the first transport message, and our initiators send one (empty if they have
    /// nothing to say) right after the handshake (docs/protocol.md §4.6).
    pub fn initiator_auth_replayable(&self) -> bool {
        self.message_count() % 2 == 0
            && (self.needs_local_static(Role::Initiator) || self.has_psk())
    }

    /// The handshake message (0-based) whose decryption proves that the initiator holds its
    /// static private key, to a responder that runs the Noise responder role: the first one
    /// the initiator sends after a DH with its static key (`ss` or `se`) is mixed in. `None`
    /// when no handshake message does (IX, IN, KN, KX: the proof is the initiator's first
    /// transport frame) or the initiator has no static key (NN, NK, NX).
    pub fn initiator_key_proven_in(&self) -> Option<usize> {
        use HandshakePattern::*;
        match self.params.handshake.pattern {
            IK | KK => Some(0),
            XX | XK | XN => Some(2),
            _ => None,
        }
    }

    /// Number of handshake messages.
    pub fn message_count(&self) -> usize {
        use HandshakePattern::*;
        match self.params.handshake.pattern {
            XN | XK | XX => 3,
            _ => 2,
        }
    }

    /// Whether the payload of handshake message `index` is encrypted, which decides whether it
    /// carries `body_len` framing (docs/protocol.md §1.3). Every message after the first is
    /// encrypted (the responder's first message contains `ee`); the first is iff a psk
    /// modifier is present or its tokens contain `es` or `ss`.
    pub fn payload_encrypted(&self, index: usize) -> bool {
        use HandshakePattern::*;
        index >= 1 || self.has_psk() || matches!(self.params.handshake.pattern, NK | XK | KK | IK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let p = Protocol::parse("Noise_XXpsk3_25519_AESGCM_SHA256").unwrap();
        assert_eq!(p.pattern_name(), "XX");
        assert_eq!(p.psk_positions(), vec![3]);
        assert!(p.payload_encrypted(0));
        for bad in [
            "Noise_N_25519_AESGCM_SHA256",
            "Noise_XXfallback_25519_AESGCM_SHA256",
            "Noise_XX_448_AESGCM_SHA256",
            "Noise_XX1_25519_AESGCM_SHA256",
            "Noise_XX_25519_XChaChaPoly_SHA256",
            "nonsense",
        ] {
            assert!(Protocol::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_message_encryption_table() {
        for (name, enc) in [
            ("NN", false),
            ("NK", true),
            ("XK", true),
            ("KK", true),
            ("IK", true),
            ("XX", false),
            ("IX", false),
            ("KN", false),
            ("NNpsk2", true),
        ] {
            let p = Protocol::parse(&format!("Noise_{name}_25519_ChaChaPoly_BLAKE2s")).unwrap();
            assert_eq!(p.payload_encrypted(0), enc, "{name}");
            assert!(p.payload_encrypted(1));
        }
    }

    #[test]
    fn noise_c_ids_round_trip() {
        let p = Protocol::parse("Noise_XX_25519_AESGCM_BLAKE2b").unwrap();
        let ids = p.noise_c_ids().unwrap();
        assert_eq!((ids.dh, ids.cipher, ids.hash, ids.pattern), (1, 2, 2, 9));
        assert_eq!(Protocol::from_noise_c_ids(ids).unwrap(), p);
        assert!(Protocol::parse("Noise_XXpsk3_25519_AESGCM_BLAKE2b")
            .unwrap()
            .noise_c_ids()
            .is_none());
    }
}
