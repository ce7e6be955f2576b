//! The public-key floor of a NoiseSocket connection: the in-process cost of one X25519 DH and
//! of one ephemeral key generation, made exactly as the module makes them (snow's `Dh` and
//! `Random` from our `crypto::Resolver`: aws-lc-rs X25519, the OS random source), and beside
//! them whole in-memory handshakes, both sides in one thread, for the patterns
//! scripts/bench/bench.py runs through nginx (and NN / NNpsk0 for the cost model of a psk
//! resumption handshake in docs/performance.md). `cargo bench --bench floor`.
//!
//! Costs are CPU time of the thread (`common/cpu_time.rs`), medians of 9 trials.
//! The last lines are for bench.py: `floor: dh_us=... keygen_us=...` and one
//! `floor: handshake NAME us=...` per protocol.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_noise::core::crypto::Resolver;
use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::keys::Secret;
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::Protocol;
use snow::params::DHChoice;
use snow::resolvers::CryptoResolver;

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_seconds as thread_cpu;

/// Median CPU microseconds per call of `f` over several trials.
fn micros(mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let mut trials = Vec::new();
    for _ in 0..9 {
        let mut n = 0u32;
        let (start, cpu) = (Instant::now(), thread_cpu());
        while start.elapsed() < Duration::from_millis(150) {
            f();
            n += 1;
        }
        trials.push((thread_cpu() - cpu) * 1e6 / f64::from(n));
    }
    trials.sort_by(|a, b| a.total_cmp(b));
    trials[trials.len() / 2]
}

fn handshake(client: &Arc<Policy>, server: &Arc<Policy>, s: &Arc<Settings>) {
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
    black_box((a.finish().unwrap(), b.finish().unwrap()));
}

fn main() {
    let resolver = Resolver;
    let mut rng = resolver.resolve_rng().expect("an RNG");
    let new_dh = || resolver.resolve_dh(&DHChoice::Curve25519).expect("X25519");

    // One ephemeral key generation: random bytes, the aws-lc key, its public key.
    let mut e = new_dh();
    let keygen = micros(|| {
        e.generate(&mut *rng).unwrap();
        black_box(e.pubkey());
    });

    // One DH between two generated keys (aws-lc also checks the result is not all zeros).
    let (mut x, mut y) = (new_dh(), new_dh());
    x.generate(&mut *rng).unwrap();
    y.generate(&mut *rng).unwrap();
    let peer = y.pubkey().to_vec();
    let mut out = [0u8; 32];
    let dh = micros(|| {
        x.dh(black_box(&peer), &mut out).unwrap();
        black_box(&out);
    });

    println!("| in-process operation (aws-lc-rs, as the module calls it) | µs |");
    println!("|---|---|");
    println!("| X25519 DH | {dh:.1} |");
    println!("| ephemeral key generation (random + key + public key) | {keygen:.1} |");

    let settings = Arc::new(Settings {
        app_prologue: Vec::new(),
        padding: 0,
        trusted: None,
        revoked: None,
        ask_verdict: false,
        confirm: false,
    });
    let server_pub = Secret::from_bytes([2; 32]).public_key();
    let mut lines = Vec::new();
    println!();
    println!("| protocol (in memory, both sides, one thread) | µs per handshake |");
    println!("|---|---|");
    for name in [
        "Noise_NN_25519_ChaChaPoly_BLAKE2s",
        "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
        "Noise_NK_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s",
        "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    ] {
        let proto = Protocol::parse(name).unwrap();
        let codec = if proto.has_psk() {
            Codec::Empty
        } else {
            Codec::Virgil
        };
        let psks = || {
            if proto.has_psk() {
                vec![Secret::from_bytes([7; 32])]
            } else {
                Vec::new()
            }
        };
        let client = Arc::new(
            Policy::new(
                vec![proto.clone()],
                codec,
                Credentials {
                    static_key: Some(Secret::from_bytes([1; 32])),
                    remote_static: Some(server_pub),
                    psks: psks(),
                    fixed_ephemeral: None,
                },
            )
            .unwrap(),
        );
        let server = Arc::new(
            Policy::new(
                vec![proto.clone()],
                codec,
                Credentials {
                    static_key: Some(Secret::from_bytes([2; 32])),
                    remote_static: None,
                    psks: psks(),
                    fixed_ephemeral: None,
                },
            )
            .unwrap(),
        );
        let us = micros(|| handshake(&client, &server, &settings));
        println!("| {name} | {us:.1} |");
        lines.push(format!("floor: handshake {name} us={us:.2}"));
    }
    println!();
    println!("floor: dh_us={dh:.2} keygen_us={keygen:.2}");
    for l in lines {
        println!("{l}");
    }
}
