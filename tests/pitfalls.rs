//! Negative tests for the pitfalls of docs/protocol.md §6.2, plus the tolerances for
//! deployed peers of §6.1: oversize lengths, body_len beyond the payload, short transport
//! frames, late negotiation data, EOF inside a frame, tampered ciphertext, wrong remote key;
//! a cleartext `00 00` first payload, an encrypted handshake payload without body_len, a
//! bare `00 00` frame; and a low-order ephemeral key.

mod support;

use std::sync::Arc;

use nginx_noise::core::deframer::Deframer;
use nginx_noise::core::handshake::{Established, Handshake};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::transport::{CipherState, Opened};
use nginx_noise::core::Error;
use snow::params::CipherChoice;
use support::*;

const XX: &str = "XX_25519_ChaChaPoly_BLAKE2s";

fn xx_pair() -> (Handshake, Handshake) {
    start(
        policy(&[XX], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    )
}

fn established() -> (Established, Established) {
    let (a, b) = xx_pair();
    let out = pump(a, b, 64);
    (out.alice.unwrap(), out.bob.unwrap())
}

fn take(hs: &mut Handshake) -> Vec<u8> {
    let out = hs.pending_output().to_vec();
    hs.consume_output(out.len());
    out
}

#[test]
fn largest_handshake_messages_are_bounded_and_checked() {
    use nginx_noise::core::frame::{MAX_NEGOTIATION_DATA, MAX_NOISE_MESSAGE};
    // A noise message announced longer than any legitimate one is refused as soon as its
    // length is read, before its bytes arrive (nothing is reserved for it).
    let nk = "NK_25519_ChaChaPoly_BLAKE2s";
    let mut bob = Handshake::responder(
        Arc::new(policy(&[nk], Codec::Virgil, creds(Some(2), None))),
        settings(None),
    );
    let msg = vec![0, 6, 0, 1, 1, 1, 1, 5, 0xff, 0xff];
    assert!(matches!(
        bob.read(&msg),
        Err(Error::HandshakeFieldTooLong { len: 65535, .. })
    ));
    // At the cap, NK's encrypted message 1 of junk fails to authenticate.
    let mut bob = Handshake::responder(
        Arc::new(policy(&[nk], Codec::Virgil, creds(Some(2), None))),
        settings(None),
    );
    let mut msg = vec![0, 6, 0, 1, 1, 1, 1, 5];
    msg.extend_from_slice(&(MAX_NOISE_MESSAGE as u16).to_be_bytes());
    msg.extend(std::iter::repeat_n(0x41u8, MAX_NOISE_MESSAGE));
    assert!(matches!(bob.read(&msg), Err(Error::Decrypt(_))));
    // XX: message 1 is `e` plus a cleartext payload, which may be as large as the cap.
    let mut bob = xx_pair().1;
    msg[7] = 9;
    assert_eq!(bob.read(&msg).unwrap(), msg.len());
    assert_eq!(bob.received_payloads()[0].len(), MAX_NOISE_MESSAGE - 32);
    // Negotiation data over the cap is refused from its length alone ...
    let mut bob = xx_pair().1;
    assert!(matches!(
        bob.read(&[0xff, 0xff]),
        Err(Error::HandshakeFieldTooLong {
            field: "negotiation data",
            ..
        })
    ));
    // ... and at the cap it is read, then refused as unknown.
    let mut bob = xx_pair().1;
    let mut msg = (MAX_NEGOTIATION_DATA as u16).to_be_bytes().to_vec();
    msg.extend(std::iter::repeat_n(0u8, MAX_NEGOTIATION_DATA));
    msg.extend_from_slice(&[0, 32]);
    msg.extend_from_slice(&[1u8; 32]);
    assert!(matches!(bob.read(&msg), Err(Error::Refused(_))));
}

#[test]
fn body_len_larger_than_payload() {
    let key = [5u8; 32];
    let mut sealer = CipherState::new(CipherChoice::ChaChaPoly, &key).unwrap();
    let mut opener = nginx_noise::core::transport::Transport::new(
        CipherState::new(CipherChoice::ChaChaPoly, &[0; 32]).unwrap(),
        CipherState::new(CipherChoice::ChaChaPoly, &key).unwrap(),
        0,
    );
    // Payload says 255 bytes of body, holds 3.
    let mut frame = vec![0, 21, 0, 0xff, b'a', b'b', b'c'];
    frame.resize(2 + 21, 0);
    sealer.seal_in_place(&mut frame[2..], 5).unwrap();
    assert!(matches!(
        opener.open(&mut frame),
        Err(Error::BodyLength {
            body_len: 255,
            available: 3
        })
    ));
}

#[test]
fn transport_frame_under_18_bytes() {
    let (_, mut bob) = established();
    let mut frame = vec![0, 17];
    frame.extend_from_slice(&[0; 17]);
    assert!(matches!(
        bob.transport.open(&mut frame),
        Err(Error::FrameTooShort(17))
    ));
}

#[test]
fn non_empty_later_negotiation_data() {
    let (mut a, mut b) = xx_pair();
    let m1 = take(&mut a);
    b.read(&m1).unwrap();
    let m2 = take(&mut b);
    a.read(&m2).unwrap();
    let m3 = take(&mut a);
    assert_eq!(&m3[..2], &[0, 0]);
    let mut bad = vec![0, 1, 0x55];
    bad.extend_from_slice(&m3[2..]);
    assert!(matches!(b.read(&bad), Err(Error::LateNegotiation(1))));
}

#[test]
fn eof_inside_a_frame() {
    // Handshake: half a message, then EOF.
    let (mut a, mut b) = xx_pair();
    let m1 = take(&mut a);
    b.read(&m1[..5]).unwrap();
    assert!(matches!(b.eof(), Error::Truncated));
    // Between messages: a plain close.
    let (_, mut b) = xx_pair();
    assert!(matches!(b.eof(), Error::ClosedDuringHandshake));
    // Transport: a partial frame at EOF.
    let (mut alice, mut bob) = established();
    let mut wire = vec![0u8; 100];
    let (_, n) = alice.transport.seal(b"hello", &mut wire).unwrap();
    let mut input = Deframer::new();
    input.push(&wire[..n - 1]);
    assert!(input.next(&mut bob.transport.opener).unwrap().is_none());
    assert!(matches!(input.check_eof(), Err(Error::Truncated)));
}

#[test]
fn tampered_ciphertext() {
    // Handshake message 2 (encrypted static key).
    let (mut a, mut b) = xx_pair();
    let m1 = take(&mut a);
    b.read(&m1).unwrap();
    let mut m2 = take(&mut b);
    let last = m2.len() - 1;
    m2[last] ^= 0x80;
    assert!(matches!(a.read(&m2), Err(Error::Decrypt(_))));
    // Transport.
    let (mut alice, mut bob) = established();
    let mut wire = vec![0u8; 100];
    let (_, n) = alice.transport.seal(b"hello", &mut wire).unwrap();
    wire[4] ^= 1;
    assert!(matches!(
        bob.transport.open(&mut wire[..n]),
        Err(Error::Decrypt(_))
    ));
}

#[test]
fn wrong_remote_key() {
    // IK with the wrong server key: the server cannot read message 1.
    let ik = "IK_25519_ChaChaPoly_BLAKE2s";
    let (a, b) = start(
        policy(&[ik], Codec::Virgil, creds(Some(1), Some(public(7)))),
        policy(&[ik], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 64);
    assert!(matches!(out.bob, Err(Error::Decrypt(_))));
    assert!(out.alice.is_err());
    // XX with a pinned key that differs from the one the server proves.
    let (a, b) = start(
        policy(&[XX], Codec::Virgil, creds(Some(1), Some(public(7)))),
        policy(&[XX], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 64);
    assert!(
        matches!(out.alice, Err(Error::WrongRemoteKey { role: "server", key }) if key == public(2))
    );
}

#[test]
fn cleartext_first_payload_of_00_00_is_ignored() {
    let alice = Handshake::initiator_with_payload(
        Arc::new(policy(&[XX], Codec::Virgil, creds(Some(1), None))),
        settings(None),
        vec![0, 0],
    )
    .unwrap();
    let bob = xx_pair().1;
    let out = pump(alice, bob, 64);
    assert!(out.alice.is_ok() && out.bob.is_ok());
}

#[test]
fn encrypted_handshake_payload_without_body_len() {
    // A raw snow initiator (NK) that sends an empty encrypted payload, no body_len.
    let nk = "Noise_NK_25519_ChaChaPoly_BLAKE2s";
    let neg = [0u8, 1, 1, 1, 1, 5];
    let prologue = nginx_noise::core::prologue::init1(&neg, b"test");
    let mut raw = snow::Builder::new(nk.parse().unwrap())
        .prologue(&prologue)
        .unwrap()
        .remote_public_key(&public(2))
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg = vec![0u8; 200];
    let n = raw.write_message(&[], &mut msg).unwrap();
    let mut wire = vec![0, 6];
    wire.extend_from_slice(&neg);
    wire.extend_from_slice(&(n as u16).to_be_bytes());
    wire.extend_from_slice(&msg[..n]);
    let mut bob = Handshake::responder(
        Arc::new(policy(
            &["NK_25519_ChaChaPoly_BLAKE2s"],
            Codec::Virgil,
            creds(Some(2), None),
        )),
        settings(None),
    );
    assert_eq!(bob.read(&wire).unwrap(), wire.len());
    assert!(bob.is_done());
    assert_eq!(bob.received_payloads(), &[Vec::<u8>::new()]);
}

#[test]
fn bare_00_00_transport_frame_is_ignored() {
    let (mut alice, mut bob) = established();
    let mut wire = vec![0u8, 0];
    let mut sealed = vec![0u8; 100];
    let (_, n) = alice.transport.seal(b"after", &mut sealed).unwrap();
    wire.extend_from_slice(&sealed[..n]);
    let mut input = Deframer::new();
    input.push(&wire);
    assert_eq!(
        input.next(&mut bob.transport.opener).unwrap(),
        Some(&b""[..])
    );
    assert_eq!(
        input.next(&mut bob.transport.opener).unwrap(),
        Some(&b"after"[..])
    );
    assert_eq!(input.next(&mut bob.transport.opener).unwrap(), None);
}

#[test]
fn transport_parsed_one_byte_at_a_time() {
    let (mut alice, mut bob) = established();
    let data: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
    let mut wire = vec![0u8; 160_000];
    let (used, n) = alice.transport.seal(&data, &mut wire).unwrap();
    assert_eq!(used, data.len());
    let mut input = Deframer::new();
    let mut got = Vec::new();
    for byte in &wire[..n] {
        assert_eq!(input.push(std::slice::from_ref(byte)), 1);
        while let Some(body) = input.next(&mut bob.transport.opener).unwrap() {
            got.extend_from_slice(body);
        }
    }
    assert_eq!(got, data);
    assert!(input.check_eof().is_ok());
    let _ = Opened::Incomplete;
}

#[test]
fn low_order_ephemeral_key_is_the_peers_fault() {
    // XX message 1 with its ephemeral key replaced by a low-order point (zero, then one):
    // the responder's ee DH would give all zeros, so it must fail instead of answering.
    for low_order in [0u8, 1] {
        let (mut a, mut b) = xx_pair();
        let mut msg = take(&mut a);
        let neg_len = u16::from_be_bytes([msg[0], msg[1]]) as usize;
        let e = 2 + neg_len + 2;
        msg[e..e + 32].fill(0);
        msg[e] = low_order;
        let err = b.read(&msg).unwrap_err();
        assert!(matches!(err, Error::WeakPeerKey), "{err}");
        assert!(err.is_peer_fault());
    }
}
