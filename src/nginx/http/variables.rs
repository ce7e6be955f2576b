//! Stream variables: `$noise_protocol`, `$noise_client_key` (base64, empty when none),
//! `$noise_handshake_hash` (hex), `$noise_negotiation` (hex of the initial negotiation data),
//! `$noise_upstream_protocol`, `$noise_upstream_server_key` and `$noise_server_key` (base64
//! of our key that served the client: with several `noise_private_key`, which one).
//!
//! Like the `$ssl_*` variables they are "not found" on connections that did not speak
//! NoiseSocket, and are never cached (a value may appear once the handshake is done).

use nginx_sys::{
    ngx_conf_t, ngx_int_t, ngx_pnalloc, ngx_pool_t, ngx_str_t, ngx_stream_add_variable,
    ngx_stream_session_t, ngx_stream_variable_t, ngx_stream_variable_value_t, ngx_variable_value_t,
    NGX_ERROR, NGX_OK, NGX_STREAM_VAR_NOCACHEABLE, NGX_STREAM_VAR_PREFIX,
};

use ngx::ngx_string;

use crate::core::handshake::HandshakeInfo;
use crate::core::keys::encode_key;
use crate::nginx::{conn, mux::stream, upstream::wrap};

/// What a variable shows.
#[derive(Clone, Copy)]
pub enum Which {
    Protocol,
    ClientKey,
    HandshakeHash,
    Negotiation,
    UpstreamProtocol,
    UpstreamServerKey,
    /// Our key that served (rotation).
    ServerKey,
    /// The origin address A named for a multiplexed stream (docs/multiplex.md §12).
    OriginAddr,
}

/// Names (nginx strings, as `ngx_stream_add_variable` takes them) and what each shows; a
/// variable's `data` is its index here.
const VARIABLES: [(ngx_str_t, Which); 8] = [
    (ngx_string!("noise_protocol"), Which::Protocol),
    (ngx_string!("noise_client_key"), Which::ClientKey),
    (ngx_string!("noise_handshake_hash"), Which::HandshakeHash),
    (ngx_string!("noise_negotiation"), Which::Negotiation),
    (
        ngx_string!("noise_upstream_protocol"),
        Which::UpstreamProtocol,
    ),
    (
        ngx_string!("noise_upstream_server_key"),
        Which::UpstreamServerKey,
    ),
    (ngx_string!("noise_server_key"), Which::ServerKey),
    (ngx_string!("noise_origin_addr"), Which::OriginAddr),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text of variable `which` for a connection whose handshake established `info`.
pub fn value(info: &HandshakeInfo, which: Which) -> String {
    match which {
        Which::Protocol | Which::UpstreamProtocol => info.protocol.name().to_string(),
        Which::ClientKey | Which::UpstreamServerKey => info
            .remote_static
            .map(|k| encode_key(&k))
            .unwrap_or_default(),
        Which::HandshakeHash => hex(&info.handshake_hash),
        Which::ServerKey => info
            .local_static
            .map(|k| encode_key(&k))
            .unwrap_or_default(),
        Which::Negotiation => hex(&info.initial_negotiation),
        // Not the handshake's: read from the stream (see `get`).
        Which::OriginAddr => String::new(),
    }
}

/// The prefix of `$noise_key_attr_NAME`: attribute NAME of the client's key in the key
/// zone (docs/key-zone.md).
pub const ATTR_PREFIX: &str = "noise_key_attr_";

/// The value of attribute variable `name` (the whole variable name) in `attrs`.
pub fn attr_value<'a>(attrs: &'a [(String, String)], name: &[u8]) -> Option<&'a str> {
    let wanted = name.strip_prefix(ATTR_PREFIX.as_bytes())?;
    attrs
        .iter()
        .find(|(n, _)| n.as_bytes() == wanted)
        .map(|(_, v)| v.as_str())
}

/// Registers `$noise_key_attr_NAME` (a prefix variable) and each of `names`, for the stream
/// and the http side alike: `add(name, is_prefix)` is nginx's `ngx_stream_add_variable` or
/// `ngx_http_add_variable` on the configuration (which copies the name), and
/// `install(variable, index)` gives the variable nginx returned its getter: the attribute
/// getter for the prefix (`None`), the getter of `names[index]` otherwise.
///
/// # Safety
/// `add` must return null or a variable of nginx's, live for the configuration.
pub unsafe fn register<V>(
    names: &[ngx_str_t],
    mut add: impl FnMut(&mut ngx_str_t, bool) -> *mut V,
    mut install: impl FnMut(&mut V, Option<usize>),
) -> ngx_int_t {
    let prefix = ngx_string!("noise_key_attr_");
    let named = names.iter().enumerate().map(|(i, n)| (*n, Some(i)));
    for (mut name, index) in std::iter::once((prefix, None)).chain(named) {
        let v = add(&mut name, index.is_none());
        if v.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: the caller's promise: a live variable nginx just returned.
        install(unsafe { &mut *v }, index);
    }
    NGX_OK as ngx_int_t
}

/// Registers the variables (preconfiguration of the stream configuration `cf`).
pub fn add(cf: &mut ngx_conf_t) -> ngx_int_t {
    let names = VARIABLES.map(|(name, _)| name);
    let flags = |prefix: bool| {
        (NGX_STREAM_VAR_NOCACHEABLE | if prefix { NGX_STREAM_VAR_PREFIX } else { 0 }) as usize
    };
    // SAFETY: cf is live; nginx copies each name and returns its own variables.
    unsafe {
        register(
            &names,
            |name, prefix| ngx_stream_add_variable(cf, name, flags(prefix)),
            |v: &mut ngx_stream_variable_t, index| match index {
                None => v.get_handler = Some(get_attr),
                Some(index) => {
                    v.get_handler = Some(get);
                    v.data = index;
                }
            },
        )
    }
}

/// The getter of every variable; `data` is its index in [`VARIABLES`].
unsafe extern "C" fn get(
    s: *mut ngx_stream_session_t,
    v: *mut ngx_stream_variable_value_t,
    data: usize,
) -> ngx_int_t {
    let Some((_, which)) = VARIABLES.get(data) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: nginx calls getters with a live session.
    let c = unsafe { (*s).connection };
    let text = match which {
        Which::UpstreamProtocol | Which::UpstreamServerKey => {
            // SAFETY: s is live.
            wrap::session_info(unsafe { &*s }).map(|info| value(info, *which))
        }
        // SAFETY: c is live.
        Which::OriginAddr => unsafe { stream::origin_text(c) },
        _ => {
            // SAFETY: c is live; the reference ends before we return.
            unsafe { conn::get(c) }
                .and_then(|st| st.established())
                .map(|info| value(info, *which))
                // A stream of a multiplexed link: the link's handshake.
                // SAFETY: c is live.
                .or_else(|| unsafe { stream::info(c) }.map(|info| value(&info, *which)))
        }
    };
    // SAFETY: v is the value slot nginx gave us.
    let v = unsafe { &mut *v };
    let Some(text) = text else {
        v.set_not_found(1);
        return NGX_OK as ngx_int_t;
    };
    // SAFETY: c->pool lives as long as the session that reads the value.
    unsafe { fill(v, (*c).pool, &text) }
}

/// The getter of `$noise_key_attr_NAME`; nginx passes the variable's whole name as `data`
/// (an `ngx_str_t`) for prefix variables.
unsafe extern "C" fn get_attr(
    s: *mut ngx_stream_session_t,
    v: *mut ngx_stream_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls getters with a live session, and a prefix variable's data is the
    // ngx_str_t of the name being read, live for the call.
    let (c, name) = unsafe { ((*s).connection, (*(data as *const ngx_str_t)).as_bytes()) };
    // SAFETY: c is live; the reference ends before we return.
    let text = unsafe { conn::get(c) }
        .filter(|st| st.established().is_some())
        .and_then(|st| st.key_attrs.as_deref())
        .and_then(|attrs| attr_value(attrs, name))
        .map(str::to_string);
    // SAFETY: v is the value slot nginx gave us.
    let v = unsafe { &mut *v };
    match text {
        // SAFETY: c->pool lives as long as the session that reads the value.
        Some(text) => unsafe { fill(v, (*c).pool, &text) },
        None => {
            v.set_not_found(1);
            NGX_OK as ngx_int_t
        }
    }
}

/// Gives variable value `v` the text, copied into `pool` (stream and http getters; both
/// value types are nginx's `ngx_variable_value_t`).
///
/// # Safety
/// `pool` must be live as long as the value is read.
pub unsafe fn fill(v: &mut ngx_variable_value_t, pool: *mut ngx_pool_t, text: &str) -> ngx_int_t {
    let data = if text.is_empty() {
        std::ptr::null_mut()
    } else {
        // SAFETY: caller's promise on pool.
        let p = unsafe { ngx_pnalloc(pool, text.len()) } as *mut u8;
        if p.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: p has room for text.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len()) };
        p
    };
    v.data = data;
    v.set_len(text.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    NGX_OK as ngx_int_t
}
