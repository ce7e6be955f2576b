//! Module confs of stream modules, found the way `ngx_stream_get_module_main_conf` and
//! `ngx_stream_get_module_srv_conf` find them (`ngx_stream_config.h`): a conf context holds
//! one array of main confs and one of server confs, indexed by each module's `ctx_index`.
//! The `ngx` crate has these accessors for http modules only.
//!
//! Every context nginx hands a stream module (the `cf->ctx` of a stream directive, a
//! session, a server's `ngx_stream_core_srv_conf_t::ctx`, the cycle's stream context) has
//! a slot for every stream module, so the lookups cannot go out of bounds; what they return
//! lives as long as the configuration (the cycle pool), which outlives every session and
//! directive call: references are tied to the borrowed context, never `'static`.

use std::ffi::c_void;
use std::marker::PhantomData;

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_module_t, ngx_stream_conf_ctx_t, ngx_stream_core_main_conf_t,
    ngx_stream_core_module, ngx_stream_core_srv_conf_t, ngx_stream_module, ngx_stream_session_t,
    ngx_stream_upstream_main_conf_t, ngx_stream_upstream_module,
};

use crate::nginx::conf::{MainConf, SrvConf};

extern "C" {
    /// Defined by the C glue (`nginx-module/ngx_stream_noise_module.c`).
    static mut ngx_stream_noise_module: ngx_module_t;
}

/// Our module's `ctx_index` (set by nginx when the module is loaded, before any conf).
pub fn noise_index() -> usize {
    // SAFETY: nginx writes the field once, while loading modules; afterwards it is only read.
    unsafe { ngx_stream_noise_module.ctx_index }
}

/// The two conf arrays of one stream conf context, for as long as `'a`.
#[derive(Clone, Copy)]
pub struct Confs<'a> {
    main: *mut *mut c_void,
    srv: *mut *mut c_void,
    lives: PhantomData<&'a ()>,
}

impl<'a> Confs<'a> {
    /// The context of the stream directive being parsed (stream or server level), or of
    /// the stream block in pre/postconfiguration.
    ///
    /// # Safety
    /// `cf.ctx` must be a stream conf context, and `'a` must end with the configuration
    /// (the context is not part of `cf`, so it is not borrowed from it).
    pub unsafe fn of_conf(cf: &ngx_conf_t) -> Confs<'a> {
        // SAFETY: caller guarantees cf->ctx is an ngx_stream_conf_ctx_t.
        let ctx = unsafe { &*(cf.ctx as *const ngx_stream_conf_ctx_t) };
        Confs {
            main: ctx.main_conf,
            srv: ctx.srv_conf,
            lives: PhantomData,
        }
    }

    /// The confs of a server block or of the stream block.
    pub fn of_ctx(ctx: &'a ngx_stream_conf_ctx_t) -> Confs<'a> {
        Confs {
            main: ctx.main_conf,
            srv: ctx.srv_conf,
            lives: PhantomData,
        }
    }

    /// The confs a session runs with (its server's).
    pub fn of_session(s: &'a ngx_stream_session_t) -> Confs<'a> {
        Confs {
            main: s.main_conf,
            srv: s.srv_conf,
            lives: PhantomData,
        }
    }

    /// The stream block's context of a cycle, if it has a `stream {}` block.
    ///
    /// # Safety
    /// `cycle` must be a cycle whose configuration has been read, and `'a` must end with
    /// it (the contexts live in its pool, not in the cycle struct).
    pub unsafe fn of_cycle(cycle: *const ngx_cycle_t) -> Option<Confs<'a>> {
        // SAFETY: conf_ctx has a slot per core module; the stream module's holds its context
        // or null.
        let ctx = unsafe { *(*cycle).conf_ctx.add(ngx_stream_module.index) }
            as *const ngx_stream_conf_ctx_t;
        // SAFETY: non-null means the stream context nginx created for this cycle.
        (!ctx.is_null()).then(|| unsafe { Confs::of_ctx(&*ctx) })
    }

    fn main_slot(&self, index: usize) -> *mut c_void {
        // SAFETY: a stream conf context's main_conf array has a slot per stream module
        // (module doc); index is a stream module's ctx_index.
        unsafe { *self.main.add(index) }
    }

    fn srv_slot(&self, index: usize) -> *mut c_void {
        // SAFETY: as main_slot, for the srv_conf array.
        unsafe { *self.srv.add(index) }
    }

    /// Our main conf.
    pub fn noise_main(&self) -> &'a MainConf {
        // SAFETY: our create_main_conf made it (a MainConf) for every stream context; it
        // lives as long as the configuration.
        unsafe { &*(self.main_slot(noise_index()) as *const MainConf) }
    }

    /// Our main conf, for the directive or phase of configuration being run.
    ///
    /// # Safety
    /// No other reference to the main conf may be live (configuration runs in one thread,
    /// one directive at a time).
    pub unsafe fn noise_main_mut(&mut self) -> &mut MainConf {
        // SAFETY: as noise_main; exclusivity is the caller's promise.
        unsafe { &mut *(self.main_slot(noise_index()) as *mut MainConf) }
    }

    /// Our server conf (the stream block's one for a stream-level context).
    pub fn noise_srv(&self) -> &'a SrvConf {
        // SAFETY: our create_srv_conf made it (a SrvConf) for every stream and server
        // context; it lives as long as the configuration.
        unsafe { &*(self.srv_slot(noise_index()) as *const SrvConf) }
    }

    /// Our server conf, while a directive of that server is parsed.
    ///
    /// # Safety
    /// As [`Confs::noise_main_mut`].
    pub unsafe fn noise_srv_mut(&mut self) -> &mut SrvConf {
        // SAFETY: as noise_srv; exclusivity is the caller's promise.
        unsafe { &mut *(self.srv_slot(noise_index()) as *mut SrvConf) }
    }

    /// The stream core module's main conf (phases, servers, ports).
    pub fn core_main(&self) -> *mut ngx_stream_core_main_conf_t {
        // SAFETY: the stream core module has a slot in every context (read only).
        self.main_slot(unsafe { ngx_stream_core_module.ctx_index })
            .cast()
    }

    /// The stream core module's server conf (`tcp_nodelay`, the server's position).
    pub fn core_srv(&self) -> *mut ngx_stream_core_srv_conf_t {
        // SAFETY: as core_main.
        self.srv_slot(unsafe { ngx_stream_core_module.ctx_index })
            .cast()
    }

    /// The stream upstream module's main conf (the upstream groups).
    pub fn upstream_main(&self) -> *mut ngx_stream_upstream_main_conf_t {
        // SAFETY: as core_main; the upstream module is part of every stream build.
        self.main_slot(unsafe { ngx_stream_upstream_module.ctx_index })
            .cast()
    }
}

/// "file:line" of a `server {}` block.
///
/// # Safety
/// `cscf.file_name` must be nginx's NUL-terminated name of the configuration file.
pub unsafe fn server_position(cscf: &nginx_sys::ngx_stream_core_srv_conf_t) -> String {
    // SAFETY: caller guarantees a NUL-terminated string.
    let file = unsafe { std::ffi::CStr::from_ptr(cscf.file_name.cast()) };
    format!("{}:{}", file.to_string_lossy(), cscf.line)
}
