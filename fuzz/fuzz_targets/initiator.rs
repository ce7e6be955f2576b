//! The initiator state machine fed an arbitrary "server": accept, switch, retry, reject and
//! garbage in arbitrary pieces, with a fixed first message.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nginx_noise::core::handshake::{Handshake, Settings};
use nginx_noise::core::keys::{KeySet, Secret};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::{Credentials, Policy};
use nginx_noise::core::protocol::Protocol;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let step = usize::from(flags & 0x3f) + 1;
    let names: &[&str] = if flags & 0x80 != 0 {
        &["Noise_NN_25519_AESGCM_SHA256", "Noise_XX_25519_ChaChaPoly_BLAKE2s"]
    } else {
        &["Noise_XX_25519_ChaChaPoly_BLAKE2s", "Noise_NN_25519_AESGCM_SHA256"]
    };
    let protocols = names.iter().filter_map(|p| Protocol::parse(p).ok()).collect();
    let creds = Credentials {
        static_key: Some(Secret::from_bytes([1; 32])),
        remote_static: None,
        psks: Vec::new(),
        fixed_ephemeral: Some(Secret::from_bytes([4; 32])),
    };
    let Ok(policy) = Policy::new(protocols, Codec::Virgil, creds) else { return };
    let trusted = (flags & 0x40 != 0).then(|| KeySet::new(vec![[7; 32]]));
    let settings = Arc::new(Settings { app_prologue: b"fuzz".to_vec(), padding: 16, trusted, revoked: None, ask_verdict: false, confirm: false });
    let Ok(mut hs) = Handshake::initiator(Arc::new(policy), settings) else { return };
    for piece in rest.chunks(step) {
        let n = hs.pending_output().len();
        hs.consume_output(n);
        match hs.read(piece) {
            Ok(_) if hs.is_done() => {
                let _ = hs.finish();
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let _ = hs.eof();
});
