//! Postconfiguration of the upstream side: every upstream group's `peer.init` is wrapped
//! ([`super::peer::init_peer`], the keepalive module's way), name pins are checked against
//! the groups' `server ... resolve` names, the fail-closed filter goes in
//! ([`super::fail_closed`]), and each `noise_upstream on` server is checked against what
//! its `proxy_pass` names (a key for every server when the pattern needs one; a variable
//! target gets a warning and [`super::target_guard`]).

use std::ops::ControlFlow;

use nginx_sys::{
    ngx_conf_t, ngx_int_t, ngx_stream_core_srv_conf_t, ngx_stream_upstream_srv_conf_t, NGX_ERROR,
    NGX_OK,
};

use crate::nginx::conf::stream_conf::{self, Confs};
use crate::nginx::conf::HostPort;
use crate::nginx::{upstream::peers, upstream::proxy_pass, upstream::target_guard, util::log};

use super::fail_closed;
use super::peer::init_peer;

/// Wraps every upstream group's `peer.init` and installs the fail-closed filter
/// (postconfiguration of the stream block whose confs are `confs`).
pub fn install(cf: &mut ngx_conf_t, mut confs: Confs) -> ngx_int_t {
    let umcf = confs.upstream_main();
    // SAFETY: the upstream module's main conf lists every group (implicit ones from
    // proxy_pass included) as ngx_stream_upstream_srv_conf_t pointers, each live for the
    // configuration and with peer.init already set by its balancer.
    let groups = unsafe {
        (*umcf)
            .upstreams
            .as_slice::<*mut ngx_stream_upstream_srv_conf_t>()
    };
    // SAFETY: postconfiguration runs alone; nothing else holds our main conf.
    let main = unsafe { confs.noise_main_mut() };
    let mut resolve_names = Vec::new();
    for &uscf in groups {
        // SAFETY: uscf is a live group (above), changed only here, during configuration.
        let peer = unsafe { &mut (*uscf).peer };
        if let Some(init) = peer.init {
            main.init_peers.push((uscf as usize, init));
            peer.init = Some(init_peer);
        }
        // SAFETY: as above.
        let names = unsafe { peers::resolve_names(uscf) };
        if !names.is_empty() {
            main.resolving_groups.push(uscf as usize);
        }
        resolve_names.extend(names.iter().filter_map(|n| HostPort::parse(n)));
    }
    // A name pin that did not resolve must name a `server ... resolve`: anything else is a
    // typo or a name nginx will never connect to.
    if let Some((name, at)) = main
        .unresolved_pins
        .iter()
        .find(|(name, _)| !resolve_names.contains(name))
    {
        let msg = format!(
            "\"noise_upstream_server_key\": cannot resolve \"{name}\" and no upstream has \"server {name} resolve\" in {at}"
        );
        // SAFETY: cf->log is live.
        unsafe { log::write(cf.log, log::EMERG, &msg) };
        return NGX_ERROR as ngx_int_t;
    }
    fail_closed::install();
    let cmcf = confs.core_main();
    // SAFETY: the core main conf lists every server's ngx_stream_core_srv_conf_t.
    let servers = unsafe {
        (*cmcf)
            .servers
            .as_slice::<*mut ngx_stream_core_srv_conf_t>()
    };
    for &cscf in servers {
        // SAFETY: every entry is a live server conf of this configuration, changed only here,
        // during configuration.
        if let Err(msg) = check_server(cf, unsafe { &mut *cscf }, groups) {
            // SAFETY: cf->log is live.
            unsafe { log::write(cf.log, log::EMERG, &msg) };
            return NGX_ERROR as ngx_int_t;
        }
    }
    NGX_OK as ngx_int_t
}

/// Configuration-time checks of a `noise_upstream on` server against its `proxy_pass`:
/// every server of its group must have a key when the pattern needs one, and a variable
/// target gets a warning (targets that are not groups are refused at run time).
fn check_server(
    cf: &mut ngx_conf_t,
    cscf: &mut ngx_stream_core_srv_conf_t,
    groups: &[*mut ngx_stream_upstream_srv_conf_t],
) -> Result<(), String> {
    // SAFETY: a server's core conf points at the server's own conf context; configuration
    // runs alone, so nothing else holds its confs.
    let mut confs = Confs::of_ctx(unsafe { &*cscf.ctx });
    let conf = confs.noise_srv();
    let Some(side) = conf.upstream_side.as_ref() else {
        return Ok(());
    };
    // SAFETY: file_name is nginx's NUL-terminated configuration file name.
    let at = unsafe { stream_conf::server_position(cscf) };
    match proxy_pass::target(cf, conf, groups) {
        proxy_pass::Target::Variable => {
            let msg = format!(
                "\"noise_upstream on\" with \"proxy_pass\" to a variable in the server at {at}: targets that are not upstream groups will be refused"
            );
            // SAFETY: cf->log is live.
            unsafe { log::write(cf.log, log::WARN, &msg) };
            // SAFETY: see above (no other reference to this server's conf is live).
            target_guard::install(cf, cscf, unsafe { confs.noise_srv_mut() })
                .map_err(|e| format!("{e} (server at {at})"))?;
        }
        proxy_pass::Target::Group(uscf) if side.needs_server_key() => {
            let mut missing = None;
            // SAFETY: target() returned one of the live groups; a group's peer.data is its
            // round-robin peer lists (set by its balancer's init, which runs before
            // postconfiguration); no session runs yet.
            unsafe {
                peers::visit(uscf, std::ptr::null(), |p| {
                    if side.server_key(&p.server()).is_some() {
                        return ControlFlow::Continue(());
                    }
                    missing = Some(p.name.map_or_else(|| p.address.to_string(), str::to_owned));
                    ControlFlow::Break(())
                })
            };
            if let Some(server) = missing {
                // SAFETY: as above.
                let group = unsafe { String::from_utf8_lossy((*uscf).host.as_bytes()) };
                return Err(format!(
                    "no \"noise_upstream_server_key\" for {server} of upstream \"{group}\", which \"{}\" needs (server at {at})",
                    side.protocol
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
