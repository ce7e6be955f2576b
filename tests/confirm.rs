//! Key confirmation (docs/protocol.md §4.8): a responder that refuses the initiator's key in
//! a three-message pattern says so under the session keys; an initiator that asked counts
//! the handshake done only on an accepting verdict. Tampering with the request, the offer or
//! the verdict fails the handshake; without a request nothing changes.

mod support;

use std::sync::Arc;

use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::key_verdict::{KeyVerdict, MARKER};
use nginx_noise::core::keys::KeySet;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::prologue;
use nginx_noise::core::transport::Opened;
use nginx_noise::core::Error;
use support::*;

const XX: &str = "XX_25519_ChaChaPoly_BLAKE2s";
const XX_AES: &str = "XX_25519_AESGCM_SHA256";
const IK: &str = "IK_25519_ChaChaPoly_BLAKE2s";

fn asking(trusted: Option<Vec<[u8; 32]>>) -> Arc<Settings> {
    let mut s = (*settings(trusted)).clone();
    s.confirm = true;
    Arc::new(s)
}

fn pair(confirm: bool, bob_trusts: Option<Vec<[u8; 32]>>) -> (Handshake, Handshake) {
    start(
        policy(&[XX], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX], Codec::Virgil, creds(Some(2), None))
            .with_initiator_static_required(bob_trusts.is_some()),
        if confirm {
            asking(None)
        } else {
            settings(None)
        },
        settings(bob_trusts),
    )
}

/// Moves everything `from` has to send into `to`, returning the bytes.
fn deliver(from: &mut Handshake, to: &mut Handshake) -> (Vec<u8>, Result<usize, Error>) {
    let out = from.pending_output().to_vec();
    from.consume_output(out.len());
    let r = to.read(&out);
    (out, r)
}

#[test]
fn accepted_key_is_confirmed_and_the_transport_follows() {
    let (a, b) = pair(true, Some(vec![public(1)]));
    let out = pump(a, b, 7);
    let (mut a, mut b) = (out.alice.unwrap(), out.bob.unwrap());
    assert!(a.info.key_confirmed && b.info.key_confirmed);
    // Bob's last bytes are the verdict: a transport frame of body "NSKC" 01 00.
    let verdict_frame = 2 + 2 + 6 + 16;
    let tail = &out.bob_wire[out.bob_wire.len() - verdict_frame..];
    assert_eq!(&tail[..2], &[0, 24]);
    // The transport goes on after the verdict's nonce, both ways.
    let mut wire = vec![0u8; 100];
    let (_, n) = b.transport.seal(b"from bob", &mut wire).unwrap();
    match a.transport.open(&mut wire[..n]).unwrap() {
        Opened::Frame { body, .. } => assert_eq!(&wire[body], b"from bob"),
        Opened::Incomplete => panic!("incomplete"),
    }
    let (_, n) = a.transport.seal(b"from alice", &mut wire).unwrap();
    match b.transport.open(&mut wire[..n]).unwrap() {
        Opened::Frame { body, .. } => assert_eq!(&wire[body], b"from alice"),
        Opened::Incomplete => panic!("incomplete"),
    }
    assert_eq!(a.info.handshake_hash, b.info.handshake_hash);
}

#[test]
fn refused_key_reaches_the_initiator_as_a_verdict() {
    let (a, b) = pair(true, Some(vec![public(3)]));
    let out = pump(a, b, 100);
    assert!(matches!(out.bob, Err(Error::UntrustedKey { .. })));
    let err = out.alice.err().expect("alice must fail");
    assert!(
        matches!(err, Error::KeyRefused(KeyVerdict::Untrusted)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the server refused our static key: our static key is not in its trusted keys"
    );
    // Revoked keys say so too.
    let mut bob = (*settings(None)).clone();
    bob.revoked = Some(KeySet::new(vec![public(1)]));
    let (a, b) = start(
        policy(&[XX], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX], Codec::Virgil, creds(Some(2), None)),
        asking(None),
        Arc::new(bob),
    );
    let out = pump(a, b, 100);
    assert!(matches!(
        out.alice,
        Err(Error::KeyRefused(KeyVerdict::Revoked))
    ));
}

#[test]
fn without_a_request_nothing_changes() {
    // The same refusal, with an initiator that does not ask: it finishes (what a
    // third-party client sees), and Bob's wire carries no verdict.
    let (mut a, mut b) = pair(false, Some(vec![public(3)]));
    deliver(&mut a, &mut b).1.unwrap();
    deliver(&mut b, &mut a).1.unwrap();
    assert!(a.is_done());
    let (_, r) = deliver(&mut a, &mut b);
    assert!(matches!(r, Err(Error::UntrustedKey { .. })));
    assert!(b.pending_output().is_empty());
    let (a, b) = pair(false, None);
    let out = pump(a, b, 100);
    let (a, b) = (out.alice.unwrap(), out.bob.unwrap());
    assert!(!a.info.key_confirmed && !b.info.key_confirmed);
    assert_eq!(b.transport.counters(), (0, 0));
}

#[test]
fn two_message_patterns_need_no_verdict() {
    // IK: the responder judges the key in message 1 and answers or rejects; no offer.
    let (a, b) = start(
        policy(&[IK], Codec::Virgil, creds(Some(1), Some(public(2)))),
        policy(&[IK], Codec::Virgil, creds(Some(2), None)),
        asking(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    let (a, b) = (out.alice.unwrap(), out.bob.unwrap());
    assert!(!a.info.key_confirmed && !b.info.key_confirmed);
}

#[test]
fn confirmation_survives_a_retry() {
    let (a, b) = start(
        policy(&[XX_AES, XX], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX], Codec::Virgil, creds(Some(2), None)),
        asking(None),
        settings(None),
    );
    let out = pump(a, b, 3);
    let (a, b) = (out.alice.unwrap(), out.bob.unwrap());
    assert!(a.info.key_confirmed && b.info.key_confirmed);
}

#[test]
fn a_responder_without_the_extension_still_works() {
    // A third-party responder: plain snow under Init1, which reads the request as an
    // opaque first payload and answers without an offer.
    let (mut a, _) = pair(true, None);
    let m1 = a.pending_output().to_vec();
    a.consume_output(m1.len());
    let neg = &m1[2..8];
    let noise = &m1[10..];
    let params = format!("Noise_{XX}").parse().unwrap();
    let mut bob = snow::Builder::new(params)
        .prologue(&prologue::init1(neg, b"test"))
        .unwrap()
        .local_private_key(secret(2).as_bytes())
        .unwrap()
        .build_responder()
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = bob.read_message(noise, &mut buf).unwrap();
    assert_eq!(&buf[..n], MARKER);
    let n = bob.write_message(&[0, 0], &mut buf).unwrap();
    let mut m2 = vec![0, 0];
    m2.extend_from_slice(&(n as u16).to_be_bytes());
    m2.extend_from_slice(&buf[..n]);
    assert_eq!(a.read(&m2).unwrap(), m2.len());
    assert!(a.is_done(), "no offer: the initiator finishes as usual");
    let m3 = a.pending_output().to_vec();
    bob.read_message(&m3[4..], &mut buf).unwrap();
    assert!(bob.is_handshake_finished());
    assert!(!a.finish().unwrap().info.key_confirmed);
}

#[test]
fn a_stripped_or_added_request_fails_the_handshake() {
    // Stripped: Bob sees no request, so offers nothing, and Alice's hash differs.
    let (mut a, mut b) = pair(true, None);
    let mut m1 = a.pending_output().to_vec();
    a.consume_output(m1.len());
    assert!(m1.ends_with(MARKER));
    m1.truncate(m1.len() - MARKER.len());
    let len = (m1.len() - 10) as u16;
    m1[8..10].copy_from_slice(&len.to_be_bytes());
    b.read(&m1).unwrap();
    let (_, r) = deliver(&mut b, &mut a);
    assert!(matches!(r, Err(Error::Decrypt(_))), "{r:?}");
    // Added: Bob offers to an initiator that did not ask, which cannot read message 2.
    let (mut a, mut b) = pair(false, None);
    let mut m1 = a.pending_output().to_vec();
    a.consume_output(m1.len());
    m1.extend_from_slice(MARKER);
    let len = (m1.len() - 10) as u16;
    m1[8..10].copy_from_slice(&len.to_be_bytes());
    b.read(&m1).unwrap();
    let (_, r) = deliver(&mut b, &mut a);
    assert!(matches!(r, Err(Error::Decrypt(_))), "{r:?}");
}

/// Runs an asking XX handshake up to Bob's verdict, which is returned undelivered.
fn up_to_the_verdict() -> (Handshake, Handshake, Vec<u8>) {
    let (mut a, mut b) = pair(true, None);
    deliver(&mut a, &mut b).1.unwrap();
    deliver(&mut b, &mut a).1.unwrap();
    deliver(&mut a, &mut b).1.unwrap();
    assert!(b.is_done());
    assert!(!a.is_done(), "alice waits for the verdict");
    let verdict = b.pending_output().to_vec();
    b.consume_output(verdict.len());
    (a, b, verdict)
}

#[test]
fn a_tampered_verdict_fails() {
    for i in [3, 9, 25] {
        let (mut a, _, mut verdict) = up_to_the_verdict();
        verdict[i] ^= 1;
        assert!(a.read(&verdict).is_err(), "byte {i}");
    }
    // A changed length leaves the frame incomplete: EOF then truncates it.
    let (mut a, _, mut verdict) = up_to_the_verdict();
    verdict[1] ^= 1;
    assert_eq!(a.read(&verdict).unwrap(), verdict.len());
    assert!(matches!(a.eof(), Error::Truncated));
    // A verdict from another session does not open either.
    let (mut a, _, _) = up_to_the_verdict();
    let (_, _, other) = up_to_the_verdict();
    assert!(matches!(a.read(&other), Err(Error::Decrypt(_))));
}

#[test]
fn a_missing_or_cut_verdict_fails_closed() {
    let (mut a, _, _) = up_to_the_verdict();
    assert!(matches!(a.eof(), Error::NotConfirmed));
    let (mut a, _, verdict) = up_to_the_verdict();
    assert_eq!(a.read(&verdict[..5]).unwrap(), 5);
    assert!(matches!(a.eof(), Error::Truncated));
    // An empty frame (00 00) where the verdict belongs is refused.
    let (mut a, _, _) = up_to_the_verdict();
    assert!(matches!(a.read(&[0, 0]), Err(Error::BadConfirmation(_))));
}

#[test]
fn the_verdict_is_read_byte_by_byte_and_early_data_stays() {
    let (mut a, b, verdict) = up_to_the_verdict();
    let mut est_b = {
        assert!(b.pending_output().is_empty());
        b.finish().unwrap()
    };
    let mut wire = verdict.clone();
    let start = wire.len();
    wire.resize(start + 100, 0);
    let (_, n) = est_b.transport.seal(b"early", &mut wire[start..]).unwrap();
    wire.truncate(start + n);
    let mut used = 0;
    for i in 0..verdict.len() {
        used += a.read(&wire[i..i + 1]).unwrap();
    }
    assert!(a.is_done());
    assert_eq!(used, verdict.len());
    assert_eq!(a.read(&wire[verdict.len()..]).unwrap(), 0);
    let mut est_a = a.finish().unwrap();
    let mut rest = wire[verdict.len()..].to_vec();
    match est_a.transport.open(&mut rest).unwrap() {
        Opened::Frame { body, .. } => assert_eq!(&rest[body], b"early"),
        Opened::Incomplete => panic!("incomplete"),
    }
}
