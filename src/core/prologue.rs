//! NoiseSocket prologues (docs/protocol.md §2), 2018-05-01 layout.
//!
//! `S(x)` is `u16be(len(x)) || x`; the application prologue is appended last.
//! * Init1 (accept): `"NoiseSocketInit1" S(neg_A1) app`
//! * Init2 (switch): `"NoiseSocketInit2" S(neg_A1) S(noise_A1) S(neg_B1) app`
//! * Init3 (retry):  `"NoiseSocketInit3" S(neg_A1) S(noise_A1) S(neg_B1) 00 00 S(neg_A2) app`
//!
//! Every field is at most 65535 bytes (the frame parser guarantees it), so the u16 lengths
//! never truncate.

const INIT1: &[u8; 16] = b"NoiseSocketInit1";
const INIT2: &[u8; 16] = b"NoiseSocketInit2";
const INIT3: &[u8; 16] = b"NoiseSocketInit3";

fn push_sized(out: &mut Vec<u8>, field: &[u8]) {
    debug_assert!(field.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

/// Prologue of the initial protocol.
pub fn init1(neg_a1: &[u8], app: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + neg_a1.len() + app.len());
    out.extend_from_slice(INIT1);
    push_sized(&mut out, neg_a1);
    out.extend_from_slice(app);
    out
}

/// Prologue of the protocol the responder switches to.
pub fn init2(neg_a1: &[u8], noise_a1: &[u8], neg_b1: &[u8], app: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + neg_a1.len() + noise_a1.len() + neg_b1.len() + app.len());
    out.extend_from_slice(INIT2);
    push_sized(&mut out, neg_a1);
    push_sized(&mut out, noise_a1);
    push_sized(&mut out, neg_b1);
    out.extend_from_slice(app);
    out
}

/// Prologue of the protocol the initiator retries with.
pub fn init3(neg_a1: &[u8], noise_a1: &[u8], neg_b1: &[u8], neg_a2: &[u8], app: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        26 + neg_a1.len() + noise_a1.len() + neg_b1.len() + neg_a2.len() + app.len(),
    );
    out.extend_from_slice(INIT3);
    push_sized(&mut out, neg_a1);
    push_sized(&mut out, noise_a1);
    push_sized(&mut out, neg_b1);
    out.extend_from_slice(&[0, 0]);
    push_sized(&mut out, neg_a2);
    out.extend_from_slice(app);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_init1() {
        assert_eq!(
            hex::encode(init1(b"", b"")),
            "4e6f697365536f636b6574496e6974310000"
        );
        assert_eq!(
            hex::encode(init1(&[0, 1, 1, 2, 2, 9], b"")),
            "4e6f697365536f636b6574496e6974310006000101020209"
        );
    }

    #[test]
    fn golden_init2_and_init3() {
        let msg1 = [0xabu8; 48];
        let p2 = init2(b"NoiseSocket", &msg1, b"Switch", b"John Galt");
        let mut want = b"NoiseSocketInit2\x00\x0bNoiseSocket\x00\x30".to_vec();
        want.extend_from_slice(&msg1);
        want.extend_from_slice(b"\x00\x06SwitchJohn Galt");
        assert_eq!(p2, want);

        let p3 = init3(b"NoiseSocket", &msg1, b"Retry", b"", b"John Galt");
        let mut want = b"NoiseSocketInit3\x00\x0bNoiseSocket\x00\x30".to_vec();
        want.extend_from_slice(&msg1);
        want.extend_from_slice(b"\x00\x05Retry\x00\x00\x00\x00John Galt");
        assert_eq!(p3, want);
    }
}
