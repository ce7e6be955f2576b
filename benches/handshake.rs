//! Whole NoiseSocket handshakes in memory, both sides in one thread, per protocol; beside
//! them the cost of one X25519 operation, which bounds what a handshake can cost (XX and IK
//! do four DH operations per side plus one key generation). `cargo bench --bench handshake`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::keys::Secret;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::Protocol;

/// Median microseconds per call of `f` over several trials.
fn micros(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut trials = Vec::new();
    for _ in 0..7 {
        let mut n = 0u32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            f();
            n += 1;
        }
        trials.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    trials.sort_by(|a, b| a.total_cmp(b));
    trials[trials.len() / 2]
}

fn handshake(proto: &Protocol, client: &Arc<Policy>, server: &Arc<Policy>, s: &Arc<Settings>) {
    let mut a = Handshake::initiator(client.clone(), s.clone()).unwrap();
    let mut b = Handshake::responder(server.clone(), s.clone());
    while !(a.is_done() && b.is_done()) {
        let out = a.pending_output().to_vec();
        a.consume_output(out.len());
        b.read(&out).unwrap();
        let out = b.pending_output().to_vec();
        b.consume_output(out.len());
        a.read(&out).unwrap();
    }
    let (ea, eb) = (a.finish().unwrap(), b.finish().unwrap());
    assert_eq!(ea.info.protocol.name(), proto.name());
    black_box((ea, eb));
}

fn main() {
    let server_key = Secret::from_bytes([2; 32]);
    let server_pub = server_key.public_key();
    let settings = Arc::new(Settings {
        app_prologue: Vec::new(),
        padding: 0,
        trusted: None,
        revoked: None,
        ask_verdict: false,
        confirm: false,
    });
    println!("| protocol | µs per handshake (both sides) |");
    println!("|---|---|");
    for name in [
        "Noise_NN_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    ] {
        let proto = Protocol::parse(name).unwrap();
        let creds = |key: Option<Secret>, remote| Credentials {
            static_key: key,
            remote_static: remote,
            psks: Vec::new(),
            fixed_ephemeral: None,
        };
        let client = Arc::new(
            Policy::new(
                vec![proto.clone()],
                Codec::Virgil,
                creds(Some(Secret::from_bytes([1; 32])), Some(server_pub)),
            )
            .unwrap(),
        );
        let server = Arc::new(
            Policy::new(
                vec![proto.clone()],
                Codec::Virgil,
                creds(Some(Secret::from_bytes([2; 32])), None),
            )
            .unwrap(),
        );
        let us = micros(|| handshake(&proto, &client, &server, &settings));
        println!("| {name} | {us:.1} |");
    }
    let key = Secret::from_bytes([3; 32]);
    let us = micros(|| {
        black_box(key.public_key());
    });
    println!("\nOne X25519 scalar multiplication (public key from secret): {us:.1} µs");
    rotation(&settings);
    delegated(&settings);
}

/// The server's key in an in-memory agent (`core::key_agent`, docs/key-agent.md), both
/// sides and the agent's DH in this thread: what a delegated handshake adds (replays) and
/// what moves to the agent. The agent's socket round trips are not counted here.
fn delegated(settings: &Arc<Settings>) {
    use nginx_noise::core::crypto::HeldKey;
    use nginx_noise::core::key_agent::DelegatedHandshake;
    println!("\n| server key in an agent | in process µs | delegated µs (agent's DH included) | agent's DH µs | answers |");
    println!("|---|---|---|---|---|");
    let held = HeldKey::new(&Secret::from_bytes([2; 32])).unwrap();
    let keys: Arc<[[u8; 32]]> = Arc::from(vec![*held.public_key()]);
    for name in [
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    ] {
        let proto = Protocol::parse(name).unwrap();
        let creds = |key: Option<Secret>, remote| Credentials {
            static_key: key,
            remote_static: remote,
            psks: Vec::new(),
            fixed_ephemeral: None,
        };
        let client = Arc::new(
            Policy::new(
                vec![proto.clone()],
                Codec::Virgil,
                creds(Some(Secret::from_bytes([1; 32])), Some(*held.public_key())),
            )
            .unwrap(),
        );
        let plain_server = Arc::new(
            Policy::new(
                vec![proto.clone()],
                Codec::Virgil,
                creds(Some(Secret::from_bytes([2; 32])), None),
            )
            .unwrap(),
        );
        let server = Arc::new(
            Policy::new(vec![proto.clone()], Codec::Virgil, creds(None, None))
                .unwrap()
                .with_agent_keys(&keys),
        );
        let mut answers = 0;
        let mut run = || {
            let mut a = Handshake::initiator(client.clone(), settings.clone()).unwrap();
            let mut b =
                DelegatedHandshake::responder(server.clone(), settings.clone(), keys.clone());
            answers = 0;
            while !(a.is_done() && b.is_done()) {
                let out = a.pending_output().to_vec();
                a.consume_output(out.len());
                b.read(&out).unwrap();
                while let Some(op) = b.pending_key_op() {
                    answers += 1;
                    b.provide(
                        held.dh(&op.point)
                            .map(|r| *r)
                            .ok_or(nginx_noise::core::key_agent::AgentError::ZeroResult),
                    )
                    .unwrap();
                }
                let out = b.pending_output().to_vec();
                b.consume_output(out.len());
                a.read(&out).unwrap();
            }
            black_box((a.finish().unwrap(), b.finish().unwrap()));
        };
        let with_agent = micros(&mut run);
        run();
        let plain = micros(|| handshake(&proto, &client, &plain_server, settings));
        let point = Secret::from_bytes([5; 32]).public_key();
        let agent = micros(|| {
            black_box(held.dh(&point));
        }) * f64::from(answers);
        println!("| {name} | {plain:.1} | {with_agent:.1} | {agent:.1} | {answers} |");
    }
}

/// Key rotation: an IK server with 8 private keys, for a client that knows the first and
/// for one that knows the last (7 misses before the hit). The difference per miss is what
/// a client still on an old key costs the server (docs: README "Rotating keys").
fn rotation(settings: &Arc<Settings>) {
    let proto = Protocol::parse("Noise_IK_25519_ChaChaPoly_BLAKE2s").unwrap();
    let keys: Vec<Secret> = (10..18).map(|b| Secret::from_bytes([b; 32])).collect();
    let creds = |key: Option<Secret>, remote| Credentials {
        static_key: key,
        remote_static: remote,
        psks: Vec::new(),
        fixed_ephemeral: None,
    };
    let server = Arc::new(
        Policy::new(
            vec![proto.clone()],
            Codec::Virgil,
            creds(Some(keys[0].clone()), None),
        )
        .unwrap()
        .with_alternate_static_keys(keys[1..].to_vec()),
    );
    let client_for = |k: &Secret| {
        Arc::new(
            Policy::new(
                vec![proto.clone()],
                Codec::Virgil,
                creds(Some(Secret::from_bytes([1; 32])), Some(k.public_key())),
            )
            .unwrap(),
        )
    };
    let (first, last) = (client_for(&keys[0]), client_for(&keys[7]));
    let hit = micros(|| handshake(&proto, &first, &server, settings));
    let miss7 = micros(|| handshake(&proto, &last, &server, settings));
    println!(
        "\nIK with 8 server keys: {hit:.1} µs on the first key, {miss7:.1} µs on the eighth: {:.1} µs per miss",
        (miss7 - hit) / 7.0
    );
}
