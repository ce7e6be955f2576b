//! Transport phase: encrypting plaintext into frames and opening frames in place.
//!
//! After the handshake, `snow`'s split gives one key per direction; this module runs the AEAD
//! itself (aws-lc-rs's ChaCha20-Poly1305 and AES-256-GCM, see [`super::crypto`]) so that both
//! directions work in place on the caller's buffers: [`Transport::seal`] copies plaintext
//! once into the output buffer and encrypts it there, many frames per call;
//! [`Transport::open`] decrypts a frame where it lies.
//! Nonces follow the Noise spec: 4 zero bytes then the 64-bit counter, little-endian for
//! ChaChaPoly and big-endian for AESGCM. A direction refuses to work after 2^64-1 messages.
//! A frame is never emitted with an empty body.

use std::ops::Range;

use super::crypto::aead::{self, Aad, Algorithm, LessSafeKey, Nonce, UnboundKey};
use snow::params::CipherChoice;

use super::error::{Error, Result};
use super::frame::{transport_frame, FrameStatus};
use super::payload::{self, FRAME_OVERHEAD, MAX_BODY, TAG_LEN};

/// Offset of the body within a transport frame (`u16 len | u16 body_len | body`).
pub const BODY_OFFSET: usize = 4;

/// One direction's cipher state.
pub struct CipherState {
    alg: &'static Algorithm,
    key: LessSafeKey,
    nonce: u64,
    big_endian_nonce: bool,
}

impl CipherState {
    pub fn new(cipher: CipherChoice, key: &[u8; 32]) -> Result<Self> {
        let (alg, big_endian_nonce) = match cipher {
            CipherChoice::ChaChaPoly => (&aead::CHACHA20_POLY1305, false),
            CipherChoice::AESGCM => (&aead::AES_256_GCM, true),
            // Reachable only if another crate enables snow's XChaChaPoly.
            #[allow(unreachable_patterns)]
            _ => return Err(Error::Config("unsupported cipher".into())),
        };
        let key = UnboundKey::new(alg, key).map_err(|_| Error::Internal("AEAD key".into()))?;
        Ok(CipherState {
            alg,
            key: LessSafeKey::new(key),
            nonce: 0,
            big_endian_nonce,
        })
    }

    fn next_nonce(&mut self) -> Result<Nonce> {
        if self.nonce == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&if self.big_endian_nonce {
            self.nonce.to_be_bytes()
        } else {
            self.nonce.to_le_bytes()
        });
        self.nonce += 1;
        Ok(Nonce::assume_unique_for_key(bytes))
    }

    /// Encrypts `buf[..len]` in place and writes the tag at `buf[len..len + 16]`.
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<()> {
        let nonce = self.next_nonce()?;
        let (data, rest) = buf.split_at_mut(len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), data)
            .map_err(|_| Error::Internal("AEAD seal".into()))?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts `buf` (ciphertext then tag) in place; returns the plaintext length.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<usize> {
        let nonce = self.next_nonce()?;
        self.key
            .open_in_place(nonce, Aad::empty(), buf)
            .map(|pt| pt.len())
            .map_err(|_| Error::Decrypt("bad MAC in transport message"))
    }

    /// Messages processed so far with this key.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// The Noise `Rekey()`: the key becomes the first 32 bytes of the encryption of 32 zero
    /// bytes under nonce 2^64-1 (never used for a message) with empty associated data; the
    /// nonce counter goes on. Both ends must do it at the same message boundary (the
    /// multiplexed links signal it in band, docs/multiplex.md §6).
    pub fn rekey(&mut self) -> Result<()> {
        // 2^64-1 is all ones in either byte order.
        let nonce = Nonce::assume_unique_for_key([
            0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        let mut next = zeroize::Zeroizing::new([0u8; 32]);
        let _tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut next[..])
            .map_err(|_| Error::Internal("AEAD rekey".into()))?;
        let key =
            UnboundKey::new(self.alg, &next[..]).map_err(|_| Error::Internal("AEAD key".into()))?;
        self.key = LessSafeKey::new(key);
        Ok(())
    }
}

/// The sending direction: plaintext in, whole frames out.
pub struct Sealer {
    cipher: CipherState,
    pad_to: usize,
}

/// The receiving direction: frames opened in place.
pub struct Opener {
    cipher: CipherState,
}

/// Both directions of an established NoiseSocket session.
pub struct Transport {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// The result of [`Opener::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// More ciphertext is needed for the frame at the start of the buffer.
    Incomplete,
    /// A frame of `consumed` bytes was opened; its body is `body` (indices into the buffer).
    /// The body may be empty (a padding or keepalive message, or a bare `00 00` frame).
    Frame { consumed: usize, body: Range<usize> },
}

impl Transport {
    pub fn new(send: CipherState, recv: CipherState, pad_to: usize) -> Self {
        Transport {
            sealer: Sealer {
                cipher: send,
                pad_to,
            },
            opener: Opener { cipher: recv },
        }
    }

    /// See [`Sealer::seal`].
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<(usize, usize)> {
        self.sealer.seal(plaintext, out)
    }

    /// See [`Opener::open`].
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened> {
        self.opener.open(buf)
    }

    /// The two directions, for callers that drive them from different threads.
    pub fn into_halves(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }

    /// Messages sent and received so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.sealer.cipher.nonce(), self.opener.cipher.nonce())
    }
}

impl Sealer {
    /// Rekeys the sending direction ([`CipherState::rekey`]).
    pub fn rekey(&mut self) -> Result<()> {
        self.cipher.rekey()
    }

    /// Size of the frame that carries a body of `body` bytes.
    pub fn frame_len(&self, body: usize) -> usize {
        FRAME_OVERHEAD + payload::padded_len(body, self.pad_to)
    }

    /// The largest body that fits, with its padding, in a frame of at most `room` bytes.
    pub fn max_body(&self, room: usize) -> usize {
        if room <= FRAME_OVERHEAD {
            return 0;
        }
        let body = (room - FRAME_OVERHEAD).min(MAX_BODY);
        if self.pad_to > 1 && payload::padded_len(body, self.pad_to) > room - FRAME_OVERHEAD {
            return body / self.pad_to * self.pad_to;
        }
        body
    }

    /// Seals a frame whose body the caller already placed at `frame[BODY_OFFSET..]`
    /// (`body_len` bytes, at most 65517): writes the length fields and padding, encrypts in
    /// place and returns the frame's length. `frame` must hold [`Sealer::frame_len`] bytes. An
    /// empty body is allowed: such a frame proves the keys and carries nothing.
    pub fn seal_prepared(&mut self, frame: &mut [u8], body_len: usize) -> Result<usize> {
        let padded = payload::padded_len(body_len, self.pad_to);
        let len = FRAME_OVERHEAD + padded;
        if body_len > MAX_BODY || frame.len() < len {
            return Err(Error::Internal(format!(
                "cannot seal a body of {body_len} bytes"
            )));
        }
        frame[..2].copy_from_slice(&((2 + padded + TAG_LEN) as u16).to_be_bytes());
        frame[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
        frame[BODY_OFFSET + body_len..BODY_OFFSET + padded].fill(0);
        self.cipher.seal_in_place(&mut frame[2..len], 2 + padded)?;
        Ok(len)
    }

    /// Encrypts as much of `plaintext` as fits into `out` as whole frames (bodies up to
    /// 65517 bytes). Returns (plaintext bytes consumed, bytes written). Writes nothing when
    /// `plaintext` is empty or `out` cannot hold a frame with at least one byte of body.
    pub fn seal(&mut self, mut plaintext: &[u8], out: &mut [u8]) -> Result<(usize, usize)> {
        let mut consumed = 0;
        let mut written = 0;
        while !plaintext.is_empty() {
            let body = self.max_body(out.len() - written).min(plaintext.len());
            if body == 0 {
                break;
            }
            let frame = &mut out[written..];
            frame[BODY_OFFSET..BODY_OFFSET + body].copy_from_slice(&plaintext[..body]);
            written += self.seal_prepared(frame, body)?;
            consumed += body;
            plaintext = &plaintext[body..];
        }
        Ok((consumed, written))
    }
}

impl Opener {
    /// Rekeys the receiving direction ([`CipherState::rekey`]).
    pub fn rekey(&mut self) -> Result<()> {
        self.cipher.rekey()
    }

    /// Opens the frame at the start of `buf` in place.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened> {
        match transport_frame(buf)? {
            FrameStatus::Incomplete(_) => Ok(Opened::Incomplete),
            FrameStatus::Complete(2) => Ok(Opened::Frame {
                consumed: 2,
                body: 2..2,
            }),
            FrameStatus::Complete(len) => {
                let pt_len = self.cipher.open_in_place(&mut buf[2..len])?;
                let body = payload::body_range(&buf[2..2 + pt_len])?;
                Ok(Opened::Frame {
                    consumed: len,
                    body: body.start + 2..body.end + 2,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: CipherChoice, pad: usize) -> (Transport, Transport) {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let a = Transport::new(
            CipherState::new(cipher, &k1).unwrap(),
            CipherState::new(cipher, &k2).unwrap(),
            pad,
        );
        let b = Transport::new(
            CipherState::new(cipher, &k2).unwrap(),
            CipherState::new(cipher, &k1).unwrap(),
            pad,
        );
        (a, b)
    }

    #[test]
    fn splits_large_writes_and_round_trips() {
        for cipher in [CipherChoice::ChaChaPoly, CipherChoice::AESGCM] {
            let (mut a, mut b) = pair(cipher, 0);
            let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let mut wire = vec![0u8; 300_000];
            let (used, n) = a.seal(&data, &mut wire).unwrap();
            assert_eq!(used, data.len());
            assert_eq!(n, data.len() + 4 * FRAME_OVERHEAD); // 65517 * 3 + 3449
            let mut got = Vec::new();
            let mut pos = 0;
            while pos < n {
                match b.open(&mut wire[pos..n]).unwrap() {
                    Opened::Frame { consumed, body } => {
                        assert!(consumed <= 65537);
                        got.extend_from_slice(&wire[pos + body.start..pos + body.end]);
                        pos += consumed;
                    }
                    Opened::Incomplete => panic!("incomplete"),
                }
            }
            assert_eq!(got, data);
        }
    }

    #[test]
    fn fills_only_what_fits_and_never_empty_frames() {
        let (mut a, _) = pair(CipherChoice::ChaChaPoly, 32);
        let mut out = [0u8; 60];
        assert_eq!(a.seal(b"", &mut out).unwrap(), (0, 0));
        assert_eq!(a.seal(&[7u8; 100], &mut out[..20]).unwrap(), (0, 0));
        // 60 bytes: 20 overhead + 40 of room, padding to 32 leaves a body of 32.
        assert_eq!(a.seal(&[7u8; 100], &mut out).unwrap(), (32, 52));
    }

    #[test]
    fn tampered_frame_fails() {
        let (mut a, mut b) = pair(CipherChoice::AESGCM, 0);
        let mut wire = [0u8; 64];
        let (_, n) = a.seal(b"hello", &mut wire).unwrap();
        wire[5] ^= 1;
        assert!(matches!(b.open(&mut wire[..n]), Err(Error::Decrypt(_))));
    }

    #[test]
    fn bare_empty_frame_is_skipped() {
        let (_, mut b) = pair(CipherChoice::AESGCM, 0);
        let mut wire = [0u8, 0, 9];
        assert_eq!(
            b.open(&mut wire).unwrap(),
            Opened::Frame {
                consumed: 2,
                body: 2..2
            }
        );
    }
}
