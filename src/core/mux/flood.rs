//! The cheap-frame budget (docs/multiplex.md §8): the defence against floods of frames
//! that cost the receiver work or an answer while carrying no stream data, such as HTTP/2's
//! rapid reset (CVE-2023-44487: open, reset, repeat, and the server keeps starting work).
//!
//! Frames received are counted in blocks of `block` frames; within a block at most
//! `max_cheap` may be cheap (pings, resets received, refused or ignored opens, frames on
//! streams already closed, empty data without a half-close, unmatched pongs, rekeys,
//! window updates for a direction we closed). One more is link-fatal. A peer therefore
//! needs about `block / max_cheap - 1` real frames (data it earned the window for, opens it
//! then carries) for each cheap one: it can churn streams no faster than a client that
//! uses them, and never more than `max_streams` at once. Counting frames, not time, keeps
//! the core free of clocks and the bound independent of the peer's speed.

use super::error::MuxError;

#[derive(Debug)]
pub struct FloodGuard {
    block: u32,
    max_cheap: u32,
    frames: u32,
    cheap: u32,
}

impl FloodGuard {
    pub fn new(block: u32, max_cheap: u32) -> Self {
        FloodGuard {
            block: block.max(1),
            max_cheap,
            frames: 0,
            cheap: 0,
        }
    }

    /// Counts one frame received; `cheap` names it if it is one.
    pub fn frame(&mut self, cheap: Option<&'static str>) -> Result<(), MuxError> {
        if self.frames >= self.block {
            self.frames = 0;
            self.cheap = 0;
        }
        self.frames += 1;
        if let Some(what) = cheap {
            self.cheap += 1;
            if self.cheap > self.max_cheap {
                return Err(MuxError::Flood {
                    what,
                    cheap: self.cheap,
                    frames: self.frames,
                });
            }
        }
        Ok(())
    }
}
