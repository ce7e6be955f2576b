//! Where a server's `proxy_pass` points, read from the stream proxy module's private server
//! conf (`ngx_stream_proxy_srv_conf_t`, defined only inside `ngx_stream_proxy_module.c`).
//!
//! Only nginx 1.28's layout is known: `upstream` (the group) and `upstream_value` (a
//! variable) are its last two pointer-sized fields, at word 14 without stream SSL and word
//! 33 with it. The words are only *compared* with known group addresses, never followed, so
//! a layout that differs (another nginx) can at worst make the answer [`Target::Unknown`];
//! the checks that use it are configuration-time conveniences, the run-time checks stay.

use nginx_sys::{ngx_module_t, ngx_stream_conf_ctx_t, ngx_stream_upstream_srv_conf_t};

extern "C" {
    /// nginx's stream proxy module (a global of the nginx binary).
    static mut ngx_stream_proxy_module: ngx_module_t;
}

#[cfg(ngx_feature = "stream_ssl")]
const UPSTREAM_WORD: usize = 33;
#[cfg(not(ngx_feature = "stream_ssl"))]
const UPSTREAM_WORD: usize = 14;

/// What `proxy_pass` targets in one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A named or implicit upstream group.
    Group(*mut ngx_stream_upstream_srv_conf_t),
    /// A variable, resolved per session.
    Variable,
    /// No `proxy_pass` in this server.
    Nothing,
    /// The layout did not match; nothing can be said.
    Unknown,
}

/// The `proxy_pass` target of the server whose context is `ctx`.
///
/// # Safety
/// `ctx` must be a stream server's conf context after the stream block was parsed, and
/// `groups` the upstream groups of the same configuration.
pub unsafe fn target(
    ctx: *mut ngx_stream_conf_ctx_t,
    groups: &[*mut ngx_stream_upstream_srv_conf_t],
) -> Target {
    // SAFETY: the proxy module is compiled into every stream nginx (it has no switch to
    // leave it out); its srv conf is a pcalloc'ed ngx_stream_proxy_srv_conf_t of at least
    // UPSTREAM_WORD + 2 words in 1.28 with this feature set. The words are only compared.
    unsafe {
        let conf = *(*ctx).srv_conf.add(ngx_stream_proxy_module.ctx_index) as *const usize;
        if conf.is_null() {
            return Target::Unknown;
        }
        let (upstream, value) = (*conf.add(UPSTREAM_WORD), *conf.add(UPSTREAM_WORD + 1));
        if upstream == 0 {
            return if value == 0 {
                Target::Nothing
            } else {
                Target::Variable
            };
        }
        match groups.iter().find(|g| **g as usize == upstream) {
            Some(g) => Target::Group(*g),
            None => Target::Unknown,
        }
    }
}
