//! Negotiation: what goes into the cleartext `negotiation_data` fields and what each side
//! decides from it (docs/protocol.md §3).
//!
//! The handshake driver is generic over a [`Negotiator`], which decides; the bytes on the wire
//! come from a [`codec`] (`virgil` or `empty`, auto-detected by responders). [`Policy`] is
//! the negotiator that the CLI and nginx use: a list of allowed protocols, one set of keys,
//! retry on a protocol the responder does not accept, and optionally a switch when the
//! initiator's first message cannot be processed.
//!
//! Negotiation data is unauthenticated until the handshake confirms it through the prologue;
//! nothing here acts on it beyond choosing a protocol.

pub mod codec;
pub mod multiplex;
mod policy;

pub use super::credentials::Credentials;
pub use policy::Policy;

use std::sync::Arc;

use super::crypto::PeerKeyDh;
use super::error::Result;
use super::keys::Secret;
use super::protocol::{Protocol, Role};

/// Which prologue a protocol runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The initiator's first protocol (prologue Init1).
    Initial,
    /// A protocol the responder switched to (Init2).
    Switch,
    /// A protocol the initiator retried with (Init3).
    Retry,
}

/// The responder's answer to an initiator's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Continue with this protocol (answer with empty negotiation data).
    Accept(Protocol),
    /// Start a new handshake with this protocol, the responder as Noise initiator.
    Switch { protocol: Protocol, data: Vec<u8> },
    /// Ask the initiator to start again with this protocol.
    Retry { protocol: Protocol, data: Vec<u8> },
    /// Explicit reject with this (non-empty) negotiation data, then close.
    Reject { data: Vec<u8> },
}

/// How the initiator reads a responder's non-empty negotiation data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Switch(Protocol),
    Retry { protocol: Protocol, data: Vec<u8> },
    Reject,
}

/// Decides the negotiation for one side of a connection.
pub trait Negotiator: Send + Sync {
    /// Initiator: the first protocol and the negotiation data naming it.
    fn initial(&self) -> Result<(Protocol, Vec<u8>)>;

    /// Initiator: interprets the responder's non-empty negotiation data. `message_empty`
    /// tells a switch (non-empty Noise message) from a retry or reject.
    fn response(&self, data: &[u8], message_empty: bool) -> Result<Response>;

    /// Responder: decides on the initiator's first negotiation data.
    fn decide(&self, data: &[u8]) -> Decision;

    /// Responder: the accepted first message failed to process; a switch may rescue it.
    fn on_failure(&self, _data: &[u8]) -> Option<Decision> {
        None
    }

    /// Responder: checks the negotiation data of the initiator's retry message.
    fn check_retry(&self, data: &[u8], protocol: &Protocol) -> Result<()>;

    /// Responder: negotiation data of an explicit reject (refused key, bad data).
    fn reject_data(&self) -> Vec<u8>;

    /// Keys for running `protocol` as Noise `role` at `stage`.
    fn credentials(&self, protocol: &Protocol, role: Role, stage: Stage) -> Credentials;

    /// Responder: further static keys, after the one in [`Negotiator::credentials`], that
    /// an initiator may know as ours (key rotation). Tried in turn on a first message that
    /// uses the responder's static key (IK, NK, KK, XK, ...); default none.
    fn alternate_static_keys(&self) -> &[Secret] {
        &[]
    }

    /// The public key of our static key `index` (0: the one in
    /// [`Negotiator::credentials`], then the alternates), if known; default unknown.
    fn static_public_key(&self, _index: usize) -> Option<[u8; 32]> {
        None
    }

    /// Responder: the DH of our static keys with the peer keys a first message is tried
    /// with, computed at configuration time ([`PeerKeyDh`]); default none (computed per try).
    fn peer_key_dh(&self) -> Option<Arc<PeerKeyDh>> {
        None
    }
}
