//! Stream multiplexing over one NoiseSocket link (docs/multiplex.md), sans-IO.
//!
//! Many client connections travel as streams inside the transport messages of one
//! long-lived link between two nginx hops: A (`noise_upstream`, the NoiseSocket initiator)
//! opens streams, B (`noise_listen`) accepts them. This module knows nothing of sockets,
//! ciphers or nginx:
//!
//! * [`frame`]: the byte layout of each frame type, encode and decode ([`names`]: stream
//!   ids and frame types);
//! * [`stream`]: one stream's state (half-closes, both flow-control windows);
//! * [`flood`]: the budget of cheap frames a peer may make us handle (rapid reset);
//! * [`session`]: one link: the streams table, opening and accepting, go-away, ping,
//!   limits; the body of each opened transport message in, [`session::Event`]s out;
//!   application calls in, message bodies to seal out;
//! * [`error`]: [`MuxError`], which says who is at fault and whether the link is lost.
//!
//! Invariants: a frame never spans two transport messages, so each message body is decoded
//! on its own and nothing is reassembled; everything a peer controls is bounded (streams by
//! `max_streams`, unread data per stream by its receive window, queued answers by
//! `max_control_backlog`, cheap frames by the flood budget).
//!
//! Whether a link multiplexes is agreed in the negotiation data
//! ([`crate::core::negotiation::multiplex`]).

pub mod error;
pub mod flood;
pub mod frame;
pub mod names;
pub mod session;
pub mod stream;

pub use error::{Fault, MuxError};
pub use frame::{Frame, GoAwayReason, Origin, ResetCode, StreamId};
pub use session::{Config, Event, Outgoing, Session, Side};
