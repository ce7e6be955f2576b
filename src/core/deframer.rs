//! A receive buffer of exactly one largest frame, for callers that read a byte stream.
//!
//! Read into [`Deframer::spare`], [`Deframer::commit`] what arrived, then take bodies with
//! [`Deframer::next`], which opens frames in place. The buffer never holds more than one
//! frame's worth (65537 bytes) of unprocessed ciphertext; a partial frame is moved to the
//! front only when the space behind it runs out.

use super::error::{Error, Result};
use super::payload::MAX_FRAME;
use super::transport::{Opened, Opener};

pub struct Deframer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    pub fn new() -> Self {
        Deframer {
            buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Space to receive into.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`Deframer::spare`] as received.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies in as much of `data` as fits; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// Ciphertext received but not yet opened.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Opens the next whole frame, if there is one, and returns its body (possibly empty).
    pub fn next(&mut self, opener: &mut Opener) -> Result<Option<&[u8]>> {
        match opener.open(&mut self.buf[self.start..self.end])? {
            Opened::Incomplete => Ok(None),
            Opened::Frame { consumed, body } => {
                let base = self.start;
                self.start += consumed;
                Ok(Some(&self.buf[base + body.start..base + body.end]))
            }
        }
    }

    /// The peer closed its side: an error if that cut a frame.
    pub fn check_eof(&self) -> Result<()> {
        if self.buffered() > 0 {
            return Err(Error::Truncated);
        }
        Ok(())
    }
}
