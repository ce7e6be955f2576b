//! Why a key agent gave no usable result ([`AgentError`]), and the status byte of its
//! answers ([`Status`]), below both the delegated handshake (`crate::core::key_agent`)
//! and the handshake and crypto it drives, so that they can name a failure without
//! importing each other.

/// Why the agent gave no usable result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No connection to the agent (not running, socket missing, permission denied).
    #[error("cannot reach the key agent: {0}")]
    Unreachable(String),
    /// The connection closed with the request unanswered.
    #[error("the key agent closed the connection")]
    Disconnected,
    /// No answer within the timeout.
    #[error("no answer from the key agent within {0} ms")]
    Timeout(u64),
    /// Too many requests already wait on this connection.
    #[error("too many requests in flight to the key agent")]
    Busy,
    /// The agent refused the request.
    #[error("the key agent refused: {}", .0.describe())]
    Refused(Status),
    /// The answer is not a response of the agent protocol.
    #[error("malformed answer from the key agent ({0})")]
    Malformed(&'static str),
    /// The agent answered all zeros, which no X25519 with a checked point gives.
    #[error("the key agent answered an all-zero result")]
    ZeroResult,
    /// The handshake asked for more operations than any handshake needs.
    #[error("too many key operations in one handshake")]
    TooManyOperations,
    /// Where the failure happened: the agent's address (`unix:/path`), for log lines.
    #[error("{agent}: {error}")]
    At {
        agent: String,
        error: Box<AgentError>,
    },
    /// An answer for an operation the handshake did not ask.
    #[error("an answer for an operation not asked")]
    Internal,
}

/// A response's status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The request's version is not one the agent speaks.
    BadVersion,
    /// Wrong size, unknown kind, non-zero reserved bytes.
    BadRequest,
    /// No key with that public key (DH) or index (public key).
    UnknownKey,
    /// The point is of small order: no shared secret exists.
    LowOrder,
    /// The agent has too much to do for this client; ask again later.
    Busy,
    /// A status this version does not know (from a newer agent).
    Other(u8),
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::BadVersion => 1,
            Status::BadRequest => 2,
            Status::UnknownKey => 3,
            Status::LowOrder => 4,
            Status::Busy => 5,
            Status::Other(c) => c,
        }
    }

    pub fn from_code(code: u8) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::BadVersion,
            2 => Status::BadRequest,
            3 => Status::UnknownKey,
            4 => Status::LowOrder,
            5 => Status::Busy,
            c => Status::Other(c),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::BadVersion => "unsupported protocol version".into(),
            Status::BadRequest => "malformed request".into(),
            Status::UnknownKey => "no such key (is the agent running with this key?)".into(),
            Status::LowOrder => "low-order point".into(),
            Status::Busy => "busy".into(),
            Status::Other(c) => format!("status {c}"),
        }
    }
}
