//! The module's shared zones (`noise_status`, `noise_limit_conn_per_key`, every
//! `noise_keys_zone`): one way to add them, so that all carry the same tag and keep their
//! names for the cycle's life.
//!
//! The tag is the stream module's address, the same in every cycle while the .so stays
//! loaded: nginx then gives the stream and http sides of one configuration the same zone,
//! and keeps a zone across reloads when its name and size stay.

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_list_part_t, ngx_pnalloc, ngx_shared_memory_add,
    ngx_shm_zone_t, ngx_str_t,
};

extern "C" {
    /// The stream module (C glue): the tag of every zone this module adds.
    static mut ngx_stream_noise_module: nginx_sys::ngx_module_t;
}

/// A zone's init callback.
pub type Init = unsafe extern "C" fn(*mut ngx_shm_zone_t, *mut std::ffi::c_void) -> ngx_int_t;

/// Adds zone `name` of `size` bytes (0: find the zone someone else sizes) to the
/// configuration being read, with `init`; null when nginx refused (it logged why).
///
/// # Safety
/// `cf` must be a configuration being read.
pub unsafe fn add_zone(
    cf: *mut ngx_conf_t,
    name: &[u8],
    size: usize,
    init: Init,
) -> *mut ngx_shm_zone_t {
    // nginx keeps the name's pointer for the cycle's life: copy it into the cycle's pool.
    // SAFETY: cf is being read (the caller's promise), so cf->pool is live.
    let data = unsafe { ngx_pnalloc((*cf).pool, name.len().max(1)) } as *mut u8;
    if data.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: data has room for name.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), data, name.len()) };
    let mut name = ngx_str_t {
        len: name.len(),
        data,
    };
    // SAFETY: cf is being read; the tag is the module's address (module doc).
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            size,
            (&raw mut ngx_stream_noise_module).cast(),
        )
    };
    if !zone.is_null() {
        // SAFETY: nginx returned this cycle's entry for the zone.
        unsafe { (*zone).init = Some(init) };
    }
    zone
}

/// Calls `f` with every zone of `cycle` that this module added (by tag).
///
/// # Safety
/// `cycle` must be a live cycle; `f` is given live zone entries of it.
pub unsafe fn each_zone(cycle: *mut ngx_cycle_t, mut f: impl FnMut(*mut ngx_shm_zone_t)) {
    // SAFETY: the cycle's shared_memory is an ngx_list_t of ngx_shm_zone_t, every part's
    // elts holding nelts entries.
    unsafe {
        let mut part: *mut ngx_list_part_t = &mut (*cycle).shared_memory.part;
        while !part.is_null() {
            let zones = (*part).elts as *mut ngx_shm_zone_t;
            for i in 0..(*part).nelts {
                let z = zones.add(i);
                if (*z).tag == (&raw mut ngx_stream_noise_module).cast() {
                    f(z);
                }
            }
            part = (*part).next;
        }
    }
}
