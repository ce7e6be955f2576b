//! Handshakes whose static private key lives in another process, the key agent
//! (`noisesocket agent`, docs/key-agent.md).
//!
//! The one operation that needs a static private key is X25519 of it with a public point
//! (the `es`, `se` and `ss` tokens). snow's `Dh` is synchronous, so a delegated handshake
//! re-runs rather than waits: crypto's static-key `Dh` answers from the results the agent
//! gave ([`KeyOps`], in `crate::core::key_ops`); when one is missing it records the point and fails the message;
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
pub mod wire;

pub use crate::core::agent_error::AgentError;
pub use crate::core::key_ops::{is_low_order, KeyOp, KeyOps};
pub use any::AnyHandshake;
pub use handshake::DelegatedHandshake;
