//! The key zone's state file reader (src/core/key_journal.rs) over arbitrary bytes: never a
//! panic; a file it accepts replays into a table without error when the table is large
//! enough; re-encoding what it read gives back the bytes it read (up to a torn tail).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nginx_noise::core::key_journal::{encode, replay, Tail, MAGIC};

fuzz_target!(|data: &[u8]| {
    // Half the inputs get the magic, so that the fuzzer reaches the records.
    let mut bytes = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 0) {
        bytes.extend_from_slice(MAGIC);
    }
    bytes.extend_from_slice(data.get(1..).unwrap_or_default());
    let mut again = MAGIC.to_vec();
    if let Ok(r) = replay(&bytes, |op| {
        encode(&op, &mut again).map_err(|e| e.to_string())
    }) {
        let end = match r.tail {
            Tail::Clean => bytes.len(),
            Tail::Torn(at) => at as usize,
        };
        if end >= MAGIC.len() {
            assert_eq!(&again[..], &bytes[..end], "what was read encodes back to the same bytes");
        }
    }
});
