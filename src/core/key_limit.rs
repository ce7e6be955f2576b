//! Concurrent connections per client static key, counted by process: the table behind
//! `noise_limit_conn_per_key` (docs/nginx-integration.md §11). The nginx layer places one
//! [`Table`] in a shared zone and calls it under the zone's lock; this module is plain
//! memory and knows nothing of nginx or shared memory.
//!
//! Layout: a fixed-capacity open-addressing hash table of `(key, pid) -> count` entries,
//! linear probing, backward-shift deletion (no tombstones, so a key's entries are always
//! in the probe run from its home slot). One entry per process and key lets a process that
//! died without closing its connections (a crash) have its counts dropped by whoever
//! notices it is gone ([`Table::sweep`]). Keys are chosen by clients, so the home slot comes
//! from a keyed hash (HMAC-SHA256 with a per-table random seed): nobody can aim keys at one
//! run. The table refuses new entries beyond [`MAX_LOAD_PERCENT`] of its slots, which keeps
//! runs short; a full table refuses the connection (fail closed).
//!
//! Invariants: an entry is empty iff its `count` is 0; `used` is the number of non-empty
//! entries; every non-empty entry sits in the run that starts at its `home`.

use aws_lc_rs::hmac;

/// The share of slots that may hold entries.
pub const MAX_LOAD_PERCENT: usize = 75;

/// One `(key, process)` count. Empty when `count` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    key: [u8; 32],
    pid: i32,
    count: u32,
    /// The slot the key hashes to.
    home: u32,
    _reserved: u32,
}

/// What precedes the entries.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Header {
    seed: [u8; 32],
    used: u32,
    capacity: u32,
}

/// Why a connection is not counted in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key already holds `held` connections, at least the limit.
    Over { held: u64 },
    /// No room for another key (`capacity` entries at most).
    Full { capacity: usize },
}

/// Why a connection was not admitted.
#[derive(Debug)]
pub enum Denied {
    /// The table said no.
    Refused(Refusal),
    /// The table's zone is not set up (no init callback ran).
    NoZone,
}

/// A table over memory the caller owns (a shared zone), borrowed for one locked operation.
pub struct Table<'a> {
    header: &'a mut Header,
    entries: &'a mut [Entry],
}

impl<'a> Table<'a> {
    /// Sets up an empty table in zeroed memory with a random `seed`.
    pub fn init(header: &'a mut Header, entries: &'a mut [Entry], seed: [u8; 32]) -> Self {
        header.seed = seed;
        header.used = 0;
        header.capacity = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let n = header.capacity as usize;
        Table {
            header,
            entries: &mut entries[..n],
        }
    }

    /// A table [`Table::init`] set up before (in this or an earlier configuration cycle).
    pub fn open(header: &'a mut Header, entries: &'a mut [Entry]) -> Self {
        let n = (header.capacity as usize).min(entries.len());
        Table {
            header,
            entries: &mut entries[..n],
        }
    }

    /// How many keys-by-process the table takes.
    pub fn max_entries(&self) -> usize {
        self.entries.len() * MAX_LOAD_PERCENT / 100
    }

    fn home(&self, key: &[u8; 32]) -> usize {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.header.seed);
        let tag = hmac::sign(&k, key);
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        (u64::from_le_bytes(b) % self.entries.len().max(1) as u64) as usize
    }

    /// Slots of the run that starts at `key`'s home, in probe order, up to the first empty.
    fn run(&self, key: &[u8; 32]) -> impl Iterator<Item = usize> + '_ {
        let n = self.entries.len();
        let start = if n == 0 { 0 } else { self.home(key) };
        (0..n)
            .map(move |i| (start + i) % n)
            .take_while(|&i| self.entries[i].count != 0)
    }

    fn find(&self, key: &[u8; 32], pid: i32) -> Option<usize> {
        self.run(key)
            .find(|&i| self.entries[i].key == *key && self.entries[i].pid == pid)
    }

    /// Connections `key` holds, over every process.
    pub fn held(&self, key: &[u8; 32]) -> u64 {
        self.run(key)
            .filter(|&i| self.entries[i].key == *key)
            .map(|i| u64::from(self.entries[i].count))
            .sum()
    }

    /// Counts one more connection of `key` by process `pid`, unless `key` holds `limit`
    /// already. Before refusing, the counts of `key` held by processes that are gone
    /// (`alive` says no) are dropped.
    pub fn acquire(
        &mut self,
        key: &[u8; 32],
        pid: i32,
        limit: u64,
        alive: impl Fn(i32) -> bool,
    ) -> Result<(), Refusal> {
        if self.held(key) >= limit {
            let dead: Vec<i32> = self
                .run(key)
                .filter(|&i| self.entries[i].key == *key && !alive(self.entries[i].pid))
                .map(|i| self.entries[i].pid)
                .collect();
            for p in dead {
                if let Some(i) = self.find(key, p) {
                    self.remove(i);
                }
            }
            let held = self.held(key);
            if held >= limit {
                return Err(Refusal::Over { held });
            }
        }
        if let Some(i) = self.find(key, pid) {
            self.entries[i].count = self.entries[i].count.saturating_add(1);
            return Ok(());
        }
        if self.header.used as usize >= self.max_entries() {
            return Err(Refusal::Full {
                capacity: self.max_entries(),
            });
        }
        let home = self.home(key);
        let n = self.entries.len();
        let slot = (0..n)
            .map(|i| (home + i) % n)
            .find(|&i| self.entries[i].count == 0)
            .ok_or(Refusal::Full {
                capacity: self.max_entries(),
            })?;
        self.entries[slot] = Entry {
            key: *key,
            pid,
            count: 1,
            home: home as u32,
            _reserved: 0,
        };
        self.header.used += 1;
        Ok(())
    }

    /// One connection of `key` by process `pid` closed.
    pub fn release(&mut self, key: &[u8; 32], pid: i32) {
        if let Some(i) = self.find(key, pid) {
            self.entries[i].count -= 1;
            if self.entries[i].count == 0 {
                self.remove(i);
            }
        }
    }

    /// Drops every count of process `pid` (it exits).
    pub fn forget(&mut self, pid: i32) {
        self.retain(|e| e.pid != pid);
    }

    /// Drops the counts of every process that is gone (`alive` says no).
    pub fn sweep(&mut self, alive: impl Fn(i32) -> bool) {
        self.retain(|e| alive(e.pid));
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        // Removal shifts later entries back, possibly across the wrap: repeat until a
        // pass removes nothing.
        loop {
            let mut removed = false;
            let mut i = 0;
            while i < self.entries.len() {
                if self.entries[i].count != 0 && !keep(&self.entries[i]) {
                    self.remove(i);
                    removed = true;
                } else {
                    i += 1;
                }
            }
            if !removed {
                return;
            }
        }
    }

    /// Empties slot `i`, moving later entries of the run back so that no run has a hole.
    fn remove(&mut self, mut hole: usize) {
        let n = self.entries.len();
        self.entries[hole] = Entry::default();
        self.header.used = self.header.used.saturating_sub(1);
        let mut j = hole;
        loop {
            j = (j + 1) % n;
            if self.entries[j].count == 0 {
                return;
            }
            let home = self.entries[j].home as usize;
            // The entry at j may fill the hole if its home is not in (hole, j] cyclically.
            let dist_home = (j + n - home) % n;
            let dist_hole = (j + n - hole) % n;
            if dist_home >= dist_hole {
                self.entries[hole] = self.entries[j];
                self.entries[j] = Entry::default();
                hole = j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `n` slots (leaked: tests only).
    fn table(n: usize) -> Table<'static> {
        let h = Box::leak(Box::new(Header::default()));
        let e = Box::leak(vec![Entry::default(); n].into_boxed_slice());
        Table::init(h, e, [7; 32])
    }

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn limit_per_key_over_processes() {
        let mut t = table(64);
        let alive = |_| true;
        assert_eq!(t.acquire(&key(1), 10, 2, alive), Ok(()));
        assert_eq!(t.acquire(&key(1), 11, 2, alive), Ok(()));
        assert_eq!(
            t.acquire(&key(1), 10, 2, alive),
            Err(Refusal::Over { held: 2 })
        );
        assert_eq!(t.acquire(&key(2), 10, 2, alive), Ok(()));
        t.release(&key(1), 11);
        assert_eq!(t.held(&key(1)), 1);
        assert_eq!(t.acquire(&key(1), 10, 2, alive), Ok(()));
        assert_eq!(t.held(&key(1)), 2);
        // release of what was never counted changes nothing
        t.release(&key(9), 10);
        assert_eq!(t.header.used, 2);
    }

    #[test]
    fn dead_processes_are_swept_before_refusing() {
        let mut t = table(16);
        assert_eq!(t.acquire(&key(1), 10, 1, |_| true), Ok(()));
        assert!(t.acquire(&key(1), 11, 1, |_| true).is_err());
        assert_eq!(t.acquire(&key(1), 11, 1, |p| p != 10), Ok(()));
        assert_eq!(t.held(&key(1)), 1);
        t.acquire(&key(2), 12, 5, |_| true).unwrap();
        t.sweep(|p| p != 12);
        assert_eq!(t.held(&key(2)), 0);
        t.forget(11);
        assert_eq!(t.header.used, 0);
    }

    #[test]
    fn full_table_refuses_and_frees() {
        let mut t = table(8);
        for k in 0..6 {
            assert_eq!(t.acquire(&key(k), 1, 1, |_| true), Ok(()));
        }
        assert_eq!(
            t.acquire(&key(6), 1, 1, |_| true),
            Err(Refusal::Full { capacity: 6 })
        );
        t.release(&key(0), 1);
        assert_eq!(t.acquire(&key(6), 1, 1, |_| true), Ok(()));
    }

    /// Many keys in a small table: every count stays findable through removals (no hole
    /// breaks a run), checked against a plain map.
    #[test]
    fn runs_survive_removals() {
        use std::collections::HashMap;
        let mut t = table(32);
        let mut model: HashMap<(u8, i32), u32> = HashMap::new();
        let mut x: u32 = 1;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let k = (x >> 8) as u8 % 30;
            let pid = ((x >> 16) % 3) as i32;
            if x & 1 == 0 {
                if t.acquire(&key(k), pid, 1000, |_| true).is_ok() {
                    *model.entry((k, pid)).or_default() += 1;
                }
            } else if let Some(c) = model.get_mut(&(k, pid)) {
                t.release(&key(k), pid);
                *c -= 1;
                if *c == 0 {
                    model.remove(&(k, pid));
                }
            }
            for k in 0..30u8 {
                let want: u32 = model
                    .iter()
                    .filter(|((mk, _), _)| *mk == k)
                    .map(|(_, c)| *c)
                    .sum();
                assert_eq!(t.held(&key(k)), u64::from(want));
            }
            assert_eq!(t.header.used as usize, model.len());
        }
    }
}
