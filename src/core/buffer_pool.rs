//! Recycled I/O buffers, per thread.
//!
//! Connections give their receive and send buffers back when idle (so an idle connection
//! holds none) and take one again when traffic resumes; this pool makes that a pointer pop
//! instead of an allocation plus a 64 KiB zero-fill (or, for the larger send buffers, an
//! `mmap`/`munmap` pair). It keeps at most [`KEEP_BYTES`] in all, so a burst of connections
//! cannot pin memory for ever. nginx workers are single-threaded, so a thread-local list
//! needs no locking.
//!
//! Buffers come back with stale bytes in them: callers only ever read what they wrote.

use std::cell::RefCell;

/// Bytes kept in the pool, all sizes together.
pub const KEEP_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Pool {
    free: Vec<Box<[u8]>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// A buffer of exactly `len` bytes, recycled when one is free.
pub fn take(len: usize) -> Box<[u8]> {
    let recycled = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pos = pool.free.iter().rposition(|b| b.len() == len)?;
        pool.bytes -= len;
        Some(pool.free.swap_remove(pos))
    });
    recycled.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
}

/// Returns a buffer for reuse (dropped when the pool is full).
pub fn give(buf: Box<[u8]>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.bytes + buf.len() <= KEEP_BYTES {
            pool.bytes += buf.len();
            pool.free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_by_size_and_bounds_the_pool() {
        let a = take(1000);
        let ptr = a.as_ptr();
        give(a);
        let again = take(1000);
        assert_eq!(again.as_ptr(), ptr, "same buffer back");
        assert_eq!(take(2000).len(), 2000);
        for _ in 0..KEEP_BYTES / 3000 + 10 {
            give(vec![0u8; 3000].into_boxed_slice());
        }
        let (kept, bytes) = POOL.with(|p| {
            let p = p.borrow();
            (p.free.iter().map(|b| b.len()).sum::<usize>(), p.bytes)
        });
        assert_eq!(kept, bytes);
        assert!(bytes <= KEEP_BYTES && bytes > KEEP_BYTES - 3000);
    }
}
