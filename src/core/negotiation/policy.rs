//! The built-in [`Negotiator`]: allowed protocols, one set of keys, one codec.
//!
//! As responder it accepts an offered protocol that is on its list (empty data means the
//! first), asks for a retry with its first protocol when the offer is well-formed but not on
//! the list (if retry is enabled), switches to a configured protocol when an accepted first
//! message fails to process (IK with a stale server key), and rejects explicitly otherwise.
//! As initiator it offers its first protocol and follows a switch or retry only to protocols
//! on its list.

use std::sync::Arc;

use super::codec::{self, Codec, Offer, VIRGIL_REJECT};
use super::multiplex;
use super::{Credentials, Decision, Negotiator, Response, Stage};
use crate::core::crypto::PeerKeyDh;
use crate::core::error::{Error, Result};
use crate::core::keys::Secret;
use crate::core::protocol::{Protocol, Role};
use crate::core::requirements::{self, Need};

/// Allowed protocols plus keys; see the module doc.
#[derive(Clone, Debug)]
pub struct Policy {
    protocols: Vec<Protocol>,
    codec: Codec,
    credentials: Credentials,
    retry: bool,
    switch_on_failure: Option<Protocol>,
    require_initiator_static: bool,
    alternate_static_keys: Vec<Secret>,
    /// Public keys of the static key and the alternates, computed once (at configuration
    /// time), only when asked for ([`Policy::with_alternate_static_keys`]).
    static_publics: Vec<[u8; 32]>,
    /// [`Policy::with_peer_key_dh`].
    peer_key_dh: Option<Arc<PeerKeyDh>>,
    /// [`Policy::with_multiplex`].
    multiplex: bool,
}

impl Policy {
    /// `protocols` must not be empty; the first is offered (initiator) or the default
    /// (responder, for empty negotiation data).
    pub fn new(protocols: Vec<Protocol>, codec: Codec, credentials: Credentials) -> Result<Self> {
        if protocols.is_empty() {
            return Err(Error::Config("no protocol configured".into()));
        }
        Ok(Policy {
            protocols,
            codec,
            credentials,
            retry: true,
            switch_on_failure: None,
            require_initiator_static: false,
            alternate_static_keys: Vec::new(),
            static_publics: Vec::new(),
            peer_key_dh: None,
            multiplex: false,
        })
    }

    /// Multiplexed links (docs/multiplex.md §2): an initiator offers the field in its
    /// negotiation data; a responder accepts offers that carry it (and still serves those
    /// that do not). Without it a responder refuses such offers as unrecognised data.
    pub fn with_multiplex(mut self, multiplex: bool) -> Self {
        self.multiplex = multiplex;
        self
    }

    /// Responder: the negotiation data without a multiplexing field we speak, and whether
    /// it carried one; `None` for a field we do not speak (refused as unrecognised).
    fn strip_multiplex<'a>(&self, data: &'a [u8]) -> Option<(&'a [u8], bool)> {
        if !self.multiplex {
            return Some((data, false));
        }
        match multiplex::split(data) {
            (base, Some(multiplex::VERSION)) => Some((base, true)),
            (_, Some(_)) => None,
            (base, None) => Some((base, false)),
        }
    }

    /// Responder: ask for a retry when the offered protocol is not on the list (default on).
    pub fn with_retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Responder: switch to `protocol` when the first message of an accepted protocol fails.
    pub fn with_switch_on_failure(mut self, protocol: Option<Protocol>) -> Self {
        self.switch_on_failure = protocol;
        self
    }

    /// Responder: refuse patterns in which the initiator has no static key (trusted keys).
    pub fn with_initiator_static_required(mut self, required: bool) -> Self {
        self.require_initiator_static = required;
        self
    }

    /// Responder: `keys` are ours too, for initiators that know one of them (key
    /// rotation); also records every static key's public key, so the handshake can say
    /// which one served.
    pub fn with_alternate_static_keys(mut self, keys: Vec<Secret>) -> Self {
        self.static_publics = self
            .credentials
            .static_key
            .iter()
            .chain(keys.iter())
            .map(Secret::public_key)
            .collect();
        self.alternate_static_keys = keys;
        self
    }

    /// Our static keys are held by the key agent (`crate::core::key_agent`): `publics`
    /// are their public keys, the first in place of the credentials' static key, the others
    /// as alternates (rotation). Each is named to snow by its public key, which the
    /// delegated handshake's resolver recognises; no private key is here, so the handshake
    /// must be a [`crate::core::key_agent::DelegatedHandshake`] given the same keys, and
    /// [`Policy::with_peer_key_dh`] must not be used (it needs the private keys).
    pub fn with_agent_keys(mut self, publics: &[[u8; 32]]) -> Self {
        let mut named = publics.iter().map(|k| Secret::from_bytes(*k));
        self.credentials.static_key = named.next();
        self.alternate_static_keys = named.collect();
        self.static_publics = publics.to_vec();
        self.peer_key_dh = None;
        self
    }

    /// Responder: computes now, once, the DH of each of our static keys (set the alternates
    /// first) with each of `peers`, the keys a first message is tried with as the
    /// initiator's. Only a pattern in which both sides know each other's key in advance (KK)
    /// has such a DH (`ss`) in its first message, so without one on the list this does
    /// nothing; nor beyond [`requirements::MAX_TRIED_PEER_KEYS`] pairs, the most tried.
    pub fn with_peer_key_dh(mut self, peers: &[[u8; 32]]) -> Self {
        let ss = self.protocols.iter().any(|p| {
            p.needs_remote_static(Role::Responder) && p.needs_remote_static(Role::Initiator)
        });
        let ours: Vec<&Secret> = self
            .credentials
            .static_key
            .iter()
            .chain(self.alternate_static_keys.iter())
            .collect();
        let pairs = ours.len() * peers.len();
        self.peer_key_dh = (ss && pairs > 0 && pairs <= requirements::MAX_TRIED_PEER_KEYS)
            .then(|| Arc::new(PeerKeyDh::new(ours, peers)));
        self
    }

    pub fn protocols(&self) -> &[Protocol] {
        &self.protocols
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Checks that every allowed protocol can run in `role` with the configured keys.
    pub fn validate(&self, role: Role) -> Result<()> {
        if role == Role::Responder
            && self.require_initiator_static
            && !self
                .protocols
                .iter()
                .any(requirements::trusted_initiator_possible)
        {
            return Err(Error::Config(
                "trusted keys admit only initiators with a static key, and no allowed protocol has one".into(),
            ));
        }
        for p in &self.protocols {
            // A responder may take the initiator's key from its trusted keys (K patterns).
            let from_trusted = role == Role::Responder && self.require_initiator_static;
            requirements::check(p, role, &self.credentials, from_trusted)?;
            if role == Role::Initiator && self.codec == Codec::Virgil {
                codec::encode_virgil(p)?;
            }
        }
        if let Some(p) = &self.switch_on_failure {
            // After a switch the responder is the Noise initiator of `p`, with only its
            // own key.
            if requirements::unmet(p, Role::Initiator, &self.credentials, false)
                == Some(Need::PrivateKey)
            {
                requirements::check(p, Role::Initiator, &self.credentials, false)?;
            }
            if p.needs_remote_static(Role::Initiator) || p.has_psk() {
                return Err(Error::Config(format!("cannot switch to {p}")));
            }
        }
        Ok(())
    }

    fn acceptable(&self, p: &Protocol) -> bool {
        !self.require_initiator_static || requirements::trusted_initiator_possible(p)
    }

    fn allowed(&self, p: &Protocol) -> bool {
        self.protocols.contains(p)
    }
}

impl Negotiator for Policy {
    fn initial(&self) -> Result<(Protocol, Vec<u8>)> {
        let p = self.protocols[0].clone();
        let mut data = self.codec.encode(&p)?;
        if self.multiplex {
            multiplex::append(&mut data);
        }
        Ok((p, data))
    }

    fn response(&self, data: &[u8], message_empty: bool) -> Result<Response> {
        // A multiplexing responder repeats our field in a retry or switch; we repeat it in
        // the retry message.
        let (base, echoed) = match multiplex::split(data) {
            (base, Some(multiplex::VERSION)) if self.multiplex => (base, true),
            _ => (data, false),
        };
        let Some(p) = codec::decode_response(base)? else {
            return Ok(Response::Reject);
        };
        if !self.allowed(&p) {
            return Err(Error::ProtocolNotAllowed(p.name().to_string()));
        }
        if message_empty {
            let mut data = self.codec.encode(&p)?;
            if echoed {
                multiplex::append(&mut data);
            }
            Ok(Response::Retry { protocol: p, data })
        } else {
            Ok(Response::Switch(p))
        }
    }

    fn decide(&self, data: &[u8]) -> Decision {
        let Some((base, mux)) = self.strip_multiplex(data) else {
            return Decision::Reject {
                data: self.reject_data(),
            };
        };
        match self.decide_base(base) {
            Decision::Retry { protocol, mut data } if mux => {
                multiplex::append(&mut data);
                Decision::Retry { protocol, data }
            }
            d => d,
        }
    }

    fn on_failure(&self, data: &[u8]) -> Option<Decision> {
        let (base, mux) = self.strip_multiplex(data)?;
        let protocol = self.switch_on_failure.clone()?;
        if !matches!(codec::detect_offer(base), Offer::Named(_)) {
            return None;
        }
        let mut data = codec::encode_virgil(&protocol).ok()?;
        if mux {
            multiplex::append(&mut data);
        }
        Some(Decision::Switch { protocol, data })
    }

    fn check_retry(&self, data: &[u8], protocol: &Protocol) -> Result<()> {
        let (base, _) = self
            .strip_multiplex(data)
            .ok_or_else(|| Error::BadNegotiation(data.to_vec()))?;
        match codec::detect_offer(base) {
            Offer::Default => Ok(()),
            Offer::Named(p) if &p == protocol => Ok(()),
            _ => Err(Error::BadNegotiation(data.to_vec())),
        }
    }

    fn reject_data(&self) -> Vec<u8> {
        VIRGIL_REJECT.to_vec()
    }

    fn credentials(&self, _: &Protocol, _: Role, _: Stage) -> Credentials {
        self.credentials.clone()
    }

    fn alternate_static_keys(&self) -> &[Secret] {
        &self.alternate_static_keys
    }

    fn static_public_key(&self, index: usize) -> Option<[u8; 32]> {
        self.static_publics.get(index).copied()
    }

    fn peer_key_dh(&self) -> Option<Arc<PeerKeyDh>> {
        self.peer_key_dh.clone()
    }
}

impl Policy {
    /// [`Negotiator::decide`] on negotiation data without a multiplexing field.
    fn decide_base(&self, data: &[u8]) -> Decision {
        let offer = codec::detect_offer(data);
        let chosen = match &offer {
            Offer::Default => self.protocols.first(),
            Offer::Named(p) => self.protocols.iter().find(|q| *q == p),
            Offer::Unknown | Offer::Unrecognised => None,
        };
        if let Some(p) = chosen.filter(|p| self.acceptable(p)) {
            return Decision::Accept(p.clone());
        }
        if self.retry && matches!(offer, Offer::Named(_) | Offer::Unknown) {
            let retry = self
                .protocols
                .iter()
                .filter(|p| self.acceptable(p))
                .find_map(|p| codec::encode_virgil(p).ok().map(|data| (p.clone(), data)));
            if let Some((protocol, data)) = retry {
                return Decision::Retry { protocol, data };
            }
        }
        Decision::Reject {
            data: self.reject_data(),
        }
    }
}
