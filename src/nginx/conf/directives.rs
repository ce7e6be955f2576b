//! The parser of every directive in the C glue's table, dispatching on the directive's
//! name: adding a directive is one line in the table and one arm here. The key zone's
//! two (`noise_keys_zone`, `noise_keys`) are parsed beside the zone, in
//! `crate::nginx::keys::zone_conf`, since they declare shared zones. Errors are returned
//! as text; the caller logs them with the directive's file and line (`nginx -t`).

use std::path::Path;

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_stream_core_module};
use ngx::core::NGX_CONF_ERROR;

use super::args::{self, set_once, text};
use super::main::{MainConf, NoiseAddress};
use super::pins::{HostPort, Pinned, ServerKey};
use super::rules;
use super::side_conf::{Loaded, SideConf};
use super::srv::SrvConf;
use crate::core::keys::{self, KeyFileError, KeySet, Secret};
use crate::core::protocol::Protocol;
use crate::nginx::util::log;

/// What a directive handler needs besides its arguments.
pub struct Context<'a> {
    pub cf: &'a mut ngx_conf_t,
    pub main: &'a mut MainConf,
    pub conf: &'a mut SrvConf,
}

/// Parses directive `name` of the configuration being read. An empty error means nginx
/// already logged why.
pub fn parse(ctx: Context<'_>, name: &str) -> Result<(), String> {
    let Context { cf, main, conf } = ctx;
    let all = args::of(cf);
    let first = all.first().cloned().unwrap_or_default();
    match name {
        "noise_listen" => {
            let at = args::position(cf);
            listen(cf, main, &all, &at)?;
            conf.listen_at.get_or_insert(at);
        }
        "noise_protocol" => {
            let protocols = all
                .iter()
                .map(|a| Protocol::parse(&text(a)).map_err(|e| format!("\"{name}\": {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            set_once(&mut conf.protocols, protocols, name)?;
        }
        "noise_upstream" => {
            set_once(&mut conf.upstream, on_off(name, &first)?, name)?;
            conf.upstream_at = Some(args::position(cf));
        }
        "noise_upstream_key_confirmation" => {
            set_once(
                &mut conf.upstream_key_confirmation,
                on_off(name, &first)?,
                name,
            )?;
        }
        "noise_upstream_protocol" => {
            let p = Protocol::parse(&text(&first)).map_err(|e| format!("\"{name}\": {e}"))?;
            set_once(&mut conf.upstream_protocol, p, name)?;
        }
        "noise_upstream_negotiation" => {
            let codec = text(&first)
                .parse()
                .map_err(|e| format!("\"{name}\": {e}"))?;
            set_once(&mut conf.upstream_negotiation, codec, name)?;
        }
        "noise_limit_conn_per_key" => {
            let n = rules::limit_per_key(name, &first)?;
            set_once(&mut conf.limit_conn_per_key, n, name)?;
            main.limits_per_key = true;
        }
        "noise_multiplex" => {
            let on = on_off(name, &first)?;
            set_once(&mut conf.multiplex, on, name)?;
            main.multiplex |= on;
        }
        "noise_multiplex_trust_origin" => set_once(
            &mut conf.multiplex_trust_origin,
            on_off(name, &first)?,
            name,
        )?,
        "noise_auth_request"
        | "noise_auth_request_timeout"
        | "noise_auth_request_fail"
        | "noise_auth_request_concurrency"
        | "noise_auth_cache_valid" => conf.auth.parse(cf, name, &all)?,
        "noise_key_agent" | "noise_upstream_key_agent" => {
            let agent = super::key_agent::parse(cf, main, name, &all)?;
            let (side, keys) = if name == "noise_key_agent" {
                (&mut conf.server, "noise_private_key")
            } else {
                (&mut conf.upstream_conf, "noise_upstream_private_key")
            };
            if !side.private_keys.is_empty() {
                return Err(format!(
                    "\"{name}\" and \"{keys}\" exclude each other at one level: the agent holds the private keys; remove one"
                ));
            }
            set_once(&mut side.key_agent, agent, name)?;
        }
        "noise_upstream_server_key" => {
            let second = all.get(1).cloned().unwrap_or_default();
            let key = server_key(cf, main, &first, &second)?;
            conf.upstream_server_keys.push(key);
        }
        _ => {
            let (side, suffix) = if let Some(suffix) = name.strip_prefix("noise_upstream_") {
                (&mut conf.upstream_conf, suffix)
            } else if let Some(suffix) = name.strip_prefix("noise_") {
                (&mut conf.server, suffix)
            } else {
                return Err(format!("unknown directive \"{name}\""));
            };
            side_directive(cf, side, name, suffix, &first)?;
        }
    }
    Ok(())
}

/// A flag's value, as nginx's own `ngx_conf_set_flag_slot` words its error.
fn on_off(name: &str, arg: &[u8]) -> Result<bool, String> {
    match arg {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(format!(
            "invalid value \"{}\" in \"{name}\", it must be \"on\" or \"off\"",
            text(arg)
        )),
    }
}

/// The directives both sides have, `noise_X` and `noise_upstream_X`.
fn side_directive(
    cf: &mut ngx_conf_t,
    side: &mut SideConf,
    directive: &str,
    suffix: &str,
    arg: &[u8],
) -> Result<(), String> {
    match suffix {
        "private_key" => {
            if side.key_agent.is_some() {
                let agent = directive.replace("private_key", "key_agent");
                return Err(format!(
                    "\"{directive}\" and \"{agent}\" exclude each other at one level: the agent holds the private keys; remove one"
                ));
            }
            let key = secret(cf, directive, arg)?;
            rules::private_key_slot(directive, &side.private_keys, &key)?;
            side.private_keys.push(key);
            Ok(())
        }
        "trusted_keys" => set_once(
            &mut side.trusted_keys,
            key_list(cf, directive, arg, keys::load_key_list)?,
            directive,
        ),
        "revoked_keys" => set_once(
            &mut side.revoked_keys,
            key_list(cf, directive, arg, keys::load_deny_list)?,
            directive,
        ),
        "psk" => set_once(&mut side.psk, secret(cf, directive, arg)?, directive),
        "prologue" => set_once(&mut side.prologue, arg.to_vec(), directive),
        "padding" => {
            let value = rules::padding(directive, args::size(arg), &text(arg))?;
            set_once(&mut side.padding, value, directive)
        }
        "handshake_timeout" => set_once(
            &mut side.handshake_timeout,
            args::time(directive, arg)?,
            directive,
        ),
        _ => Err(format!("unknown directive \"{directive}\"")),
    }
}

/// Loads a secret file, warning when others can read it.
fn secret(cf: &mut ngx_conf_t, directive: &str, arg: &[u8]) -> Result<Loaded<Secret>, String> {
    let path = args::full_path(cf, arg)?;
    let value = keys::load_secret(&path).map_err(|e| format!("\"{directive}\": {e}"))?;
    if let Some(mode) = keys::loose_permissions(&path) {
        log::conf(
            cf,
            log::WARN,
            &format!(
                "\"{directive}\": {} is readable by group or others (mode {mode:04o}); chmod 600 it",
                path.display()
            ),
        );
    }
    Ok(Loaded { path, value })
}

/// Loads a public-key list with `load` (a trusted list, or a deny list that may be empty).
fn key_list(
    cf: &mut ngx_conf_t,
    directive: &str,
    arg: &[u8],
    load: fn(&Path) -> Result<KeySet, KeyFileError>,
) -> Result<Loaded<KeySet>, String> {
    let path = args::full_path(cf, arg)?;
    let value = load(&path).map_err(|e| format!("\"{directive}\": {e}"))?;
    Ok(Loaded { path, value })
}

/// `noise_upstream_server_key address:port|name:port key|file`: an address pin (an IP
/// address) or a name pin ([`super::pins`]). A name that does not
/// resolve now is accepted only if some `server NAME resolve` will (checked at
/// postconfiguration, with this directive's position).
fn server_key(
    cf: &mut ngx_conf_t,
    main: &mut MainConf,
    address: &[u8],
    key: &[u8],
) -> Result<ServerKey, String> {
    const NAME: &str = "noise_upstream_server_key";
    let key = match keys::decode_key(&text(key)) {
        Ok(k) => k,
        Err(_) => {
            let path = args::full_path(cf, key)?;
            keys::load_public_key(&path.to_string_lossy())
                .map_err(|e| format!("\"{NAME}\": {e}"))?
        }
    };
    let written = text(address);
    if !written.contains(':') {
        return Err(format!("\"{NAME}\": no port in \"{written}\""));
    }
    let Some(parsed) = HostPort::parse(&written) else {
        return Err(format!(
            "\"{NAME}\": invalid server \"{written}\": expected ADDRESS:PORT or NAME:PORT"
        ));
    };
    let resolved = args::addresses(cf, address, false)
        .map(|(r, _)| r.into_iter().map(|(_, raw)| raw).collect::<Vec<_>>());
    let pinned = if parsed.is_address() {
        Pinned::Address(
            resolved.ok_or_else(|| format!("\"{NAME}\": invalid address \"{written}\""))?,
        )
    } else {
        let resolved = match resolved {
            Some(r) => r,
            // A `server NAME resolve` may know it: postconfiguration decides.
            None if cfg!(ngx_stream_upstream_resolve) => {
                main.unresolved_pins
                    .push((parsed.clone(), args::position(cf)));
                Vec::new()
            }
            None => return Err(format!("\"{NAME}\": cannot resolve \"{written}\"")),
        };
        Pinned::Name {
            name: parsed,
            resolved,
        }
    };
    Ok(ServerKey {
        address: written,
        pinned,
        key,
    })
}

/// `noise_listen`: parsed by nginx's own stream `listen` handler (same parameters, same
/// errors), then its addresses are recorded in the main conf for the gate.
fn listen(
    cf: &mut ngx_conf_t,
    main: &mut MainConf,
    all: &[Vec<u8>],
    at: &str,
) -> Result<(), String> {
    rules::listen_parameters(all.get(1..).unwrap_or_default())?;
    let listen = nginx_listen()?;
    // SAFETY: noise_listen is a server directive: cf->ctx is the server's stream conf
    // context, whose srv_conf array holds the stream core module's conf.
    let core_conf = unsafe {
        let ctx = cf.ctx as *mut nginx_sys::ngx_stream_conf_ctx_t;
        *(*ctx).srv_conf.add(ngx_stream_core_module.ctx_index)
    };
    // SAFETY: an entry of nginx's static command table.
    let Some(set) = (unsafe { (*listen).set }) else {
        return Err("nginx's stream \"listen\" has no handler".into());
    };
    // SAFETY: set is nginx's handler of `listen`, called as nginx would for these same
    // arguments (cf->args), with the core module's server conf.
    let rv = unsafe { set(cf, listen, core_conf) };
    if rv == NGX_CONF_ERROR {
        return Err(String::new()); // nginx's handler logged why
    }
    if !rv.is_null() {
        // SAFETY: a handler's non-error return is a NUL-terminated static message.
        let msg = unsafe { std::ffi::CStr::from_ptr(rv) }.to_string_lossy();
        return Err(format!("\"noise_listen\" {msg}"));
    }
    // The same address text resolved the way listen did, to learn the sockaddrs.
    let text = all.first().cloned().unwrap_or_default();
    let Some((resolved, _)) = args::addresses(cf, &text, true) else {
        return Err("cannot parse the \"noise_listen\" address".into());
    };
    for (name, sockaddr) in resolved {
        main.addresses.push(NoiseAddress {
            text: name,
            sockaddr,
            at: at.to_string(),
            server: core_conf as usize,
        });
    }
    Ok(())
}

/// nginx's stream `listen` command.
fn nginx_listen() -> Result<*mut ngx_command_t, String> {
    // SAFETY: ngx_stream_core_module is nginx's static module; its command table ends with
    // a command whose name is empty.
    unsafe {
        let mut cmd = ngx_stream_core_module.commands;
        while (*cmd).name.len != 0 {
            if (*cmd).name.as_bytes() == b"listen" {
                return Ok(cmd);
            }
            cmd = cmd.add(1);
        }
    }
    Err("nginx has no stream \"listen\" directive".into())
}
