//! `noise_listen`: a `listen` whose socket speaks NoiseSocket.
//!
//! The directive is parsed by nginx's own `listen` handler (same parameters, same errors),
//! then its addresses are recorded. After the configuration is read (`init_module`), every
//! socket in `cycle->listening` with one of those addresses is checked and handed to the
//! gate ([`super::gate`]), which decides "ours" by address, never by socket identity. An
//! address that nginx merged into a wildcard socket of another `listen` cannot be told
//! apart, so that fails with advice to add `bind`.

use std::ffi::c_char;

use nginx_sys::{
    ngx_array_t, ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_listening_t, ngx_parse_url, ngx_str_t,
    ngx_stream_conf_ctx_t, ngx_stream_core_module, ngx_stream_in6_addr_t, ngx_stream_in_addr_t,
    ngx_stream_port_t, ngx_url_t, NGX_OK,
};

/// One recorded `noise_listen` address.
pub struct NoiseAddress {
    pub text: String,
    /// Raw `sockaddr` bytes.
    pub sockaddr: Vec<u8>,
    /// "file:line" of the directive.
    pub at: String,
    /// The server it belongs to (its `ngx_stream_core_srv_conf_t`, one per `server {}`
    /// block for the life of the configuration); only compared.
    pub server: usize,
}

/// The module's main conf: the NoiseSocket addresses of this configuration.
#[derive(Default)]
pub struct MainConf {
    pub addresses: Vec<NoiseAddress>,
    /// The original `peer.init` of each upstream group, by the group's address.
    pub init_peers: Vec<(usize, super::upstream::InitPeer)>,
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
            server: core_conf as usize,
        });
    }
    Ok(())
}

/// Refuses a `noise_listen` address that another server also listens on with a plain
/// `listen` (nginx 1.25.5+ lets several servers share an address, told apart by
/// `server_name`; older versions refuse the duplicate themselves). Whatever the order of
/// the servers: the socket would be NoiseSocket, so the plain server would be unreachable.
///
/// # Safety
/// `cmcf` must be the stream core main conf, in postconfiguration (its `ports` list still
/// holds every address with its servers).
#[cfg(ngx_stream_virtual_servers)]
pub unsafe fn check_shared_addresses(
    cmcf: *const nginx_sys::ngx_stream_core_main_conf_t,
    main: &MainConf,
) -> Result<(), String> {
    use nginx_sys::{ngx_stream_conf_addr_t, ngx_stream_conf_port_t, ngx_stream_core_srv_conf_t};
    // SAFETY: until ngx_stream_optimize_servers (after postconfiguration) cmcf->ports is an
    // array of ngx_stream_conf_port_t, each with an array of ngx_stream_conf_addr_t whose
    // servers array holds ngx_stream_core_srv_conf_t pointers.
    unsafe {
        let ports = (*cmcf).ports;
        if ports.is_null() {
            return Ok(());
        }
        let ports = std::slice::from_raw_parts(
            (*ports).elts as *const ngx_stream_conf_port_t,
            (*ports).nelts,
        );
        for port in ports {
            let addrs = std::slice::from_raw_parts(
                port.addrs.elts as *const ngx_stream_conf_addr_t,
                port.addrs.nelts,
            );
            for addr in addrs {
                let raw = std::slice::from_raw_parts(
                    addr.opt.sockaddr as *const u8,
                    addr.opt.socklen as usize,
                );
                let Some(noise) = main
                    .addresses
                    .iter()
                    .find(|a| same_address(raw, &a.sockaddr))
                else {
                    continue;
                };
                let servers = std::slice::from_raw_parts(
                    addr.servers.elts as *const *mut ngx_stream_core_srv_conf_t,
                    addr.servers.nelts,
                );
                for &cscf in servers {
                    let listed = main
                        .addresses
                        .iter()
                        .any(|a| a.server == cscf as usize && same_address(raw, &a.sockaddr));
                    if !listed {
                        return Err(format!(
                            "\"noise_listen {}\" in {} and a plain \"listen\" of the same address in the server at {}:{} cannot share a socket; give one of them another address or port",
                            noise.text,
                            noise.at,
                            std::ffi::CStr::from_ptr((*cscf).file_name.cast()).to_string_lossy(),
                            (*cscf).line
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether every address served by socket `ls` belongs to a server with `noise_listen`
/// (`is_noise_server` is asked about the conf context of each address's default server).
///
/// # Safety
/// `ls` must be a stream listening socket of the cycle being initialised.
unsafe fn only_noise_servers(
    ls: &ngx_listening_t,
    is_noise_server: &dyn Fn(*mut ngx_stream_conf_ctx_t) -> bool,
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
            #[cfg(ngx_stream_virtual_servers)]
            let server = (*conf.default_server).ctx;
            #[cfg(not(ngx_stream_virtual_servers))]
            let server = conf.ctx;
            is_noise_server(server)
        })
    }
}

/// Checks every socket of the recorded addresses and takes each over for the gate
/// ([`super::gate::take_over`]). nginx may have made several sockets of one address
/// (`reuseport` clones one per worker): all of them are checked and taken over, none is
/// remembered. Errors name the directive's position.
///
/// # Safety
/// `cycle` must be the cycle being initialised.
pub unsafe fn resolve(
    cycle: *mut ngx_cycle_t,
    main: &MainConf,
    is_noise_server: &dyn Fn(*mut ngx_stream_conf_ctx_t) -> bool,
) -> Result<(), String> {
    // SAFETY: cycle->listening is an array of ngx_listening_t.
    let listening = unsafe {
        let a = &(*cycle).listening;
        std::slice::from_raw_parts_mut(a.elts as *mut ngx_listening_t, a.nelts)
    };
    for addr in &main.addresses {
        let mut found = 0;
        for ls in listening.iter_mut() {
            // SAFETY: ls->sockaddr holds ls->socklen bytes.
            let raw = unsafe {
                std::slice::from_raw_parts(ls.sockaddr as *const u8, ls.socklen as usize)
            };
            if !same_address(raw, &addr.sockaddr) {
                continue;
            }
            // SAFETY: ls is a stream socket of this cycle.
            if !unsafe { only_noise_servers(ls, is_noise_server) } {
                return Err(format!(
                    "\"noise_listen {}\" in {} shares its socket with a plain \"listen\" of the same port; add the \"bind\" parameter to the plain one",
                    addr.text, addr.at
                ));
            }
            // SAFETY: ls belongs to the cycle being initialised; nothing was accepted yet.
            unsafe { super::gate::take_over(ls) }
                .map_err(|e| format!("\"noise_listen {}\" in {}: {e}", addr.text, addr.at))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!(
                "\"noise_listen {}\" in {} shares a wildcard socket with a plain \"listen\" of the same port; add the \"bind\" parameter to this \"noise_listen\"",
                addr.text, addr.at
            ));
        }
    }
    Ok(())
}

/// Compares two raw sockaddrs by family and port only.
pub fn same_port(a: &[u8], b: &[u8]) -> bool {
    a.len() >= 4 && b.len() >= 4 && a[..4] == b[..4]
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
