//! Negotiation paths of the built-in policy, both roles: accept (virgil and empty), retry,
//! switch, explicit and silent reject, trusted keys, and at most one protocol change.

mod support;

use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::Stage;
use nginx_noise::core::Error;
use support::*;

const XX_CHACHA: &str = "XX_25519_ChaChaPoly_BLAKE2s";
const XX_AES: &str = "XX_25519_AESGCM_SHA256";
const IK_CHACHA: &str = "IK_25519_ChaChaPoly_BLAKE2s";

#[test]
fn accept_with_virgil_and_with_empty_data() {
    for codec in [Codec::Virgil, Codec::Empty] {
        for chunk in [1, 7, 1000] {
            let (a, b) = start(
                policy(&[XX_CHACHA], codec, creds(Some(1), None)),
                policy(&[XX_CHACHA, XX_AES], Codec::Virgil, creds(Some(2), None)),
                settings(None),
                settings(None),
            );
            let out = pump(a, b, chunk);
            let (alice, bob) = (out.alice.unwrap(), out.bob.unwrap());
            assert_eq!(alice.info.protocol.name(), format!("Noise_{XX_CHACHA}"));
            assert_eq!(alice.info.stage, Stage::Initial);
            assert_eq!(alice.info.handshake_hash, bob.info.handshake_hash);
            assert_eq!(alice.info.remote_static, Some(public(2)));
            assert_eq!(bob.info.remote_static, Some(public(1)));
            let want: &[u8] = if codec == Codec::Virgil {
                &[0, 1, 1, 1, 1, 9]
            } else {
                &[]
            };
            assert_eq!(bob.info.initial_negotiation, want);
        }
    }
}

#[test]
fn retry_with_a_protocol_both_allow() {
    let (a, b) = start(
        policy(&[XX_AES, XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 3);
    let (alice, bob) = (out.alice.unwrap(), out.bob.unwrap());
    assert_eq!(alice.info.stage, Stage::Retry);
    assert_eq!(bob.info.protocol.name(), format!("Noise_{XX_CHACHA}"));
    assert_eq!(alice.info.handshake_hash, bob.info.handshake_hash);
    // Bob's first bytes: the retry request naming XX ChaChaPoly BLAKE2s, empty message.
    assert_eq!(&out.bob_wire[..10], &[0, 6, 0, 1, 1, 1, 1, 9, 0, 0]);
}

#[test]
fn retry_to_a_protocol_the_initiator_does_not_allow_fails() {
    let (a, b) = start(
        policy(&[XX_AES], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    assert!(
        matches!(out.alice, Err(Error::ProtocolNotAllowed(_))),
        "{:?}",
        out.alice.err()
    );
}

#[test]
fn switch_rescues_an_ik_client_with_a_stale_server_key() {
    let server = || {
        policy(&[IK_CHACHA], Codec::Virgil, creds(Some(2), None))
            .with_switch_on_failure(Some(protocols(&[XX_CHACHA])[0].clone()))
    };
    // With only the stale pin, the new key is refused: fail closed.
    let (a, b) = start(
        policy(
            &[IK_CHACHA, XX_CHACHA],
            Codec::Virgil,
            creds(Some(1), Some(public(99))),
        ),
        server(),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 5);
    assert!(matches!(
        out.alice,
        Err(Error::WrongRemoteKey { role: "server", .. })
    ));
    // With a trusted list that vouches for the new key, the switch succeeds.
    let (a, b) = start(
        policy(
            &[IK_CHACHA, XX_CHACHA],
            Codec::Virgil,
            creds(Some(1), Some(public(99))),
        ),
        server(),
        settings(Some(vec![public(2)])),
        settings(None),
    );
    let out = pump(a, b, 5);
    let (alice, bob) = (out.alice.unwrap(), out.bob.unwrap());
    assert_eq!(alice.info.stage, Stage::Switch);
    assert_eq!(alice.info.protocol.name(), format!("Noise_{XX_CHACHA}"));
    assert_eq!(
        alice.info.remote_static,
        Some(public(2)),
        "learns the real key"
    );
    assert_eq!(alice.info.handshake_hash, bob.info.handshake_hash);
}

#[test]
fn explicit_reject_is_virgil_00_03_00_01_ff_00_00() {
    let (a, b) = start(
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_AES], Codec::Virgil, creds(Some(2), None)).with_retry(false),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    assert_eq!(out.bob_wire, [0, 3, 0, 1, 0xff, 0, 0]);
    assert!(matches!(out.bob, Err(Error::Refused(_))));
    assert!(matches!(out.alice, Err(Error::Rejected(ref d)) if d == &[0, 1, 0xff]));
}

#[test]
fn unrecognised_negotiation_data_is_rejected() {
    let mut bob = nginx_noise::core::handshake::Handshake::responder(
        std::sync::Arc::new(policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None))),
        settings(None),
    );
    let mut msg = vec![0, 4, b'j', b'u', b'n', b'k', 0, 32];
    msg.extend_from_slice(&[9u8; 32]);
    assert!(matches!(bob.read(&msg), Err(Error::Refused(_))));
    assert_eq!(bob.pending_output(), [0, 3, 0, 1, 0xff, 0, 0]);
}

#[test]
fn go_style_truncated_reject() {
    let mut alice = nginx_noise::core::handshake::Handshake::initiator(
        std::sync::Arc::new(policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None))),
        settings(None),
    )
    .unwrap();
    assert_eq!(alice.read(&[0, 1, 0xff]).unwrap(), 3);
    assert!(matches!(alice.eof(), Error::Rejected(ref d) if d == &[0xff]));
}

#[test]
fn trusted_keys_on_the_responder() {
    // IK: the client key arrives in message 1, so the refusal is an explicit reject.
    let (a, b) = start(
        policy(&[IK_CHACHA], Codec::Virgil, creds(Some(1), Some(public(2)))),
        policy(&[IK_CHACHA], Codec::Virgil, creds(Some(2), None))
            .with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(3)])),
    );
    let out = pump(a, b, 100);
    assert!(
        matches!(out.bob, Err(Error::UntrustedKey { role: "client", key }) if key == public(1))
    );
    assert_eq!(out.bob_wire, [0, 3, 0, 1, 0xff, 0, 0]);
    // Listed: accepted.
    let (a, b) = start(
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None))
            .with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(3), public(1)])),
    );
    assert!(pump(a, b, 100).bob.is_ok());
    // XX: the key arrives in the last message; the close is silent.
    let (a, b) = start(
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None))
            .with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(3)])),
    );
    let out = pump(a, b, 100);
    assert!(matches!(out.bob, Err(Error::UntrustedKey { .. })));
    // NN has no client key at all: refused up front.
    let (a, b) = start(
        policy(
            &["NN_25519_ChaChaPoly_BLAKE2s"],
            Codec::Virgil,
            creds(None, None),
        ),
        policy(
            &["NN_25519_ChaChaPoly_BLAKE2s"],
            Codec::Virgil,
            creds(Some(2), None),
        )
        .with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(3)])),
    );
    let out = pump(a, b, 100);
    assert!(matches!(out.bob, Err(Error::Refused(_))));
}

#[test]
fn trusted_keys_on_the_initiator_stop_before_it_reveals_itself() {
    let (mut a, mut b) = start(
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None)),
        settings(Some(vec![public(3)])),
        settings(None),
    );
    let m1 = a.pending_output().to_vec();
    a.consume_output(m1.len());
    b.read(&m1).unwrap();
    let m2 = b.pending_output().to_vec();
    let err = a.read(&m2).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("server key not in trusted keys"),
        "{err}"
    );
    assert!(
        a.pending_output().is_empty(),
        "message 3 (with our identity) must not be sent"
    );
}

#[test]
fn at_most_one_protocol_change() {
    // After a retry, the responder may only continue; negotiation data again is fatal.
    let (mut a, mut b) = start(
        policy(&[XX_AES, XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(2), None)),
        settings(None),
        settings(None),
    );
    let m1 = a.pending_output().to_vec();
    a.consume_output(m1.len());
    b.read(&m1).unwrap();
    let retry = b.pending_output().to_vec();
    a.read(&retry).unwrap();
    // A second retry request instead of message 2:
    assert!(matches!(a.read(&retry), Err(Error::LateNegotiation(6))));
}

#[test]
fn k_patterns_take_the_initiator_key_from_trusted_keys() {
    let kk = "KK_25519_ChaChaPoly_BLAKE2s";
    // KK: the right key among several is found by authenticating message 1.
    let (a, b) = start(
        policy(&[kk], Codec::Virgil, creds(Some(1), Some(public(2)))),
        policy(&[kk], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(5), public(1), public(6)])),
    );
    let out = pump(a, b, 9);
    let bob = out.bob.unwrap();
    assert_eq!(bob.info.remote_static, Some(public(1)));
    assert_eq!(
        out.alice.unwrap().info.handshake_hash,
        bob.info.handshake_hash
    );
    // KK with an unlisted client: no key authenticates.
    let (a, b) = start(
        policy(&[kk], Codec::Virgil, creds(Some(7), Some(public(2)))),
        policy(&[kk], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(5), public(1)])),
    );
    assert!(matches!(pump(a, b, 9).bob, Err(Error::Decrypt(_))));
    // KN: message 1 is cleartext, so only a single trusted key can be assumed.
    let kn = "KN_25519_ChaChaPoly_BLAKE2s";
    let (a, b) = start(
        policy(&[kn], Codec::Virgil, creds(Some(1), None)),
        policy(&[kn], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(1)])),
    );
    assert!(pump(a, b, 9).bob.is_ok());
    let (a, b) = start(
        policy(&[kn], Codec::Virgil, creds(Some(1), None)),
        policy(&[kn], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        settings(None),
        settings(Some(vec![public(1), public(5)])),
    );
    assert!(matches!(
        pump(a, b, 9).bob,
        Err(Error::PeerKeys {
            count: 2,
            problem: nginx_noise::core::requirements::PeerKeysProblem::NotExactlyOne,
            ..
        })
    ));
}

#[test]
fn a_rotating_responder_accepts_any_of_its_keys() {
    use nginx_noise::core::handshake::Handshake;
    use std::sync::Arc;
    let server = || {
        policy(
            &[IK_CHACHA, XX_CHACHA, "NK_25519_ChaChaPoly_BLAKE2s"],
            Codec::Virgil,
            creds(Some(2), None),
        )
        .with_alternate_static_keys(vec![secret(3), secret(4)])
    };
    // IK and NK clients that know the second or third key are served by it.
    for (proto, known) in [
        (IK_CHACHA, 3),
        (IK_CHACHA, 4),
        ("NK_25519_ChaChaPoly_BLAKE2s", 4),
    ] {
        let key = (proto == IK_CHACHA).then_some(1);
        let (a, b) = start(
            policy(&[proto], Codec::Virgil, creds(key, Some(public(known)))),
            server(),
            settings(None),
            settings(None),
        );
        let out = pump(a, b, 7);
        let bob = out.bob.expect("served by an alternate key");
        assert_eq!(
            bob.info.local_static,
            Some(public(known)),
            "{proto} with key {known}"
        );
        assert!(out.alice.is_ok());
    }
    // The first key still works, and XX sends the first.
    let (a, b) = start(
        policy(&[IK_CHACHA], Codec::Virgil, creds(Some(1), Some(public(2)))),
        server(),
        settings(None),
        settings(None),
    );
    assert_eq!(
        pump(a, b, 9).bob.unwrap().info.local_static,
        Some(public(2))
    );
    let (a, b) = start(
        policy(&[XX_CHACHA], Codec::Virgil, creds(Some(1), None)),
        server(),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 9);
    assert_eq!(out.alice.unwrap().info.remote_static, Some(public(2)));
    assert_eq!(out.bob.unwrap().info.local_static, Some(public(2)));
    // A key the server does not have: every one is tried, then the first message fails.
    let mut b = Handshake::responder(Arc::new(server()), settings(None));
    b.trace();
    let a = Handshake::initiator(
        Arc::new(policy(
            &[IK_CHACHA],
            Codec::Virgil,
            creds(Some(1), Some(public(9))),
        )),
        settings(None),
    )
    .unwrap();
    let mut a = a;
    let first = a.pending_output().to_vec();
    assert!(matches!(b.read(&first), Err(Error::Decrypt(_))));
    let tried = b
        .take_steps()
        .iter()
        .filter(|s| {
            matches!(
                s,
                nginx_noise::core::trace::Step::TriedOwnKey { matched: false, .. }
            )
        })
        .count();
    assert_eq!(tried, 3);
    a.consume_output(first.len());
}

#[test]
fn trusted_keys_that_can_never_admit_anyone_say_so() {
    use nginx_noise::core::handshake::Settings;
    use nginx_noise::core::keys::KeySet;
    use nginx_noise::core::negotiation::Policy;
    use nginx_noise::core::protocol::Role;
    use nginx_noise::core::requirements::PeerKeysProblem;
    use std::sync::Arc;
    // KN whose only trusted key is revoked: the configuration's fault, said as such (not
    // "set trusted keys"), should a configuration check not have caught it.
    let kn = "KN_25519_ChaChaPoly_BLAKE2s";
    let revoked = Arc::new(Settings {
        trusted: Some(KeySet::new(vec![public(1)])),
        revoked: Some(KeySet::new(vec![public(1)])),
        ..Settings::default()
    });
    let (a, b) = start(
        policy(&[kn], Codec::Virgil, creds(Some(1), None)),
        policy(&[kn], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        settings(None),
        revoked,
    );
    let err = pump(a, b, 9).bob.err().expect("refused");
    assert!(
        matches!(
            err,
            Error::PeerKeys {
                count: 1,
                problem: PeerKeysProblem::AllRevoked,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("set trusted keys"), "{err}");
    // Trusted keys with only patterns in which the initiator has no key: the core's own
    // configuration check refuses it.
    let nn = Policy::new(
        protocols(&["NN_25519_ChaChaPoly_BLAKE2s", "NK_25519_ChaChaPoly_BLAKE2s"]),
        Codec::Virgil,
        creds(Some(2), None),
    )
    .unwrap()
    .with_initiator_static_required(true);
    assert!(matches!(
        nn.validate(Role::Responder),
        Err(Error::Config(_))
    ));
    let with_xx = Policy::new(
        protocols(&["NN_25519_ChaChaPoly_BLAKE2s", XX_CHACHA]),
        Codec::Virgil,
        creds(Some(2), None),
    )
    .unwrap()
    .with_initiator_static_required(true);
    assert!(with_xx.validate(Role::Responder).is_ok());
}
