//! Handshakes whose static private key lives in another process, the key agent
//! (`noisesocket agent`, docs/key-agent.md).
//!
//! The one operation that needs a static private key is X25519 of it with a public point
//! (the `es`, `se` and `ss` tokens). snow's `Dh` is synchronous, so a delegated handshake
//! re-runs rather than waits: crypto's static-key `Dh` answers from the results the agent
//! gave ([`ops::KeyOps`]); when one is missing it records the point and fails the message;
//! [`DelegatedHandshake`] reports it ([`DelegatedHandshake::pending_key_op`]), the caller
//! asks the agent and hands the answer back ([`DelegatedHandshake::provide`]), and the
//! handshake is rebuilt and replayed from its first byte with the same ephemeral keys and
//! every result kept, so a replay computes no X25519 and asks nothing twice
//! (docs/nginx-integration.md says why this and not a resolver primed in advance).
//!
//! * [`wire`]: the agent protocol's fixed-size request and response, sans-IO.
//! * [`client`]: requests multiplexed by id over one connection, with timeouts, sans-IO.
//!
//! Invariants: no private key of an agent key is ever in this process; a low-order point is
//! refused before any request; a result the agent gives is used only for the key and point
//! asked; every failure to get one is [`crate::core::Error::KeyAgent`], our fault (an
//! `error` line, reason `key_agent`), and ends the handshake.

mod any;
pub mod client;
mod handshake;
pub mod ops;
pub mod wire;

pub use any::AnyHandshake;
pub use handshake::DelegatedHandshake;
pub use ops::{is_low_order, KeyOp, KeyOps};

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
    Refused(wire::Status),
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
