//! The encrypted-payload layout `u16be body_len | body | padding` (docs/protocol.md §1.3)
//! and the sizes that follow from it.
//!
//! Padding is zeros on send and ignored on receive. The padding policy `pad_to` (0 = off) makes
//! body plus padding a multiple of `pad_to` bytes, never beyond [`MAX_BODY`].

use std::ops::Range;

use super::error::{Error, Result};

/// Largest Noise message (and NoiseSocket length field).
pub const MAX_MESSAGE: usize = 65535;
/// AEAD tag length of both ChaChaPoly and AESGCM.
pub const TAG_LEN: usize = 16;
/// Largest body of one transport message: 65535 - 16 - 2.
pub const MAX_BODY: usize = MAX_MESSAGE - TAG_LEN - 2;
/// Smallest valid transport `noise_message`: `body_len` plus tag.
pub const MIN_TRANSPORT_MESSAGE: usize = 2 + TAG_LEN;
/// Bytes a transport frame adds to its body (without padding): length, body_len, tag.
pub const FRAME_OVERHEAD: usize = 2 + 2 + TAG_LEN;
/// Largest transport frame on the wire.
pub const MAX_FRAME: usize = 2 + MAX_MESSAGE;

/// Length of body plus padding for a body of `body` bytes.
pub fn padded_len(body: usize, pad_to: usize) -> usize {
    if pad_to <= 1 || body == MAX_BODY {
        return body;
    }
    body.div_ceil(pad_to)
        .saturating_mul(pad_to)
        .min(MAX_BODY)
        .max(body)
}

/// Writes `u16be body_len | body | zero padding` (padding to `padded` bytes) into `out` and
/// returns the bytes written. `out` must hold `2 + padded` bytes and `body.len() <= padded`.
pub fn encode(body: &[u8], padded: usize, out: &mut [u8]) -> usize {
    debug_assert!(body.len() <= padded && padded <= MAX_BODY && out.len() >= 2 + padded);
    out[..2].copy_from_slice(&(body.len() as u16).to_be_bytes());
    out[2..2 + body.len()].copy_from_slice(body);
    out[2 + body.len()..2 + padded].fill(0);
    2 + padded
}

/// The body inside a decrypted payload. An empty payload is an empty body (deployed peers
/// send it for empty handshake payloads).
pub fn body_range(payload: &[u8]) -> Result<Range<usize>> {
    match payload.len() {
        0 => Ok(0..0),
        1 => Err(Error::BodyLength {
            body_len: 0,
            available: 0,
        }),
        n => {
            let body_len = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
            if body_len > n - 2 {
                return Err(Error::BodyLength {
                    body_len,
                    available: n - 2,
                });
            }
            Ok(2..2 + body_len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_policy() {
        assert_eq!(padded_len(15, 32), 32);
        assert_eq!(padded_len(33, 32), 64);
        assert_eq!(padded_len(0, 32), 0);
        assert_eq!(padded_len(7, 0), 7);
        assert_eq!(padded_len(MAX_BODY - 1, 1000), MAX_BODY);
    }

    #[test]
    fn encode_and_decode() {
        let mut out = [0xffu8; 40];
        let n = encode(b"hello", 32, &mut out);
        assert_eq!(n, 34);
        assert_eq!(&out[..7], b"\x00\x05hello");
        assert!(out[7..34].iter().all(|b| *b == 0));
        assert_eq!(body_range(&out[..n]).unwrap(), 2..7);
    }

    #[test]
    fn body_len_larger_than_payload() {
        assert!(matches!(
            body_range(b"\x00\x09abc"),
            Err(Error::BodyLength {
                body_len: 9,
                available: 3
            })
        ));
        assert!(body_range(b"\x00").is_err());
        assert_eq!(body_range(b"").unwrap(), 0..0);
    }
}
