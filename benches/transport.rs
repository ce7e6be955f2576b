//! Core transport against the raw AEAD of the same backend (issue: core transport >= 0.9x).
//!
//! For bodies of 1 KiB, 16 KiB and 64 KiB (65517 bytes, one full frame): our seal (frame
//! header, body_len, copy into the output buffer, encrypt in place) and open (parse, decrypt
//! in place, body_len), against ring's `seal_in_place` / `open_in_place` on the same bytes.
//! Both sides copy once: the seal copies the plaintext into its output buffer (ring has no
//! out-of-place seal, and nginx's buffers are not ours to encrypt in place), the open copies
//! the frame into the receive buffer (standing for the socket read). So the ratio is the
//! cost of the framing alone; the raw in-place seal without the copy is printed beside it.
//! Prints MB/s and the ratios; `cargo bench --bench transport`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nginx_noise::core::crypto::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use nginx_noise::core::transport::{CipherState, Opened, Transport};
use snow::params::CipherChoice;

/// MB/s of `ours` and of `raw`, run in alternating batches so that both see the same
/// machine (this one is shared and noisy); the median over several trials of each.
fn compare(bytes: usize, mut ours: impl FnMut(), mut raw: impl FnMut()) -> (f64, f64) {
    for _ in 0..BATCH * 4 {
        ours(); // warm up
        raw();
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let (mut t_ours, mut t_raw) = (Duration::ZERO, Duration::ZERO);
        let mut batches = 0u64;
        let start = Instant::now();
        while start.elapsed() < TRIAL {
            let t = Instant::now();
            for _ in 0..BATCH {
                ours();
            }
            t_ours += t.elapsed();
            let t = Instant::now();
            for _ in 0..BATCH {
                raw();
            }
            t_raw += t.elapsed();
            batches += 1;
        }
        let total = (bytes as u64 * batches * BATCH as u64) as f64 / 1e6;
        a.push(total / t_ours.as_secs_f64());
        b.push(total / t_raw.as_secs_f64());
    }
    (median(a), median(b))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    v[v.len() / 2]
}

const TRIALS: usize = 9;
const TRIAL: Duration = Duration::from_millis(200);
/// Frames per batch; also how many distinct frames the open benchmarks cycle through.
const BATCH: usize = 64;

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
        let be = cipher == CipherChoice::AESGCM;
        let nonce = |n: u64| {
            let mut bytes = [0u8; 12];
            bytes[4..].copy_from_slice(&if be { n.to_be_bytes() } else { n.to_le_bytes() });
            Nonce::assume_unique_for_key(bytes)
        };
        for body in [1024usize, 16 * 1024, 65517] {
            let key = [7u8; 32];
            let plain = vec![0x5au8; body];
            let c = |k: &[u8; 32]| CipherState::new(cipher, k).unwrap();
            let raw_key = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());

            // Seal: ours copies the plaintext into its output buffer and seals the frame
            // there; raw copies it into its buffer and seals it in place.
            let mut tx = Transport::new(c(&key), c(&key), 0);
            let mut out = vec![0u8; body + 64];
            let mut buf = plain.clone();
            let mut n: u64 = 0;
            let (seal, raw_seal) = compare(
                body,
                || {
                    let (used, len) = tx.seal(black_box(&plain), &mut out).unwrap();
                    black_box((used, len));
                },
                || {
                    buf.copy_from_slice(black_box(&plain));
                    let tag = raw_key
                        .seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf)
                        .unwrap();
                    n += 1;
                    let _ = black_box(tag);
                },
            );

            // Open: both cycle through the same number of distinct frames, copy each into
            // the receive buffer (standing for the socket read) and decrypt it there. Both
            // start a fresh key every cycle so that the nonces line up again.
            let mut sender = Transport::new(c(&key), c(&key), 0);
            let frames: Vec<Vec<u8>> = (0..BATCH)
                .map(|_| {
                    let (_, len) = sender.seal(&plain, &mut out).unwrap();
                    out[..len].to_vec()
                })
                .collect();
            let raw_frames: Vec<Vec<u8>> = (0..BATCH as u64)
                .map(|i| {
                    let mut b = plain.clone();
                    let tag = raw_key
                        .seal_in_place_separate_tag(nonce(i), Aad::empty(), &mut b)
                        .unwrap();
                    b.extend_from_slice(tag.as_ref());
                    b
                })
                .collect();
            let mut receiver = Transport::new(c(&key), c(&key), 0);
            let mut rx = vec![0u8; body + 64];
            let mut i = 0usize;
            let mut raw_rx = vec![0u8; body + 16];
            let mut raw_open_key = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
            let mut j = 0usize;
            let (open, raw_open) = compare(
                body,
                || {
                    if i == BATCH {
                        receiver = Transport::new(c(&key), c(&key), 0);
                        i = 0;
                    }
                    let f = &frames[i];
                    rx[..f.len()].copy_from_slice(f);
                    match receiver.open(&mut rx[..f.len()]).unwrap() {
                        Opened::Frame { body, .. } => black_box(body),
                        Opened::Incomplete => unreachable!(),
                    };
                    i += 1;
                },
                || {
                    if j == BATCH {
                        raw_open_key = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
                        j = 0;
                    }
                    raw_rx.copy_from_slice(&raw_frames[j]);
                    let pt = raw_open_key
                        .open_in_place(nonce(j as u64), Aad::empty(), &mut raw_rx)
                        .unwrap();
                    black_box(pt.len());
                    j += 1;
                },
            );
            println!(
                "| {name} | {body} | {seal:.0} | {raw_seal:.0} | {:.2} | {open:.0} | {raw_open:.0} | {:.2} |",
                seal / raw_seal,
                open / raw_open
            );
        }
    }
}
