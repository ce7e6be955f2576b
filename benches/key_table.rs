//! The key table of `noise_keys_zone` at a million keys (docs/key-zone.md): bytes per key,
//! fill rate, and the cost of a lookup that hits and one that misses.
//!
//! `cargo bench --bench key_table [keys]`

use std::hint::black_box;
use std::time::Instant;

use nginx_noise::core::key_table::{capacity_for, Access, KeyTable, Record, BYTES_PER_KEY};

fn key(i: u64) -> [u8; 32] {
    // Spread like real public keys: a cheap mix of the index into every byte.
    let mut k = [0u8; 32];
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151;
    for chunk in k.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    k
}

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let size = 64 + keys * BYTES_PER_KEY;
    let mut region = vec![0u8; size];
    let mut table = KeyTable::create(&mut region, [7; 16]).expect("table");
    assert_eq!(capacity_for(size), keys);
    let record = Record {
        access: Access::Allow,
        expires: 0,
        attrs: vec![
            ("device".into(), "3f2a9c1e-7b4d-4e8a".into()),
            ("tenant".into(), "acme".into()),
        ],
    };
    let start = Instant::now();
    for i in 0..keys as u64 {
        table.put(&key(i), &record, 0).expect("put");
    }
    let fill = start.elapsed();
    let lookups = 1_000_000u64;
    let start = Instant::now();
    for i in 0..lookups {
        black_box(table.get(&key(i * 7919 % keys as u64), 0));
    }
    let hit = start.elapsed();
    let start = Instant::now();
    for i in 0..lookups {
        black_box(table.get(&key(u64::MAX - i), 0));
    }
    let miss = start.elapsed();
    println!("| keys | bytes per key | fill | lookup (hit) | lookup (miss) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {keys} | {} | {:.2} s ({:.0} keys/s) | {:.0} ns | {:.0} ns |",
        size / keys,
        fill.as_secs_f64(),
        keys as f64 / fill.as_secs_f64(),
        hit.as_nanos() as f64 / lookups as f64,
        miss.as_nanos() as f64 / lookups as f64
    );
}
