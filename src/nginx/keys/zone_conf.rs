//! The key zone's directives, `noise_keys_zone NAME SIZE [state=FILE]` and `noise_keys
//! zone=NAME [miss=...]` (docs/key-zone.md): parsed here, beside the zone they declare, so
//! that the configuration ([`crate::nginx::conf`]) never reaches up to the zone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nginx_sys::ngx_conf_t;

use crate::core::key_table::capacity_for;
use crate::nginx::conf::args::{self, set_once, text};
use crate::nginx::conf::directives::Context;
use crate::nginx::conf::side_conf::{KeysConf, Miss};
use crate::nginx::conf::MainConf;
use crate::nginx::keys::{state, zone};

/// Parses `noise_keys_zone` or `noise_keys` (`name`). An empty error means nginx already
/// logged why.
pub fn parse(ctx: Context<'_>, name: &str) -> Result<(), String> {
    let Context { cf, main, conf } = ctx;
    let all = args::of(cf);
    if name == "noise_keys_zone" {
        return keys_zone(cf, main, &all);
    }
    let keys = keys(cf, &all)?;
    // Checked at postconfiguration, when every noise_keys_zone is known (nginx's own
    // message for an undeclared zone names neither the directive nor a line).
    main.key_zone_uses
        .push((keys.zone_name.clone(), keys.at.clone()));
    set_once(&mut conf.keys, keys, name)
}

/// `noise_keys_zone NAME SIZE`: a key zone of this stream block (docs/key-zone.md).
fn keys_zone(cf: &mut ngx_conf_t, main: &mut MainConf, all: &[Vec<u8>]) -> Result<(), String> {
    const NAME: &str = "noise_keys_zone";
    let (name, size) = (&all[0], all.get(1).cloned().unwrap_or_default());
    if name.is_empty() || name.contains(&b'=') {
        return Err(format!("\"{NAME}\": invalid zone name \"{}\"", text(name)));
    }
    let mut state = None;
    for extra in all.iter().skip(2) {
        let Some(file) = extra.strip_prefix(b"state=").filter(|f| !f.is_empty()) else {
            return Err(format!(
                "\"{NAME}\": unknown parameter \"{}\" (only \"state=FILE\")",
                text(extra)
            ));
        };
        if state.is_some() {
            return Err(format!("\"{NAME}\": \"state=\" is given twice"));
        }
        state = Some(state_path(cf, file));
    }
    let bytes = usize::try_from(args::size(&size)).ok().filter(|&n| n > 0);
    // At least 8 pages, as nginx's own zones; and room for some keys.
    let Some(bytes) = bytes.filter(|&n| n >= 8 * 4096 && capacity_for(n / 2) > 0) else {
        return Err(format!(
            "\"{NAME}\": invalid zone size \"{}\" (at least 32k)",
            text(&size)
        ));
    };
    let zone_name = text(name);
    if main.key_zones.contains(&zone_name) {
        return Err(format!(
            "\"{NAME}\": zone \"{zone_name}\" is already declared"
        ));
    }
    if let Some(path) = &state {
        if main.key_states.contains(path) {
            return Err(format!(
                "\"{NAME}\": the state file \"{}\" is already another zone's",
                path.display()
            ));
        }
        state::check_writable(path).map_err(|e| format!("\"{NAME}\": state file: {e}"))?;
        main.key_states.push(path.clone());
    }
    // SAFETY: cf is the configuration being read.
    if unsafe { zone::declare(cf, name, bytes, state) }.is_null() {
        return Err(String::new()); // nginx logged why (a size conflict)
    }
    main.key_zones.push(zone_name);
    Ok(())
}

/// A `state=` path: relative ones are relative to nginx's prefix, as nginx's own files.
fn state_path(cf: &ngx_conf_t, file: &[u8]) -> PathBuf {
    let file = Path::new(OsStr::from_bytes(file));
    if file.is_absolute() {
        return file.to_path_buf();
    }
    // SAFETY: cf is being read: its cycle and the cycle's prefix are live.
    let prefix = unsafe { (*cf.cycle).prefix.as_bytes().to_vec() };
    Path::new(OsStr::from_bytes(&prefix)).join(file)
}

/// `noise_keys zone=NAME [miss=deny|allow|lookup]`.
fn keys(cf: &mut ngx_conf_t, all: &[Vec<u8>]) -> Result<KeysConf, String> {
    const NAME: &str = "noise_keys";
    let mut zone_name = None;
    let mut miss = Miss::Deny;
    for arg in all {
        let arg = text(arg);
        if let Some(z) = arg.strip_prefix("zone=").filter(|z| !z.is_empty()) {
            zone_name = Some(z.to_string());
        } else if let Some(m) = arg.strip_prefix("miss=") {
            miss = match m {
                "deny" => Miss::Deny,
                "allow" => Miss::Allow,
                "lookup" => Miss::Lookup,
                _ => {
                    return Err(format!(
                        "\"{NAME}\": invalid \"{arg}\", it must be \"miss=deny\", \"miss=allow\" or \"miss=lookup\""
                    ))
                }
            };
        } else {
            return Err(format!("\"{NAME}\": invalid parameter \"{arg}\""));
        }
    }
    let Some(zone_name) = zone_name else {
        return Err(format!("\"{NAME}\": \"zone=\" is required"));
    };
    // SAFETY: cf is the configuration being read; size 0 finds the zone, declared before or
    // after this directive (postconfiguration checks that it was).
    let zone = unsafe { zone::add(cf, zone_name.as_bytes(), 0) };
    if zone.is_null() {
        return Err(String::new());
    }
    Ok(KeysConf {
        zone: zone as usize,
        zone_name,
        miss,
        at: args::position(cf),
    })
}
