//! Pending ciphertext on the way out: frames are sealed into one buffer, as many as fit, and
//! written with as few syscalls as the socket allows.
//!
//! Plaintext counts as sent once it is sealed here (the nginx layer then reports it to its
//! caller and keeps a "buffered" flag while [`SendBuffer::pending`] is not empty). The buffer
//! is allocated on first use and can be released while empty, so idle connections hold none.
//!
//! Invariant: `start <= end <= capacity`; `pending()` is always whole frames or the tail of
//! a partly written frame, never a partial frame that is still being sealed.

use super::buffer_pool;
use super::error::Result;
use super::payload::{FRAME_OVERHEAD, MAX_FRAME};
use super::transport::{Sealer, BODY_OFFSET};

pub struct SendBuffer {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    capacity: usize,
}

impl SendBuffer {
    /// A buffer that holds at most `capacity` bytes of ciphertext (at least one byte of body
    /// per frame must fit: `capacity > 20`).
    pub fn new(capacity: usize) -> Self {
        SendBuffer {
            buf: None,
            start: 0,
            end: 0,
            capacity: capacity.max(FRAME_OVERHEAD + 1),
        }
    }

    /// Ciphertext waiting for the socket.
    pub fn pending(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.end],
            None => &[],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// `n` bytes of [`SendBuffer::pending`] were written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn buffer(&mut self) -> &mut [u8] {
        let capacity = self.capacity;
        self.buf.get_or_insert_with(|| buffer_pool::take(capacity))
    }

    /// Room left for new frames, after moving a partly written tail to the front when the
    /// space behind it cannot take a full frame.
    fn room(&mut self) -> usize {
        if self.start > 0 && self.capacity - self.end < MAX_FRAME {
            let (start, end) = (self.start, self.end);
            self.buffer().copy_within(start..end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.capacity - self.end
    }

    /// Seals as much of `plaintext` as fits; returns how many plaintext bytes were taken.
    pub fn seal(&mut self, sealer: &mut Sealer, plaintext: &[u8]) -> Result<usize> {
        if plaintext.is_empty() || sealer.max_body(self.room()) == 0 {
            return Ok(0);
        }
        let end = self.end;
        let (used, written) = sealer.seal(plaintext, &mut self.buffer()[end..])?;
        self.end += written;
        Ok(used)
    }

    /// Room for one body placed by the caller (for instance read from a file), at most
    /// `want` bytes; finish with [`SendBuffer::seal_body`]. Empty when there is no room.
    pub fn body_space(&mut self, sealer: &Sealer, want: usize) -> &mut [u8] {
        let body = sealer.max_body(self.room()).min(want);
        if body == 0 {
            return &mut [];
        }
        let end = self.end;
        &mut self.buffer()[end + BODY_OFFSET..end + BODY_OFFSET + body]
    }

    /// Seals a frame with an empty body (a keep-the-peer-informed frame: it proves we hold
    /// the session keys, see `Protocol::initiator_auth_replayable`).
    pub fn seal_empty(&mut self, sealer: &mut Sealer) -> Result<()> {
        if self.room() < sealer.frame_len(0) {
            return Err(crate::core::Error::Internal(
                "no room for an empty frame".into(),
            ));
        }
        self.seal_body(sealer, 0)
    }

    /// Seals the `body_len` bytes placed in [`SendBuffer::body_space`].
    pub fn seal_body(&mut self, sealer: &mut Sealer, body_len: usize) -> Result<()> {
        let end = self.end;
        let written = sealer.seal_prepared(&mut self.buffer()[end..], body_len)?;
        self.end += written;
        Ok(())
    }

    /// Frees the buffer if nothing is pending; true if none is held afterwards.
    pub fn release(&mut self) -> bool {
        if self.is_empty() {
            if let Some(buf) = self.buf.take() {
                buffer_pool::give(buf);
            }
        }
        self.buf.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::deframer::Deframer;
    use crate::core::transport::{CipherState, Transport};
    use snow::params::CipherChoice;

    fn pair(pad: usize) -> (Transport, Transport) {
        let c = |k: u8| CipherState::new(CipherChoice::AESGCM, &[k; 32]).unwrap();
        (
            Transport::new(c(1), c(2), pad),
            Transport::new(c(2), c(1), pad),
        )
    }

    #[test]
    fn many_frames_partial_writes_and_file_bodies() {
        let (mut a, mut b) = pair(0);
        let mut out = SendBuffer::new(3 * 65537);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut taken = out.seal(&mut a.sealer, &data).unwrap();
        assert_eq!(taken, 3 * 65517, "three full frames fit");
        let mut wire = Vec::new();
        while taken < data.len() || !out.is_empty() {
            // A socket that takes 10000 bytes at a time.
            let n = out.pending().len().min(10_000);
            wire.extend_from_slice(&out.pending()[..n]);
            out.consume(n);
            if taken < data.len() {
                let space = out.body_space(&a.sealer, data.len() - taken);
                let k = space.len();
                if k > 0 {
                    space.copy_from_slice(&data[taken..taken + k]);
                    out.seal_body(&mut a.sealer, k).unwrap();
                    taken += k;
                }
            }
        }
        assert!(out.release());
        let mut d = Deframer::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut buf = vec![0u8; 100_000];
        while !rest.is_empty() {
            let pushed = d.push(&rest[..rest.len().min(30_000)]);
            rest = &rest[pushed..];
            loop {
                let n = d.read_plain(&mut b.opener, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn a_full_buffer_offers_no_body_space() {
        let (mut a, _) = pair(0);
        let mut out = SendBuffer::new(2 * 65537);
        assert_eq!(out.seal(&mut a.sealer, &[1u8; 200_000]).unwrap(), 2 * 65517);
        assert!(out.body_space(&a.sealer, 1000).is_empty());
        out.consume(10);
        assert!(
            out.body_space(&a.sealer, 1000).is_empty(),
            "10 bytes free is less than a frame"
        );
        out.consume(100);
        assert_eq!(out.body_space(&a.sealer, 1000).len(), 90);
    }

    #[test]
    fn padding_never_overflows_the_buffer() {
        let (mut a, _) = pair(1000);
        let mut out = SendBuffer::new(1500);
        assert_eq!(out.seal(&mut a.sealer, &[1u8; 5000]).unwrap(), 1000);
        assert_eq!(out.pending().len(), 1020);
        assert_eq!(
            out.seal(&mut a.sealer, &[1u8; 5000]).unwrap(),
            0,
            "480 bytes of room"
        );
    }
}
