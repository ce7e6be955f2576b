//! Typed errors of the multiplexing layer (docs/multiplex.md §7).
//!
//! Every error from [`super::Session::receive`] is link-fatal: the peer broke the framing
//! or the rules, so nothing it sends afterwards can be trusted; the session queues a
//! best-effort go-away and refuses further work. Errors from application calls (`open`,
//! `send`, ...) are ours and leave the link as it was. Stream-fatal conditions are not
//! errors at all: they are resets, reported as [`super::Event::Reset`].

use super::names::{FrameKind, StreamId};

/// Whose fault an error is: the nginx layer logs the peer's at `info`, ours at `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Peer,
    Local,
}

/// What went wrong on a multiplexed link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    // --- framing (peer) ---
    /// A message body ends inside a frame header or payload (frames never span messages).
    #[error("multiplex frame cut short at byte {at} of a message of {len} bytes")]
    Truncated { at: usize, len: usize },
    /// A frame type this version does not define.
    #[error("unknown multiplex frame type {0:#04x}")]
    UnknownType(u8),
    /// Flag bits that the frame type does not define.
    #[error("{kind} frame with undefined flags {flags:#04x}")]
    BadFlags { kind: FrameKind, flags: u8 },
    /// A payload length the frame type does not allow.
    #[error("{kind} frame with a payload of {len} bytes")]
    BadLength { kind: FrameKind, len: usize },
    /// A stream id with the reserved top bit set.
    #[error("stream id {0:#010x} has the reserved bit set")]
    ReservedBit(u32),
    /// A stream frame on stream 0.
    #[error("{0} frame on stream 0")]
    StreamIdRequired(FrameKind),
    /// A link frame (ping, go-away, rekey) on a stream.
    #[error("{kind} frame on stream {id}, must be stream 0")]
    StreamIdForbidden { kind: FrameKind, id: StreamId },
    /// An open frame's origin address has an unknown family.
    #[error("open frame with unknown address family {0}")]
    BadOrigin(u8),
    /// A message body larger than a NoiseSocket transport body can be.
    #[error("multiplex message of {0} bytes exceeds 65517")]
    MessageTooLarge(usize),
    /// A window update of 0.
    #[error("window update of 0 on stream {0}")]
    ZeroIncrement(StreamId),
    /// (A) The acceptor's first frame is not its hello: it does not multiplex.
    #[error("the peer does not multiplex: its first frame is {0}, not the hello")]
    NoHello(FrameKind),
    /// A rekey frame followed by more frames in the same message.
    #[error("rekey frame is not the last frame of its message")]
    RekeyNotLast,

    // --- stream rules (peer) ---
    /// An open with an id of the wrong parity: A opens odd ids, B opens none.
    #[error("stream {0} opened with the wrong parity (A opens odd ids)")]
    WrongParity(StreamId),
    /// B sent an open: in version 1 only A opens streams.
    #[error("stream {0} opened by the accepting side")]
    OpenByAcceptor(StreamId),
    /// An open whose id is not above every id opened before.
    #[error("stream {id} opened again (ids must increase; highest so far {highest})")]
    IdReused { id: StreamId, highest: StreamId },
    /// A stream frame for an id that was never opened.
    #[error("{kind} frame on stream {id}, which was never opened")]
    UnknownStream { kind: FrameKind, id: StreamId },
    /// Data beyond the receive window.
    #[error("stream {id}: {len} bytes of data with a window of {window}")]
    FlowControl {
        id: StreamId,
        len: usize,
        window: u32,
    },
    /// A window update taking the send window beyond 2^31-1.
    #[error("stream {id}: window update of {increment} overflows a window of {window}")]
    WindowOverflow {
        id: StreamId,
        window: u32,
        increment: u32,
    },
    /// Data after the peer's own half-close.
    #[error("stream {0}: data after the peer's half-close")]
    DataAfterFin(StreamId),
    /// An open after the peer's own go-away.
    #[error("stream {0} opened after the peer's go-away")]
    OpenAfterGoAway(StreamId),
    /// A go-away whose last stream id is above an earlier one's.
    #[error("go-away raises the last stream id from {previous} to {last}")]
    GoAwayIncreased { previous: StreamId, last: StreamId },
    /// Too many cheap frames (pings, resets, refused opens, frames on closed streams, empty
    /// data) among the frames received (docs/multiplex.md §8).
    #[error("flood: {cheap} cheap frames (last: {what}) in {frames} frames received")]
    Flood {
        what: &'static str,
        cheap: u32,
        frames: u32,
    },
    /// The peer makes us queue answers (pongs, refusals) faster than it reads them.
    #[error("peer does not read: {0} bytes of answers queued")]
    ControlBacklog(usize),

    // --- application calls (ours) ---
    /// The session failed earlier; the link must close.
    #[error("the link failed earlier")]
    LinkFailed,
    /// `open` on the accepting side.
    #[error("only the opening side (A) opens streams")]
    NotOpener,
    /// `open` after a go-away was sent or received.
    #[error("the link is going away")]
    GoingAway,
    /// `open` with `max_streams` streams already open.
    #[error("{0} streams already open on this link")]
    TooManyStreams(u32),
    /// Stream ids used up (2^31-1): open a new link.
    #[error("stream ids exhausted on this link")]
    IdsExhausted,
    /// A call on a stream that is not open.
    #[error("stream {0} is not open")]
    NoSuchStream(StreamId),
    /// `send` or `finish` after our own half-close.
    #[error("stream {0} already half-closed by us")]
    AlreadyFinished(StreamId),
    /// `consumed` with more bytes than were delivered and not yet consumed.
    #[error("stream {id}: {n} bytes consumed, only {unconsumed} delivered")]
    OverConsumed {
        id: StreamId,
        n: usize,
        unconsumed: u32,
    },
    /// A ping while the most allowed are unanswered.
    #[error("{0} pings already unanswered")]
    TooManyPings(usize),
    /// A configuration value out of range.
    #[error("multiplex configuration: {0}")]
    Config(&'static str),
}

impl MuxError {
    /// Who caused it.
    pub fn fault(&self) -> Fault {
        use MuxError::*;
        match self {
            LinkFailed
            | NotOpener
            | GoingAway
            | TooManyStreams(_)
            | IdsExhausted
            | NoSuchStream(_)
            | AlreadyFinished(_)
            | OverConsumed { .. }
            | TooManyPings(_)
            | Config(_) => Fault::Local,
            _ => Fault::Peer,
        }
    }
}
