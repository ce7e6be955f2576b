//! Delegated handshakes (`core::key_agent`): the static private key is not in the process
//! and its DH comes from an agent, here an in-memory one. Every pattern gives the same
//! handshake as with the key in process, in both roles, asking exactly the DH that involve
//! our static key; bad answers fail closed with `Error::KeyAgent`; a low-order point is
//! refused before anything is asked.

mod support;

use std::sync::Arc;

use nginx_noise::core::handshake::{Established, Handshake, Settings, Verdict};
use nginx_noise::core::key_agent::{AgentError, DelegatedHandshake, KeyOp};
use nginx_noise::core::keys::{KeySet, Secret};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::transport::Opened;
use nginx_noise::core::Error;
use nginx_noise::metrics::Reason;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use support::*;

/// How the in-memory agent answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Right,
    /// A plausible 32 bytes that is not the DH.
    Wrong,
    Zero,
    Refuse,
}

struct Agent {
    keys: Vec<Secret>,
    mode: Mode,
    asked: Vec<KeyOp>,
}

impl Agent {
    fn new(keys: &[u8], mode: Mode) -> Self {
        Agent {
            keys: keys.iter().map(|&b| secret(b)).collect(),
            mode,
            asked: Vec::new(),
        }
    }

    fn publics(&self) -> Arc<[[u8; 32]]> {
        self.keys.iter().map(Secret::public_key).collect()
    }

    fn answer(&mut self, op: KeyOp) -> Result<[u8; 32], AgentError> {
        self.asked.push(op);
        let key = self
            .keys
            .iter()
            .find(|k| k.public_key() == op.public_key)
            .expect("asked for one of the agent's keys");
        let mut dh = DefaultResolver.resolve_dh(&DHChoice::Curve25519).unwrap();
        dh.set(key.as_bytes());
        let mut out = [0u8; 32];
        dh.dh(&op.point, &mut out).unwrap();
        match self.mode {
            Mode::Right => Ok(out),
            Mode::Wrong => {
                out[0] ^= 1;
                Ok(out)
            }
            Mode::Zero => Ok([0; 32]),
            Mode::Refuse => Err(AgentError::Refused(
                nginx_noise::core::key_agent::wire::Status::UnknownKey,
            )),
        }
    }
}

enum Side {
    Plain(Handshake),
    Delegated(DelegatedHandshake, Agent),
}

impl Side {
    fn read(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        match self {
            Side::Plain(h) => h.read(bytes),
            Side::Delegated(h, _) => h.read(bytes),
        }
    }
    fn output(&mut self) -> Vec<u8> {
        let out = match self {
            Side::Plain(h) => h.pending_output().to_vec(),
            Side::Delegated(h, _) => h.pending_output().to_vec(),
        };
        match self {
            Side::Plain(h) => h.consume_output(out.len()),
            Side::Delegated(h, _) => h.consume_output(out.len()),
        }
        out
    }
    fn is_done(&self) -> bool {
        match self {
            Side::Plain(h) => h.is_done(),
            Side::Delegated(h, _) => h.is_done(),
        }
    }
    fn verdict(&mut self) -> Result<(), Error> {
        match self {
            Side::Plain(h) if h.pending_verdict().is_some() => h.resolve(Verdict::Allow),
            Side::Delegated(h, _) if h.pending_verdict().is_some() => h.resolve(Verdict::Allow),
            _ => Ok(()),
        }
    }
    /// Answers every pending key operation.
    fn serve(&mut self) -> Result<(), Error> {
        if let Side::Delegated(h, agent) = self {
            while let Some(op) = h.pending_key_op() {
                let answer = agent.answer(op);
                h.provide(answer)?;
            }
        }
        Ok(())
    }
    fn finish(self) -> Result<Established, Error> {
        match self {
            Side::Plain(h) => h.finish(),
            Side::Delegated(h, _) => h.finish(),
        }
    }
}

/// Moves bytes until both are done or one fails; read bytes one message at a time, in
/// pieces of `chunk` bytes.
fn run(
    mut a: Side,
    mut b: Side,
    chunk: usize,
) -> (
    Result<Established, Error>,
    Result<Established, Error>,
    Vec<KeyOp>,
) {
    let mut fail: (Option<Error>, Option<Error>) = (None, None);
    if let Err(e) = a.serve() {
        fail.0 = Some(e);
    }
    for _ in 0..50 {
        if fail.0.is_some() || fail.1.is_some() {
            break;
        }
        let out = a.output();
        for piece in out.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                match b.read(piece).and_then(|n| {
                    b.serve()
                        .and_then(|()| b.verdict())
                        .and_then(|()| b.serve())
                        .map(|()| n)
                }) {
                    Ok(n) => piece = &piece[n..],
                    Err(e) => {
                        fail.1 = Some(e);
                        break;
                    }
                }
            }
            if fail.1.is_some() {
                break;
            }
        }
        if fail.1.is_some() {
            break;
        }
        let back = b.output();
        for piece in back.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                match a.read(piece).and_then(|n| a.serve().map(|()| n)) {
                    Ok(n) => piece = &piece[n..],
                    Err(e) => {
                        fail.0 = Some(e);
                        break;
                    }
                }
            }
        }
        let last = a.output();
        if !last.is_empty() {
            // The initiator's last message: give it back to the loop's next turn.
            let mut piece = &last[..];
            while !piece.is_empty() && fail.1.is_none() {
                match b.read(piece).and_then(|n| {
                    b.serve()
                        .and_then(|()| b.verdict())
                        .and_then(|()| b.serve())
                        .map(|()| n)
                }) {
                    Ok(n) => piece = &piece[n..],
                    Err(e) => fail.1 = Some(e),
                }
            }
        }
        if a.is_done() && b.is_done() {
            break;
        }
    }
    let asked = [&a, &b]
        .iter()
        .flat_map(|s| match s {
            Side::Delegated(_, agent) => agent.asked.clone(),
            Side::Plain(_) => Vec::new(),
        })
        .collect();
    let ra = match fail.0 {
        Some(e) => Err(e),
        None if a.is_done() => a.finish(),
        None => Err(Error::Internal("initiator not done".into())),
    };
    let rb = match fail.1 {
        Some(e) => Err(e),
        None if b.is_done() => b.finish(),
        None => Err(Error::Internal("responder not done".into())),
    };
    (ra, rb, asked)
}

const PATTERNS: [&str; 14] = [
    "NN", "NK", "NX", "XN", "XK", "XX", "KN", "KK", "KX", "IN", "IK", "IX", "NNpsk0", "XXpsk3",
];

fn initiator_static(p: &str) -> bool {
    matches!(&p[..1], "X" | "K" | "I")
}
fn responder_static(p: &str) -> bool {
    matches!(&p[1..2], "K" | "X")
}

/// The DH with our static key each side computes in `pattern` (docs/key-agent.md).
fn static_ops(p: &str) -> (usize, usize) {
    match &p[..2] {
        "NN" => (0, 0),
        "NK" | "NX" => (0, 1),
        "XN" | "KN" | "IN" => (1, 0),
        "XK" | "XX" | "KX" | "IX" => (1, 1),
        "KK" | "IK" => (2, 2),
        _ => unreachable!(),
    }
}

/// Client key 1, server key 2; fixed ephemeral keys when `fixed`, so two runs give the same
/// handshake hash.
fn policies(
    pattern: &str,
    fixed: bool,
    server_keys: Option<&[[u8; 32]]>,
    client_agent: bool,
) -> (Policy, Policy) {
    let name = format!("{pattern}_25519_ChaChaPoly_BLAKE2s");
    let client_knows = matches!(&pattern[1..2], "K").then(|| public(2));
    let server_knows = matches!(&pattern[..1], "K").then(|| public(1));
    let eph = |b: u8| fixed.then(|| secret(b));
    let client = Credentials {
        static_key: initiator_static(pattern).then(|| secret(1)),
        remote_static: client_knows,
        psks: vec![secret(42)],
        fixed_ephemeral: eph(50),
    };
    let server = Credentials {
        static_key: responder_static(pattern).then(|| secret(2)),
        remote_static: server_knows,
        psks: vec![secret(42)],
        fixed_ephemeral: eph(51),
    };
    let codec = if pattern.contains("psk") {
        Codec::Empty
    } else {
        Codec::Virgil
    };
    let mut c = policy(&[&name], codec, client);
    let mut s = policy(&[&name], codec, server);
    if client_agent {
        c = c.with_agent_keys(&[public(1)]);
    }
    if let Some(keys) = server_keys {
        s = s.with_agent_keys(keys);
    }
    (c, s)
}

fn sides(
    pattern: &str,
    fixed: bool,
    delegate: (bool, bool),
    mode: Mode,
    s: Arc<Settings>,
) -> (Side, Side) {
    let server_keys = [public(2)];
    let (c, sp) = policies(
        pattern,
        fixed,
        delegate.1.then_some(&server_keys[..]),
        delegate.0,
    );
    let client = if delegate.0 {
        let agent = Agent::new(&[1], mode);
        let h =
            DelegatedHandshake::initiator(Arc::new(c), settings(None), Vec::new(), agent.publics())
                .unwrap();
        Side::Delegated(h, agent)
    } else {
        Side::Plain(Handshake::initiator(Arc::new(c), settings(None)).unwrap())
    };
    let server = if delegate.1 {
        let agent = Agent::new(&[2], mode);
        let h = DelegatedHandshake::responder(Arc::new(sp), s, agent.publics());
        Side::Delegated(h, agent)
    } else {
        Side::Plain(Handshake::responder(Arc::new(sp), s))
    };
    (client, server)
}

fn roundtrip(a: &mut Established, b: &mut Established) {
    let mut frame = vec![0u8; 64];
    let (_, n) = a.transport.seal(b"ping", &mut frame).unwrap();
    let Opened::Frame { body, .. } = b.transport.open(&mut frame[..n]).unwrap() else {
        panic!("a whole frame");
    };
    assert_eq!(&frame[body], b"ping");
}

#[test]
fn every_pattern_with_an_agent_equals_the_in_process_handshake_in_both_roles() {
    for pattern in PATTERNS {
        let (want_client, want_server) = static_ops(pattern);
        let (plain_a, plain_b, _) = {
            let (a, b) = sides(pattern, true, (false, false), Mode::Right, settings(None));
            run(a, b, 1000)
        };
        let hash = plain_a.unwrap().info.handshake_hash;
        assert_eq!(plain_b.unwrap().info.handshake_hash, hash, "{pattern}");
        for delegate in [(true, false), (false, true), (true, true)] {
            if (delegate.0 && !initiator_static(pattern))
                || (delegate.1 && !responder_static(pattern))
            {
                continue;
            }
            for chunk in [1000, 7] {
                let (a, b) = sides(pattern, true, delegate, Mode::Right, settings(None));
                let (ra, rb, asked) = run(a, b, chunk);
                let (mut ea, mut eb) = (
                    ra.unwrap_or_else(|e| panic!("{pattern} {delegate:?}: client {e}")),
                    rb.unwrap_or_else(|e| panic!("{pattern} {delegate:?}: server {e}")),
                );
                assert_eq!(
                    ea.info.handshake_hash, hash,
                    "{pattern} {delegate:?}: same handshake"
                );
                assert_eq!(eb.info.handshake_hash, hash, "{pattern} {delegate:?}");
                let want = if delegate.0 { want_client } else { 0 }
                    + if delegate.1 { want_server } else { 0 };
                assert_eq!(
                    asked.len(),
                    want,
                    "{pattern} {delegate:?}: one request per static-key DH"
                );
                roundtrip(&mut ea, &mut eb);
                roundtrip(&mut eb, &mut ea);
            }
            // Fresh ephemeral keys too.
            let (a, b) = sides(pattern, false, delegate, Mode::Right, settings(None));
            let (ra, rb, _) = run(a, b, 1000);
            let (ea, eb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(
                ea.info.handshake_hash, eb.info.handshake_hash,
                "{pattern} {delegate:?}"
            );
        }
    }
}

#[test]
fn ik_and_kk_responders_ask_es_then_ss() {
    for pattern in ["IK", "KK"] {
        let (a, b) = sides(pattern, false, (false, true), Mode::Right, settings(None));
        let (_, rb, asked) = run(a, b, 1000);
        rb.unwrap();
        assert_eq!(asked.len(), 2);
        assert_ne!(
            asked[0].point,
            public(1),
            "{pattern}: es first, with the client's ephemeral key"
        );
        assert_eq!(
            asked[1].point,
            public(1),
            "{pattern}: then ss, with the client's static key"
        );
    }
}

#[test]
fn bad_answers_fail_closed() {
    for pattern in ["XX", "IK", "NK", "KK"] {
        for delegate in [(true, false), (false, true)] {
            if (delegate.0 && !initiator_static(pattern))
                || (delegate.1 && !responder_static(pattern))
            {
                continue;
            }
            for mode in [Mode::Zero, Mode::Refuse] {
                let (a, b) = sides(pattern, false, delegate, mode, settings(None));
                let (ra, rb, asked) = run(a, b, 1000);
                assert!(!asked.is_empty());
                let e = if delegate.0 { ra.err() } else { rb.err() }
                    .unwrap_or_else(|| panic!("{pattern} {delegate:?}: must fail"));
                assert!(matches!(e, Error::KeyAgent(_)), "{pattern}: {e}");
                assert_eq!(Reason::of(&e), Reason::KeyAgent);
                assert!(!e.is_peer_fault(), "our fault: an error line");
            }
            // A wrong result cannot be told from a right one here; the handshake fails
            // (our message fails to decrypt at the peer, or theirs at us).
            let (a, b) = sides(pattern, false, delegate, Mode::Wrong, settings(None));
            let (ra, rb, _) = run(a, b, 1000);
            assert!(
                ra.is_err() || rb.is_err(),
                "{pattern} {delegate:?}: a wrong DH never completes"
            );
        }
    }
}

#[test]
fn a_low_order_point_is_refused_before_asking() {
    for pattern in ["IK", "NK", "XX"] {
        let (mut a, mut b) = sides(pattern, false, (false, true), Mode::Right, settings(None));
        let mut first = a.output();
        let neg = u16::from_be_bytes([first[0], first[1]]) as usize;
        let noise = 2 + neg + 2;
        first[noise..noise + 32].fill(0);
        let outcome = b.read(&first).and_then(|_| b.serve());
        let e = outcome.expect_err(pattern);
        assert!(matches!(e, Error::WeakPeerKey), "{pattern}: {e}");
        let Side::Delegated(_, agent) = &b else {
            unreachable!()
        };
        assert!(agent.asked.is_empty(), "{pattern}: nothing asked");
    }
}

#[test]
fn a_rotating_responder_asks_with_each_of_its_keys_until_one_matches() {
    // The client knows the server's second key.
    let name = "IK_25519_ChaChaPoly_BLAKE2s";
    let client = policy(&[name], Codec::Virgil, creds(Some(1), Some(public(3))));
    let server =
        policy(&[name], Codec::Virgil, creds(None, None)).with_agent_keys(&[public(2), public(3)]);
    let agent = Agent::new(&[2, 3], Mode::Right);
    let h = DelegatedHandshake::responder(Arc::new(server), settings(None), agent.publics());
    let (ra, rb, asked) = run(
        Side::Plain(Handshake::initiator(Arc::new(client), settings(None)).unwrap()),
        Side::Delegated(h, agent),
        1000,
    );
    ra.unwrap();
    let eb = rb.unwrap();
    assert_eq!(eb.info.local_static, Some(public(3)));
    let keys: Vec<[u8; 32]> = asked.iter().map(|op| op.public_key).collect();
    assert_eq!(
        keys,
        vec![public(2), public(3), public(3)],
        "es with key 1 (fails), es and ss with key 2"
    );
}

#[test]
fn a_verdict_pause_and_key_operations_combine() {
    let asking = Arc::new(Settings {
        app_prologue: b"test".to_vec(),
        padding: 0,
        trusted: Some(KeySet::new(vec![public(1)])),
        revoked: None,
        ask_verdict: true,
        confirm: false,
    });
    for pattern in ["IK", "XX", "KK"] {
        let (a, b) = sides(pattern, false, (false, true), Mode::Right, asking.clone());
        let (ra, rb, _) = run(a, b, 1000);
        ra.unwrap_or_else(|e| panic!("{pattern}: {e}"));
        let eb = rb.unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(eb.info.remote_static, Some(public(1)));
    }
}

#[test]
fn nothing_is_consumed_while_an_answer_is_pending() {
    let (mut a, b) = sides("XX", false, (false, true), Mode::Right, settings(None));
    let Side::Delegated(mut server, mut agent) = b else {
        unreachable!()
    };
    let first = a.output();
    assert_eq!(server.read(&first).unwrap(), first.len());
    let op = server.pending_key_op().expect("es of message 2");
    assert!(server.pending_output().is_empty());
    assert_eq!(server.read(b"\x00\x00\x00\x05hello").unwrap(), 0);
    server.provide(agent.answer(op)).unwrap();
    assert!(server.pending_key_op().is_none());
    assert!(!server.pending_output().is_empty(), "message 2 written");
    assert!(
        server.provide(Ok([1; 32])).is_err(),
        "an answer nobody asked for"
    );
}
