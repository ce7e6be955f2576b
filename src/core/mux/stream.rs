//! One stream's state: its two half-closes and both flow-control windows
//! (docs/multiplex.md §4, §5).
//!
//! Receive side: `recv_window` is what the peer may still send; bytes delivered but not yet
//! `consumed` by the application plus `recv_window` never exceed the stream's window, so
//! what the application must buffer for a stream that stops reading is bounded by it.
//! Credit comes back to the peer as a window update once at least half the window was
//! consumed (fewer, larger updates). Send side: `send_window` is the peer's credit, never
//! above 2^31-1.

use super::error::MuxError;
use super::frame::{StreamId, MAX_WINDOW};

/// Initial window of both directions of every stream, fixed by version 1.
pub const INITIAL_WINDOW: u32 = 65536;

#[derive(Debug)]
pub struct Stream {
    id: StreamId,
    /// The window we keep granting (≥ [`INITIAL_WINDOW`]).
    target: u32,
    recv_window: u32,
    unconsumed: u32,
    /// Consumed but not yet announced.
    credit: u32,
    send_window: u32,
    local_fin: bool,
    remote_fin: bool,
}

impl Stream {
    /// A new stream; if `window` exceeds the initial one, the difference is credit to be
    /// announced at once.
    pub fn new(id: StreamId, window: u32) -> Self {
        let target = window.clamp(INITIAL_WINDOW, MAX_WINDOW);
        Stream {
            id,
            target,
            recv_window: INITIAL_WINDOW,
            unconsumed: 0,
            credit: target - INITIAL_WINDOW,
            send_window: INITIAL_WINDOW,
            local_fin: false,
            remote_fin: false,
        }
    }

    /// The peer sent `len` bytes (and maybe its half-close).
    pub fn on_data(&mut self, len: usize, fin: bool) -> Result<(), MuxError> {
        if self.remote_fin {
            return Err(MuxError::DataAfterFin(self.id));
        }
        if len > self.recv_window as usize {
            return Err(MuxError::FlowControl {
                id: self.id,
                len,
                window: self.recv_window,
            });
        }
        // len <= recv_window <= u32::MAX
        self.recv_window -= len as u32;
        self.unconsumed += len as u32;
        self.remote_fin |= fin;
        Ok(())
    }

    /// The application consumed `n` delivered bytes.
    pub fn consumed(&mut self, n: usize) -> Result<(), MuxError> {
        if n > self.unconsumed as usize {
            return Err(MuxError::OverConsumed {
                id: self.id,
                n,
                unconsumed: self.unconsumed,
            });
        }
        self.unconsumed -= n as u32;
        self.credit += n as u32;
        Ok(())
    }

    /// Credit to announce now, if worth a frame: at least half the window, or any credit
    /// when the stream is new (the first update raising the initial window).
    pub fn take_credit(&mut self, force: bool) -> Option<u32> {
        if self.remote_fin || self.credit == 0 || (!force && self.credit < self.target / 2) {
            return None;
        }
        let c = self.credit;
        self.credit = 0;
        self.recv_window += c;
        Some(c)
    }

    /// The peer granted `increment` more bytes; returns the new send window.
    pub fn on_window_update(&mut self, increment: u32) -> Result<u32, MuxError> {
        match self.send_window.checked_add(increment) {
            Some(w) if w <= MAX_WINDOW => {
                self.send_window = w;
                Ok(w)
            }
            _ => Err(MuxError::WindowOverflow {
                id: self.id,
                window: self.send_window,
                increment,
            }),
        }
    }

    /// How many bytes we may send now.
    pub fn send_window(&self) -> u32 {
        if self.local_fin {
            0
        } else {
            self.send_window
        }
    }

    /// Records `n` bytes sent (at most [`Stream::send_window`]).
    pub fn sent(&mut self, n: usize) {
        debug_assert!(n <= self.send_window as usize);
        self.send_window -= n as u32;
    }

    pub fn finish(&mut self) -> Result<(), MuxError> {
        if self.local_fin {
            return Err(MuxError::AlreadyFinished(self.id));
        }
        self.local_fin = true;
        Ok(())
    }

    pub fn local_fin(&self) -> bool {
        self.local_fin
    }

    pub fn remote_fin(&self) -> bool {
        self.remote_fin
    }

    /// Both directions are closed: the stream leaves the table.
    pub fn is_done(&self) -> bool {
        self.local_fin && self.remote_fin
    }

    /// What the peer may still send.
    pub fn recv_window(&self) -> u32 {
        self.recv_window
    }

    /// Delivered and not yet consumed.
    pub fn unconsumed(&self) -> u32 {
        self.unconsumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_what_is_unread() {
        let mut s = Stream::new(1, INITIAL_WINDOW);
        s.on_data(60000, false).unwrap();
        assert!(s.on_data(6000, false).is_err());
        assert_eq!(s.take_credit(false), None);
        s.consumed(40000).unwrap();
        assert_eq!(s.take_credit(false), Some(40000));
        assert_eq!(s.recv_window() + s.unconsumed(), INITIAL_WINDOW);
    }
}
