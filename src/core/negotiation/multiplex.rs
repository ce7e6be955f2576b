//! The multiplexing field of the negotiation data (docs/multiplex.md §2).
//!
//! An initiator that wants a multiplexed link appends the 5 bytes `4e 53 4d 58 VERSION`
//! ("NSMX", version 1) to the negotiation data of its first message, after whatever its
//! codec wrote (`00 01 dh cipher hash pattern` for virgil, nothing for empty). The field is
//! in the prologue like all first negotiation data, so the handshake authenticates it.
//!
//! A responder that does not multiplex does not recognise the longer data and answers with
//! an explicit reject (docs/protocol.md §3.2), so the initiator learns it at once and falls
//! back to one connection per client. A multiplexing responder strips the field, decides on
//! the rest as usual, and repeats the field in a retry or switch answer (the initiator then
//! repeats it in its retry message). The link multiplexes exactly when the initiator's first
//! negotiation data carries the field and the handshake completes ([`agreed`]); the
//! acceptor's first frame confirms it in band (`crate::core::mux::session`).

/// The field's tag.
pub const TAG: [u8; 4] = *b"NSMX";
/// The one version defined.
pub const VERSION: u8 = 1;
/// Bytes the field adds.
pub const FIELD_LEN: usize = TAG.len() + 1;

/// Appends the field to negotiation data.
pub fn append(data: &mut Vec<u8>) {
    data.extend_from_slice(&TAG);
    data.push(VERSION);
}

/// Splits negotiation data into what precedes the field and the version it offers (any
/// version: the caller refuses those it does not speak).
pub fn split(data: &[u8]) -> (&[u8], Option<u8>) {
    match data.len().checked_sub(FIELD_LEN) {
        Some(at) if data[at..at + TAG.len()] == TAG => (&data[..at], Some(data[data.len() - 1])),
        _ => (data, None),
    }
}

/// Whether a completed handshake whose first negotiation data was `initial` (both sides
/// have it: `HandshakeInfo::initial_negotiation`) set up a multiplexed link.
pub fn agreed(initial: &[u8]) -> bool {
    split(initial).1 == Some(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virgil_with_field() {
        let mut d = vec![0, 1, 1, 1, 1, 9];
        append(&mut d);
        assert_eq!(d, [0, 1, 1, 1, 1, 9, 0x4e, 0x53, 0x4d, 0x58, 1]);
        assert_eq!(split(&d), (&d[..6], Some(1)));
        assert!(agreed(&d));
        assert_eq!(split(&d[..6]), (&d[..6], None));
        assert_eq!(split(b"NSMX"), (&b"NSMX"[..], None));
        assert_eq!(split(b"NSMX\x02"), (&b""[..], Some(2)));
        assert!(!agreed(b"NSMX\x02"));
    }
}
