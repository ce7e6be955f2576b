//! Recycled I/O buffers, per thread.
//!
//! Connections give their receive and send buffers back when idle (so an idle connection
//! holds none) and take one again when traffic resumes; this pool makes that a pointer pop
//! instead of an allocation plus a 64 KiB zero-fill. It keeps at most [`KEEP`] buffers of
//! each size, so a burst of connections cannot pin memory for ever. nginx workers are
//! single-threaded, so a thread-local list needs no locking.
//!
//! Buffers come back with stale bytes in them: callers only ever read what they wrote.

use std::cell::RefCell;

/// Buffers kept per size.
pub const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly `len` bytes, recycled when one is free.
pub fn take(len: usize) -> Box<[u8]> {
    let recycled = FREE.with(|free| {
        let mut free = free.borrow_mut();
        let pos = free.iter().rposition(|b| b.len() == len)?;
        Some(free.swap_remove(pos))
    });
    recycled.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
}

/// Returns a buffer for reuse (dropped when enough of its size are kept).
pub fn give(buf: Box<[u8]>) {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.iter().filter(|b| b.len() == buf.len()).count() < KEEP {
            free.push(buf);
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
        for _ in 0..KEEP + 10 {
            give(vec![0u8; 3000].into_boxed_slice());
        }
        let kept = FREE.with(|f| f.borrow().iter().filter(|b| b.len() == 3000).count());
        assert_eq!(kept, KEEP);
    }
}
