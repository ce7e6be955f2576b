//! A table of client keys and their verdicts laid out in one caller-given byte region, the
//! content of the `noise_keys_zone` shared-memory zone (docs/key-zone.md).
//!
//! Sans-IO and without unsafe: the nginx layer maps the zone, takes its lock and hands the
//! bytes in as a slice; every process that maps the zone reads the same table.
//!
//! Layout: a 64-byte header, an index of `u32` slots (0: empty, else entry number + 1),
//! then dense 120-byte entries. The index has twice as many slots as there are entries, so
//! linear probing stays short (at most half full), and the whole costs 128 bytes per key of
//! capacity. Removal shifts the probe chain back (no tombstones) and moves the last entry
//! into the hole, so the entries stay dense.
//!
//! Invariants:
//! * Keys are chosen by whoever holds them, attackers included: the slot of a key comes from
//!   SipHash-1-3 under a random 128-bit key stored in the header when the table is created,
//!   so nobody can aim keys at one probe chain.
//! * Every read of the region is bounds-checked: a header that does not describe a table that
//!   fits the region is refused ([`TableError::Layout`]); a corrupt index yields "absent",
//!   never a panic.
//! * An entry whose expiry has passed reads as absent and is removed when it is met, or by
//!   the sweep: every insertion of a new key looks at a few entries after a cursor kept in
//!   the header and removes the expired ones, and a full table looks at more before it
//!   refuses, so keys that never come back (a flood of self-made keys whose answers were
//!   cached) do not hold the table for good. Bounded work per write, never a full scan.
//! * Answers cached from an authority ([`KeyTable::cache`]) are marked as such: they never
//!   take more than half the table, and a write that finds the table full evicts one of
//!   them rather than refuse, so a flood of cached answers can never keep an operator's
//!   write out; a cached answer that is evicted is only asked again.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

const MAGIC: &[u8; 8] = b"NOISEKZ1";
const HEADER: usize = 64;
const INDEX_SLOT: usize = 4;
/// Bytes of one entry.
pub const ENTRY: usize = 120;
/// Bytes of zone per key of capacity (entry plus its two index slots).
pub const BYTES_PER_KEY: usize = ENTRY + 2 * INDEX_SLOT;
/// At most this many attributes per key.
pub const MAX_ATTRS: usize = 8;
/// Attributes of one key take at most this many bytes, each `name` and `value` plus two.
pub const ATTR_BYTES: usize = ENTRY - 42;
/// The longest attribute name.
pub const MAX_ATTR_NAME: usize = 32;

// Header fields.
const H_CAPACITY: usize = 8;
const H_INDEX: usize = 16;
const H_COUNT: usize = 24;
const H_HASH_KEY: usize = 32;
const H_GENERATION: usize = 48;
/// Cached answers in the table (u32).
const H_CACHED: usize = 56;
/// The sweep's next entry (u32).
const H_CURSOR: usize = 60;
/// Entries the sweep looks at per new key, and before a full table refuses.
const SWEEP_STEP: usize = 4;
const RECLAIM_SCAN: usize = 64;
const RECLAIM_ROUNDS: usize = 16;
/// The access byte: bit 0 allow, bit 1 a cached answer.
const A_ALLOW: u8 = 1;
const A_CACHED: u8 = 2;
// Entry fields.
const E_EXPIRES: usize = 32;
const E_ACCESS: usize = 40;
const E_ATTR_LEN: usize = 41;
const E_ATTRS: usize = 42;

/// What the table says of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allow,
    Deny,
}

/// One key's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub access: Access,
    /// Unix time in seconds after which the entry is gone; 0: never.
    pub expires: u64,
    /// `name`, `value` pairs ([`check_attr`]).
    pub attrs: Vec<(String, String)>,
}

/// Why the table refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("the key zone is full ({0} keys)")]
    Full(usize),
    #[error("the region of {0} bytes holds no key table")]
    Layout(usize),
    #[error("the region of {size} bytes is too small for a key table (at least {min})")]
    TooSmall { size: usize, min: usize },
    #[error("{0}")]
    Attr(String),
}

/// Whether `name` and `value` can be an attribute: names of `[a-z0-9_]`, 1 to 32 bytes (they
/// become variable names); values of printable ASCII (they go into logs and headers).
pub fn check_attr(name: &str, value: &str) -> Result<(), TableError> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_ATTR_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(TableError::Attr(format!(
            "attribute name \"{}\" is not 1 to {MAX_ATTR_NAME} characters of a-z, 0-9 and _",
            name.escape_default()
        )));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(TableError::Attr(format!(
            "attribute \"{name}\" has a value that is not printable ASCII"
        )));
    }
    Ok(())
}

/// Checks a record's attributes and encodes them.
pub(crate) fn encode_attrs(attrs: &[(String, String)]) -> Result<Vec<u8>, TableError> {
    if attrs.len() > MAX_ATTRS {
        return Err(TableError::Attr(format!(
            "{} attributes, at most {MAX_ATTRS}",
            attrs.len()
        )));
    }
    let mut out = Vec::new();
    for (i, (name, value)) in attrs.iter().enumerate() {
        check_attr(name, value)?;
        if attrs[..i].iter().any(|(n, _)| n == name) {
            return Err(TableError::Attr(format!(
                "attribute \"{name}\" given twice"
            )));
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len().min(255) as u8);
        out.extend_from_slice(value.as_bytes());
    }
    if out.len() > ATTR_BYTES {
        return Err(TableError::Attr(format!(
            "attributes take {} bytes, at most {ATTR_BYTES} (each name and value plus 2)",
            out.len()
        )));
    }
    Ok(out)
}

pub(crate) fn decode_attrs(mut bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let field = |bytes: &mut &[u8]| -> Option<String> {
        let (&len, rest) = bytes.split_first()?;
        let text = rest.get(..usize::from(len))?;
        *bytes = &rest[usize::from(len)..];
        Some(String::from_utf8_lossy(text).into_owned())
    };
    while !bytes.is_empty() && out.len() < MAX_ATTRS {
        let (Some(name), Some(value)) = (field(&mut bytes), field(&mut bytes)) else {
            break;
        };
        out.push((name, value));
    }
    out
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// How many keys a region of `size` bytes holds.
pub fn capacity_for(size: usize) -> usize {
    size.saturating_sub(HEADER) / BYTES_PER_KEY
}

/// The table in a region, borrowed for one locked operation.
pub struct KeyTable<'a> {
    region: &'a mut [u8],
    capacity: usize,
    slots: usize,
    hash_key: [u8; 16],
}

impl<'a> KeyTable<'a> {
    /// Lays out an empty table over the whole region (the zone's first init).
    pub fn create(region: &'a mut [u8], hash_key: [u8; 16]) -> Result<Self, TableError> {
        let capacity = capacity_for(region.len());
        if capacity == 0 {
            return Err(TableError::TooSmall {
                size: region.len(),
                min: HEADER + BYTES_PER_KEY,
            });
        }
        let slots = 2 * capacity;
        region[..HEADER + slots * INDEX_SLOT].fill(0);
        region[..8].copy_from_slice(MAGIC);
        put_u64(region, H_CAPACITY, capacity as u64);
        put_u64(region, H_INDEX, slots as u64);
        region[H_HASH_KEY..H_HASH_KEY + 16].copy_from_slice(&hash_key);
        Ok(KeyTable {
            region,
            capacity,
            slots,
            hash_key,
        })
    }

    /// The table already laid out in the region (a worker, or a reload that kept the zone).
    pub fn open(region: &'a mut [u8]) -> Result<Self, TableError> {
        let size = region.len();
        if region.get(..8) != Some(&MAGIC[..]) {
            return Err(TableError::Layout(size));
        }
        let capacity = usize::try_from(get_u64(region, H_CAPACITY)).unwrap_or(0);
        let slots = usize::try_from(get_u64(region, H_INDEX)).unwrap_or(0);
        let fits = capacity
            .checked_mul(BYTES_PER_KEY)
            .and_then(|n| n.checked_add(HEADER))
            .is_some_and(|n| n <= size);
        let count = get_u64(region, H_COUNT);
        let cached = u64::from(get_u32(region, H_CACHED));
        if capacity == 0
            || slots != 2 * capacity
            || !fits
            || count > capacity as u64
            || cached > count
        {
            return Err(TableError::Layout(size));
        }
        let mut hash_key = [0u8; 16];
        hash_key.copy_from_slice(&region[H_HASH_KEY..H_HASH_KEY + 16]);
        Ok(KeyTable {
            region,
            capacity,
            slots,
            hash_key,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole region, for a copy to read at leisure (`KeyTable::open` on the copy).
    pub fn region(&self) -> &[u8] {
        self.region
    }

    /// Cached answers in the table ([`KeyTable::cache`]).
    pub fn cached(&self) -> usize {
        get_u32(self.region, H_CACHED) as usize
    }

    fn add_cached(&mut self, delta: isize) {
        let n = (self.cached() as isize + delta).max(0) as u32;
        put_u32(self.region, H_CACHED, n);
    }

    /// Keys in the table, expired ones not yet met included.
    pub fn len(&self) -> usize {
        get_u64(self.region, H_COUNT) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts every change: a reader that saw the same generation saw the same table.
    pub fn generation(&self) -> u64 {
        get_u64(self.region, H_GENERATION)
    }

    fn set_len(&mut self, n: usize) {
        put_u64(self.region, H_COUNT, n as u64);
        let g = self.generation().wrapping_add(1);
        put_u64(self.region, H_GENERATION, g);
    }

    fn home(&self, key: &[u8; 32]) -> usize {
        let mut h = SipHasher13::new_with_key(&self.hash_key);
        h.write(key);
        // Multiply-shift onto 0..slots: no power-of-two size needed.
        ((u128::from(h.finish()) * self.slots as u128) >> 64) as usize
    }

    fn slot(&self, i: usize) -> u32 {
        let at = HEADER + i * INDEX_SLOT;
        self.region
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    fn set_slot(&mut self, i: usize, v: u32) {
        let at = HEADER + i * INDEX_SLOT;
        if let Some(s) = self.region.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn entry_at(&self, n: usize) -> usize {
        HEADER + self.slots * INDEX_SLOT + n * ENTRY
    }

    fn entry(&self, n: usize) -> Option<&[u8]> {
        let at = self.entry_at(n);
        self.region.get(at..at + ENTRY)
    }

    fn entry_mut(&mut self, n: usize) -> Option<&mut [u8]> {
        let at = self.entry_at(n);
        self.region.get_mut(at..at + ENTRY)
    }

    fn entry_key(&self, n: usize) -> Option<[u8; 32]> {
        self.entry(n)?.get(..32)?.try_into().ok()
    }

    /// The index slot and entry number of `key`.
    fn find(&self, key: &[u8; 32]) -> Option<(usize, usize)> {
        let mut i = self.home(key);
        for _ in 0..self.slots {
            let v = self.slot(i);
            if v == 0 {
                return None;
            }
            let n = (v - 1) as usize;
            if n < self.len() && self.entry_key(n).as_ref() == Some(key) {
                return Some((i, n));
            }
            i = (i + 1) % self.slots;
        }
        None
    }

    /// The key's record, unless absent or expired at `now` (Unix seconds); an expired one is
    /// removed.
    pub fn get(&mut self, key: &[u8; 32], now: u64) -> Option<Record> {
        let (_, n) = self.find(key)?;
        let e = self.entry(n)?;
        let expires = get_u64(e, E_EXPIRES);
        if expires != 0 && expires <= now {
            self.remove(key);
            return None;
        }
        let access = if e[E_ACCESS] & A_ALLOW != 0 {
            Access::Allow
        } else {
            Access::Deny
        };
        let len = usize::from(e[E_ATTR_LEN]).min(ATTR_BYTES);
        Some(Record {
            access,
            expires,
            attrs: decode_attrs(&e[E_ATTRS..E_ATTRS + len]),
        })
    }

    /// Checks a record without storing it (for all-or-nothing bulk loads).
    pub fn check(record: &Record) -> Result<(), TableError> {
        encode_attrs(&record.attrs).map(|_| ())
    }

    /// Adds or replaces the key's record (an operator's write: never evicted); true when
    /// the key is new. `now` (Unix seconds) tells which entries the sweep may remove.
    pub fn put(&mut self, key: &[u8; 32], record: &Record, now: u64) -> Result<bool, TableError> {
        self.store(key, record, now, false)
    }

    /// Keeps an authority's answer: as [`KeyTable::put`], but the entry counts as cached,
    /// which caps cached answers at half the table (beyond it one of them is evicted) and
    /// lets an operator's write evict it.
    pub fn cache(&mut self, key: &[u8; 32], record: &Record, now: u64) -> Result<bool, TableError> {
        if self.find(key).is_none() && self.cached() >= self.capacity.div_ceil(2) {
            self.make_room(now);
            if self.cached() >= self.capacity.div_ceil(2) {
                return Err(TableError::Full(self.capacity));
            }
        }
        self.store(key, record, now, true)
    }

    /// Looks at up to `steps` entries from the sweep cursor and removes the expired ones;
    /// with `evict`, when none of them had expired, removes the first cached answer among
    /// them. How many entries it freed.
    fn reclaim(&mut self, now: u64, steps: usize, evict: bool) -> usize {
        let mut freed = 0;
        let mut victim = None;
        let mut at = get_u32(self.region, H_CURSOR) as usize;
        for _ in 0..steps {
            let len = self.len();
            if len == 0 {
                break;
            }
            at %= len;
            let (Some(key), Some(e)) = (self.entry_key(at), self.entry(at)) else {
                break;
            };
            let expires = get_u64(e, E_EXPIRES);
            if expires != 0 && expires <= now {
                // The last entry moves into this place: look at it next.
                self.remove(&key);
                freed += 1;
                continue;
            }
            if victim.is_none() && e[E_ACCESS] & A_CACHED != 0 {
                victim = Some(key);
            }
            at += 1;
        }
        put_u32(self.region, H_CURSOR, at as u32);
        if freed == 0 && evict {
            if let Some(key) = victim {
                self.remove(&key);
                freed = 1;
            }
        }
        freed
    }

    /// Frees one entry, expired or a cached answer, looking at a bounded number of entries
    /// (at most `RECLAIM_ROUNDS` sweeps of `RECLAIM_SCAN`) while cached answers remain.
    fn make_room(&mut self, now: u64) {
        for _ in 0..RECLAIM_ROUNDS {
            if self.reclaim(now, RECLAIM_SCAN, true) > 0 || self.cached() == 0 {
                return;
            }
        }
    }

    fn store(
        &mut self,
        key: &[u8; 32],
        record: &Record,
        now: u64,
        cached: bool,
    ) -> Result<bool, TableError> {
        let attrs = encode_attrs(&record.attrs)?;
        if self.find(key).is_none() {
            self.reclaim(now, SWEEP_STEP, false);
            if self.len() >= self.capacity {
                self.make_room(now);
            }
        }
        let (n, new) = match self.find(key) {
            Some((_, n)) => (n, false),
            None => {
                let n = self.len();
                if n >= self.capacity {
                    return Err(TableError::Full(self.capacity));
                }
                let mut i = self.home(key);
                while self.slot(i) != 0 {
                    i = (i + 1) % self.slots;
                }
                self.set_slot(i, n as u32 + 1);
                (n, true)
            }
        };
        let Some(e) = self.entry_mut(n) else {
            return Err(TableError::Layout(0));
        };
        let was_cached = !new && e[E_ACCESS] & A_CACHED != 0;
        e[..32].copy_from_slice(key);
        put_u64(e, E_EXPIRES, record.expires);
        e[E_ACCESS] = if record.access == Access::Allow {
            A_ALLOW
        } else {
            0
        } | if cached { A_CACHED } else { 0 };
        e[E_ATTR_LEN] = attrs.len() as u8;
        e[E_ATTRS..E_ATTRS + attrs.len()].copy_from_slice(&attrs);
        e[E_ATTRS + attrs.len()..].fill(0);
        let len = if new { n + 1 } else { self.len() };
        self.set_len(len);
        self.add_cached(isize::from(cached) - isize::from(was_cached));
        Ok(new)
    }

    /// Removes the key; true when it was there.
    pub fn remove(&mut self, key: &[u8; 32]) -> bool {
        let Some((mut hole, n)) = self.find(key) else {
            return false;
        };
        if self.entry(n).is_some_and(|e| e[E_ACCESS] & A_CACHED != 0) {
            self.add_cached(-1);
        }
        // Backward-shift deletion: pull later members of the probe chain into the hole.
        self.set_slot(hole, 0);
        let mut i = (hole + 1) % self.slots;
        loop {
            let v = self.slot(i);
            if v == 0 {
                break;
            }
            let home = self
                .entry_key((v - 1) as usize)
                .map_or(i, |k| self.home(&k));
            // Move it when its home is not in the cyclic range (hole, i].
            let between = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !between {
                self.set_slot(hole, v);
                self.set_slot(i, 0);
                hole = i;
            }
            i = (i + 1) % self.slots;
        }
        // Keep the entries dense: the last one moves into the freed place.
        let last = self.len() - 1;
        if n != last {
            if let Some(last_key) = self.entry_key(last) {
                if let Some((slot, _)) = self.find(&last_key) {
                    let from = self.entry_at(last);
                    let to = self.entry_at(n);
                    self.region.copy_within(from..from + ENTRY, to);
                    self.set_slot(slot, n as u32 + 1);
                }
            }
        }
        if let Some(e) = self.entry_mut(last) {
            e.fill(0);
        }
        self.set_len(last);
        true
    }

    /// Calls `f` for every key and record, expired ones excluded (for the state file).
    pub fn for_each(&self, now: u64, mut f: impl FnMut(&[u8; 32], Record)) {
        for n in 0..self.len() {
            let (Some(key), Some(e)) = (self.entry_key(n), self.entry(n)) else {
                continue;
            };
            let expires = get_u64(e, E_EXPIRES);
            if expires != 0 && expires <= now {
                continue;
            }
            let len = usize::from(e[E_ATTR_LEN]).min(ATTR_BYTES);
            let access = if e[E_ACCESS] & A_ALLOW != 0 {
                Access::Allow
            } else {
                Access::Deny
            };
            f(
                &key,
                Record {
                    access,
                    expires,
                    attrs: decode_attrs(&e[E_ATTRS..E_ATTRS + len]),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[31] = 7;
        k
    }

    fn allow(attrs: &[(&str, &str)]) -> Record {
        Record {
            access: Access::Allow,
            expires: 0,
            attrs: attrs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn round_trips_replaces_and_removes() {
        let mut region = vec![0u8; HEADER + 100 * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [3; 16]).unwrap();
        assert_eq!(t.capacity(), 100);
        let rec = allow(&[("device", "d-1"), ("tenant", "acme")]);
        assert!(t.put(&key(1), &rec, 0).unwrap());
        assert_eq!(t.get(&key(1), 0), Some(rec));
        let deny = Record {
            access: Access::Deny,
            expires: 0,
            attrs: vec![],
        };
        assert!(!t.put(&key(1), &deny, 0).unwrap(), "replaced, not added");
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&key(1), 0), Some(deny));
        assert!(t.remove(&key(1)));
        assert!(!t.remove(&key(1)));
        assert_eq!(t.get(&key(1), 0), None);
        assert!(t.is_empty());
    }

    #[test]
    fn fills_to_capacity_then_refuses_and_survives_churn() {
        let cap = 500;
        let mut region = vec![0u8; HEADER + cap * BYTES_PER_KEY + 50];
        let mut t = KeyTable::create(&mut region, [9; 16]).unwrap();
        assert_eq!(t.capacity(), cap);
        for i in 0..cap as u32 {
            t.put(&key(i), &allow(&[("n", &i.to_string())]), 0).unwrap();
        }
        assert_eq!(
            t.put(&key(99_999), &allow(&[]), 0),
            Err(TableError::Full(cap))
        );
        // Remove every third key, then check that every other key is still found with its
        // own record (backward shift and the moved entries kept the index right).
        for i in (0..cap as u32).step_by(3) {
            assert!(t.remove(&key(i)), "{i}");
        }
        for i in 0..cap as u32 {
            let got = t.get(&key(i), 0);
            if i % 3 == 0 {
                assert_eq!(got, None, "{i}");
            } else {
                assert_eq!(got, Some(allow(&[("n", &i.to_string())])), "{i}");
            }
        }
        for i in 1000..1000 + (cap as u32 / 3) {
            t.put(&key(i), &allow(&[]), 0).unwrap();
        }
        assert_eq!(t.len(), cap - (cap / 3 + 1) + cap / 3);
        let mut seen = 0;
        t.for_each(0, |_, _| seen += 1);
        assert_eq!(seen, t.len());
    }

    #[test]
    fn expired_entries_read_as_absent_and_go() {
        let mut region = vec![0u8; HEADER + 10 * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [1; 16]).unwrap();
        let mut rec = allow(&[]);
        rec.expires = 100;
        t.put(&key(5), &rec, 0).unwrap();
        assert!(t.get(&key(5), 99).is_some());
        let mut seen = 0;
        t.for_each(100, |_, _| seen += 1);
        assert_eq!(seen, 0);
        assert!(t.get(&key(5), 100).is_none());
        assert_eq!(t.len(), 0, "removed when met");
    }

    #[test]
    fn a_second_view_sees_the_same_table_and_garbage_is_refused() {
        let mut region = vec![0u8; HEADER + 10 * BYTES_PER_KEY];
        KeyTable::create(&mut region, [1; 16])
            .unwrap()
            .put(&key(1), &allow(&[("a", "b")]), 0)
            .unwrap();
        let mut t = KeyTable::open(&mut region).unwrap();
        assert_eq!(t.get(&key(1), 0), Some(allow(&[("a", "b")])));
        assert_eq!(t.generation(), 1);
        let mut small = region[..HEADER + 5 * BYTES_PER_KEY].to_vec();
        assert!(matches!(
            KeyTable::open(&mut small),
            Err(TableError::Layout(_))
        ));
        let mut garbage = vec![0xa5u8; 4096];
        assert!(KeyTable::open(&mut garbage).is_err());
        let mut tiny = vec![0u8; 100];
        assert!(matches!(
            KeyTable::create(&mut tiny, [0; 16]),
            Err(TableError::TooSmall { .. })
        ));
        // A corrupt index never panics: a slot pointing past the entries reads as absent.
        region[HEADER..HEADER + 4 * 20].fill(0xff);
        let mut t = KeyTable::open(&mut region).unwrap();
        for i in 0..20 {
            let _ = t.get(&key(i), 0);
        }
    }

    #[test]
    fn attributes_are_bounded_and_checked() {
        let long = "v".repeat(ATTR_BYTES);
        for bad in [
            vec![("", "x")],
            vec![("Upper", "x")],
            vec![("a-b", "x")],
            vec![("ok", "tab\there")],
            vec![("a", "1"), ("a", "2")],
            vec![("x", long.as_str())],
            (0..9).map(|_| ("k", "v")).collect::<Vec<_>>(),
        ] {
            let rec = allow(&bad);
            assert!(KeyTable::check(&rec).is_err(), "{bad:?}");
        }
        let eight: Vec<(String, String)> = (0..8).map(|i| (format!("k{i}"), "v".into())).collect();
        let rec = Record {
            access: Access::Allow,
            expires: 0,
            attrs: eight,
        };
        assert!(KeyTable::check(&rec).is_ok());
    }

    #[test]
    fn random_churn_agrees_with_a_hash_map() {
        use std::collections::HashMap;
        let cap = 300;
        let mut region = vec![0u8; HEADER + cap * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [4; 16]).unwrap();
        let mut model: HashMap<[u8; 32], Record> = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000 {
            let k = key((next() % 400) as u32);
            match next() % 3 {
                0 => {
                    let rec = allow(&[("s", &step.to_string())]);
                    match t.put(&k, &rec, 0) {
                        Ok(new) => {
                            assert_eq!(new, model.insert(k, rec).is_none());
                        }
                        Err(TableError::Full(_)) => {
                            assert!(!model.contains_key(&k));
                            assert_eq!(model.len(), cap);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                1 => assert_eq!(t.remove(&k), model.remove(&k).is_some(), "{step}"),
                _ => assert_eq!(t.get(&k, 0).as_ref(), model.get(&k), "{step}"),
            }
            assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn expired_keys_that_never_come_back_do_not_fill_the_table() {
        let cap = 200;
        let mut region = vec![0u8; HEADER + cap * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [3; 16]).unwrap();
        let mut deny = allow(&[]);
        deny.access = Access::Deny;
        deny.expires = 100;
        // A flood of fresh keys whose (cached) answers expire at 100.
        for i in 0..cap as u32 {
            t.cache(&key(i), &deny, 50).unwrap();
        }
        assert_eq!(
            t.len(),
            cap / 2,
            "cached answers take at most half the table"
        );
        // After their expiry an operator's writes find room: the sweep frees them.
        for i in 10_000..10_000 + cap as u32 {
            t.put(&key(i), &allow(&[]), 101).unwrap();
        }
        assert_eq!(t.len(), cap);
        assert_eq!(t.cached(), 0, "every expired cached answer went");
    }

    #[test]
    fn cached_answers_never_keep_an_operator_write_out() {
        let cap = 300;
        let mut region = vec![0u8; HEADER + cap * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [4; 16]).unwrap();
        for i in 0..(cap / 2) as u32 {
            t.put(&key(i), &allow(&[]), 0).unwrap();
        }
        // Cached answers fill the other half and go on churning within it.
        for i in 1000..3000u32 {
            t.cache(&key(i), &allow(&[]), 0).unwrap();
            assert!(t.cached() <= cap / 2);
        }
        assert_eq!(t.len(), cap);
        // Operator writes evict cached answers until none is left, then refuse.
        for i in 5000..5000 + (cap / 2) as u32 {
            t.put(&key(i), &allow(&[]), 0).unwrap();
        }
        assert_eq!(t.cached(), 0);
        assert_eq!(
            t.put(&key(9999), &allow(&[]), 0),
            Err(TableError::Full(cap))
        );
        // Operator entries are never evicted by an answer to cache.
        assert_eq!(
            t.cache(&key(8888), &allow(&[]), 0),
            Err(TableError::Full(cap))
        );
        for i in 0..(cap / 2) as u32 {
            assert!(t.get(&key(i), 0).is_some(), "{i}");
        }
        // An operator's write over a cached answer makes it the operator's.
        let mut region = vec![0u8; HEADER + 10 * BYTES_PER_KEY];
        let mut t = KeyTable::create(&mut region, [5; 16]).unwrap();
        t.cache(&key(1), &allow(&[]), 0).unwrap();
        assert_eq!(t.cached(), 1);
        t.put(&key(1), &allow(&[]), 0).unwrap();
        assert_eq!(t.cached(), 0);
        t.cache(&key(2), &allow(&[]), 0).unwrap();
        assert!(t.remove(&key(2)));
        assert_eq!(t.cached(), 0, "removal keeps the count");
    }

    #[test]
    fn the_hash_key_decides_the_slots() {
        let mut a = vec![0u8; HEADER + 64 * BYTES_PER_KEY];
        let mut b = a.clone();
        let ta = KeyTable::create(&mut a, [1; 16]).unwrap();
        let tb = KeyTable::create(&mut b, [2; 16]).unwrap();
        let differ = (0..64)
            .filter(|&i| ta.home(&key(i)) != tb.home(&key(i)))
            .count();
        assert!(differ > 32, "slots follow the secret, not the key alone");
    }
}
