//! The responder state machine (accept, retry, reject, trusted keys) fed arbitrary bytes in
//! arbitrary pieces, then whatever follows the handshake as transport input.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nginx_noise::core::deframer::Deframer;
use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::keys::{KeySet, Secret};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::Protocol;

fn policy() -> Arc<Policy> {
    let protocols = [
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_IK_25519_AESGCM_SHA256",
        "Noise_NK_25519_ChaChaPoly_SHA512",
        "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b",
    ]
    .iter()
    .filter_map(|p| Protocol::parse(p).ok())
    .collect();
    let creds = Credentials {
        static_key: Some(Secret::from_bytes([2; 32])),
        remote_static: None,
        psks: vec![Secret::from_bytes([9; 32])],
        fixed_ephemeral: Some(Secret::from_bytes([3; 32])),
    };
    let switch = Protocol::parse("Noise_XX_25519_ChaChaPoly_BLAKE2s").ok();
    Arc::new(
        Policy::new(protocols, Codec::Virgil, creds)
            .expect("policy")
            .with_switch_on_failure(switch),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let step = usize::from(flags & 0x3f) + 1;
    let trusted = (flags & 0x40 != 0).then(|| KeySet::new(vec![Secret::from_bytes([1; 32]).public_key()]));
    let settings = Arc::new(Settings { app_prologue: Vec::new(), padding: 0, trusted, revoked: None, ask_verdict: false, confirm: false });
    let mut hs = Handshake::responder(policy(), settings);
    let mut offset = 0;
    for piece in rest.chunks(step) {
        match hs.read(piece) {
            Ok(used) => {
                offset += used;
                let n = hs.pending_output().len();
                hs.consume_output(n);
                if hs.is_done() {
                    break;
                }
            }
            Err(_) => return,
        }
    }
    if !hs.is_done() {
        let _ = hs.eof();
        return;
    }
    let Ok(mut est) = hs.finish() else { return };
    let mut deframer = Deframer::new();
    let mut out = [0u8; 512];
    for piece in rest[offset..].chunks(step) {
        deframer.push(piece);
        if deframer.read_plain(&mut est.transport.opener, &mut out).is_err() {
            return;
        }
    }
});
