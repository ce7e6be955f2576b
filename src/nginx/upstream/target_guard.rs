//! `noise_upstream on` with `proxy_pass $variable`: a value that is not an upstream group is
//! refused before anything connects (docs/nginx-integration.md §5.6).
//!
//! The proxy connects a variable's value itself when it is a bare address or a name it
//! resolves: those paths never call a group's `peer.init`, so our balancer wrapper is not
//! there to speak NoiseSocket. The fail-closed filter would stop the first byte, but only
//! after a bare TCP connection to that back end, and the session would be logged as a
//! success. So at postconfiguration, for each such server, [`install`] compiles the recorded
//! `proxy_pass` argument as a complex value of our own and puts [`guard`] in place of the
//! content handler `proxy_pass` installed (`ngx_stream_core_srv_conf_t.handler`, public),
//! keeping the proxy's. At run time the guard evaluates the value (in the content phase,
//! after preread, so it sees what the proxy will see), parses it as the proxy does, and
//! looks for the upstream group the proxy would pick (same host and port rules as
//! `ngx_stream_proxy_handler`). A group: the proxy's handler runs, and the wrapper does the
//! rest. Anything else (an address, a name to resolve, a unix path): one `error` line and
//! the session ends with 502 in `$status`, before the proxy has created an upstream.
//!
//! The proxy evaluates the value again; cached variables give the same answer. Should a
//! value change between the two (a non-cacheable variable), the filter is still there.

use nginx_sys::{
    ngx_conf_t, ngx_parse_url, ngx_pnalloc, ngx_str_t, ngx_stream_compile_complex_value,
    ngx_stream_compile_complex_value_t, ngx_stream_complex_value, ngx_stream_complex_value_t,
    ngx_stream_core_srv_conf_t, ngx_stream_finalize_session, ngx_stream_session_t,
    ngx_stream_upstream_srv_conf_t, ngx_uint_t, ngx_url_t, NGX_OK, NGX_STREAM_BAD_GATEWAY,
    NGX_STREAM_INTERNAL_SERVER_ERROR,
};

use crate::nginx::conf::srv::VariableTarget;
use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conf::SrvConf;
use crate::nginx::util::log;

/// Puts the guard in front of the proxy's content handler of server `cscf`, whose
/// `proxy_pass` (recorded in `conf`) is a variable (postconfiguration).
pub fn install(
    cf: &mut ngx_conf_t,
    cscf: &mut ngx_stream_core_srv_conf_t,
    conf: &mut SrvConf,
) -> Result<(), String> {
    if conf.variable_target.is_some() {
        return Ok(()); // already in place
    }
    let Some(text) = conf.proxy_pass.as_deref() else {
        return Ok(());
    };
    let Some(next) = cscf.handler else {
        return Err("\"proxy_pass\" set no content handler".into());
    };
    // SAFETY: cf->pool is the configuration's pool, live as long as every session of it;
    // the copy and the complex value live there. ngx_stream_compile_complex_value reads the
    // stream conf context of cf (postconfiguration of the stream block: it is one).
    unsafe {
        let copy = ngx_pnalloc(cf.pool, text.len()) as *mut u8;
        let value =
            nginx_sys::ngx_pcalloc(cf.pool, std::mem::size_of::<ngx_stream_complex_value_t>())
                as *mut ngx_stream_complex_value_t;
        if copy.is_null() || value.is_null() {
            return Err("out of memory".into());
        }
        std::ptr::copy_nonoverlapping(text.as_ptr(), copy, text.len());
        let mut source = ngx_str_t {
            len: text.len(),
            data: copy,
        };
        let mut ccv: ngx_stream_compile_complex_value_t = std::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut source;
        ccv.complex_value = value;
        if ngx_stream_compile_complex_value(&mut ccv) != NGX_OK as isize {
            return Err(format!(
                "cannot compile the \"proxy_pass\" value \"{}\"",
                String::from_utf8_lossy(text)
            ));
        }
        conf.variable_target = Some(VariableTarget { value, next });
    }
    cscf.handler = Some(guard);
    Ok(())
}

/// The content handler of a guarded server: the proxy's, if the target is a group.
unsafe extern "C" fn guard(s: *mut ngx_stream_session_t) {
    // SAFETY: nginx runs the content handler with a live session; its confs live as long
    // as the configuration.
    let session = unsafe { &*s };
    let confs = Confs::of_session(session);
    let Some(target) = confs.noise_srv().variable_target.as_ref() else {
        // Cannot happen: install() sets both together. Fail closed.
        // SAFETY: the session's connection and log are live.
        unsafe {
            log::write(
                (*session.connection).log,
                log::ALERT,
                "noise: content guard without its proxy_pass target",
            );
            ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_uint_t);
        }
        return;
    };
    let next = target.next;
    // SAFETY: as above; value was compiled for this server's configuration.
    match unsafe { refusal(s, target.value, &confs) } {
        None => {
            // SAFETY: the proxy's own content handler, with the session nginx gave us.
            unsafe { next(s) }
        }
        Some(value) => {
            let line = format!(
                "noise: \"proxy_pass\" target \"{value}\" is not an upstream group: \"noise_upstream on\" connects only to upstream groups, refusing to connect"
            );
            // SAFETY: the session's connection, its log and the session are live; nothing
            // was connected or created for the upstream yet.
            unsafe {
                log::write((*session.connection).log, log::ERR, &line);
                ngx_stream_finalize_session(s, NGX_STREAM_BAD_GATEWAY as ngx_uint_t);
            }
        }
    }
}

/// The evaluated target, when it is not an upstream group; `None` lets the proxy run
/// (a group, or a value the proxy itself refuses with its own error line).
///
/// # Safety
/// `s` must be a live session of the server whose confs are `confs`, and `value` its
/// compiled `proxy_pass` value.
unsafe fn refusal(
    s: *mut ngx_stream_session_t,
    value: *mut ngx_stream_complex_value_t,
    confs: &Confs,
) -> Option<String> {
    let mut text = ngx_str_t {
        len: 0,
        data: std::ptr::null_mut(),
    };
    // SAFETY: the caller's promise; nginx evaluates into the session pool.
    if unsafe { ngx_stream_complex_value(s, value, &mut text) } != NGX_OK as isize {
        return None; // the proxy's own evaluation fails the same way, and says so
    }
    // SAFETY: ngx_url_t is a plain C struct, all-zero its initial state; parsed as the
    // proxy parses it (no resolving), in the session pool.
    let mut u: ngx_url_t = unsafe { std::mem::zeroed() };
    u.url = text;
    u.set_no_resolve(1);
    // SAFETY: the session's connection and pool are live.
    if unsafe { ngx_parse_url((*(*s).connection).pool, &mut u) } != NGX_OK as isize {
        return None; // the proxy logs the parse error and ends the session
    }
    let umcf = confs.upstream_main();
    // SAFETY: the upstream main conf lists every group of this configuration as live
    // ngx_stream_upstream_srv_conf_t pointers.
    let groups = unsafe {
        (*umcf)
            .upstreams
            .as_slice::<*mut ngx_stream_upstream_srv_conf_t>()
    };
    let host = u.host.as_bytes();
    let found = groups.iter().any(|&g| {
        // SAFETY: every entry is a live group.
        let g = unsafe { &*g };
        // ngx_stream_proxy_handler's rule: same host (case-insensitive), and the same port,
        // or no port on either side.
        g.host.as_bytes().eq_ignore_ascii_case(host)
            && ((g.port == 0 && u.no_port() != 0) || g.port == u.port)
    });
    (!found).then(|| String::from_utf8_lossy(text.as_bytes()).into_owned())
}
