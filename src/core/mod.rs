//! The sans-IO NoiseSocket core (2018-05-01 draft): it works on byte buffers and knows
//! nothing of sockets or nginx.
//!
//! # Using it
//! 1. Describe a side: a [`negotiation::Negotiator`] (usually a [`negotiation::Policy`]:
//!    allowed [`protocol::Protocol`]s, [`negotiation::Credentials`] from [`keys`], a
//!    [`negotiation::codec::Codec`]) and shared [`handshake::Settings`] (application
//!    prologue, padding, trusted keys).
//! 2. Handshake: [`handshake::Handshake::initiator`] (its first message is queued at once) or
//!    [`handshake::Handshake::responder`]. Feed received bytes to `read` (returns how many
//!    were used: it stops at the end of the handshake, leaving early transport bytes to you),
//!    send `pending_output` and `consume_output` what was sent; on EOF ask `eof()` for the
//!    error. After an error send what is pending (an explicit reject) and close.
//! 3. When `is_done`, `finish` gives an [`handshake::Established`]: the
//!    [`transport::Transport`], the [`handshake::HandshakeInfo`] (protocol, peer key,
//!    handshake hash, initial negotiation data) and handshake bytes still to send.
//! 4. Transport, without per-frame allocation: [`transport::Transport::seal`] encrypts
//!    plaintext into whole frames in your output buffer (one copy, encrypted in place, many
//!    frames per call, bodies split at 65517 bytes); [`transport::Transport::open`] decrypts
//!    the frame at the start of your input buffer in place and tells where its body lies.
//!    [`deframer::Deframer`] is a ready-made input buffer of one frame for simple callers.
//!
//! 5. Multiplexed links between nginx hops ([`mux`], docs/multiplex.md): a
//!    [`mux::Session`] per link turns opened message bodies into stream events and
//!    application calls into message bodies to seal; agreed through
//!    [`negotiation::multiplex`].
//!
//! Errors are [`error::Error`]; `is_peer_fault` says whose fault each one is.
//!
//! No `unsafe` here, enforced: the attribute below makes any `unsafe` block in the core a
//! compile error, so the claim "all unsafe code lives in the nginx layer" is checked.

#![forbid(unsafe_code)]

pub mod agent_error;
pub mod auth_reply;
pub mod buffer_pool;
pub mod confirm;
pub mod credentials;
pub mod crypto;
pub mod deframer;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod key_agent;
pub mod key_journal;
pub mod key_limit;
pub mod key_ops;
pub mod key_table;
pub mod key_verdict;
pub mod keys;
pub mod mux;
pub mod negotiation;
pub mod payload;
pub mod prologue;
pub mod protocol;
pub mod requirements;
pub mod send_buffer;
pub mod trace;
pub mod transport;
pub mod unmet;
pub mod verdict;

pub use error::{Ended, Error, Result};
