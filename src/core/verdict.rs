//! A verdict on a client's static key, decided outside the handshake (docs/protocol.md §4.7).
//!
//! A responder whose [`crate::core::handshake::Settings::ask_verdict`] is set pauses once the
//! initiator has proven possession of its static key, so that the caller may ask something
//! slow (a shared-memory zone, an HTTP authority) without blocking and without the core
//! knowing what it asked. Only proven keys are ever put to the caller: nobody can make us ask
//! about a key whose private half they do not hold.

/// What the caller decided about the initiator's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the handshake.
    Allow,
    /// Refuse the client (its fault: logged at `info`).
    Deny,
    /// No decision could be had (ours: logged at `error`); refused, fail closed.
    Unavailable(String),
}

impl Verdict {
    /// A short name for debug logs.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Unavailable(_) => "unavailable",
        }
    }
}
