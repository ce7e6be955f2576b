//! Multiplex frames: byte layout, encode and decode (docs/multiplex.md §3).
//!
//! Every frame is an 8-byte header `u8 type | u8 flags | u32be stream | u16be length`
//! followed by `length` payload bytes. Frames sit whole inside the body of one NoiseSocket
//! transport message, several per message, never split across two; a body is decoded with
//! [`Frames`], which refuses anything it does not fully understand (unknown types, undefined
//! flags, wrong lengths, the reserved stream-id bit): version 1 has no extension points,
//! versions are chosen in the negotiation data instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::MuxError;
pub use super::names::{FrameKind, StreamId};
use crate::core::payload::MAX_BODY;

/// Header length.
pub const HEADER_LEN: usize = 8;
/// Largest data payload: one frame in one transport body of 65517 bytes.
pub const MAX_DATA: usize = MAX_BODY - HEADER_LEN;
/// Largest stream id (the top bit is reserved).
pub const MAX_STREAM_ID: StreamId = 0x7fff_ffff;
/// Largest flow-control window (as in HTTP/2).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;

const FLAG_FIN: u8 = 0x01;
const FLAG_ACK: u8 = 0x01;

/// Why a stream was reset. Unknown codes are kept as they came (they are informative only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetCode(pub u16);

impl ResetCode {
    /// The sender gave up on the stream (its client went away).
    pub const CANCEL: ResetCode = ResetCode(0);
    /// Not processed at all (too many streams, going away): safe to retry elsewhere.
    pub const REFUSED: ResetCode = ResetCode(1);
    /// B could not connect the stream onward (its upstream failed): a failed attempt.
    pub const CONNECT_FAILED: ResetCode = ResetCode(2);
    /// The stream's other end failed in the middle (an upstream or client error).
    pub const ABORTED: ResetCode = ResetCode(3);
    /// An internal error of the sender.
    pub const INTERNAL: ResetCode = ResetCode(4);

    pub fn describe(self) -> &'static str {
        match self.0 {
            0 => "cancelled",
            1 => "refused",
            2 => "connect failed",
            3 => "aborted",
            4 => "internal error",
            _ => "unknown reason",
        }
    }
}

/// Why a link goes away. Unknown reasons are kept as they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAwayReason(pub u16);

impl GoAwayReason {
    /// Reload, worker exit, idle link: streams up to the last id finish.
    pub const NORMAL: GoAwayReason = GoAwayReason(0);
    /// The peer broke the multiplex protocol.
    pub const PROTOCOL: GoAwayReason = GoAwayReason(1);
    /// An internal error of the sender.
    pub const INTERNAL: GoAwayReason = GoAwayReason(2);
    /// The peer sent too many cheap frames, or did not read.
    pub const FLOOD: GoAwayReason = GoAwayReason(3);
}

/// The original client's address carried by an open frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// No address (a unix-socket client, or A chose not to say).
    Unknown,
    Ip(SocketAddr),
}

impl Origin {
    fn encoded_len(&self) -> usize {
        match self {
            Origin::Unknown => 1,
            Origin::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Origin::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Origin::Unknown => out.push(0),
            Origin::Ip(addr) => {
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&addr.port().to_be_bytes());
            }
        }
    }

    fn decode(p: &[u8]) -> Result<Self, MuxError> {
        let bad = || MuxError::BadLength {
            kind: FrameKind::Open,
            len: p.len(),
        };
        let (&family, rest) = p.split_first().ok_or_else(bad)?;
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        match (family, rest.len()) {
            (0, 0) => Ok(Origin::Unknown),
            (4, 6) => {
                let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
                Ok(Origin::Ip(SocketAddr::new(ip.into(), port(&rest[4..]))))
            }
            (6, 18) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&rest[..16]);
                let ip = Ipv6Addr::from(o);
                Ok(Origin::Ip(SocketAddr::new(ip.into(), port(&rest[16..]))))
            }
            (0 | 4 | 6, _) => Err(bad()),
            (f, _) => Err(MuxError::BadOrigin(f)),
        }
    }
}

/// One decoded frame; data borrows from the message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Stream bytes; `fin`: the sender's last (half-close). Empty data is legal only as a
    /// bare half-close.
    Data {
        id: StreamId,
        data: &'a [u8],
        fin: bool,
    },
    /// A new stream from A, with the original client's address.
    Open { id: StreamId, origin: Origin },
    /// More credit for the receiver of this frame to send on `id`.
    WindowUpdate { id: StreamId, increment: u32 },
    /// Abort both directions of a stream.
    Reset { id: StreamId, code: ResetCode },
    /// Liveness probe (`ack`: the answer, echoing the payload).
    Ping { ack: bool, payload: [u8; 8] },
    /// No streams above `last_id` were or will be processed; no new streams.
    GoAway {
        last_id: StreamId,
        reason: GoAwayReason,
    },
    /// The sender's next message is sealed with its rekeyed cipher (docs/multiplex.md §6).
    Rekey,
}

impl Frame<'_> {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Data { .. } => FrameKind::Data,
            Frame::Open { .. } => FrameKind::Open,
            Frame::WindowUpdate { .. } => FrameKind::WindowUpdate,
            Frame::Reset { .. } => FrameKind::Reset,
            Frame::Ping { .. } => FrameKind::Ping,
            Frame::GoAway { .. } => FrameKind::GoAway,
            Frame::Rekey => FrameKind::Rekey,
        }
    }

    /// Header plus payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Data { data, .. } => data.len(),
                Frame::Open { origin, .. } => origin.encoded_len(),
                Frame::WindowUpdate { .. } => 4,
                Frame::Reset { .. } => 2,
                Frame::Ping { .. } => 8,
                Frame::GoAway { .. } => 6,
                Frame::Rekey => 0,
            }
    }

    /// Appends the frame to `out`. The caller keeps ids within 31 bits and data within
    /// [`MAX_DATA`] (the session does).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.encoded_len() - HEADER_LEN;
        debug_assert!(len <= MAX_DATA);
        let (id, flags) = match self {
            Frame::Data { id, fin, .. } => (*id, if *fin { FLAG_FIN } else { 0 }),
            Frame::Open { id, .. } | Frame::WindowUpdate { id, .. } | Frame::Reset { id, .. } => {
                (*id, 0)
            }
            Frame::Ping { ack, .. } => (0, if *ack { FLAG_ACK } else { 0 }),
            Frame::GoAway { .. } | Frame::Rekey => (0, 0),
        };
        out.push(self.kind() as u8);
        out.push(flags);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        match self {
            Frame::Data { data, .. } => out.extend_from_slice(data),
            Frame::Open { origin, .. } => origin.encode(out),
            Frame::WindowUpdate { increment, .. } => {
                out.extend_from_slice(&increment.to_be_bytes())
            }
            Frame::Reset { code, .. } => out.extend_from_slice(&code.0.to_be_bytes()),
            Frame::Ping { payload, .. } => out.extend_from_slice(payload),
            Frame::GoAway { last_id, reason } => {
                out.extend_from_slice(&last_id.to_be_bytes());
                out.extend_from_slice(&reason.0.to_be_bytes());
            }
            Frame::Rekey => {}
        }
    }
}

/// The length of the whole frame at the start of `buf`, if its header is there.
pub(super) fn frame_len_at(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER_LEN)
        .then(|| HEADER_LEN + usize::from(u16::from_be_bytes([buf[6], buf[7]])))
}

/// Decodes the frames of one message body in order; stops at the first error.
pub struct Frames<'a> {
    body: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// `body` is the whole body of one transport message.
    pub fn new(body: &'a [u8]) -> Self {
        Frames {
            body,
            pos: 0,
            failed: false,
        }
    }

    /// Offset of the next frame; equal to the body length at the end.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn next_frame(&mut self) -> Result<(Frame<'a>, std::ops::Range<usize>), MuxError> {
        let body = self.body;
        if body.len() > MAX_BODY {
            return Err(MuxError::MessageTooLarge(body.len()));
        }
        let at = self.pos;
        let truncated = MuxError::Truncated {
            at,
            len: body.len(),
        };
        let h = body.get(at..at + HEADER_LEN).ok_or(truncated.clone())?;
        let (t, flags) = (h[0], h[1]);
        let id = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
        let len = usize::from(u16::from_be_bytes([h[6], h[7]]));
        let start = at + HEADER_LEN;
        let p = body.get(start..start + len).ok_or(truncated)?;
        let kind = FrameKind::from_u8(t).ok_or(MuxError::UnknownType(t))?;
        if id > MAX_STREAM_ID {
            return Err(MuxError::ReservedBit(id));
        }
        let allowed_flags = match kind {
            FrameKind::Data => FLAG_FIN,
            FrameKind::Ping => FLAG_ACK,
            _ => 0,
        };
        if flags & !allowed_flags != 0 {
            return Err(MuxError::BadFlags { kind, flags });
        }
        let stream_frame = matches!(
            kind,
            FrameKind::Data | FrameKind::Open | FrameKind::WindowUpdate | FrameKind::Reset
        );
        if stream_frame && id == 0 {
            return Err(MuxError::StreamIdRequired(kind));
        }
        if !stream_frame && id != 0 {
            return Err(MuxError::StreamIdForbidden { kind, id });
        }
        let fixed = match kind {
            FrameKind::WindowUpdate => Some(4),
            FrameKind::Reset => Some(2),
            FrameKind::Ping => Some(8),
            FrameKind::GoAway => Some(6),
            FrameKind::Rekey => Some(0),
            FrameKind::Data | FrameKind::Open => None,
        };
        if fixed.is_some_and(|n| n != len) || (kind == FrameKind::Data && len > MAX_DATA) {
            return Err(MuxError::BadLength { kind, len });
        }
        let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let frame = match kind {
            FrameKind::Data => Frame::Data {
                id,
                data: p,
                fin: flags & FLAG_FIN != 0,
            },
            FrameKind::Open => Frame::Open {
                id,
                origin: Origin::decode(p)?,
            },
            FrameKind::WindowUpdate => {
                let increment = u32_at(0);
                if increment == 0 {
                    return Err(MuxError::ZeroIncrement(id));
                }
                Frame::WindowUpdate { id, increment }
            }
            FrameKind::Reset => Frame::Reset {
                id,
                code: ResetCode(u16::from_be_bytes([p[0], p[1]])),
            },
            FrameKind::Ping => {
                let mut payload = [0u8; 8];
                payload.copy_from_slice(p);
                Frame::Ping {
                    ack: flags & FLAG_ACK != 0,
                    payload,
                }
            }
            FrameKind::GoAway => {
                let last_id = u32_at(0);
                if last_id > MAX_STREAM_ID {
                    return Err(MuxError::ReservedBit(last_id));
                }
                Frame::GoAway {
                    last_id,
                    reason: GoAwayReason(u16::from_be_bytes([p[4], p[5]])),
                }
            }
            FrameKind::Rekey => {
                if start + len != body.len() {
                    return Err(MuxError::RekeyNotLast);
                }
                Frame::Rekey
            }
        };
        self.pos = start + len;
        Ok((frame, start..start + len))
    }

    /// The next frame and the range of its payload within the body.
    pub fn next_with_range(
        &mut self,
    ) -> Option<Result<(Frame<'a>, std::ops::Range<usize>), MuxError>> {
        if self.failed || self.pos == self.body.len() {
            return None;
        }
        let r = self.next_frame();
        self.failed = r.is_err();
        Some(r)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, MuxError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_range().map(|r| r.map(|(f, _)| f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut out = Vec::new();
        Frame::Data {
            id: 5,
            data: b"hi",
            fin: true,
        }
        .encode(&mut out);
        assert_eq!(out, [0, 1, 0, 0, 0, 5, 0, 2, b'h', b'i']);
        out.clear();
        Frame::WindowUpdate {
            id: 3,
            increment: 65536,
        }
        .encode(&mut out);
        assert_eq!(out, [2, 0, 0, 0, 0, 3, 0, 4, 0, 1, 0, 0]);
    }
}
