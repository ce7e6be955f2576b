//! What a protocol needs from the local configuration, each rule in one function. The
//! configuration checks ([`super::negotiation::Policy::validate`], which the nginx module's
//! merge and the CLI's options call) and the handshake, when it builds a Noise state, ask
//! the same functions, so a configuration that passes the check cannot fail the handshake
//! for a missing key.

use super::credentials::Credentials;
use super::error::{Error, Result};
use super::keys::KeySet;
use super::protocol::{Protocol, Role};
pub use super::unmet::{Need, PeerKeysProblem, MAX_TRIED_PEER_KEYS};

/// The first thing `protocol` needs in `role` that `credentials` lack. `peer_key_elsewhere`
/// says the peer's key comes from somewhere else (a responder's trusted keys, see
/// [`peer_key_candidates`]).
pub fn unmet(
    protocol: &Protocol,
    role: Role,
    credentials: &Credentials,
    peer_key_elsewhere: bool,
) -> Option<Need> {
    if protocol.needs_local_static(role) && credentials.static_key.is_none() {
        return Some(Need::PrivateKey);
    }
    if protocol.needs_remote_static(role)
        && credentials.remote_static.is_none()
        && !peer_key_elsewhere
    {
        return Some(Need::PeerKey);
    }
    if protocol.has_psk() && credentials.psks.is_empty() {
        return Some(Need::Psk);
    }
    None
}

/// [`unmet`] as an error.
pub fn check(
    protocol: &Protocol,
    role: Role,
    credentials: &Credentials,
    peer_key_elsewhere: bool,
) -> Result<()> {
    match unmet(protocol, role, credentials, peer_key_elsewhere) {
        Some(need) => Err(Error::Missing {
            protocol: protocol.name().to_string(),
            need,
        }),
        None => Ok(()),
    }
}

/// A responder whose pattern needs the initiator's key in advance (KN, KK, KX) takes it from
/// its `count` trusted keys: it needs at least one; a cleartext first message (KN, KX)
/// cannot tell which key is meant, so exactly one; an encrypted one (KK) tells by
/// authenticating, trying at most [`MAX_TRIED_PEER_KEYS`].
pub fn peer_key_candidates(protocol: &Protocol, count: usize) -> Result<()> {
    let problem = if count == 0 {
        PeerKeysProblem::None
    } else if !protocol.payload_encrypted(0) && count != 1 {
        PeerKeysProblem::NotExactlyOne
    } else if count > MAX_TRIED_PEER_KEYS {
        PeerKeysProblem::TooMany
    } else {
        return Ok(());
    };
    Err(Error::PeerKeys {
        protocol: protocol.name().to_string(),
        count,
        problem,
    })
}

/// Whether a responder that admits only initiators with a trusted key can ever complete
/// `protocol`: only if its initiator has a static key (not NN, NK, NX or their psk forms).
pub fn trusted_initiator_possible(protocol: &Protocol) -> bool {
    protocol.needs_local_static(Role::Initiator)
}

/// The trusted keys an initiator may use: those not also revoked. When trusted keys are
/// configured and none is left, no handshake can complete, whatever the pattern.
pub fn usable_trusted_keys<'a>(
    trusted: &'a KeySet,
    revoked: Option<&'a KeySet>,
) -> impl Iterator<Item = &'a [u8; 32]> {
    trusted
        .iter()
        .filter(move |k| !revoked.is_some_and(|r| r.contains(&k[..])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::Secret;

    fn p(name: &str) -> Protocol {
        Protocol::parse(name).unwrap()
    }

    #[test]
    fn each_need_is_named_once() {
        let none = Credentials::default();
        let xx = p("Noise_XX_25519_ChaChaPoly_BLAKE2s");
        assert_eq!(
            unmet(&xx, Role::Responder, &none, false),
            Some(Need::PrivateKey)
        );
        let nk = p("Noise_NK_25519_ChaChaPoly_BLAKE2s");
        assert_eq!(
            unmet(&nk, Role::Initiator, &none, false),
            Some(Need::PeerKey)
        );
        assert_eq!(unmet(&nk, Role::Initiator, &none, true), None);
        let nnpsk = p("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s");
        assert_eq!(
            unmet(&nnpsk, Role::Initiator, &none, false),
            Some(Need::Psk)
        );
        let keyed = Credentials {
            static_key: Some(Secret::from_bytes([7; 32])),
            ..Credentials::default()
        };
        assert_eq!(unmet(&xx, Role::Responder, &keyed, false), None);
        let e = check(&xx, Role::Initiator, &none, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: Noise_XX_25519_ChaChaPoly_BLAKE2s needs a private key"
        );
        assert!(!e.is_peer_fault());
    }

    #[test]
    fn trusted_keys_for_k_patterns() {
        let kn = p("Noise_KN_25519_ChaChaPoly_BLAKE2s");
        let kk = p("Noise_KK_25519_ChaChaPoly_BLAKE2s");
        let problem = |p: &Protocol, n| match peer_key_candidates(p, n) {
            Err(Error::PeerKeys { problem, .. }) => Some(problem),
            _ => None,
        };
        assert_eq!(problem(&kn, 0), Some(PeerKeysProblem::None));
        assert_eq!(problem(&kn, 1), None);
        assert_eq!(problem(&kn, 2), Some(PeerKeysProblem::NotExactlyOne));
        assert_eq!(problem(&kk, 2), None);
        assert_eq!(problem(&kk, MAX_TRIED_PEER_KEYS), None);
        assert_eq!(
            problem(&kk, MAX_TRIED_PEER_KEYS + 1),
            Some(PeerKeysProblem::TooMany)
        );
    }
}
