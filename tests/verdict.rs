//! The responder's pause for a verdict on the initiator's static key (`Settings::ask_verdict`,
//! docs/protocol.md §4.7): where each pattern pauses, that nothing is written while it
//! waits, and what allow, deny and unavailable do.

mod support;

use std::sync::Arc;

use nginx_noise::core::handshake::{Handshake, Settings, Verdict};
use nginx_noise::core::keys::KeySet;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::Stage;
use nginx_noise::core::Error;
use support::*;

fn asking(trusted: Option<Vec<[u8; 32]>>) -> Arc<Settings> {
    Arc::new(Settings {
        app_prologue: b"test".to_vec(),
        padding: 0,
        trusted: trusted.map(KeySet::new),
        revoked: None,
        ask_verdict: true,
        confirm: false,
    })
}

/// A client (key 1) and a server (key 2) that asks for verdicts, for `pattern`.
fn pair(pattern: &str, trusted: Option<Vec<[u8; 32]>>) -> (Handshake, Handshake) {
    let name = format!("{pattern}_25519_ChaChaPoly_BLAKE2s");
    let client_knows = matches!(pattern, "IK" | "KK" | "XK" | "NK").then(|| public(2));
    let client_key = (!pattern.starts_with('N')).then_some(1);
    let server = policy(&[&name], Codec::Virgil, creds(Some(2), None))
        .with_initiator_static_required(client_key.is_some());
    start(
        policy(&[&name], Codec::Virgil, creds(client_key, client_knows)),
        server,
        settings(None),
        asking(trusted),
    )
}

/// Moves bytes both ways until the server waits for a verdict, is done, or fails; returns
/// how many handshake messages the server had read when it stopped.
fn run_until_verdict(client: &mut Handshake, server: &mut Handshake) -> usize {
    let mut read = 0;
    for _ in 0..8 {
        let out = client.pending_output().to_vec();
        client.consume_output(out.len());
        if !out.is_empty() {
            assert_eq!(server.read(&out).unwrap(), out.len());
            read += 1;
        }
        if server.pending_verdict().is_some() || server.is_done() {
            return read;
        }
        let back = server.pending_output().to_vec();
        server.consume_output(back.len());
        if !back.is_empty() {
            client.read(&back).unwrap();
        }
    }
    panic!("neither a verdict nor the end");
}

#[test]
fn each_pattern_pauses_after_the_message_that_proves_the_client_key() {
    for (pattern, message) in [("IK", 1), ("KK", 1), ("XX", 2), ("XK", 2), ("XN", 2)] {
        let trusted = (pattern == "KK").then(|| vec![public(1)]);
        let (mut client, mut server) = pair(pattern, trusted);
        let read = run_until_verdict(&mut client, &mut server);
        assert_eq!(read, message, "{pattern}: messages read before the pause");
        assert_eq!(server.pending_verdict(), Some(public(1)), "{pattern}");
        assert!(
            server.pending_output().is_empty(),
            "{pattern}: nothing is written while the verdict is pending"
        );
        assert!(!server.is_done(), "{pattern}");
        // While it waits, nothing more is consumed.
        assert_eq!(
            server.read(b"\x00\x00\x00\x05hello").unwrap(),
            0,
            "{pattern}"
        );
        server.resolve(Verdict::Allow).unwrap();
        assert!(server.pending_verdict().is_none());
        let out = pump(client, server, 64);
        let (c, s) = (out.alice.unwrap(), out.bob.unwrap());
        assert_eq!(c.info.handshake_hash, s.info.handshake_hash, "{pattern}");
        assert_eq!(s.info.remote_static, Some(public(1)));
        assert!(
            !s.info.verdict_pending,
            "{pattern}: decided in the handshake"
        );
    }
}

#[test]
fn patterns_proven_by_the_first_transport_frame_finish_with_the_verdict_pending() {
    for pattern in ["IX", "KN", "KX"] {
        let trusted = pattern.starts_with('K').then(|| vec![public(1)]);
        let (client, server) = pair(pattern, trusted);
        let out = pump(client, server, 64);
        let s = out.bob.unwrap();
        assert!(s.info.verdict_pending, "{pattern}");
        assert_eq!(s.info.remote_static, Some(public(1)), "{pattern}");
        out.alice.unwrap();
    }
    // No client key, nothing to decide.
    for pattern in ["NN", "NX", "NK"] {
        let (client, server) = pair(pattern, None);
        let out = pump(client, server, 64);
        assert!(!out.bob.unwrap().info.verdict_pending, "{pattern}");
    }
}

#[test]
fn without_ask_verdict_nothing_pauses() {
    for pattern in ["IK", "XX", "IX"] {
        let name = format!("{pattern}_25519_ChaChaPoly_BLAKE2s");
        let knows = (pattern == "IK").then(|| public(2));
        let (client, server) = start(
            policy(&[&name], Codec::Virgil, creds(Some(1), knows)),
            policy(&[&name], Codec::Virgil, creds(Some(2), None)),
            settings(None),
            settings(None),
        );
        let out = pump(client, server, 64);
        assert!(!out.bob.unwrap().info.verdict_pending, "{pattern}");
    }
}

#[test]
fn deny_refuses_with_an_explicit_reject_where_one_is_still_possible() {
    // IK: message 2 was never written, so the refusal is an explicit reject.
    let (mut client, mut server) = pair("IK", None);
    run_until_verdict(&mut client, &mut server);
    let err = server.resolve(Verdict::Deny).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { key } if key == public(1)));
    assert!(err.is_peer_fault());
    let reject = server.pending_output().to_vec();
    assert!(!reject.is_empty(), "an explicit reject is queued");
    assert!(
        matches!(client.read(&reject), Err(Error::Rejected(_))),
        "the client is told it was refused"
    );
    // XX: message 2 went out already; the refusal is a close.
    let (mut client, mut server) = pair("XX", None);
    run_until_verdict(&mut client, &mut server);
    assert!(matches!(
        server.resolve(Verdict::Deny),
        Err(Error::Unauthorized { .. })
    ));
    assert!(server.pending_output().is_empty());
    assert!(server.read(b"x").is_err(), "failed for good");
}

#[test]
fn an_unavailable_verdict_is_our_error_and_fails_closed() {
    let (mut client, mut server) = pair("IK", None);
    run_until_verdict(&mut client, &mut server);
    let err = server
        .resolve(Verdict::Unavailable("authority timed out".into()))
        .unwrap_err();
    assert!(!err.is_peer_fault());
    assert!(err.to_string().contains("authority timed out"));
    assert!(server.finish().is_err());
}

#[test]
fn file_lists_refuse_before_anyone_is_asked() {
    let (client, server) = pair("IK", Some(vec![public(9)]));
    let out = pump(client, server, 64);
    assert!(matches!(out.bob, Err(Error::UntrustedKey { .. })));
}

#[test]
fn a_verdict_without_a_pause_is_refused() {
    let (_, mut server) = pair("XX", None);
    assert!(matches!(
        server.resolve(Verdict::Allow),
        Err(Error::Internal(_))
    ));
}

#[test]
fn after_a_switch_the_first_transport_frame_decides() {
    // An IK client with a stale server key, rescued by a switch to XX in which the client is
    // the Noise responder: its key is proven only by its first transport frame.
    let ik = "IK_25519_ChaChaPoly_BLAKE2s";
    let xx = "XX_25519_ChaChaPoly_BLAKE2s";
    let server = policy(&[ik], Codec::Virgil, creds(Some(2), None))
        .with_switch_on_failure(Some(protocols(&[xx])[0].clone()));
    let (client, server) = start(
        policy(&[ik, xx], Codec::Virgil, creds(Some(1), Some(public(99)))),
        server,
        settings(Some(vec![public(2)])),
        asking(None),
    );
    let out = pump(client, server, 7);
    let s = out.bob.unwrap();
    assert_eq!(s.info.stage, Stage::Switch);
    assert!(s.info.verdict_pending);
    assert_eq!(s.info.remote_static, Some(public(1)));
}

/// An XX client that asks for key confirmation (docs/protocol.md §4.8) of a server that
/// asks its caller for a verdict: the verdict is what the client is told.
fn confirming_pair() -> (Handshake, Handshake) {
    let name = "XX_25519_ChaChaPoly_BLAKE2s";
    let client_settings = Arc::new(Settings {
        confirm: true,
        ..(*settings(None)).clone()
    });
    start(
        policy(&[name], Codec::Virgil, creds(Some(1), None)),
        policy(&[name], Codec::Virgil, creds(Some(2), None)).with_initiator_static_required(true),
        client_settings,
        asking(None),
    )
}

#[test]
fn a_denied_key_is_told_to_a_confirming_client() {
    let (mut client, mut server) = confirming_pair();
    run_until_verdict(&mut client, &mut server);
    assert_eq!(server.pending_verdict(), Some(public(1)));
    assert!(matches!(
        server.resolve(Verdict::Deny),
        Err(Error::Unauthorized { .. })
    ));
    let verdict = server.pending_output().to_vec();
    assert!(!verdict.is_empty(), "a refusing verdict is queued");
    assert!(matches!(client.read(&verdict), Err(Error::KeyRefused(_))));
}

#[test]
fn an_allowed_key_is_confirmed_to_a_confirming_client() {
    let (mut client, mut server) = confirming_pair();
    run_until_verdict(&mut client, &mut server);
    server.resolve(Verdict::Allow).unwrap();
    let out = pump(client, server, 64);
    let (c, s) = (out.alice.unwrap(), out.bob.unwrap());
    assert!(c.info.key_confirmed && s.info.key_confirmed);
}
