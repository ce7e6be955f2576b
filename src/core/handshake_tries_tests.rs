//! What a forged first message costs a responder that tries several keys on it (key
//! rotation, KK with several trusted keys), in X25519 agreements: at most one per private
//! key, whatever the number of trusted keys; and the tries still find the right pair.

use std::sync::Arc;

use super::*;
use crate::core::crypto::agreements;
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::{Credentials, Policy};

const KK: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
const IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const KEYS: u8 = 8;
const TRUSTED: u8 = 4;

fn secret(b: u8) -> keys::Secret {
    keys::Secret::from_bytes([b; 32])
}

/// The largest configuration `nginx -t` allows: 8 private keys, 4 trusted client keys
/// (10..14), KK's `ss` precomputed as the nginx module's merge does.
fn responder(protocol: &str) -> Handshake {
    let trusted: Vec<[u8; 32]> = (10..10 + TRUSTED).map(|b| secret(b).public_key()).collect();
    let credentials = Credentials {
        static_key: Some(secret(1)),
        ..Credentials::default()
    };
    let policy = Policy::new(
        vec![Protocol::parse(protocol).unwrap()],
        Codec::Virgil,
        credentials,
    )
    .unwrap()
    .with_initiator_static_required(true)
    .with_alternate_static_keys((2..=KEYS).map(secret).collect())
    .with_peer_key_dh(&trusted);
    let settings = Settings {
        trusted: Some(KeySet::new(trusted)),
        ..Settings::default()
    };
    Handshake::responder(Arc::new(policy), Arc::new(settings))
}

fn message1(noise: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_sized(&mut out, &[]); // empty negotiation data: the responder's only protocol
    push_sized(&mut out, noise);
    out
}

/// Agreements the responder computes on `message` (configuration already built).
fn cost(protocol: &str, message: &[u8]) -> (usize, Result<usize>) {
    let mut hs = responder(protocol);
    let before = agreements();
    let read = hs.read(message);
    assert!(hs.tries_memo.is_none(), "nothing of the tries is kept");
    (agreements() - before, read)
}

#[test]
fn junk_kk_message_1_costs_one_dh_per_private_key() {
    let ephemeral = secret(99).public_key();
    let junk = message1(&[ephemeral.as_slice(), &[0x5a; 18]].concat());
    let (n, read) = cost(KK, &junk);
    assert!(matches!(read, Err(Error::Decrypt(_))), "{read:?}");
    assert!(
        n <= usize::from(KEYS),
        "{n} X25519 for {KEYS} keys × {TRUSTED} trusted keys"
    );
    // A low-order ephemeral key fails each `es`: the failure is kept for the next try too.
    let (n, read) = cost(KK, &message1(&[0u8; 32 + 18]));
    assert!(read.is_err());
    assert!(n <= usize::from(KEYS), "{n} X25519 for a low-order key");
}

#[test]
fn junk_ik_message_1_costs_one_dh_per_private_key() {
    let ephemeral = secret(99).public_key();
    let junk = message1(&[ephemeral.as_slice(), &[0x5a; 48 + 18]].concat());
    let (n, read) = cost(IK, &junk);
    assert!(read.is_err());
    assert!(n <= usize::from(KEYS), "{n} X25519 for {KEYS} keys");
}

#[test]
fn genuine_kk_client_found_among_the_pairs() {
    // Client key 12 (the third trusted), server key 6 (the sixth of eight): the tries reach
    // a pair whose `ss` came from the table and whose `es` from the memo, and agree.
    let client = Policy::new(
        vec![Protocol::parse(KK).unwrap()],
        Codec::Virgil,
        Credentials {
            static_key: Some(secret(12)),
            remote_static: Some(secret(6).public_key()),
            ..Credentials::default()
        },
    )
    .unwrap();
    let mut alice = Handshake::initiator(Arc::new(client), Arc::new(Settings::default())).unwrap();
    let mut bob = responder(KK);
    let m1 = alice.pending_output().to_vec();
    alice.consume_output(m1.len());
    let before = agreements();
    assert_eq!(bob.read(&m1).unwrap(), m1.len());
    // 6 `es` (keys 1..6), message 2's `ee` and `se`; every `ss` from the table.
    assert_eq!(agreements() - before, 6 + 2);
    let m2 = bob.pending_output().to_vec();
    bob.consume_output(m2.len());
    assert_eq!(alice.read(&m2).unwrap(), m2.len());
    let (a, b) = (alice.finish().unwrap(), bob.finish().unwrap());
    assert_eq!(a.info.handshake_hash, b.info.handshake_hash);
    assert_eq!(b.info.remote_static, Some(secret(12).public_key()));
    assert_eq!(b.info.local_static, Some(secret(6).public_key()));
}
