//! Incremental parsing of NoiseSocket frames (docs/protocol.md §1.1, §1.2).
//!
//! * [`HandshakeReader`] assembles one handshake message `u16 neg_len | neg | u16 noise_len |
//!   noise` from input split at any byte. It consumes exactly up to the end of the message and
//!   never more, so bytes after the last handshake message stay with the caller. Memory grows
//!   only with bytes received (nothing is reserved for an announced length), and each field
//!   is capped at what a legitimate message needs ([`MAX_NEGOTIATION_DATA`],
//!   [`MAX_NOISE_MESSAGE`]): a peer that announces more is refused at once instead of
//!   pinning memory until the handshake timeout (docs/protocol.md §1.4).
//! * [`transport_frame`] inspects the start of a buffer holding transport frames: it tells
//!   whether a whole frame is there and how long it is, rejecting lengths under 18 bytes.

use super::error::{Error, Result};
use super::payload::MIN_TRANSPORT_MESSAGE;

/// Longest negotiation data accepted: Virgil's is 6 bytes, deployed peers send short strings
/// (the published vectors: 11); 256 leaves room for any format we might meet.
pub const MAX_NEGOTIATION_DATA: usize = 256;
/// Longest noise message accepted in a handshake. Every protocol we run uses 25519: the DH
/// fields of a message are at most 96 bytes (`e`, an encrypted `s` and a tag), and our
/// peers' handshake payloads are empty or padded; 4 KiB allows padding up to 4000 bytes.
pub const MAX_NOISE_MESSAGE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    NegLen,
    Neg,
    NoiseLen,
    Noise,
    Done,
}

/// Assembles one handshake message.
#[derive(Debug)]
pub struct HandshakeReader {
    field: Field,
    len_bytes: [u8; 2],
    len_have: usize,
    want: usize,
    neg: Vec<u8>,
    noise: Vec<u8>,
    /// A field announced too long: the reader stops.
    failed: Option<Error>,
}

impl Default for HandshakeReader {
    fn default() -> Self {
        Self::new()
    }
}

impl HandshakeReader {
    pub fn new() -> Self {
        HandshakeReader {
            field: Field::NegLen,
            len_bytes: [0; 2],
            len_have: 0,
            want: 0,
            neg: Vec::new(),
            noise: Vec::new(),
            failed: None,
        }
    }

    /// Why the reader stopped, if a field was announced too long (taken once).
    pub fn take_error(&mut self) -> Option<Error> {
        self.failed.take()
    }

    /// Consumes bytes of the current message; returns how many were used. Stops at the end of
    /// the message.
    pub fn feed(&mut self, mut input: &[u8]) -> usize {
        let start = input.len();
        while !input.is_empty() && self.field != Field::Done && self.failed.is_none() {
            match self.field {
                Field::NegLen | Field::NoiseLen => {
                    self.len_bytes[self.len_have] = input[0];
                    self.len_have += 1;
                    input = &input[1..];
                    if self.len_have == 2 {
                        self.len_have = 0;
                        self.want = usize::from(u16::from_be_bytes(self.len_bytes));
                        let (field, max) = if self.field == Field::NegLen {
                            ("negotiation data", MAX_NEGOTIATION_DATA)
                        } else {
                            ("a noise message", MAX_NOISE_MESSAGE)
                        };
                        if self.want > max {
                            self.failed = Some(Error::HandshakeFieldTooLong {
                                field,
                                len: self.want,
                                max,
                            });
                            break;
                        }
                        self.field = if self.field == Field::NegLen {
                            Field::Neg
                        } else {
                            Field::Noise
                        };
                        self.skip_empty();
                    }
                }
                Field::Neg | Field::Noise => {
                    let buf = if self.field == Field::Neg {
                        &mut self.neg
                    } else {
                        &mut self.noise
                    };
                    let take = (self.want - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if buf.len() == self.want {
                        self.field = if self.field == Field::Neg {
                            Field::NoiseLen
                        } else {
                            Field::Done
                        };
                    }
                }
                Field::Done => {}
            }
        }
        start - input.len()
    }

    fn skip_empty(&mut self) {
        if self.want == 0 {
            self.field = if self.field == Field::Neg {
                Field::NoiseLen
            } else {
                Field::Done
            };
        }
    }

    /// The negotiation data is complete (the noise part may still be missing).
    pub fn has_negotiation(&self) -> bool {
        matches!(self.field, Field::NoiseLen | Field::Noise | Field::Done)
    }

    /// Nothing of a message was read yet.
    pub fn is_empty(&self) -> bool {
        self.field == Field::NegLen && self.len_have == 0
    }

    pub fn is_complete(&self) -> bool {
        self.field == Field::Done
    }

    pub fn negotiation(&self) -> &[u8] {
        &self.neg
    }

    pub fn noise(&self) -> &[u8] {
        &self.noise
    }

    /// Takes the finished message (negotiation data, noise message) and resets the reader.
    pub fn take(&mut self) -> (Vec<u8>, Vec<u8>) {
        let neg = std::mem::take(&mut self.neg);
        let noise = std::mem::take(&mut self.noise);
        *self = HandshakeReader::new();
        (neg, noise)
    }
}

/// A transport frame at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// More bytes are needed; at least this many in all.
    Incomplete(usize),
    /// A whole frame of this many bytes (length field included). A frame of 2 bytes is the
    /// bare `00 00` some peers send for an empty write: it carries nothing and is skipped.
    Complete(usize),
}

/// Inspects the transport frame at the start of `buf`.
pub fn transport_frame(buf: &[u8]) -> Result<FrameStatus> {
    if buf.len() < 2 {
        return Ok(FrameStatus::Incomplete(2));
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len != 0 && len < MIN_TRANSPORT_MESSAGE {
        return Err(Error::FrameTooShort(len));
    }
    if buf.len() < 2 + len {
        return Ok(FrameStatus::Incomplete(2 + len));
    }
    Ok(FrameStatus::Complete(2 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_message_one_byte_at_a_time() {
        let wire = b"\x00\x03abc\x00\x02xyREST";
        let mut r = HandshakeReader::new();
        let mut used = 0;
        for i in 0..wire.len() {
            if r.is_complete() {
                break;
            }
            used += r.feed(&wire[i..i + 1]);
            if i == 4 {
                assert!(r.has_negotiation());
            }
        }
        assert!(r.is_complete());
        assert_eq!(used, 9);
        assert_eq!(r.take(), (b"abc".to_vec(), b"xy".to_vec()));
        assert!(r.is_empty());
    }

    #[test]
    fn handshake_message_all_at_once_stops_at_end() {
        let mut r = HandshakeReader::new();
        assert_eq!(r.feed(b"\x00\x00\x00\x01zTAIL"), 5);
        assert!(r.is_complete());
        assert_eq!(r.noise(), b"z");
    }

    #[test]
    fn empty_fields() {
        let mut r = HandshakeReader::new();
        assert_eq!(r.feed(b"\x00\x05Retry\x00\x00"), 9);
        assert!(r.is_complete());
        assert_eq!(r.negotiation(), b"Retry");
        assert!(r.noise().is_empty());
    }

    #[test]
    fn transport_frames() {
        assert_eq!(
            transport_frame(b"\x00").unwrap(),
            FrameStatus::Incomplete(2)
        );
        assert_eq!(
            transport_frame(b"\x00\x00").unwrap(),
            FrameStatus::Complete(2)
        );
        assert!(matches!(
            transport_frame(b"\x00\x11"),
            Err(Error::FrameTooShort(17))
        ));
        assert_eq!(
            transport_frame(&[0, 18, 1, 2]).unwrap(),
            FrameStatus::Incomplete(20)
        );
        assert_eq!(
            transport_frame(&[0xff, 0xff]).unwrap(),
            FrameStatus::Incomplete(65537)
        );
        let mut f = vec![0u8, 18];
        f.extend_from_slice(&[0; 18]);
        assert_eq!(transport_frame(&f).unwrap(), FrameStatus::Complete(20));
    }
}
