//! `noise_keys_api zone=NAME [write=on|off]`: the http location that reads and changes a
//! key zone without a reload (docs/key-zone.md §5). The key is the rest of the URI after the
//! location's prefix, base64 or base64url:
//!
//! * `GET /<key>`: the entry as JSON, or 404; `GET /`: how many keys, of what capacity;
//! * `PUT /<key>` with `{"verdict": "allow"|"deny", "attrs": {"name": "value"}, "ttl": s}`;
//! * `DELETE /<key>`; `POST /` with one such object per line, each with its `"key"`.
//!
//! Writes need `write=on`. A body that does not parse, a bad key, verdict or attribute is a
//! 400 with the reason, and nothing of it is applied; a zone without room for the new keys
//! is a 507. Every change is one short locked call on the zone (`crate::nginx::keys::change::change`):
//! handshakes on every worker see it from the next lookup on, and with `state=` it is in
//! the zone's state file, flushed, before the 2xx (docs/key-zone.md §6).

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t, ngx_http_core_module,
    ngx_http_discard_request_body, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, ngx_shm_zone_t, NGX_HTTP_DELETE, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_POST, NGX_HTTP_PUT, NGX_HTTP_SPECIAL_RESPONSE, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ngx_string;
use serde_json::{json, Map, Value};

use crate::core::key_journal::Op;
use crate::core::key_table::{Access, KeyTable, Record, TableError};
use crate::core::keys;
use crate::nginx::http::status;
use crate::nginx::keys::change::{self, ChangeError};
use crate::nginx::keys::zone;
use crate::nginx::util::log;
use crate::strict_json;

/// The location conf of the http module: the API's zone, if this location serves one.
#[repr(C)]
pub struct ApiConf {
    zone: *mut ngx_shm_zone_t,
    write: bool,
}

/// Keys a bulk load applies per hold of the zone's lock, so that handshakes on other
/// workers never wait long for it.
const BULK_CHUNK: usize = 4096;

/// # Safety
/// Called only by nginx, through the http module definition.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_noise_create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is being read; a zeroed ApiConf (null zone, write off) is "no API here".
    unsafe { nginx_sys::ngx_pcalloc((*cf).pool, std::mem::size_of::<ApiConf>()) }
}

/// The `noise_keys_api` directive.
///
/// # Safety
/// Called only by nginx, through the http module's directive table, with our loc conf.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_noise_keys_api(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being read and this location's ApiConf.
    let (cf, api) = unsafe { (&mut *cf, &mut *(conf as *mut ApiConf)) };
    let args = crate::nginx::conf::args::of(cf);
    let result = parse(cf, api, &args);
    if let Err(msg) = result {
        log::conf(cf, log::EMERG, &msg);
        return NGX_CONF_ERROR;
    }
    // SAFETY: a location directive: cf->ctx is the location's http conf context, whose
    // loc_conf array holds the http core module's conf.
    unsafe {
        let ctx = cf.ctx as *mut ngx_http_conf_ctx_t;
        let clcf =
            *(*ctx).loc_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_loc_conf_t;
        (*clcf).handler = Some(handler);
    }
    NGX_CONF_OK
}

fn parse(cf: &mut ngx_conf_t, api: &mut ApiConf, args: &[Vec<u8>]) -> Result<(), String> {
    const NAME: &str = "noise_keys_api";
    if !api.zone.is_null() {
        return Err(format!("\"{NAME}\" is duplicate"));
    }
    let mut zone = None;
    for arg in args {
        let arg = String::from_utf8_lossy(arg);
        if let Some(z) = arg.strip_prefix("zone=").filter(|z| !z.is_empty()) {
            zone = Some(z.to_string());
        } else if let Some(w) = arg.strip_prefix("write=") {
            api.write = match w {
                "on" => true,
                "off" => false,
                _ => {
                    return Err(format!(
                        "\"{NAME}\": invalid \"{arg}\", it must be \"write=on\" or \"write=off\""
                    ))
                }
            };
        } else {
            return Err(format!("\"{NAME}\": invalid parameter \"{arg}\""));
        }
    }
    let Some(zone) = zone else {
        return Err(format!("\"{NAME}\": \"zone=\" is required"));
    };
    // SAFETY: cf is being read; size 0 names a zone that a stream `noise_keys_zone` sizes
    // (nginx refuses a zone nobody sized, by name).
    api.zone = unsafe { zone::add(cf, zone.as_bytes(), 0) };
    if api.zone.is_null() {
        return Err(String::new());
    }
    Ok(())
}

/// A response: status and JSON body.
struct Reply(usize, Value);

fn error(status: usize, why: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": why.into() }))
}

/// The API conf of the request's location.
///
/// # Safety
/// `r` must be a live request of a location that has our handler.
unsafe fn conf_of(r: &ngx_http_request_t) -> &ApiConf {
    extern "C" {
        static mut ngx_http_noise_module: nginx_sys::ngx_module_t;
    }
    // SAFETY: the caller's promise; our module's loc conf slot holds an ApiConf.
    unsafe { &*(*r.loc_conf.add(ngx_http_noise_module.ctx_index) as *const ApiConf) }
}

/// The key part of the URI: what follows the location's prefix, taken from the request
/// line as the client sent it (query cut off, percent-escapes decoded). Not `r->uri`:
/// nginx merges slashes there (`merge_slashes`), and a key in standard base64 may hold
/// `//` or start with `/`, which would then be a different, broken key.
///
/// # Safety
/// As [`conf_of`].
unsafe fn key_part(r: &ngx_http_request_t) -> Vec<u8> {
    // SAFETY: the caller's promise: the core loc conf of the request's location.
    let prefix = unsafe {
        let clcf =
            *r.loc_conf.add(ngx_http_core_module.ctx_index) as *const ngx_http_core_loc_conf_t;
        (*clcf).name.as_bytes().to_vec()
    };
    let raw = r.unparsed_uri.as_bytes();
    let path = percent_decoded(raw.split(|&b| b == b'?').next().unwrap_or(raw));
    key_after(&path, &prefix)
        // A request line nginx normalised beyond the prefix (`/./`, `/../`): its own URI.
        .or_else(|| key_after(r.uri.as_bytes(), &prefix))
        .unwrap_or_default()
}

/// What follows `prefix` in `path`, past the one slash that separates them when the prefix
/// does not end with it.
fn key_after(path: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
    let rest = path.strip_prefix(prefix)?;
    let rest = if prefix.ends_with(b"/") {
        rest
    } else {
        rest.strip_prefix(b"/").unwrap_or(rest)
    };
    Some(rest.to_vec())
}

/// `%XX` escapes decoded; anything else, a malformed escape included, kept as it is.
fn percent_decoded(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' && i + 2 < text.len() {
            if let (Some(h), Some(l)) = (hex(text[i + 1]), hex(text[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// A key as base64 or base64url, padded or not.
fn parse_key(text: &[u8]) -> Result<[u8; 32], String> {
    let text = String::from_utf8_lossy(text);
    let mut standard: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while standard.len() % 4 != 0 {
        standard.push('=');
    }
    keys::decode_key(&standard).map_err(|_| {
        format!(
            "\"{}\" is not a key (32 bytes in base64 or base64url)",
            text.escape_default()
        )
    })
}

/// A record from a JSON object (`verdict`, `attrs`, `ttl`).
fn parse_record(v: &Value, now: u64) -> Result<Record, String> {
    let Some(obj) = v.as_object() else {
        return Err("the body is not a JSON object".into());
    };
    for field in obj.keys() {
        if !matches!(field.as_str(), "key" | "verdict" | "attrs" | "ttl") {
            return Err(format!("unknown field \"{}\"", field.escape_default()));
        }
    }
    let access = match obj.get("verdict").and_then(Value::as_str) {
        Some("allow") => Access::Allow,
        Some("deny") => Access::Deny,
        _ => return Err("\"verdict\" must be \"allow\" or \"deny\"".into()),
    };
    let expires = match obj.get("ttl") {
        None | Some(Value::Null) => 0,
        Some(t) => match t.as_u64() {
            Some(t @ 1..=MAX_TTL) => now.saturating_add(t),
            _ => {
                return Err(format!(
                    "\"ttl\" must be a whole number of seconds, 1 to {MAX_TTL} (ten years; no ttl: no expiry)"
                ))
            }
        },
    };
    let mut attrs = Vec::new();
    match obj.get("attrs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let Some(value) = value.as_str() else {
                    return Err(format!(
                        "attribute \"{}\" is not a string",
                        name.escape_default()
                    ));
                };
                attrs.push((name.clone(), value.to_string()));
            }
        }
        Some(_) => return Err("\"attrs\" must be an object of strings".into()),
    }
    let record = Record {
        access,
        expires,
        attrs,
    };
    KeyTable::check(&record).map_err(|e| e.to_string())?;
    Ok(record)
}

/// The longest `ttl` (ten years): beyond it, leave the ttl out (no expiry). Keeps
/// `expires` well inside what JSON clients read exactly (2^53).
const MAX_TTL: u64 = 10 * 365 * 86_400;

fn record_json(key: &[u8; 32], r: &Record) -> Value {
    let attrs: Map<String, Value> = r
        .attrs
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "key": keys::encode_key(key),
        "verdict": if r.access == Access::Allow { "allow" } else { "deny" },
        "attrs": attrs,
        "expires": if r.expires == 0 { Value::Null } else { json!(r.expires) },
    })
}

fn zone_failure(e: TableError) -> Reply {
    match e {
        TableError::Full(n) => error(507, format!("the key zone is full ({n} keys)")),
        TableError::Attr(why) => error(400, why),
        e => error(500, e.to_string()),
    }
}

fn change_failure(e: &ChangeError) -> Reply {
    match e {
        ChangeError::Table(t) => zone_failure(t.clone()),
        e => error(500, e.to_string()),
    }
}

/// What the request asks, once its body (if any) is read.
fn answer(api: &ApiConf, method: usize, key: &[u8], body: &[u8]) -> Reply {
    let write = method & (NGX_HTTP_PUT | NGX_HTTP_DELETE | NGX_HTTP_POST) as usize != 0;
    if write && !api.write {
        return error(405, "this location is read-only (noise_keys_api write=off)");
    }
    let now = zone::now();
    // SAFETY: api.zone was added by the directive in this cycle, and is sized by a stream
    // noise_keys_zone (nginx refuses the configuration otherwise).
    let table = |f: &mut dyn FnMut(&mut KeyTable<'_>) -> Reply| unsafe {
        zone::with_table(api.zone, |t| f(t)).unwrap_or_else(zone_failure)
    };
    if key.is_empty() {
        return if method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize != 0 {
            table(&mut |t| {
                Reply(
                    200,
                    json!({ "keys": t.len(), "cached": t.cached(), "capacity": t.capacity() }),
                )
            })
        } else if method & NGX_HTTP_POST as usize != 0 {
            bulk(api, body, now)
        } else {
            error(405, "use GET or POST on the collection")
        };
    }
    let key = match parse_key(key) {
        Ok(k) => k,
        Err(why) => return error(400, why),
    };
    if method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize != 0 {
        table(&mut |t| match t.get(&key, now) {
            Some(r) => Reply(200, record_json(&key, &r)),
            None => error(404, "no such key"),
        })
    } else if method & NGX_HTTP_PUT as usize != 0 {
        let record = match strict_json::parse(body)
            .map_err(|e| format!("the body is not JSON: {e}"))
            .and_then(|v| parse_record(&v, now))
        {
            Ok(r) => r,
            Err(why) => return error(400, why),
        };
        let json = record_json(&key, &record);
        // SAFETY: as for `table`.
        match unsafe { change::change(api.zone, &[Op::Put(key, record)], now) }.as_deref() {
            Ok([true]) => Reply(201, json),
            Ok(_) => Reply(200, json),
            Err(e) => change_failure(e),
        }
    } else if method & NGX_HTTP_DELETE as usize != 0 {
        // SAFETY: as for `table`.
        match unsafe { change::change(api.zone, &[Op::Delete(key)], now) }.as_deref() {
            Ok([true]) => Reply(200, json!({ "deleted": keys::encode_key(&key) })),
            Ok(_) => error(404, "no such key"),
            Err(e) => change_failure(e),
        }
    } else {
        error(405, "use GET, PUT or DELETE on a key")
    }
}

/// `POST /`: newline-delimited records, each with its key. Every line is checked before
/// any is applied; then they are applied in chunks of [`BULK_CHUNK`] per lock hold.
fn bulk(api: &ApiConf, body: &[u8], now: u64) -> Reply {
    let mut ops = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = strict_json::parse(line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| {
                let key = v
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "no \"key\"".to_string())
                    .and_then(|k| parse_key(k.as_bytes()))?;
                Ok(Op::Put(key, parse_record(&v, now)?))
            });
        match parsed {
            Ok(op) => ops.push(op),
            Err(why) => return error(400, format!("line {}: {why}", n + 1)),
        }
    }
    // Room for every new key first, so that a full zone applies nothing; counted in chunks
    // too, so that a large load does not hold the lock through a million lookups.
    let (mut new, mut free) = (0, 0);
    for chunk in ops.chunks(BULK_CHUNK) {
        // SAFETY: as in `answer`.
        let counted = unsafe {
            zone::with_table(api.zone, |t| {
                let n = chunk
                    .iter()
                    .filter(|op| matches!(op, Op::Put(k, _) if t.get(k, now).is_none()))
                    .count();
                // Cached answers make room for an operator's keys (they are evicted).
                (n, t.capacity() - t.len() + t.cached())
            })
        };
        match counted {
            Ok((n, f)) => (new, free) = (new + n, f),
            Err(e) => return zone_failure(e),
        }
    }
    if new > free {
        return error(
            507,
            format!("the key zone has room for {free} more keys, the load adds {new}"),
        );
    }
    let mut applied = 0;
    for chunk in ops.chunks(BULK_CHUNK) {
        // SAFETY: as in `answer`.
        match unsafe { change::change(api.zone, chunk, now) } {
            Ok(_) => applied += chunk.len(),
            // Only a writer racing this load for the last free entries, or a state file
            // that cannot take the chunk, gets here; the chunk itself is not applied.
            Err(e) => {
                let status = match e {
                    ChangeError::Table(TableError::Full(_)) => 507,
                    _ => 500,
                };
                return Reply(
                    status,
                    json!({ "error": e.to_string(), "applied": applied, "lines": ops.len() }),
                );
            }
        }
    }
    Reply(200, json!({ "applied": applied }))
}

/// The content handler.
unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_PUT | NGX_HTTP_POST) as usize != 0 {
        // SAFETY: as above; nginx calls `body_read` once the body is in.
        let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        return nginx_sys::NGX_DONE as ngx_int_t;
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    // SAFETY: r is live with our handler's location.
    let reply = unsafe { answer(conf_of(req), req.method, &key_part(req), &[]) };
    // SAFETY: as above.
    unsafe { send(r, reply) }
}

/// The body is in: answer, then finalize as nginx's post handlers do.
unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the post handler with the live request whose body it read.
    let req = unsafe { &mut *r };
    // SAFETY: as above.
    let reply = match unsafe { read_body(req) } {
        // SAFETY: r is live, in the location whose handler read this body.
        Ok(body) => unsafe { answer(conf_of(req), req.method, &key_part(req), &body) },
        Err(why) => error(500, why),
    };
    // SAFETY: as above.
    let rc = unsafe { send(r, reply) };
    // SAFETY: as above.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// The request body, from memory and from nginx's temporary file.
///
/// # Safety
/// `r` must be a live request whose body nginx has read.
unsafe fn read_body(r: &ngx_http_request_t) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if r.request_body.is_null() {
        return Ok(out);
    }
    // SAFETY: the caller's promise: request_body and its chain are nginx's, complete.
    unsafe {
        let mut cl = (*r.request_body).bufs;
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && !(*b).file.is_null() {
                let len = usize::try_from((*b).file_last - (*b).file_pos).unwrap_or(0);
                let start = out.len();
                out.resize(start + len, 0);
                let n = libc::pread(
                    (*(*b).file).fd,
                    out[start..].as_mut_ptr().cast(),
                    len,
                    (*b).file_pos,
                );
                if usize::try_from(n).ok() != Some(len) {
                    return Err("cannot read the request body's temporary file".into());
                }
            } else if !(*b).pos.is_null() {
                let len = usize::try_from((*b).last.offset_from((*b).pos)).unwrap_or(0);
                out.extend_from_slice(std::slice::from_raw_parts((*b).pos, len));
            }
            cl = (*cl).next;
        }
    }
    Ok(out)
}

/// Sends a JSON reply.
///
/// # Safety
/// `r` must be a live request.
unsafe fn send(r: *mut ngx_http_request_t, Reply(status, body): Reply) -> ngx_int_t {
    // A change refused on our side (a full zone, a state file that cannot be written) is
    // one error line besides the answer; a bad request is the client's answer alone.
    if status >= 500 {
        let why = body.get("error").and_then(Value::as_str).unwrap_or("");
        // SAFETY: the caller's promise: the request and its connection's log are live.
        unsafe {
            log::write(
                (*(*r).connection).log,
                log::ERR,
                &format!("noise: noise_keys_api: {status}: {why}"),
            )
        };
    }
    let mut text = body.to_string();
    text.push('\n');
    // SAFETY: the caller's promise.
    unsafe { status::send_body(r, status, ngx_string!("application/json"), &text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_both_alphabets_and_bad_ones() {
        let key = [0xfbu8; 32];
        let std = keys::encode_key(&key);
        let url = std
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_string();
        assert_eq!(parse_key(std.as_bytes()), Ok(key));
        assert_eq!(parse_key(url.as_bytes()), Ok(key));
        assert!(parse_key(b"short").is_err());
        assert!(parse_key(b"").is_err());
    }

    #[test]
    fn records_are_checked_whole() {
        let ok = json!({"verdict": "allow", "attrs": {"device": "d1"}, "ttl": 60});
        let r = parse_record(&ok, 1000).unwrap();
        assert_eq!((r.access, r.expires), (Access::Allow, 1060));
        for bad in [
            json!([1]),
            json!({"verdict": "maybe"}),
            json!({"verdict": "allow", "ttl": -1}),
            json!({"verdict": "allow", "ttl": 0}),
            json!({"verdict": "allow", "attrs": {"device": 5}}),
            json!({"verdict": "allow", "attrs": {"Bad": "x"}}),
            json!({"verdict": "allow", "extra": 1}),
        ] {
            assert!(parse_record(&bad, 0).is_err(), "{bad}");
        }
    }
}
