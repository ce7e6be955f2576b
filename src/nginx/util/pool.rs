//! Rust values owned by an nginx pool: memory from the `ngx` crate's pool allocator
//! (aligned for the type, null-checked) and a pool cleanup that drops the value in place
//! when nginx destroys the pool. `ngx::core::Pool::allocate` does the same but writes
//! through the pointer before checking it, so a pool out of memory would be undefined
//! behaviour; this is the checked form.

use std::alloc::Layout;
use std::ffi::c_void;
use std::ptr::NonNull;

use nginx_sys::{ngx_pool_cleanup_add, ngx_pool_t};
use ngx::allocator::Allocator;
use ngx::core::Pool;

unsafe extern "C" fn drop_value<T>(data: *mut c_void) {
    // SAFETY: data is the value `allocate` wrote; nginx runs each cleanup once, when the
    // pool is destroyed, after which nothing uses the value.
    unsafe { std::ptr::drop_in_place(data.cast::<T>()) };
}

/// Moves `value` into `pool`; it is dropped when the pool is destroyed. `None` when the
/// pool is out of memory (the value is dropped at once).
///
/// # Safety
/// `pool` must be a live pool, and nothing may use the value after the pool is destroyed.
pub unsafe fn allocate<T>(pool: *mut ngx_pool_t, value: T) -> Option<NonNull<T>> {
    // SAFETY: caller guarantees a live pool.
    let allocator = unsafe { Pool::from_ngx_pool(pool) };
    let memory = Allocator::allocate(&allocator, Layout::new::<T>())
        .ok()?
        .cast::<T>();
    // SAFETY: pool is live.
    let cleanup = unsafe { ngx_pool_cleanup_add(pool, 0) };
    if cleanup.is_null() {
        return None; // the memory stays with the pool until it goes
    }
    // SAFETY: memory is fresh, aligned and sized for T; the cleanup was just allocated and
    // gets the handler that drops exactly this value.
    unsafe {
        memory.as_ptr().write(value);
        (*cleanup).handler = Some(drop_value::<T>);
        (*cleanup).data = memory.as_ptr().cast();
    }
    Some(memory)
}
