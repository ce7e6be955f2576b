//! Negotiation-data encodings.
//!
//! * `virgil`: `u16be version=1 | dh | cipher | hash | pattern` with noise-c ids
//!   (docs/protocol.md §3.2), as the Go library and Virgil's nginx module send it.
//!   Responses: accept is empty data; a switch or retry names the new protocol in the same
//!   6 bytes (switch with a Noise message, retry with an empty one); reject is `00 01 FF`
//!   (version, status 0xFF). A Go server's one-byte `FF` is read as a reject too.
//! * `empty`: no negotiation data; the responder must already know the protocol.

use std::fmt;
use std::str::FromStr;

use crate::core::error::{Error, Result};
use crate::core::protocol::{NoiseCIds, Protocol};

/// Explicit reject in the Virgil form.
pub const VIRGIL_REJECT: [u8; 3] = [0, 1, 0xff];

/// The negotiation-data encoding an initiator uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    #[default]
    Virgil,
    Empty,
}

impl FromStr for Codec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "virgil" => Ok(Codec::Virgil),
            "empty" => Ok(Codec::Empty),
            _ => Err(Error::Config(format!(
                "unknown negotiation \"{s}\" (virgil or empty)"
            ))),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Virgil => "virgil",
            Codec::Empty => "empty",
        })
    }
}

/// What a responder found in an initiator's first negotiation data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Empty data: the responder's default protocol.
    Default,
    /// A Virgil-format offer of a protocol we know.
    Named(Protocol),
    /// A well-formed Virgil offer of a protocol we cannot run.
    Unknown,
    /// Not a format we know.
    Unrecognised,
}

impl Codec {
    /// The data naming `protocol` in an initial or retry message.
    pub fn encode(self, protocol: &Protocol) -> Result<Vec<u8>> {
        match self {
            Codec::Empty => Ok(Vec::new()),
            Codec::Virgil => encode_virgil(protocol),
        }
    }
}

pub fn encode_virgil(protocol: &Protocol) -> Result<Vec<u8>> {
    let ids = protocol.noise_c_ids().ok_or_else(|| {
        Error::Config(format!(
            "{protocol} cannot be named in virgil negotiation data (psk variant); use empty"
        ))
    })?;
    Ok(vec![0, 1, ids.dh, ids.cipher, ids.hash, ids.pattern])
}

fn decode_virgil(data: &[u8]) -> Option<Option<Protocol>> {
    match data {
        [0, 1, dh, cipher, hash, pattern] => Some(Protocol::from_noise_c_ids(NoiseCIds {
            dh: *dh,
            cipher: *cipher,
            hash: *hash,
            pattern: *pattern,
        })),
        _ => None,
    }
}

/// Responder side: detects the format of an initiator's data and decodes it.
pub fn detect_offer(data: &[u8]) -> Offer {
    if data.is_empty() {
        return Offer::Default;
    }
    match decode_virgil(data) {
        Some(Some(p)) => Offer::Named(p),
        Some(None) => Offer::Unknown,
        None => Offer::Unrecognised,
    }
}

/// Initiator side: what a non-empty response names. `None` means a reject.
pub fn decode_response(data: &[u8]) -> Result<Option<Protocol>> {
    if data == VIRGIL_REJECT || data == [0xff] {
        return Ok(None);
    }
    match decode_virgil(data) {
        Some(Some(p)) => Ok(Some(p)),
        _ => Err(Error::BadNegotiation(data.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virgil_round_trip() {
        let p = Protocol::parse("Noise_XX_25519_AESGCM_BLAKE2b").unwrap();
        let data = Codec::Virgil.encode(&p).unwrap();
        assert_eq!(data, [0, 1, 1, 2, 2, 9]);
        assert_eq!(detect_offer(&data), Offer::Named(p.clone()));
        assert_eq!(decode_response(&data).unwrap(), Some(p));
    }

    #[test]
    fn detection() {
        assert_eq!(detect_offer(b""), Offer::Default);
        assert_eq!(detect_offer(&[0, 1, 2, 1, 1, 9]), Offer::Unknown); // DH 448
        assert_eq!(detect_offer(&[0, 1, 1, 1, 1, 16]), Offer::Unknown); // XXfallback
        assert_eq!(detect_offer(b"NoiseSocket"), Offer::Unrecognised);
        assert_eq!(decode_response(&VIRGIL_REJECT).unwrap(), None);
        assert_eq!(decode_response(&[0xff]).unwrap(), None);
        assert!(decode_response(b"??").is_err());
    }
}
