//! The names the frame layout gives things: stream ids and frame types. Below both the
//! frames ([`super::frame`]) and their errors ([`super::error`]), which name them.

use std::fmt;

/// A stream id: 31 bits, 0 means the link itself.
pub type StreamId = u32;

/// The frame types, as numbered on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Data = 0,
    Open = 1,
    WindowUpdate = 2,
    Reset = 3,
    Ping = 4,
    GoAway = 5,
    Rekey = 6,
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Data => "data",
            FrameKind::Open => "open",
            FrameKind::WindowUpdate => "window update",
            FrameKind::Reset => "reset",
            FrameKind::Ping => "ping",
            FrameKind::GoAway => "go-away",
            FrameKind::Rekey => "rekey",
        })
    }
}

impl FrameKind {
    pub(super) fn from_u8(t: u8) -> Option<Self> {
        Some(match t {
            0 => FrameKind::Data,
            1 => FrameKind::Open,
            2 => FrameKind::WindowUpdate,
            3 => FrameKind::Reset,
            4 => FrameKind::Ping,
            5 => FrameKind::GoAway,
            6 => FrameKind::Rekey,
            _ => return None,
        })
    }
}
