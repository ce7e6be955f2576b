//! Handshake steps for debug logs: each message received and sent with its field sizes,
//! what the negotiation decided, and which keys were tried or learnt, by fingerprint
//! ([`crate::core::keys::fingerprint`]), never the key. A [`crate::core::handshake::Handshake`]
//! records steps only once [`crate::core::handshake::Handshake::trace`] was called, so an
//! untraced handshake pays one branch per step; the caller drains them with `take_steps`
//! after each `read` and logs them (the nginx layer at debug level, as
//! `ngx_event_openssl.c` logs SSL steps).

use std::fmt;

/// One step of a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole handshake message arrived.
    Received { negotiation: usize, noise: usize },
    /// A message was queued; `message` counts the messages of the running protocol.
    Sent {
        message: usize,
        negotiation: usize,
        noise: usize,
    },
    /// Responder: the offer was accepted, with this protocol.
    Accepted(String),
    /// Responder: switching to this protocol (we become its Noise initiator).
    Switching(String),
    /// Responder: asking the initiator to retry with this protocol.
    AskingRetry(String),
    /// Responder: rejecting the offer.
    Rejecting,
    /// Initiator: what the responder's first message said.
    PeerAnswered(&'static str),
    /// A K-pattern responder tried this trusted key as the initiator's.
    TriedKey { fingerprint: String, matched: bool },
    /// A rotating responder tried this static key of its own on the first message.
    TriedOwnKey { fingerprint: String, matched: bool },
    /// The peer's static key, once learnt and checked.
    PeerKey(String),
    /// Responder: the initiator proved this key; waiting for the caller's verdict.
    AwaitingVerdict(String),
    /// The caller's verdict on it.
    Verdict(&'static str),
    /// Key confirmation (docs/protocol.md §4.8): what happened.
    Confirmed(&'static str),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Received { negotiation, noise } => write!(
                f,
                "received message: negotiation data {negotiation} bytes, noise message {noise} bytes"
            ),
            Step::Sent {
                message,
                negotiation,
                noise,
            } => write!(
                f,
                "sending message {message}: negotiation data {negotiation} bytes, noise message {noise} bytes"
            ),
            Step::Accepted(p) => write!(f, "negotiation: accepted {p}"),
            Step::Switching(p) => write!(f, "negotiation: switching to {p}"),
            Step::AskingRetry(p) => write!(f, "negotiation: asking for a retry with {p}"),
            Step::Rejecting => f.write_str("negotiation: rejecting the offer"),
            Step::Confirmed(what) => write!(f, "key confirmation: {what}"),
            Step::PeerAnswered(what) => write!(f, "negotiation: the responder {what}"),
            Step::TriedKey {
                fingerprint,
                matched,
            } => write!(
                f,
                "trusted key {fingerprint} as the initiator's: {}",
                if *matched { "authenticated" } else { "no" }
            ),
            Step::TriedOwnKey {
                fingerprint,
                matched,
            } => write!(
                f,
                "own static key {fingerprint} for the first message: {}",
                if *matched { "authenticated" } else { "no" }
            ),
            Step::PeerKey(fp) => write!(f, "peer static key {fp} accepted"),
            Step::AwaitingVerdict(fp) => write!(f, "client key {fp} proven, waiting for a verdict"),
            Step::Verdict(v) => write!(f, "verdict: {v}"),
        }
    }
}
