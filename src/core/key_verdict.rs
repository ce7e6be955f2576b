//! The verdict codes of key confirmation (docs/protocol.md §4.8): what a responder tells an
//! initiator about its static key. A leaf: the error type names these codes
//! ([`crate::core::Error::KeyRefused`]) and `confirm.rs` sends and reads them, so they
//! live below both.

/// The request (initiator's first payload) and the offer (responder's first payload), and
/// the start of every verdict: `NSKC` (NoiseSocket key confirmation), version 1.
pub const MARKER: &[u8] = b"NSKC\x01";

/// The responder's judgement of the initiator's static key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    Accepted,
    /// The key is not among the responder's trusted keys.
    Untrusted,
    /// The key is on the responder's revoked-keys list.
    Revoked,
    /// The key differs from the one the responder expects of this client.
    WrongKey,
    /// The responder requires a static key and the handshake proved none.
    NoKey,
    /// Any other reason.
    Other,
}

impl KeyVerdict {
    pub fn code(self) -> u8 {
        match self {
            KeyVerdict::Accepted => 0,
            KeyVerdict::Untrusted => 1,
            KeyVerdict::Revoked => 2,
            KeyVerdict::WrongKey => 3,
            KeyVerdict::NoKey => 4,
            KeyVerdict::Other => 0xff,
        }
    }

    pub fn from_code(code: u8) -> KeyVerdict {
        match code {
            0 => KeyVerdict::Accepted,
            1 => KeyVerdict::Untrusted,
            2 => KeyVerdict::Revoked,
            3 => KeyVerdict::WrongKey,
            4 => KeyVerdict::NoKey,
            _ => KeyVerdict::Other,
        }
    }

    /// Why the responder refused, in words, for the initiator's error message.
    pub fn describe(self) -> &'static str {
        match self {
            KeyVerdict::Accepted => "accepted",
            KeyVerdict::Untrusted => "our static key is not in its trusted keys",
            KeyVerdict::Revoked => "our static key is on its revoked-keys list",
            KeyVerdict::WrongKey => "our static key is not the one it expects of us",
            KeyVerdict::NoKey => "it requires a static key and we proved none",
            KeyVerdict::Other => "for a reason it did not name",
        }
    }

    /// The verdict's body: [`MARKER`], then the code.
    pub fn body(self) -> [u8; 6] {
        let mut body = [0u8; 6];
        body[..5].copy_from_slice(MARKER);
        body[5] = self.code();
        body
    }
}
