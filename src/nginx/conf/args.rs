//! Directive arguments, read with nginx's own parsers (`ngx_parse_time`, `ngx_parse_size`,
//! `ngx_conf_full_name`, `ngx_parse_url`) so that values mean what they mean in nginx's
//! directives. Arguments are copied out of `cf->args`: configuration time, small values,
//! and no borrow of nginx's parser state outlives the call.

use std::path::PathBuf;

use nginx_sys::{
    ngx_conf_full_name, ngx_conf_t, ngx_msec_t, ngx_parse_size, ngx_parse_time, ngx_parse_url,
    ngx_str_t, ngx_url_t, NGX_OK,
};

use crate::nginx::util::sockaddr;

/// The arguments of the directive being parsed, without its name.
pub fn of(cf: &ngx_conf_t) -> Vec<Vec<u8>> {
    // SAFETY: while a directive is parsed cf->args is an array of ngx_str_t (its name and
    // arguments), valid for this call.
    let all = unsafe { (*cf.args).as_slice::<ngx_str_t>() };
    all.iter().skip(1).map(|s| s.as_bytes().to_vec()).collect()
}

/// "file:line" of the directive being parsed.
pub fn position(cf: &ngx_conf_t) -> String {
    // SAFETY: cf->conf_file is set while a directive is parsed.
    let file = unsafe { &*cf.conf_file };
    format!("{}:{}", text(file.file.name.as_bytes()), file.line)
}

/// An argument as text, for messages.
pub fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// An `ngx_str_t` that borrows `bytes`, for nginx functions that only read it.
fn borrowed(bytes: &[u8]) -> ngx_str_t {
    ngx_str_t {
        len: bytes.len(),
        data: bytes.as_ptr().cast_mut(),
    }
}

/// Resolves a path against the configuration prefix, as nginx does for its own files.
pub fn full_path(cf: &mut ngx_conf_t, arg: &[u8]) -> Result<PathBuf, String> {
    let mut name = borrowed(arg);
    // SAFETY: cf->cycle is live while configuration is read; nginx allocates the full name
    // in the cycle pool and only reads the argument.
    if unsafe { ngx_conf_full_name(cf.cycle, &mut name, 1) } != NGX_OK as isize {
        return Err(format!("cannot resolve the path \"{}\"", text(arg)));
    }
    Ok(PathBuf::from(text(name.as_bytes())))
}

/// A time ("60s", "500ms") in milliseconds.
pub fn time(directive: &str, arg: &[u8]) -> Result<ngx_msec_t, String> {
    let mut s = borrowed(arg);
    // SAFETY: s describes arg, which outlives the call; nginx only reads it.
    let v = unsafe { ngx_parse_time(&mut s, 0) };
    ngx_msec_t::try_from(v).map_err(|_| format!("\"{directive}\": invalid time \"{}\"", text(arg)))
}

/// A size ("512", "4k"), as nginx reads one (negative when invalid).
pub fn size(arg: &[u8]) -> isize {
    let mut s = borrowed(arg);
    // SAFETY: s describes arg, which outlives the call; nginx only reads it.
    unsafe { ngx_parse_size(&mut s) }
}

/// Addresses as nginx names them, with their raw sockaddr bytes.
pub type Resolved = Vec<(String, Vec<u8>)>;

/// The addresses `text` names, resolved as `ngx_parse_url` does for `listen` (`listen`) or
/// for a server address; each as raw sockaddr bytes with nginx's text form. `None` when it
/// cannot be parsed; the flag says whether a port was given.
pub fn addresses(cf: &mut ngx_conf_t, text: &[u8], listen: bool) -> Option<(Resolved, bool)> {
    // SAFETY: ngx_url_t is a plain C struct; all-zero is its documented initial state.
    let mut u: ngx_url_t = unsafe { std::mem::zeroed() };
    u.url = borrowed(text);
    if listen {
        u.set_listen(1);
    }
    // SAFETY: cf->pool is live; nginx allocates the results there and only reads the url.
    if unsafe { ngx_parse_url(cf.pool, &mut u) } != NGX_OK as isize || u.naddrs == 0 {
        return None;
    }
    // SAFETY: on success u.addrs holds u.naddrs entries allocated in cf->pool.
    let addrs = unsafe { std::slice::from_raw_parts(u.addrs, u.naddrs) };
    let out = addrs
        .iter()
        .map(|a| {
            // SAFETY: each entry's sockaddr holds socklen bytes.
            let raw = unsafe { sockaddr::copy(a.sockaddr, a.socklen) };
            (self::text(a.name.as_bytes()), raw)
        })
        .collect();
    Some((out, u.no_port() == 0))
}

/// Rule: a directive is given once per level.
pub fn set_once<T>(slot: &mut Option<T>, value: T, directive: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("\"{directive}\" directive is duplicate"));
    }
    *slot = Some(value);
    Ok(())
}
