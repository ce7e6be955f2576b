//! The key zone's state file (`noise_keys_zone ... state=FILE`, docs/key-zone.md §6): the
//! encoding of its records and the replay of a file's bytes, sans-IO (the nginx layer does
//! the file I/O, `src/nginx/keys/state.rs`).
//!
//! A file is the 8-byte magic `NOISEKJ1` and then records, each
//! `body length (u16 LE) | body | CRC-32 of length and body (u32 LE)`. A body is a kind byte
//! and a key: kind 1 (put) goes on with the verdict byte (1 allow, 0 deny), the expiry
//! (u64 LE, Unix seconds, 0 never) and the attributes as the table stores them; kind 2
//! (delete) ends with the key. A snapshot is the same file with only puts, so one reader
//! serves both the journal and its compacted form.
//!
//! Invariants:
//! * Nothing in a file is trusted: every length is bounded and checked, every record's
//!   checksum and content are checked before it is handed on; bad input is an error with its
//!   byte offset, never a panic.
//! * A damaged *end* is what a crash in the middle of an append leaves (a record cut short,
//!   a last record whose checksum fails, or zeros where the file system had reserved room):
//!   that is [`Tail::Torn`], the records before it stand. Damage with a good record after it
//!   is not a torn write: that file is [`JournalError::Corrupt`], and the caller refuses it
//!   rather than start without its keys.

use crate::core::key_table::{decode_attrs, encode_attrs, Access, Record, ATTR_BYTES};

/// The first bytes of every state file.
pub const MAGIC: &[u8; 8] = b"NOISEKJ1";
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// Body of a put without attributes: kind, key, verdict, expiry.
const PUT_FIXED: usize = 1 + 32 + 1 + 8;
/// The longest body there is.
const MAX_BODY: usize = PUT_FIXED + ATTR_BYTES;
/// Length and checksum around a body.
const FRAMING: usize = 2 + 4;
/// The longest record, for buffers.
pub const MAX_RECORD: usize = MAX_BODY + FRAMING;

/// One change of the zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put([u8; 32], Record),
    Delete([u8; 32]),
}

/// How a file ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// After its last whole record.
    Clean,
    /// In a record cut short at this byte offset (ignored).
    Torn(u64),
}

/// What a replay found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Whole records read.
    pub records: u64,
    pub tail: Tail,
}

/// Why a file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("corrupt at byte {offset}: {why}")]
    Corrupt { offset: u64, why: String },
    /// The caller refused a record (the zone is too small for the file's keys).
    #[error("at byte {offset}: {why}")]
    Apply { offset: u64, why: String },
    #[error("{0}")]
    Encode(String),
}

/// Appends the record of `op` to `out`.
pub fn encode(op: &Op, out: &mut Vec<u8>) -> Result<(), JournalError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    match op {
        Op::Put(key, record) => {
            let attrs =
                encode_attrs(&record.attrs).map_err(|e| JournalError::Encode(e.to_string()))?;
            out.push(PUT);
            out.extend_from_slice(key);
            out.push(u8::from(record.access == Access::Allow));
            out.extend_from_slice(&record.expires.to_le_bytes());
            out.extend_from_slice(&attrs);
        }
        Op::Delete(key) => {
            out.push(DELETE);
            out.extend_from_slice(key);
        }
    }
    let body = (out.len() - start - 2) as u16;
    out[start..start + 2].copy_from_slice(&body.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes a body whose checksum held.
fn decode(body: &[u8]) -> Result<Op, String> {
    let (&kind, rest) = body.split_first().ok_or("an empty record")?;
    let key: [u8; 32] = rest
        .get(..32)
        .and_then(|k| k.try_into().ok())
        .ok_or("a record shorter than its key")?;
    let rest = &rest[32..];
    match kind {
        DELETE if rest.is_empty() => Ok(Op::Delete(key)),
        DELETE => Err("a delete record with bytes after its key".into()),
        PUT => {
            let (&verdict, rest) = rest
                .split_first()
                .ok_or("a put record without its verdict")?;
            let access = match verdict {
                1 => Access::Allow,
                0 => Access::Deny,
                v => return Err(format!("a put record with verdict byte {v}")),
            };
            let expires = rest
                .get(..8)
                .and_then(|e| e.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or("a put record without its expiry")?;
            let raw = &rest[8..];
            let attrs = decode_attrs(raw);
            // Strict: the attributes must be exactly what the table would have written.
            match encode_attrs(&attrs) {
                Ok(again) if again == raw => {}
                _ => return Err("a put record with malformed attributes".into()),
            }
            Ok(Op::Put(
                key,
                Record {
                    access,
                    expires,
                    attrs,
                },
            ))
        }
        k => Err(format!("a record of unknown kind {k}")),
    }
}

/// Reads a whole file, handing every record's change to `apply` in order. A file of no bytes
/// is an empty journal.
pub fn replay(
    bytes: &[u8],
    mut apply: impl FnMut(Op) -> Result<(), String>,
) -> Result<Replayed, JournalError> {
    let corrupt = |offset: usize, why: &str| JournalError::Corrupt {
        offset: offset as u64,
        why: why.to_string(),
    };
    let mut done = Replayed {
        records: 0,
        tail: Tail::Clean,
    };
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            if !bytes.is_empty() {
                done.tail = Tail::Torn(0);
            }
            return Ok(done);
        }
        return Err(corrupt(0, "not a key zone state file (no NOISEKJ1 magic)"));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a key zone state file (no NOISEKJ1 magic)"));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = Ok(Replayed {
            tail: Tail::Torn(at as u64),
            ..done
        });
        // Zeros to the end: room the file system reserved for appends that never landed
        // (looked at only when a record is bad, so a good file is read once).
        let zeros = || rest.iter().all(|&b| b == 0);
        if rest.len() < 2 {
            return torn;
        }
        let body_len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        if !(33..=MAX_BODY).contains(&body_len) {
            if zeros() {
                return torn;
            }
            return Err(corrupt(at, &format!("a record length of {body_len} bytes")));
        }
        let end = 2 + body_len + 4;
        if rest.len() < end {
            return torn;
        }
        let stored =
            u32::from_le_bytes([rest[end - 4], rest[end - 3], rest[end - 2], rest[end - 1]]);
        if crc32fast::hash(&rest[..2 + body_len]) != stored {
            if rest.len() == end || zeros() {
                return torn;
            }
            return Err(corrupt(at, "a record whose checksum does not match"));
        }
        let op = decode(&rest[2..2 + body_len]).map_err(|why| corrupt(at, &why))?;
        apply(op).map_err(|why| JournalError::Apply {
            offset: at as u64,
            why,
        })?;
        done.records += 1;
        at += end;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> [u8; 32] {
        [i; 32]
    }

    fn put(i: u8, attrs: &[(&str, &str)]) -> Op {
        Op::Put(
            key(i),
            Record {
                access: if i % 2 == 0 {
                    Access::Allow
                } else {
                    Access::Deny
                },
                expires: u64::from(i) * 1000,
                attrs: attrs
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            },
        )
    }

    fn file(ops: &[Op]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for op in ops {
            encode(op, &mut out).unwrap();
        }
        out
    }

    fn read(bytes: &[u8]) -> Result<(Vec<Op>, Replayed), JournalError> {
        let mut ops = Vec::new();
        let r = replay(bytes, |op| {
            ops.push(op);
            Ok(())
        })?;
        Ok((ops, r))
    }

    fn sample() -> Vec<Op> {
        vec![
            put(2, &[("device", "d-2"), ("tenant", "acme")]),
            put(3, &[]),
            Op::Delete(key(2)),
            put(4, &[("x", "")]),
        ]
    }

    #[test]
    fn round_trips_every_kind() {
        let ops = sample();
        let (back, r) = read(&file(&ops)).unwrap();
        assert_eq!(back, ops);
        assert_eq!(
            r,
            Replayed {
                records: 4,
                tail: Tail::Clean
            }
        );
        assert_eq!(
            read(b"").unwrap().1.tail,
            Tail::Clean,
            "an empty file is an empty journal"
        );
    }

    #[test]
    fn a_record_cut_anywhere_is_a_torn_tail_and_the_rest_stands() {
        let ops = sample();
        let whole = file(&ops);
        let three = file(&ops[..3]).len();
        for cut in three + 1..whole.len() {
            let (back, r) = read(&whole[..cut]).unwrap();
            assert_eq!(back, ops[..3], "cut at {cut}");
            assert_eq!(r.tail, Tail::Torn(three as u64), "cut at {cut}");
        }
        // A cut inside the magic: a file created by a crash before its first record.
        assert_eq!(read(&whole[..5]).unwrap().1.tail, Tail::Torn(0));
        // A last record whose bytes did not all land, and zeros the file system reserved.
        let mut bad_last = whole.clone();
        let n = bad_last.len();
        bad_last[n - 3] ^= 0x40;
        let (back, r) = read(&bad_last).unwrap();
        assert_eq!((back.len(), r.tail), (3, Tail::Torn(three as u64)));
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 300]);
        let (back, r) = read(&zeros).unwrap();
        assert_eq!(
            (back, r.tail),
            (ops.clone(), Tail::Torn(whole.len() as u64))
        );
    }

    #[test]
    fn damage_before_a_good_record_is_corruption_with_its_offset() {
        let ops = sample();
        let whole = file(&ops);
        let first = file(&ops[..1]).len();
        // A flipped bit in the second record's body.
        let mut flipped = whole.clone();
        flipped[first + 10] ^= 1;
        assert_eq!(
            read(&flipped).unwrap_err(),
            JournalError::Corrupt {
                offset: first as u64,
                why: "a record whose checksum does not match".into()
            }
        );
        // An impossible length.
        let mut long = whole.clone();
        long[first..first + 2].copy_from_slice(&5000u16.to_le_bytes());
        assert!(
            matches!(read(&long), Err(JournalError::Corrupt { offset, .. }) if offset == first as u64)
        );
        // Not our file at all.
        assert!(matches!(
            read(b"hello world, not a journal"),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));
        assert!(matches!(
            read(b"abc"),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn records_with_a_good_checksum_but_bad_content_are_refused() {
        let frame = |body: &[u8]| {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&(body.len() as u16).to_le_bytes());
            out.extend_from_slice(body);
            let crc = crc32fast::hash(&out[8..]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&file(&[Op::Delete(key(1))])[8..]);
            out
        };
        let mut bad_kind = vec![9];
        bad_kind.extend_from_slice(&[0; 32]);
        let mut bad_verdict = vec![PUT];
        bad_verdict.extend_from_slice(&[0; 32]);
        bad_verdict.push(7);
        bad_verdict.extend_from_slice(&[0; 8]);
        let mut bad_attrs = vec![PUT];
        bad_attrs.extend_from_slice(&[0; 32]);
        bad_attrs.push(1);
        bad_attrs.extend_from_slice(&[0; 8]);
        bad_attrs.extend_from_slice(&[3, b'B', b'A', b'D', 1, b'v']);
        let mut long_delete = vec![DELETE];
        long_delete.extend_from_slice(&[0; 33]);
        for body in [bad_kind, bad_verdict, bad_attrs, long_delete] {
            assert!(
                matches!(
                    read(&frame(&body)),
                    Err(JournalError::Corrupt { offset: 8, .. })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_refusal_by_the_caller_names_the_record() {
        let whole = file(&sample());
        let err = replay(&whole, |op| match op {
            Op::Delete(_) => Err("no room".into()),
            _ => Ok(()),
        })
        .unwrap_err();
        let third = file(&sample()[..2]).len() as u64;
        assert_eq!(
            err,
            JournalError::Apply {
                offset: third,
                why: "no room".into()
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let whole = file(&sample());
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = whole.clone();
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
            b.truncate(8 + (x as usize >> 8) % (b.len() - 7));
            // What is read encodes back to the bytes read, up to a torn tail (the property
            // fuzz/fuzz_targets/key_journal.rs checks on any input).
            if let Ok((ops, r)) = read(&b) {
                let end = match r.tail {
                    Tail::Clean => b.len(),
                    Tail::Torn(at) => at as usize,
                };
                if end >= MAGIC.len() {
                    assert_eq!(file(&ops), b[..end]);
                }
            }
        }
    }
}
