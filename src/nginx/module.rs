//! The `extern "C"` entry points that the C glue (`nginx-module/ngx_stream_noise_module.c`)
//! puts into the module definition: conf creation and merge, the shared directive parser,
//! pre/postconfiguration, `init_module`, and the stream phase handler.
//!
//! Confs are Rust values boxed into the configuration pool, dropped by a pool cleanup when
//! the cycle ends; directive errors go through `ngx_conf_log_error` so `nginx -t` prints
//! them with the file and line.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;

use nginx_sys::{
    ngx_array_push, ngx_command_t, ngx_conf_full_name, ngx_conf_log_error, ngx_conf_t, ngx_cycle_t,
    ngx_int_t, ngx_log_error_core, ngx_module_t, ngx_parse_size, ngx_parse_time, ngx_parse_url,
    ngx_pool_cleanup_add, ngx_pool_t, ngx_str_t, ngx_stream_conf_ctx_t,
    ngx_stream_core_main_conf_t, ngx_stream_core_module, ngx_stream_handler_pt, ngx_stream_module,
    ngx_stream_phases_NGX_STREAM_POST_ACCEPT_PHASE, ngx_stream_phases_NGX_STREAM_SSL_PHASE,
    ngx_stream_session_t, ngx_uint_t, ngx_url_t, NGX_DECLINED, NGX_ERROR, NGX_LOG_EMERG,
    NGX_LOG_WARN, NGX_OK, NGX_STREAM_INTERNAL_SERVER_ERROR,
};

use super::conf::{parse_padding, Loaded, ServerKey, SideConf, SrvConf};
use super::gate::{self, Class};
use super::listen::{self, MainConf};
use super::{conn, server, upstream, variables};
use crate::core::keys;
use crate::core::protocol::Protocol;

extern "C" {
    /// Defined by the C glue.
    static mut ngx_stream_noise_module: ngx_module_t;
}

const CONF_OK: *mut c_char = std::ptr::null_mut();
const CONF_ERROR: *mut c_char = -1isize as *mut c_char;

unsafe extern "C" fn drop_boxed<T>(data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: data came from Box::into_raw::<T> in alloc_conf and is dropped once.
        drop(unsafe { Box::from_raw(data.cast::<T>()) });
    }
}

/// Boxes a default `T` whose lifetime is the pool's.
unsafe fn alloc_conf<T: Default>(pool: *mut ngx_pool_t) -> *mut c_void {
    // SAFETY: pool is a live configuration pool.
    let cleanup = unsafe { ngx_pool_cleanup_add(pool, 0) };
    if cleanup.is_null() {
        return std::ptr::null_mut();
    }
    let raw = Box::into_raw(Box::<T>::default());
    // SAFETY: cleanup was just allocated; drop_boxed frees raw once, when the pool goes.
    unsafe {
        (*cleanup).handler = Some(drop_boxed::<T>);
        (*cleanup).data = raw.cast();
    }
    raw.cast()
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is the configuration being parsed.
    unsafe { alloc_conf::<MainConf>((*cf).pool) }
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: as above.
    unsafe { alloc_conf::<SrvConf>((*cf).pool) }
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_merge_srv_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the two SrvConf values our create function made.
    let (parent, child) = unsafe { (&*(parent as *const SrvConf), &mut *(child as *mut SrvConf)) };
    match child.merge(parent) {
        Ok(()) => CONF_OK,
        Err(msg) => {
            // SAFETY: cf is live.
            unsafe { emerg_log((*cf).log, &msg) };
            CONF_ERROR
        }
    }
}

/// Logs at `emerg` to a log (merge and init have no directive position).
unsafe fn emerg_log(log: *mut nginx_sys::ngx_log_t, msg: &str) {
    // SAFETY: log is live; "%*s" takes a length and a pointer.
    unsafe {
        ngx_log_error_core(
            NGX_LOG_EMERG as ngx_uint_t,
            log,
            0,
            c"%*s".as_ptr(),
            msg.len(),
            msg.as_ptr(),
        )
    };
}

/// Logs at `level` with the directive's file and line.
unsafe fn conf_log(cf: *mut ngx_conf_t, level: u32, msg: &str) {
    // SAFETY: cf is live; "%*s" takes a length and a pointer.
    unsafe {
        ngx_conf_log_error(
            level as ngx_uint_t,
            cf,
            0,
            c"%*s".as_ptr(),
            msg.len(),
            msg.as_ptr(),
        )
    };
}

/// "file:line" of the directive being parsed.
unsafe fn position(cf: *mut ngx_conf_t) -> String {
    // SAFETY: cf->conf_file is set while a directive is parsed.
    unsafe {
        let f = &*(*cf).conf_file;
        format!(
            "{}:{}",
            String::from_utf8_lossy(f.file.name.as_bytes()),
            f.line
        )
    }
}

unsafe fn main_conf_of(cf: *mut ngx_conf_t) -> &'static mut MainConf {
    // SAFETY: cf->ctx is a stream conf context while stream directives are parsed; our
    // main conf was created for it.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_stream_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(ngx_stream_noise_module.ctx_index) as *mut MainConf)
    }
}

/// Resolves a path against the configuration prefix, as nginx does for its own files.
unsafe fn full_path(cf: *mut ngx_conf_t, arg: &[u8]) -> Result<PathBuf, String> {
    let mut name = ngx_str_t {
        len: arg.len(),
        data: arg.as_ptr().cast_mut(),
    };
    // SAFETY: cf->cycle is live; nginx allocates the full name in the cycle pool.
    if unsafe { ngx_conf_full_name((*cf).cycle, &mut name, 1) } != NGX_OK as ngx_int_t {
        return Err("cannot resolve path".into());
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(name.as_bytes()).into_owned(),
    ))
}

/// Loads a secret file, warning when others can read it.
unsafe fn load_secret(
    cf: *mut ngx_conf_t,
    directive: &str,
    arg: &[u8],
) -> Result<Loaded<keys::Secret>, String> {
    // SAFETY: forwarded.
    let path = unsafe { full_path(cf, arg)? };
    let value = keys::load_secret(&path).map_err(|e| format!("\"{directive}\": {e}"))?;
    if let Some(mode) = keys::loose_permissions(&path) {
        let msg = format!(
            "\"{directive}\": {} is readable by group or others (mode {mode:04o}); chmod 600 it",
            path.display()
        );
        // SAFETY: cf is live.
        unsafe { conf_log(cf, NGX_LOG_WARN, &msg) };
    }
    Ok(Loaded { path, value })
}

/// Loads a public-key list with `load` (a trusted list, or a deny list that may be empty).
unsafe fn load_list(
    cf: *mut ngx_conf_t,
    directive: &str,
    arg: &[u8],
    load: fn(&std::path::Path) -> Result<keys::KeySet, keys::KeyFileError>,
) -> Result<Loaded<keys::KeySet>, String> {
    // SAFETY: forwarded.
    let path = unsafe { full_path(cf, arg)? };
    let value = load(&path).map_err(|e| format!("\"{directive}\": {e}"))?;
    Ok(Loaded { path, value })
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn set_once<T>(slot: &mut Option<T>, value: T, directive: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("\"{directive}\" directive is duplicate"));
    }
    *slot = Some(value);
    Ok(())
}

unsafe fn parse_time(directive: &str, arg: &[u8]) -> Result<nginx_sys::ngx_msec_t, String> {
    let mut s = ngx_str_t {
        len: arg.len(),
        data: arg.as_ptr().cast_mut(),
    };
    // SAFETY: s describes arg, which outlives the call.
    let v = unsafe { ngx_parse_time(&mut s, 0) };
    if v < 0 {
        return Err(format!("\"{directive}\": invalid time \"{}\"", text(arg)));
    }
    Ok(v as nginx_sys::ngx_msec_t)
}

unsafe fn parse_size(directive: &str, arg: &[u8]) -> Result<usize, String> {
    let mut s = ngx_str_t {
        len: arg.len(),
        data: arg.as_ptr().cast_mut(),
    };
    // SAFETY: s describes arg, which outlives the call.
    let v = unsafe { ngx_parse_size(&mut s) };
    parse_padding(v).map_err(|e| format!("\"{directive}\" {e}, not \"{}\"", text(arg)))
}

/// The key directives shared by both sides.
unsafe fn side_directive(
    cf: *mut ngx_conf_t,
    side: &mut SideConf,
    directive: &str,
    suffix: &str,
    arg: &[u8],
) -> Result<bool, String> {
    // SAFETY: forwarded to the loaders.
    unsafe {
        match suffix {
            "private_key" => set_once(
                &mut side.private_key,
                load_secret(cf, directive, arg)?,
                directive,
            )?,
            "trusted_keys" => set_once(
                &mut side.trusted_keys,
                load_list(cf, directive, arg, keys::load_key_list)?,
                directive,
            )?,
            "revoked_keys" => set_once(
                &mut side.revoked_keys,
                load_list(cf, directive, arg, keys::load_deny_list)?,
                directive,
            )?,
            "psk" => set_once(&mut side.psk, load_secret(cf, directive, arg)?, directive)?,
            "prologue" => set_once(&mut side.prologue, arg.to_vec(), directive)?,
            "padding" => set_once(&mut side.padding, parse_size(directive, arg)?, directive)?,
            "handshake_timeout" => set_once(
                &mut side.handshake_timeout,
                parse_time(directive, arg)?,
                directive,
            )?,
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Parses `noise_upstream_server_key address key|file`.
unsafe fn server_key(cf: *mut ngx_conf_t, address: &[u8], key: &[u8]) -> Result<ServerKey, String> {
    let key_text = text(key);
    let key = match keys::decode_key(&key_text) {
        Ok(k) => k,
        Err(_) => {
            // SAFETY: forwarded.
            let path = unsafe { full_path(cf, key)? };
            keys::load_public_key(&path.to_string_lossy())
                .map_err(|e| format!("\"noise_upstream_server_key\": {e}"))?
        }
    };
    // SAFETY: ngx_url_t is a plain C struct; all-zero is its initial state.
    let mut u: ngx_url_t = unsafe { std::mem::zeroed() };
    u.url = ngx_str_t {
        len: address.len(),
        data: address.as_ptr().cast_mut(),
    };
    // SAFETY: cf->pool is live.
    if unsafe { ngx_parse_url((*cf).pool, &mut u) } != NGX_OK as ngx_int_t || u.naddrs == 0 {
        return Err(format!(
            "\"noise_upstream_server_key\": cannot resolve \"{}\"",
            text(address)
        ));
    }
    if u.no_port() != 0 {
        return Err(format!(
            "\"noise_upstream_server_key\": no port in \"{}\"",
            text(address)
        ));
    }
    // SAFETY: u.addrs holds u.naddrs entries with sockaddrs of socklen bytes.
    let sockaddrs = unsafe {
        std::slice::from_raw_parts(u.addrs, u.naddrs)
            .iter()
            .map(|a| {
                std::slice::from_raw_parts(a.sockaddr as *const u8, a.socklen as usize).to_vec()
            })
            .collect()
    };
    Ok(ServerKey {
        address: text(address),
        sockaddrs,
        key,
    })
}

/// The one parser of every directive; dispatches on the directive's name.
/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_directive(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the command being parsed and our SrvConf for this level.
    let (name, conf) = unsafe { (text((*cmd).name.as_bytes()), &mut *(conf as *mut SrvConf)) };
    // SAFETY: cf is live during parsing.
    let result = unsafe { directive(cf, &name, conf) };
    match result {
        Ok(()) => CONF_OK,
        Err(msg) => {
            if !msg.is_empty() {
                // SAFETY: cf is live.
                unsafe { conf_log(cf, NGX_LOG_EMERG, &msg) };
            }
            CONF_ERROR
        }
    }
}

unsafe fn directive(cf: *mut ngx_conf_t, name: &str, conf: &mut SrvConf) -> Result<(), String> {
    // SAFETY: cf is live during parsing.
    let args = unsafe { listen::args(cf) };
    let first = args.first().copied().unwrap_or_default();
    match name {
        "noise_listen" => {
            // SAFETY: cf is live.
            let at = unsafe { position(cf) };
            // SAFETY: cf is live; the main conf exists for the stream block.
            unsafe { listen::parse(cf, main_conf_of(cf), &at)? };
            conf.listen_at.get_or_insert(at);
        }
        "noise_protocol" => {
            let protocols = args
                .iter()
                .map(|a| Protocol::parse(&text(a)).map_err(|e| format!("\"noise_protocol\": {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            set_once(&mut conf.protocols, protocols, name)?;
        }
        "noise_upstream" => {
            let on = match first {
                b"on" => true,
                b"off" => false,
                _ => {
                    return Err(format!(
                        "invalid value \"{}\" in \"noise_upstream\", it must be \"on\" or \"off\"",
                        text(first)
                    ))
                }
            };
            set_once(&mut conf.upstream, on, name)?;
            // SAFETY: cf is live.
            conf.upstream_at = Some(unsafe { position(cf) });
        }
        "noise_upstream_protocol" => {
            let p = Protocol::parse(&text(first)).map_err(|e| format!("\"{name}\": {e}"))?;
            set_once(&mut conf.upstream_protocol, p, name)?;
        }
        "noise_upstream_negotiation" => {
            let codec = text(first)
                .parse()
                .map_err(|e| format!("\"{name}\": {e}"))?;
            set_once(&mut conf.upstream_negotiation, codec, name)?;
        }
        "noise_upstream_server_key" => {
            let second = args.get(1).copied().unwrap_or_default();
            // SAFETY: cf is live.
            let key = unsafe { server_key(cf, first, second)? };
            conf.upstream_server_keys.push(key);
        }
        _ => {
            let handled = if let Some(suffix) = name.strip_prefix("noise_upstream_") {
                // SAFETY: cf is live.
                unsafe { side_directive(cf, &mut conf.upstream_conf, name, suffix, first)? }
            } else if let Some(suffix) = name.strip_prefix("noise_") {
                // SAFETY: cf is live.
                unsafe { side_directive(cf, &mut conf.server, name, suffix, first)? }
            } else {
                false
            };
            if !handled {
                return Err(format!("unknown directive \"{name}\""));
            }
        }
    }
    Ok(())
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: cf is the stream configuration, in preconfiguration.
    unsafe {
        if super::proxy_pass::wrap(cf) != NGX_OK as ngx_int_t {
            return NGX_ERROR as ngx_int_t;
        }
        variables::add(cf)
    }
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: cf->ctx is the stream main context; the core main conf and its phase arrays
    // exist (created unconditionally by ngx_stream_init_phases).
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_stream_conf_ctx_t;
        let cmcf = *(*ctx).main_conf.add(ngx_stream_core_module.ctx_index)
            as *mut ngx_stream_core_main_conf_t;
        for (phase, handler) in [
            (
                ngx_stream_phases_NGX_STREAM_POST_ACCEPT_PHASE,
                post_accept_handler as unsafe extern "C" fn(_) -> _,
            ),
            (ngx_stream_phases_NGX_STREAM_SSL_PHASE, phase_handler),
        ] {
            let phase = &mut (*cmcf).phases[phase as usize];
            let h = ngx_array_push(&mut phase.handlers) as *mut ngx_stream_handler_pt;
            if h.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            *h = Some(handler);
        }
        #[cfg(ngx_stream_virtual_servers)]
        {
            let main =
                &*(*(*ctx).main_conf.add(ngx_stream_noise_module.ctx_index) as *const MainConf);
            if let Err(msg) = listen::check_shared_addresses(cmcf, main) {
                emerg_log((*cf).log, &msg);
                return NGX_ERROR as ngx_int_t;
            }
        }
        upstream::install(cf)
    }
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: conf_ctx holds the stream context when a stream block exists.
    let main = unsafe {
        let ctx = *(*cycle).conf_ctx.add(ngx_stream_module.index) as *mut ngx_stream_conf_ctx_t;
        if ctx.is_null() {
            return NGX_OK as ngx_int_t;
        }
        &*(*(*ctx).main_conf.add(ngx_stream_noise_module.ctx_index) as *const MainConf)
    };
    // SAFETY: the conf contexts of this cycle's stream servers carry our SrvConf.
    let is_noise_server = |ctx: *mut ngx_stream_conf_ctx_t| unsafe {
        let conf = *(*ctx).srv_conf.add(ngx_stream_noise_module.ctx_index) as *const SrvConf;
        (*conf).listen_at.is_some()
    };
    // SAFETY: cycle is the one being initialised.
    match unsafe { listen::resolve(cycle, main, &is_noise_server) } {
        Ok(()) => NGX_OK as ngx_int_t,
        Err(msg) => {
            // SAFETY: cycle->log is live.
            unsafe { emerg_log((*cycle).log, &msg) };
            NGX_ERROR as ngx_int_t
        }
    }
}

/// `NGX_STREAM_POST_ACCEPT_PHASE` handler: gate layer 2 (see [`gate`]).
unsafe extern "C" fn post_accept_handler(s: *mut ngx_stream_session_t) -> ngx_int_t {
    // SAFETY: s is live; main_conf holds ours at our ctx_index.
    unsafe {
        let c = (*s).connection;
        let main = &*(*(*s).main_conf.add(ngx_stream_noise_module.ctx_index) as *const MainConf);
        if gate::classify(main, (*c).listening) != Class::Plain
            && conn::get(c).is_none()
            && !gate::is_gated(c)
        {
            gate::install(c);
        }
    }
    NGX_DECLINED as ngx_int_t
}

/// `NGX_STREAM_SSL_PHASE` handler: the server handshake on NoiseSocket addresses, and gate
/// layer 3 (see [`gate`]): nothing from such an address goes on without a finished one.
unsafe extern "C" fn phase_handler(s: *mut ngx_stream_session_t) -> ngx_int_t {
    // SAFETY: s is live; main_conf/srv_conf hold our confs at our ctx_index.
    unsafe {
        let c = (*s).connection;
        let main = &*(*(*s).main_conf.add(ngx_stream_noise_module.ctx_index) as *const MainConf);
        match gate::classify(main, (*c).listening) {
            Class::Noise => {}
            Class::Plain if !gate::is_gated(c) => return NGX_DECLINED as ngx_int_t,
            class => {
                super::log::write(
                    (*c).log,
                    super::log::ALERT,
                    &format!("noise: refusing a connection the module cannot classify ({class:?} socket with NoiseSocket I/O refusal installed, or a wildcard socket on a noise_listen port)"),
                );
                return NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t;
            }
        }
        let conf = &*(*(*s).srv_conf.add(ngx_stream_noise_module.ctx_index) as *const SrvConf);
        match &conf.server_side {
            Some(side) => server::handshake_phase(s, side),
            None => {
                super::log::write(
                    (*c).log,
                    super::log::ALERT,
                    "noise: the default server of this noise_listen socket has no noise_listen",
                );
                NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t
            }
        }
    }
}
