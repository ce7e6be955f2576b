//! The key agent protocol (docs/key-agent.md): one fixed-size request per `SOCK_SEQPACKET`
//! message, one fixed-size response per request, matched by the request id. Sans-IO: bytes
//! in, bytes out; the agent and the workers' client both use this module.
//!
//! Invariants: encoding then decoding gives the same value; a message of any other size,
//! version or kind, or with a non-zero reserved field, decodes to an error, never a guess.

/// Protocol version, the first byte of every message.
pub const VERSION: u8 = 1;
/// Bytes of a request.
pub const REQUEST_LEN: usize = 72;
/// Bytes of a response.
pub const RESPONSE_LEN: usize = 40;

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// X25519(the agent's private key whose public key is `key`, `point`).
    Dh {
        id: u32,
        key: [u8; 32],
        point: [u8; 32],
    },
    /// The public key of the agent's key number `index` (0-based; the response also says
    /// how many keys there are), to list the keys.
    PublicKey { id: u32, index: u16 },
}

const KIND_DH: u8 = 1;
const KIND_PUBLIC_KEY: u8 = 2;

pub use crate::core::agent_error::Status;

/// A response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u32,
    pub status: Status,
    /// A public-key response: how many keys the agent holds (0 otherwise).
    pub count: u16,
    /// The DH result or the public key; zeros unless the status is [`Status::Ok`].
    pub value: [u8; 32],
}

impl Request {
    pub fn id(&self) -> u32 {
        match self {
            Request::Dh { id, .. } | Request::PublicKey { id, .. } => *id,
        }
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0] = VERSION;
        match self {
            Request::Dh { id, key, point } => {
                out[1] = KIND_DH;
                out[4..8].copy_from_slice(&id.to_be_bytes());
                out[8..40].copy_from_slice(key);
                out[40..72].copy_from_slice(point);
            }
            Request::PublicKey { id, index } => {
                out[1] = KIND_PUBLIC_KEY;
                out[2..4].copy_from_slice(&index.to_be_bytes());
                out[4..8].copy_from_slice(&id.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a request; on error, the id to answer with (0 when the message is too short
    /// to have one) and the status.
    pub fn decode(bytes: &[u8]) -> Result<Request, (u32, Status)> {
        let id = bytes
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if bytes.first().is_some_and(|&v| v != VERSION) {
            return Err((id, Status::BadVersion));
        }
        if bytes.len() != REQUEST_LEN {
            return Err((id, Status::BadRequest));
        }
        let field = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut f = [0u8; 32];
            f.copy_from_slice(&bytes[r]);
            f
        };
        match bytes[1] {
            KIND_DH if bytes[2..4] == [0, 0] => Ok(Request::Dh {
                id,
                key: field(8..40),
                point: field(40..72),
            }),
            KIND_PUBLIC_KEY if bytes[8..].iter().all(|&b| b == 0) => Ok(Request::PublicKey {
                id,
                index: u16::from_be_bytes([bytes[2], bytes[3]]),
            }),
            _ => Err((id, Status::BadRequest)),
        }
    }
}

impl Response {
    /// A refusal: no value.
    pub fn refusal(id: u32, status: Status) -> Response {
        Response {
            id,
            status,
            count: 0,
            value: [0; 32],
        }
    }

    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        out[0] = VERSION;
        out[1] = self.status.code();
        out[2..4].copy_from_slice(&self.count.to_be_bytes());
        out[4..8].copy_from_slice(&self.id.to_be_bytes());
        out[8..40].copy_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, &'static str> {
        if bytes.len() != RESPONSE_LEN {
            return Err("wrong size");
        }
        if bytes[0] != VERSION {
            return Err("wrong version");
        }
        let mut value = [0u8; 32];
        value.copy_from_slice(&bytes[8..40]);
        let status = Status::from_code(bytes[1]);
        if status != Status::Ok && value != [0; 32] {
            return Err("a value with a refusal");
        }
        Ok(Response {
            id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            status,
            count: u16::from_be_bytes([bytes[2], bytes[3]]),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_byte_for_byte() {
        let dh = Request::Dh {
            id: 0x01020304,
            key: [7; 32],
            point: [9; 32],
        };
        let bytes = dh.encode();
        assert_eq!(&bytes[..8], &[1, 1, 0, 0, 1, 2, 3, 4]);
        assert_eq!(Request::decode(&bytes), Ok(dh));
        let list = Request::PublicKey { id: 5, index: 258 };
        assert_eq!(&list.encode()[..8], &[1, 2, 1, 2, 0, 0, 0, 5]);
        assert_eq!(Request::decode(&list.encode()), Ok(list));
        let r = Response {
            id: 77,
            status: Status::Ok,
            count: 2,
            value: [3; 32],
        };
        assert_eq!(&r.encode()[..8], &[1, 0, 0, 2, 0, 0, 0, 77]);
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = Request::Dh {
            id: 9,
            key: [1; 32],
            point: [2; 32],
        }
        .encode();
        assert_eq!(Request::decode(&good[..71]), Err((9, Status::BadRequest)));
        assert_eq!(Request::decode(&[1, 1]), Err((0, Status::BadRequest)));
        assert_eq!(Request::decode(&[]), Err((0, Status::BadRequest)));
        let mut v = good;
        v[0] = 2;
        assert_eq!(Request::decode(&v), Err((9, Status::BadVersion)));
        let mut k = good;
        k[1] = 3;
        assert_eq!(Request::decode(&k), Err((9, Status::BadRequest)));
        let mut reserved = good;
        reserved[3] = 1;
        assert_eq!(Request::decode(&reserved), Err((9, Status::BadRequest)));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Request::decode(&long), Err((9, Status::BadRequest)));
        let mut refusal = Response::refusal(1, Status::LowOrder).encode();
        assert!(Response::decode(&refusal).is_ok());
        refusal[20] = 1;
        assert!(Response::decode(&refusal).is_err());
        assert!(Response::decode(&refusal[..39]).is_err());
    }
}
