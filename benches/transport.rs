//! Core transport against the raw AEAD of the same backend (issue: core transport >= 0.9x).
//!
//! For bodies of 1 KiB, 16 KiB and 64 KiB (65517 bytes, one full frame): our seal (frame
//! header, body_len, copy into the output buffer, encrypt in place) and open (parse, decrypt
//! in place, body_len), against ring's `seal_in_place` / `open_in_place` on the same bytes.
//! Prints MB/s and the ratio; `cargo bench --bench transport`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nginx_noise::core::transport::{CipherState, Opened, Transport};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::params::CipherChoice;

fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f(); // warm up
    }
    let mut iterations = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        for _ in 0..20 {
            f();
        }
        iterations += 20;
    }
    (bytes as f64 * iterations as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    println!(
        "| cipher | body | seal MB/s | raw seal MB/s | ratio | open MB/s | raw open MB/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (cipher, alg, name) in [
        (
            CipherChoice::ChaChaPoly,
            &aead::CHACHA20_POLY1305,
            "ChaChaPoly",
        ),
        (CipherChoice::AESGCM, &aead::AES_256_GCM, "AESGCM"),
    ] {
        for body in [1024usize, 16 * 1024, 65517] {
            let key = [7u8; 32];
            let plain = vec![0x5au8; body];
            let mut out = vec![0u8; body + 64];

            // Ours: seal one frame.
            let c = |k: &[u8; 32]| CipherState::new(cipher, k).unwrap();
            let mut tx = Transport::new(c(&key), c(&key), 0);
            let seal = rate(body, || {
                let (used, n) = tx.seal(black_box(&plain), &mut out).unwrap();
                black_box((used, n));
            });
            // Raw: encrypt the same bytes in place.
            let raw_key = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
            let mut buf = plain.clone();
            let mut n: u64 = 0;
            let raw_seal = rate(body, || {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_le_bytes());
                n += 1;
                let tag = raw_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        &mut buf,
                    )
                    .unwrap();
                let _ = black_box(tag);
            });

            // Ours: open a frame (re-sealed each time so nonces line up; the copy of the
            // frame into the receive buffer stands for the socket read).
            let mut sender = Transport::new(c(&key), c(&key), 0);
            let mut receiver = Transport::new(c(&key), c(&key), 0);
            let mut frames = Vec::new();
            for _ in 0..64 {
                let (_, n) = sender.seal(&plain, &mut out).unwrap();
                frames.push(out[..n].to_vec());
            }
            let mut rx = vec![0u8; body + 64];
            let mut i = 0usize;
            let open = rate(body, || {
                let f = &frames[i % frames.len()];
                if i % frames.len() == 0 && i > 0 {
                    receiver = Transport::new(c(&key), c(&key), 0);
                }
                rx[..f.len()].copy_from_slice(f);
                match receiver.open(&mut rx[..f.len()]).unwrap() {
                    Opened::Frame { body, .. } => black_box(body),
                    Opened::Incomplete => unreachable!(),
                };
                i += 1;
            });
            // Raw: decrypt in place (same copy into the buffer first).
            let mut sealed = plain.clone();
            let tag = raw_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::empty(),
                    &mut sealed,
                )
                .unwrap();
            sealed.extend_from_slice(tag.as_ref());
            let mut work = sealed.clone();
            let raw_open = rate(body, || {
                work.copy_from_slice(&sealed);
                let pt = raw_key
                    .open_in_place(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::empty(),
                        &mut work,
                    )
                    .unwrap();
                black_box(pt.len());
            });
            println!(
                "| {name} | {body} | {seal:.0} | {raw_seal:.0} | {:.2} | {open:.0} | {raw_open:.0} | {:.2} |",
                seal / raw_seal,
                open / raw_open
            );
        }
    }
}
