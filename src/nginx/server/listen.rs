//! `noise_listen` sockets: a `listen` whose socket speaks NoiseSocket.
//!
//! The directive is parsed by nginx's own `listen` handler and its addresses are recorded
//! ([`crate::nginx::conf::directives`]). After the configuration is read (`init_module`), every
//! socket in `cycle->listening` with one of those addresses is checked and handed to the
//! gate ([`crate::nginx::conn::gate`]), which decides "ours" by address, never by socket identity. An
//! address that nginx merged into a wildcard socket of another `listen` cannot be told
//! apart, so that fails with advice to add `bind`.

use nginx_sys::{
    ngx_cycle_t, ngx_listening_t, ngx_stream_conf_ctx_t, ngx_stream_in6_addr_t,
    ngx_stream_in_addr_t, ngx_stream_port_t,
};

use crate::nginx::conf::{stream_conf, MainConf};
use crate::nginx::util::sockaddr::{self, same_address};

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
    cmcf: &nginx_sys::ngx_stream_core_main_conf_t,
    main: &MainConf,
) -> Result<(), String> {
    use nginx_sys::{ngx_stream_conf_addr_t, ngx_stream_conf_port_t, ngx_stream_core_srv_conf_t};
    if cmcf.ports.is_null() {
        return Ok(());
    }
    // SAFETY: until ngx_stream_optimize_servers (after postconfiguration) cmcf->ports is an
    // array of ngx_stream_conf_port_t, each with an array of ngx_stream_conf_addr_t whose
    // servers array holds ngx_stream_core_srv_conf_t pointers.
    let ports = unsafe { (*cmcf.ports).as_slice::<ngx_stream_conf_port_t>() };
    for port in ports {
        // SAFETY: as above.
        let addrs = unsafe { port.addrs.as_slice::<ngx_stream_conf_addr_t>() };
        for addr in addrs {
            // SAFETY: a conf address's sockaddr holds socklen bytes.
            let raw = unsafe { sockaddr::view(addr.opt.sockaddr, addr.opt.socklen) };
            let Some(noise) = main
                .addresses
                .iter()
                .find(|a| same_address(raw, &a.sockaddr))
            else {
                continue;
            };
            // SAFETY: as above.
            let servers = unsafe { addr.servers.as_slice::<*mut ngx_stream_core_srv_conf_t>() };
            for &cscf in servers {
                let listed = main
                    .addresses
                    .iter()
                    .any(|a| a.server == cscf as usize && same_address(raw, &a.sockaddr));
                if !listed {
                    // SAFETY: every server of the list is a live core srv conf, whose
                    // file_name is a NUL-terminated string of the configuration.
                    let at = unsafe { stream_conf::server_position(&*cscf) };
                    return Err(format!(
                        "\"noise_listen {}\" in {} and a plain \"listen\" of the same address in the server at {at} cannot share a socket; give one of them another address or port",
                        noise.text, noise.at,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether every address served by socket `ls` belongs to a server with `noise_listen`
/// (`is_noise_server` is asked about the conf context of each address's default server).
fn only_noise_servers(
    ls: &ngx_listening_t,
    is_noise_server: &dyn Fn(&ngx_stream_conf_ctx_t) -> bool,
) -> bool {
    // SAFETY: for stream sockets ls->servers is an ngx_stream_port_t whose addrs array
    // holds naddrs in_addr or in6_addr entries, by the socket's family; each entry's conf
    // points at live conf contexts of this cycle.
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
            is_noise_server(&*server)
        })
    }
}

/// Checks every socket of the recorded addresses and takes each over for the gate
/// ([`crate::nginx::server::accept::take_over`]). nginx may have made several sockets of one address
/// (`reuseport` clones one per worker): all of them are checked and taken over, none is
/// remembered. Errors name the directive's position.
pub fn resolve(
    cycle: &mut ngx_cycle_t,
    main: &MainConf,
    is_noise_server: &dyn Fn(&ngx_stream_conf_ctx_t) -> bool,
) -> Result<(), String> {
    // SAFETY: cycle->listening is an array of ngx_listening_t, and nothing else touches
    // it while init_module runs.
    let listening = unsafe { cycle.listening.as_slice_mut::<ngx_listening_t>() };
    for addr in &main.addresses {
        let mut found = 0;
        for ls in listening.iter_mut() {
            // SAFETY: ls->sockaddr holds ls->socklen bytes.
            let raw = unsafe { sockaddr::view(ls.sockaddr, ls.socklen) };
            if !same_address(raw, &addr.sockaddr) {
                continue;
            }
            if !only_noise_servers(ls, is_noise_server) {
                return Err(format!(
                    "\"noise_listen {}\" in {} shares its socket with a plain \"listen\" of the same port; add the \"bind\" parameter to the plain one",
                    addr.text, addr.at
                ));
            }
            crate::nginx::server::accept::take_over(ls)
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
