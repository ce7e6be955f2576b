//! A receive buffer of one largest frame with a plaintext cursor, for callers that read a
//! byte stream (the CLI, nginx's `recv`, the fuzz targets).
//!
//! Read ciphertext into [`Deframer::spare`] and [`Deframer::commit`] it; then either take whole
//! bodies with [`Deframer::next`] or copy plaintext into a caller's buffer of any size with
//! [`Deframer::read_plain`], which opens frames in place as it goes and remembers a partly
//! delivered body.
//!
//! Invariants: `plain` lies before `start`, `start <= end <= capacity`; at most one frame's
//! worth (65537 bytes) of ciphertext is ever held; the buffer is taken from the [`buffer_pool`] on first
//! use and can be given back with [`Deframer::release`] while nothing is pending (idle
//! connections then cost no buffer, as `SSL_MODE_RELEASE_BUFFERS` does for OpenSSL).

use std::ops::Range;

use super::buffer_pool;
use super::error::{Error, Result};
use super::frame::{transport_frame, FrameStatus};
use super::payload::MAX_FRAME;
use super::transport::{Opened, Opener};

#[derive(Default)]
pub struct Deframer {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    plain: Range<usize>,
    /// An error found after some plaintext was already copied out; reported next call.
    failed: Option<Error>,
    /// Lengths of the frames opened since the last [`Deframer::take_frames`], while
    /// recording (debug logs); `None` costs one branch per frame.
    frames: Option<Vec<usize>>,
}

impl Deframer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Space to receive ciphertext into (never empty).
    pub fn spare(&mut self) -> &mut [u8] {
        let keep_from = if self.plain.is_empty() {
            self.start
        } else {
            self.plain.start
        };
        let buf = self.buf.get_or_insert_with(|| buffer_pool::take(MAX_FRAME));
        if keep_from == self.end {
            self.start = 0;
            self.end = 0;
            self.plain = 0..0;
        } else if keep_from > 0 && self.end == buf.len() {
            buf.copy_within(keep_from..self.end, 0);
            self.end -= keep_from;
            self.start -= keep_from;
            if !self.plain.is_empty() {
                self.plain = self.plain.start - keep_from..self.plain.end - keep_from;
            }
        }
        &mut buf[self.end..]
    }

    /// Marks `n` bytes of [`Deframer::spare`] as received.
    pub fn commit(&mut self, n: usize) {
        let cap = self.buf.as_ref().map_or(0, |b| b.len());
        self.end = (self.end + n).min(cap);
    }

    /// Copies in as much of `data` as fits; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// Starts recording the length of every frame opened (for debug logs).
    pub fn record_frames(&mut self) {
        self.frames.get_or_insert_with(Vec::new);
    }

    /// The lengths of the frames opened since the last call (none unless recording).
    pub fn take_frames(&mut self) -> Vec<usize> {
        self.frames.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Ciphertext received but not yet opened.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Plaintext opened but not yet delivered.
    pub fn pending_plain(&self) -> usize {
        self.plain.len()
    }

    /// Whether [`Deframer::read_plain`] can make progress without more input: plaintext is
    /// pending or a whole frame (or a framing error) is buffered.
    pub fn readable(&self) -> bool {
        if !self.plain.is_empty() || self.failed.is_some() {
            return true;
        }
        let Some(buf) = &self.buf else { return false };
        !matches!(
            transport_frame(&buf[self.start..self.end]),
            Ok(FrameStatus::Incomplete(_))
        )
    }

    /// Opens the frame at `start`; false when it is incomplete.
    fn open_next(&mut self, opener: &mut Opener) -> Result<bool> {
        let Some(buf) = self.buf.as_mut() else {
            return Ok(false);
        };
        match opener.open(&mut buf[self.start..self.end])? {
            Opened::Incomplete => Ok(false),
            Opened::Frame { consumed, body } => {
                self.plain = self.start + body.start..self.start + body.end;
                self.start += consumed;
                if let Some(frames) = &mut self.frames {
                    frames.push(consumed);
                }
                Ok(true)
            }
        }
    }

    /// Whether a transport frame has been opened: the peer's first one is opened now if it
    /// is whole (its body stays pending for [`Deframer::read_plain`]). False when more
    /// ciphertext is needed.
    pub fn open_first(&mut self, opener: &mut Opener) -> Result<bool> {
        if !self.plain.is_empty() {
            return Ok(true);
        }
        self.open_next(opener)
    }

    /// The rest of the current body, or the body of the next whole frame (possibly empty).
    pub fn next(&mut self, opener: &mut Opener) -> Result<Option<&[u8]>> {
        if self.plain.is_empty() && !self.open_next(opener)? {
            return Ok(None);
        }
        let range = std::mem::replace(&mut self.plain, 0..0);
        Ok(self.buf.as_deref().map(|b| &b[range]))
    }

    /// Copies up to `out.len()` bytes of plaintext, opening frames as needed; 0 means more
    /// ciphertext is needed (or `out` is empty). A bad frame found after some bytes were
    /// copied is reported on the next call, so no good plaintext is lost.
    pub fn read_plain(&mut self, opener: &mut Opener, out: &mut [u8]) -> Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut done = 0;
        while done < out.len() {
            if self.plain.is_empty() {
                match self.open_next(opener) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if done == 0 => return Err(e),
                    Err(e) => {
                        self.failed = Some(e);
                        break;
                    }
                }
            }
            let Some(buf) = self.buf.as_deref() else {
                break;
            };
            let n = self.plain.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&buf[self.plain.start..self.plain.start + n]);
            self.plain.start += n;
            done += n;
        }
        Ok(done)
    }

    /// The peer closed its side: an error if that cut a frame.
    pub fn check_eof(&self) -> Result<()> {
        if self.buffered() > 0 {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Frees the buffer if nothing is pending; true if no buffer is held afterwards.
    pub fn release(&mut self) -> bool {
        if self.plain.is_empty() && self.start == self.end && self.failed.is_none() {
            if let Some(buf) = self.buf.take() {
                buffer_pool::give(buf);
            }
            self.start = 0;
            self.end = 0;
            self.plain = 0..0;
        }
        self.buf.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::transport::{CipherState, Transport};
    use snow::params::CipherChoice;

    fn pair() -> (Transport, Transport) {
        let c = |k: u8| CipherState::new(CipherChoice::ChaChaPoly, &[k; 32]).unwrap();
        (Transport::new(c(1), c(2), 0), Transport::new(c(2), c(1), 0))
    }

    #[test]
    fn partial_reads_of_bodies_across_frames() {
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = vec![0u8; 210_000];
        let (_, n) = a.seal(&data, &mut wire).unwrap();
        let mut d = Deframer::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut out = [0u8; 1000];
        while got.len() < data.len() {
            let k = d.read_plain(&mut b.opener, &mut out[..777]).unwrap();
            if k == 0 {
                assert!(!d.readable());
                let spare = d.spare();
                let m = spare.len().min(n - fed).min(5000);
                spare[..m].copy_from_slice(&wire[fed..fed + m]);
                d.commit(m);
                fed += m;
            } else {
                assert!(k <= 777);
                got.extend_from_slice(&out[..k]);
            }
        }
        assert_eq!(got, data);
        assert!(d.check_eof().is_ok());
        assert!(d.release());
    }

    #[test]
    fn plaintext_before_a_bad_frame_is_delivered_first() {
        let (mut a, mut b) = pair();
        let mut wire = [0u8; 128];
        let (_, n1) = a.seal(b"good", &mut wire).unwrap();
        let (_, n2) = a.seal(b"evil", &mut wire[n1..]).unwrap();
        wire[n1 + 5] ^= 1;
        let mut d = Deframer::new();
        d.push(&wire[..n1 + n2]);
        let mut out = [0u8; 64];
        assert_eq!(d.read_plain(&mut b.opener, &mut out).unwrap(), 4);
        assert!(d.readable());
        assert!(matches!(
            d.read_plain(&mut b.opener, &mut out),
            Err(Error::Decrypt(_))
        ));
    }

    #[test]
    fn release_keeps_pending_data() {
        let (mut a, mut b) = pair();
        let mut wire = [0u8; 64];
        let (_, n) = a.seal(b"hello world", &mut wire).unwrap();
        let mut d = Deframer::new();
        d.push(&wire[..n]);
        assert!(d.readable());
        let mut out = [0u8; 5];
        assert_eq!(d.read_plain(&mut b.opener, &mut out).unwrap(), 5);
        assert!(!d.release(), "6 bytes of plaintext pending");
        let mut out = [0u8; 64];
        assert_eq!(d.read_plain(&mut b.opener, &mut out).unwrap(), 6);
        assert!(d.release());
    }
}
