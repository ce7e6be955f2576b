//! Where a server's `proxy_pass` points, for the configuration-time checks of
//! `noise_upstream on` servers (docs/nginx-integration.md §8.3).
//!
//! The stream proxy module keeps its target in a conf struct that only its own source file
//! defines, so that struct is never read. Instead, preconfiguration wraps the `set` handler
//! of the proxy module's `proxy_pass` command (its command table is reachable through the
//! public `ngx_module_t`): the wrapper records the argument in our conf for the same server,
//! then calls nginx's handler, which parses it as always. Postconfiguration matches the
//! recorded text against the upstream groups the way `ngx_stream_upstream_add` finds
//! them (host, case-insensitively, and port).
//!
//! The command table lives as long as the proxy module's code, which may outlive this
//! module (a reload that drops our `load_module`): a cleanup on the cycle pool puts
//! nginx's handler back when that cycle goes. A reload wraps it again in its own
//! preconfiguration, which runs before the old cycle is destroyed; restoring afterwards does
//! no harm, as parsing of the new configuration is over by then, and the next one wraps
//! again.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_int_t, ngx_module_t, ngx_parse_url, ngx_pool_cleanup_add,
    ngx_str_t, ngx_stream_upstream_srv_conf_t, ngx_url_t, NGX_OK,
};

use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conf::{args, SrvConf};

extern "C" {
    /// nginx's stream proxy module (a global of nginx or of its stream module).
    static mut ngx_stream_proxy_module: ngx_module_t;
}

type SetHandler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// nginx's own `proxy_pass` handler, saved when it is wrapped.
static ORIGINAL: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// What `proxy_pass` targets in one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A named or implicit upstream group.
    Group(*mut ngx_stream_upstream_srv_conf_t),
    /// A variable, resolved per session.
    Variable,
    /// No `proxy_pass` in this server.
    Nothing,
    /// No group matched; nothing can be said (the run-time checks remain).
    Unknown,
}

/// The proxy module's `proxy_pass` command.
///
/// # Safety
/// Called during configuration, when the proxy module's command table is live.
unsafe fn command() -> Option<*mut ngx_command_t> {
    // SAFETY: a module's command table ends with a command whose name is empty.
    unsafe {
        let mut cmd = ngx_stream_proxy_module.commands;
        if cmd.is_null() {
            return None;
        }
        while (*cmd).name.len != 0 {
            if (*cmd).name.as_bytes() == b"proxy_pass" {
                return Some(cmd);
            }
            cmd = cmd.add(1);
        }
        None
    }
}

/// Wraps `proxy_pass` for the configuration being parsed (preconfiguration).
pub fn wrap(cf: &mut ngx_conf_t) -> ngx_int_t {
    let ours: SetHandler = record;
    // SAFETY: configuration runs in one thread; the table entry is plain data.
    unsafe {
        let Some(cmd) = command() else {
            return NGX_OK as ngx_int_t; // no proxy_pass: nothing to learn
        };
        match (*cmd).set {
            Some(set) if std::ptr::fn_addr_eq(set, ours) => {}
            Some(set) => {
                ORIGINAL.store(set as *mut c_void, Ordering::Relaxed);
                (*cmd).set = Some(ours);
            }
            None => return NGX_OK as ngx_int_t,
        }
        let cleanup = ngx_pool_cleanup_add((*cf.cycle).pool, 0);
        if cleanup.is_null() {
            return nginx_sys::NGX_ERROR as ngx_int_t;
        }
        (*cleanup).handler = Some(unwrap);
        (*cleanup).data = std::ptr::null_mut();
    }
    NGX_OK as ngx_int_t
}

/// Cycle pool cleanup: nginx's handler back in its table.
unsafe extern "C" fn unwrap(_data: *mut c_void) {
    let ours: SetHandler = record;
    let original = ORIGINAL.load(Ordering::Relaxed);
    if original.is_null() {
        return;
    }
    // SAFETY: ORIGINAL holds the proxy module's `set`, a SetHandler; the table is plain data
    // and nothing parses configuration while a cycle pool is destroyed.
    unsafe {
        if let Some(cmd) = command() {
            if (*cmd)
                .set
                .is_some_and(|set| std::ptr::fn_addr_eq(set, ours))
            {
                (*cmd).set = Some(std::mem::transmute::<*mut c_void, SetHandler>(original));
            }
        }
    }
}

/// The wrapped `proxy_pass` handler: records the argument, then runs nginx's.
unsafe extern "C" fn record(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let original = ORIGINAL.load(Ordering::Relaxed);
    // SAFETY: proxy_pass is a server directive, so cf->ctx is the server's stream conf
    // context, which holds our SrvConf at our ctx_index; cf->args holds the directive and
    // its argument (nginx checked the count: NGX_CONF_TAKE1).
    unsafe {
        let mut confs = Confs::of_conf(&*cf);
        if let Some(arg) = args::of(&*cf).into_iter().next() {
            confs.noise_srv_mut().proxy_pass = Some(arg);
        }
        if original.is_null() {
            return c"is not handled: the proxy module's handler is missing"
                .as_ptr()
                .cast_mut();
        }
        std::mem::transmute::<*mut c_void, SetHandler>(original)(cf, cmd, conf)
    }
}

/// The `proxy_pass` target of a server, among the configuration's upstream groups (`cf`
/// is the configuration being finished, `groups` its live upstream groups).
pub fn target(
    cf: &mut ngx_conf_t,
    conf: &SrvConf,
    groups: &[*mut ngx_stream_upstream_srv_conf_t],
) -> Target {
    let Some(text) = conf.proxy_pass.as_deref() else {
        return Target::Nothing;
    };
    if text.contains(&b'$') {
        return Target::Variable;
    }
    // SAFETY: ngx_url_t is a plain C struct; all-zero is its initial state. Parsed as the
    // proxy module parses it, without resolving.
    let mut u: ngx_url_t = unsafe { std::mem::zeroed() };
    u.url = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    u.set_no_resolve(1);
    // SAFETY: cf->pool is live.
    if unsafe { ngx_parse_url(cf.pool, &mut u) } != NGX_OK as isize {
        return Target::Unknown;
    }
    let host = u.host.as_bytes();
    for &g in groups {
        // SAFETY: every group is a live upstream srv conf of this configuration.
        let (ghost, gport) = unsafe { ((*g).host.as_bytes(), (*g).port) };
        if ghost.eq_ignore_ascii_case(host) && gport == u.port {
            return Target::Group(g);
        }
    }
    Target::Unknown
}
