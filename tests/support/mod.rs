//! Shared helpers for the core's integration tests: keys, policies and an in-memory pump
//! that moves handshake bytes between two sides.
#![allow(dead_code)]

use std::sync::Arc;

use nginx_noise::core::handshake::{Established, Handshake, Settings};
use nginx_noise::core::keys::{KeySet, Secret};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::Protocol;
use nginx_noise::core::Error;

pub fn secret(b: u8) -> Secret {
    Secret::from_bytes([b; 32])
}

pub fn public(b: u8) -> [u8; 32] {
    secret(b).public_key()
}

pub fn protocols(names: &[&str]) -> Vec<Protocol> {
    names
        .iter()
        .map(|n| Protocol::parse(&format!("Noise_{n}")).unwrap())
        .collect()
}

pub fn creds(key: Option<u8>, remote: Option<[u8; 32]>) -> Credentials {
    Credentials {
        static_key: key.map(secret),
        remote_static: remote,
        psks: vec![secret(42)],
        fixed_ephemeral: None,
    }
}

pub fn policy(names: &[&str], codec: Codec, c: Credentials) -> Policy {
    Policy::new(protocols(names), codec, c).unwrap()
}

pub fn settings(trusted: Option<Vec<[u8; 32]>>) -> Arc<Settings> {
    Arc::new(Settings {
        app_prologue: b"test".to_vec(),
        padding: 0,
        trusted: trusted.map(KeySet::new),
        revoked: None,
        ask_verdict: false,
        confirm: false,
    })
}

/// Outcome of a pumped handshake.
pub struct Outcome {
    pub alice: Result<Established, Error>,
    pub bob: Result<Established, Error>,
    /// Every byte Bob sent, in order.
    pub bob_wire: Vec<u8>,
}

/// Runs both sides to completion or failure, delivering `chunk` bytes at a time.
pub fn pump(mut alice: Handshake, mut bob: Handshake, chunk: usize) -> Outcome {
    let mut bob_wire = Vec::new();
    let (mut a_err, mut b_err) = (None, None);
    for _ in 0..100 {
        let a_out = alice.pending_output().to_vec();
        alice.consume_output(a_out.len());
        if b_err.is_none() {
            for piece in a_out.chunks(chunk.max(1)) {
                if let Err(e) = bob.read(piece) {
                    b_err = Some(e);
                    break;
                }
            }
        }
        let b_out = bob.pending_output().to_vec();
        bob.consume_output(b_out.len());
        bob_wire.extend_from_slice(&b_out);
        if a_err.is_none() {
            for piece in b_out.chunks(chunk.max(1)) {
                if let Err(e) = alice.read(piece) {
                    a_err = Some(e);
                    break;
                }
            }
        }
        if b_err.is_some()
            && a_err.is_none()
            && alice.pending_output().is_empty()
            && b_out.is_empty()
        {
            a_err = Some(alice.eof());
        }
        if a_err.is_some() && b_err.is_none() && bob.pending_output().is_empty() && a_out.is_empty()
        {
            b_err = Some(bob.eof());
        }
        let a_done = a_err.is_some() || (alice.is_done() && alice.pending_output().is_empty());
        let b_done = b_err.is_some() || bob.is_done();
        if a_done && b_done {
            break;
        }
    }
    let alice = match a_err {
        Some(e) => Err(e),
        None => alice.finish(),
    };
    let bob = match b_err {
        Some(e) => Err(e),
        None => bob.finish(),
    };
    Outcome {
        alice,
        bob,
        bob_wire,
    }
}

pub fn start(
    alice: Policy,
    bob: Policy,
    a_set: Arc<Settings>,
    b_set: Arc<Settings>,
) -> (Handshake, Handshake) {
    (
        Handshake::initiator(Arc::new(alice), a_set).unwrap(),
        Handshake::responder(Arc::new(bob), b_set),
    )
}
pub mod process;
