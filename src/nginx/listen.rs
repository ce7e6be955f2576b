//! `noise_listen`: a `listen` whose socket speaks NoiseSocket.
//!
//! The directive is parsed by nginx's own `listen` handler (same parameters, same errors),
//! then its addresses are recorded. After the configuration is read (`init_module`), they
//! are matched against `cycle->listening`; a connection is ours when `c->listening` is one of
//! those sockets. An address that nginx merged into a wildcard socket of another `listen`
//! cannot be told apart, so that fails with advice to add `bind`.

use std::ffi::c_char;

use nginx_sys::{
    ngx_array_t, ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_listening_t, ngx_parse_url, ngx_str_t,
    ngx_stream_conf_ctx_t, ngx_stream_core_module, ngx_stream_core_srv_conf_t,
    ngx_stream_in6_addr_t, ngx_stream_in_addr_t, ngx_stream_port_t, ngx_url_t, NGX_OK,
};

/// One recorded `noise_listen` address.
pub struct NoiseAddress {
    pub text: String,
    /// Raw `sockaddr` bytes.
    pub sockaddr: Vec<u8>,
    /// "file:line" of the directive.
    pub at: String,
}

/// The module's main conf: NoiseSocket addresses and, after `init_module`, their sockets.
#[derive(Default)]
pub struct MainConf {
    pub addresses: Vec<NoiseAddress>,
    pub listeners: Vec<*const ngx_listening_t>,
    /// The original `peer.init` of each upstream group, by the group's address.
    pub init_peers: Vec<(usize, super::upstream::InitPeer)>,
}

impl MainConf {
    pub fn is_noise(&self, ls: *const ngx_listening_t) -> bool {
        self.listeners.contains(&ls)
    }
}

/// The arguments of the directive being parsed, without its name.
///
/// # Safety
/// `cf` must be the configuration being parsed.
pub unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a [u8]> {
    // SAFETY: cf->args is an array of ngx_str_t valid during the directive's parsing.
    unsafe {
        let a: &ngx_array_t = &*(*cf).args;
        let elts = std::slice::from_raw_parts(a.elts as *const ngx_str_t, a.nelts);
        elts.iter().skip(1).map(|s| s.as_bytes()).collect()
    }
}

/// Parses `noise_listen` with nginx's `listen` handler and records its addresses.
///
/// # Safety
/// Called from the directive handler with nginx's `cf` and `cmd`.
pub unsafe fn parse(cf: *mut ngx_conf_t, main: &mut MainConf, at: &str) -> Result<(), String> {
    // SAFETY: forwarded from the directive handler.
    let params = unsafe { args(cf) };
    if params
        .iter()
        .skip(1)
        .any(|p| *p == b"ssl" || *p == b"udp" || *p == b"quic")
    {
        return Err(
            "\"noise_listen\" takes the \"listen\" parameters except \"ssl\", \"quic\" and \"udp\""
                .into(),
        );
    }
    // SAFETY: ngx_stream_core_module is nginx's static module; its command table ends with
    // a command whose name is empty.
    let listen = unsafe {
        let mut cmd = ngx_stream_core_module.commands;
        loop {
            if (*cmd).name.len == 0 {
                return Err("nginx has no stream \"listen\" directive".into());
            }
            if (*cmd).name.as_bytes() == b"listen" {
                break cmd;
            }
            cmd = cmd.add(1);
        }
    };
    // SAFETY: cf->ctx is the stream server's conf context while a server directive runs.
    let core_conf = unsafe {
        let ctx = (*cf).ctx as *mut ngx_stream_conf_ctx_t;
        *(*ctx).srv_conf.add(ngx_stream_core_module.ctx_index)
    };
    // SAFETY: listen is nginx's handler for these very arguments.
    let rv: *mut c_char = unsafe {
        match (*listen).set {
            Some(set) => set(cf, listen as *mut ngx_command_t, core_conf),
            None => return Err("nginx's stream \"listen\" has no handler".into()),
        }
    };
    if !rv.is_null() {
        // nginx's handler already logged why (or returned its message).
        if rv as isize == -1 {
            return Err(String::new());
        }
        // SAFETY: a non-error return is a NUL-terminated message.
        let msg = unsafe { std::ffi::CStr::from_ptr(rv) }
            .to_string_lossy()
            .into_owned();
        return Err(format!("\"noise_listen\" {msg}"));
    }
    // Resolve the same address text the way listen did, to learn the sockaddrs.
    let mut u: ngx_url_t = unsafe {
        // SAFETY: ngx_url_t is a plain C struct; all-zero is its documented initial state.
        std::mem::zeroed()
    };
    let text = params.first().copied().unwrap_or_default();
    u.url = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    u.set_listen(1);
    // SAFETY: cf->pool is live; u is initialised as listen does.
    if unsafe { ngx_parse_url((*cf).pool, &mut u) } != NGX_OK as isize {
        return Err("cannot parse the \"noise_listen\" address".into());
    }
    // SAFETY: on success u.addrs holds u.naddrs entries.
    let addrs = unsafe { std::slice::from_raw_parts(u.addrs, u.naddrs) };
    for a in addrs {
        // SAFETY: each entry's sockaddr holds socklen bytes.
        let raw =
            unsafe { std::slice::from_raw_parts(a.sockaddr as *const u8, a.socklen as usize) };
        main.addresses.push(NoiseAddress {
            text: String::from_utf8_lossy(a.name.as_bytes()).into_owned(),
            sockaddr: raw.to_vec(),
            at: at.to_string(),
        });
    }
    Ok(())
}

/// Whether every address served by socket `ls` belongs to a server with `noise_listen`
/// (`is_noise_server` is asked about each address's default server).
///
/// # Safety
/// `ls` must be a stream listening socket of the cycle being initialised.
unsafe fn only_noise_servers(
    ls: &ngx_listening_t,
    is_noise_server: &dyn Fn(*mut ngx_stream_core_srv_conf_t) -> bool,
) -> bool {
    // SAFETY: for stream sockets ls->servers is an ngx_stream_port_t whose addrs array
    // holds naddrs in_addr or in6_addr entries, by the socket's family.
    unsafe {
        let port = &*(ls.servers as *const ngx_stream_port_t);
        let family = i32::from((*ls.sockaddr).sa_family);
        (0..port.naddrs).all(|i| {
            let conf = if family == libc::AF_INET6 {
                &(*(port.addrs as *const ngx_stream_in6_addr_t).add(i)).conf
            } else {
                &(*(port.addrs as *const ngx_stream_in_addr_t).add(i)).conf
            };
            is_noise_server(conf.default_server)
        })
    }
}

/// Finds the sockets of the recorded addresses. Errors name the directive's position.
///
/// # Safety
/// `cycle` must be the cycle being initialised.
pub unsafe fn resolve(
    cycle: *mut ngx_cycle_t,
    main: &mut MainConf,
    is_noise_server: &dyn Fn(*mut ngx_stream_core_srv_conf_t) -> bool,
) -> Result<(), String> {
    // SAFETY: cycle->listening is an array of ngx_listening_t.
    let listening = unsafe {
        let a = &(*cycle).listening;
        std::slice::from_raw_parts(a.elts as *const ngx_listening_t, a.nelts)
    };
    main.listeners.clear();
    for addr in &main.addresses {
        let found = listening.iter().find(|ls| {
            // SAFETY: ls->sockaddr holds ls->socklen bytes.
            let raw = unsafe {
                std::slice::from_raw_parts(ls.sockaddr as *const u8, ls.socklen as usize)
            };
            same_address(raw, &addr.sockaddr)
        });
        match found {
            // SAFETY: ls is a stream socket of this cycle.
            Some(ls) if unsafe { only_noise_servers(ls, is_noise_server) } => {
                main.listeners.push(ls as *const ngx_listening_t)
            }
            Some(_) => {
                return Err(format!(
                    "\"noise_listen {}\" in {} shares its socket with a plain \"listen\" of the same port; add the \"bind\" parameter to the plain one",
                    addr.text, addr.at
                ))
            }
            None => {
                return Err(format!(
                    "\"noise_listen {}\" in {} shares a wildcard socket with a plain \"listen\" of the same port; add the \"bind\" parameter to this \"noise_listen\"",
                    addr.text, addr.at
                ))
            }
        }
    }
    Ok(())
}

/// Compares two raw sockaddrs by family, port and address.
pub fn same_address(a: &[u8], b: &[u8]) -> bool {
    if a.len() < 4 || b.len() < 4 || a[..4] != b[..4] {
        return false; // family and port
    }
    match i32::from(u16::from_ne_bytes([a[0], a[1]])) {
        libc::AF_INET => a.len() >= 8 && b.len() >= 8 && a[4..8] == b[4..8],
        // Skip flowinfo (4..8); compare the 16-byte address.
        libc::AF_INET6 => a.len() >= 24 && b.len() >= 24 && a[8..24] == b[8..24],
        _ => a == b,
    }
}
