//! Typed errors of the NoiseSocket core.
//!
//! Every error says whose fault it is ([`Error::is_peer_fault`]): the nginx layer maps peer
//! faults to `info` and local faults to `error`, in one place, and the CLI prints the
//! `Display` text after `noisesocket: `.

use std::fmt;

/// What went wrong in a NoiseSocket session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A transport frame is shorter than the 18 bytes of `body_len` plus tag.
    #[error("transport frame of {0} bytes is shorter than 18")]
    FrameTooShort(usize),
    /// The decrypted `body_len` claims more bytes than the payload holds.
    #[error("body length {body_len} exceeds the payload of {available} bytes")]
    BodyLength { body_len: usize, available: usize },
    /// Authentication of a handshake or transport message failed (bad MAC, wrong key).
    #[error("decryption failed ({0})")]
    Decrypt(&'static str),
    /// Negotiation data where the spec requires none (any message after the first exchange).
    #[error("unexpected negotiation data ({0} bytes) after the first exchange")]
    LateNegotiation(usize),
    /// A zero-length Noise message where a handshake message was required.
    #[error("empty noise message where a handshake message was expected")]
    EmptyHandshakeMessage,
    /// A non-empty Noise message where the negotiation requires an empty one (retry, reject).
    #[error("noise message in a retry or reject response")]
    UnexpectedHandshakeMessage,
    /// The peer closed the connection inside a frame (truncation).
    #[error("connection closed inside a frame")]
    Truncated,
    /// The peer closed the connection before the handshake completed.
    #[error("connection closed during the handshake")]
    ClosedDuringHandshake,
    /// The peer explicitly rejected the handshake. The data is unauthenticated.
    #[error("rejected by peer (negotiation data {}): it does not run the protocol we offered, or it refused our first message (patterns that send our static key first, such as IK: it does not trust our key or has revoked it; or the key we hold for it is not its own)", Hex(.0))]
    Rejected(Vec<u8>),
    /// The peer's negotiation data could not be understood.
    #[error("unrecognised negotiation data {}", Hex(.0))]
    BadNegotiation(Vec<u8>),
    /// The peer proposed a protocol that the local configuration does not allow.
    #[error("protocol {0} not allowed")]
    ProtocolNotAllowed(String),
    /// We refused the initiator's negotiation data (protocol not offered here, or unreadable).
    #[error("refused negotiation data {}", Hex(.0))]
    Refused(Vec<u8>),
    /// Trusted keys are configured but the peer's pattern sends no static key.
    #[error("peer sent no static key and trusted keys are required")]
    NoPeerKey,
    /// The peer asked for a second protocol change (switch or retry).
    #[error("second protocol change refused")]
    SecondProtocolChange,
    /// The peer's static key is not in the trusted keys.
    #[error("{} key not in trusted keys: {}", .role, crate::core::keys::encode_key(.key))]
    UntrustedKey { role: &'static str, key: [u8; 32] },
    /// The peer's static key is on the revoked-keys list.
    #[error("{} key is revoked: {}", .role, crate::core::keys::encode_key(.key))]
    RevokedKey { role: &'static str, key: [u8; 32] },
    /// A DH with a key the peer sent gave all zeros (a low-order point: no shared secret).
    #[error("peer sent a low-order public key")]
    WeakPeerKey,
    /// The peer's static key differs from the one configured for it.
    #[error("{} key mismatch: got {}", .role, crate::core::keys::encode_key(.key))]
    WrongRemoteKey { role: &'static str, key: [u8; 32] },
    /// A handshake message announces a field longer than any legitimate one
    /// ([`crate::core::frame::MAX_NEGOTIATION_DATA`], [`crate::core::frame::MAX_NOISE_MESSAGE`]).
    #[error("handshake message announces {field} of {len} bytes, more than the {max} allowed")]
    HandshakeFieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// The caller refused the initiator's proven static key ([`crate::core::verdict`]).
    #[error("client key not authorized: {}", crate::core::keys::encode_key(.key))]
    Unauthorized { key: [u8; 32] },
    /// No verdict could be had on the initiator's key (the authority failed): ours, not the
    /// peer's, and fail closed.
    #[error("no verdict on client key {}: {why}", crate::core::keys::encode_key(.key))]
    VerdictUnavailable { key: [u8; 32], why: String },
    /// The initiator of a pattern whose first message can be replayed
    /// ([`crate::core::protocol::Protocol::initiator_auth_replayable`]) never sent a valid
    /// first transport message, however the connection ended: it never proved it holds the
    /// session keys, so it may be anyone who recorded message 1.
    #[error("{ended}")]
    Unconfirmed { ended: Ended },
    /// Key confirmation (docs/protocol.md §4.8): the server's verdict refused our static key.
    #[error("the server refused our static key: {}", .0.describe())]
    KeyRefused(crate::core::key_verdict::KeyVerdict),
    /// Key confirmation was agreed, and the server closed without sending its verdict.
    #[error("the server closed the connection without confirming that it accepted our static key (it refused the key, or failed)")]
    NotConfirmed,
    /// Key confirmation was agreed, and the server's first transport message is no verdict.
    #[error("malformed key confirmation from the server ({0})")]
    BadConfirmation(&'static str),
    /// The local configuration lacks what a protocol needs ([`crate::core::requirements`]).
    #[error("configuration: {protocol} needs {need}")]
    Missing {
        protocol: String,
        need: crate::core::unmet::Need,
    },
    /// A responder's trusted keys cannot supply the initiator's key for this protocol.
    #[error("configuration: {protocol} {}", .problem.describe(*.count))]
    PeerKeys {
        protocol: String,
        count: usize,
        problem: crate::core::unmet::PeerKeysProblem,
    },
    /// The local configuration cannot run this protocol (bad name, bad key, ...).
    #[error("configuration: {0}")]
    Config(String),
    /// A Noise operation failed for a reason that is ours (state misuse, buffer sizes).
    #[error("noise: {0}")]
    Internal(String),
    /// The key agent holding our static private key (docs/key-agent.md) could not give the
    /// DH the handshake needs: unreachable, too slow, or an answer that is no result. Ours,
    /// not the peer's, and fail closed.
    #[error("key agent: {0}")]
    KeyAgent(crate::core::agent_error::AgentError),
    /// The handshake needs a DH with a static key held by the key agent; never returned by
    /// [`crate::core::key_agent::DelegatedHandshake`], which asks for it instead.
    #[error("a key agent operation is pending")]
    KeyOpPending,
    /// 2^64-1 messages were sent or received with one key.
    #[error("nonce space exhausted")]
    NonceExhausted,
}

/// How a connection ended before the client confirmed a replayable handshake
/// ([`Error::Unconfirmed`]); its `Display` is the whole sentence.
#[derive(Debug)]
pub enum Ended {
    /// The client closed between frames.
    Closed,
    /// A socket call failed (typically a reset).
    Socket { doing: &'static str, errno: i32 },
    /// The first transport frame was not valid (cut short, failed to authenticate, ...).
    Frame(Box<Error>),
}

const UNCONFIRMED: &str =
    "which this protocol needs to authenticate it (a replayed handshake message?)";

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed => write!(
                f,
                "connection closed before the client's first transport message, {UNCONFIRMED}"
            ),
            Ended::Socket { doing, errno } => write!(
                f,
                "{doing} ({}) before the client's first transport message, {UNCONFIRMED}",
                errno_text(*errno)
            ),
            Ended::Frame(e) => write!(
                f,
                "the client's first transport message is not valid ({e}), {UNCONFIRMED}"
            ),
        }
    }
}

/// An errno the way nginx prints one: `111: Connection refused`.
pub fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = text
        .strip_suffix(&format!(" (os error {errno})"))
        .unwrap_or(&text);
    format!("{errno}: {text}")
}

impl Error {
    /// True when the peer caused the error (log at `info`), false when we did (log at `error`).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            Error::Config(_)
                | Error::Missing { .. }
                | Error::PeerKeys { .. }
                | Error::Internal(_)
                | Error::NonceExhausted
                | Error::VerdictUnavailable { .. }
                | Error::KeyAgent(_)
                | Error::KeyOpPending
        )
    }
}

/// Displays bytes as lowercase hex, at most 64 bytes of them.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().take(64) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 64 {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
