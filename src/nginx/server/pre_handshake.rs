//! The `nginx -t` warning for `$noise_*` variables used where they are always empty: in
//! the phases that run before the NoiseSocket handshake (docs/nginx-integration.md §11.1).
//!
//! `limit_conn` (preaccess) and stream `set` (preaccess) run before the SSL phase, where
//! the handshake happens, so a `limit_conn_zone` keyed by `$noise_client_key` sees an
//! empty key and limits nothing (limit_conn skips empty keys), and `set $x
//! $noise_client_key` stores an empty value. A `map` fed by a `$noise_*` variable is
//! evaluated when its result is first used, so a map feeding those directives is empty too.
//!
//! Those modules keep what they parse in structs only their own source files define, so
//! nothing of theirs is read. As [`crate::nginx::upstream::proxy_pass`] does for `proxy_pass`,
//! preconfiguration wraps the `set` handlers of `limit_conn_zone`, `limit_conn`, `map` and
//! `set` (found through the public module list of the cycle, by module name, so an nginx
//! built without one of them just has nothing to wrap): each wrapper records the
//! directive's argument text and position in our main conf, then calls nginx's handler,
//! which parses it as always. Postconfiguration follows `map`s from `$noise_*` variables
//! and warns once per directive that uses the result in a server with `noise_listen`,
//! naming the file and line and `noise_limit_conn_per_key` as what to use instead.
//!
//! The command tables live as long as the modules' code, which may outlive this module: a
//! cleanup on the cycle pool puts nginx's handlers back, as in [`crate::nginx::upstream::proxy_pass`].

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_module_t, ngx_pool_cleanup_add,
    NGX_ERROR, NGX_OK, NGX_STREAM_MAIN_CONF,
};

use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conf::{args, MainConf, Recorded, Use};
use crate::nginx::util::log;

type SetHandler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// One wrapped command: nginx's module and command names, our handler, nginx's handler.
struct Wrapped {
    module: &'static CStr,
    command: &'static [u8],
    ours: SetHandler,
    original: &'static AtomicPtr<c_void>,
}

static LIMIT_CONN_ZONE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static LIMIT_CONN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static MAP: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static SET: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

const WRAPPED: [Wrapped; 4] = [
    Wrapped {
        module: c"ngx_stream_limit_conn_module",
        command: b"limit_conn_zone",
        ours: record_limit_conn_zone,
        original: &LIMIT_CONN_ZONE,
    },
    Wrapped {
        module: c"ngx_stream_limit_conn_module",
        command: b"limit_conn",
        ours: record_limit_conn,
        original: &LIMIT_CONN,
    },
    Wrapped {
        module: c"ngx_stream_map_module",
        command: b"map",
        ours: record_map,
        original: &MAP,
    },
    Wrapped {
        module: c"ngx_stream_set_module",
        command: b"set",
        ours: record_set,
        original: &SET,
    },
];

/// The command `name` of the module called `module` in `cycle`.
///
/// # Safety
/// `cycle` must be a live cycle whose module list is set up.
unsafe fn command(
    cycle: *const ngx_cycle_t,
    module: &CStr,
    name: &[u8],
) -> Option<*mut ngx_command_t> {
    // SAFETY: cycle->modules holds modules_n module pointers (static modules and those
    // loaded so far); a module's command table ends with a command whose name is empty.
    unsafe {
        let cycle = &*cycle;
        let modules: &[*mut ngx_module_t] = if cycle.modules.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(cycle.modules, cycle.modules_n)
        };
        let m = modules.iter().copied().find(|m| {
            !m.is_null() && !(**m).name.is_null() && CStr::from_ptr((**m).name) == module
        })?;
        let mut cmd = (*m).commands;
        if cmd.is_null() {
            return None;
        }
        while (*cmd).name.len != 0 {
            if (*cmd).name.as_bytes() == name {
                return Some(cmd);
            }
            cmd = cmd.add(1);
        }
        None
    }
}

/// Wraps the commands for the configuration being parsed (preconfiguration).
pub fn wrap(cf: &mut ngx_conf_t) -> ngx_int_t {
    let mut any = false;
    for w in &WRAPPED {
        // SAFETY: configuration runs in one thread; the table entry is plain data.
        unsafe {
            let Some(cmd) = command(cf.cycle, w.module, w.command) else {
                continue;
            };
            match (*cmd).set {
                Some(set) if std::ptr::fn_addr_eq(set, w.ours) => {}
                Some(set) => {
                    w.original.store(set as *mut c_void, Ordering::Relaxed);
                    (*cmd).set = Some(w.ours);
                }
                None => continue,
            }
        }
        any = true;
    }
    if any {
        // SAFETY: the cycle pool is live while its configuration is read.
        unsafe {
            let cleanup = ngx_pool_cleanup_add((*cf.cycle).pool, 0);
            if cleanup.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            (*cleanup).handler = Some(unwrap);
            (*cleanup).data = cf.cycle.cast();
        }
    }
    NGX_OK as ngx_int_t
}

/// Cycle pool cleanup: nginx's handlers back in their tables.
unsafe extern "C" fn unwrap(data: *mut c_void) {
    let cycle: *const ngx_cycle_t = data.cast();
    for w in &WRAPPED {
        let original = w.original.load(Ordering::Relaxed);
        if original.is_null() {
            continue;
        }
        // SAFETY: data is the cycle whose pool runs this cleanup: the cycle and its module
        // list live in that pool, whose memory goes only after every cleanup ran, and the
        // modules' code is still loaded (ngx_unload_module is a cleanup registered before
        // this one, so it runs after). original is the module's own handler (a
        // SetHandler); the table is plain data and nothing parses configuration while a
        // cycle pool is destroyed.
        unsafe {
            if let Some(cmd) = command(cycle, w.module, w.command) {
                if (*cmd)
                    .set
                    .is_some_and(|set| std::ptr::fn_addr_eq(set, w.ours))
                {
                    (*cmd).set = Some(std::mem::transmute::<*mut c_void, SetHandler>(original));
                }
            }
        }
    }
}

/// Records the directive being parsed with `put`, then runs nginx's handler.
///
/// # Safety
/// As a directive handler; `original` holds the module's handler of this directive.
unsafe fn record(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
    original: &AtomicPtr<c_void>,
    put: fn(&mut Recorded, Use),
) -> *mut c_char {
    let original = original.load(Ordering::Relaxed);
    // SAFETY: a stream directive: cf->ctx is the stream conf context of its level, which
    // holds our confs; cf->args holds the directive and its arguments.
    unsafe {
        let cfr = &*cf;
        let mut confs = Confs::of_conf(cfr);
        let main_level = cfr.cmd_type == NGX_STREAM_MAIN_CONF as usize;
        let used = Use {
            args: args::of(cfr),
            at: args::position(cfr),
            server: (!main_level).then(|| confs.core_srv() as usize),
        };
        put(&mut confs.noise_main_mut().pre_handshake, used);
        if original.is_null() {
            return c"is not handled: the module's handler is missing"
                .as_ptr()
                .cast_mut();
        }
        std::mem::transmute::<*mut c_void, SetHandler>(original)(cf, cmd, conf)
    }
}

unsafe extern "C" fn record_limit_conn_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls it as the directive's handler.
    unsafe {
        record(cf, cmd, conf, &LIMIT_CONN_ZONE, |r, u| {
            r.limit_conn_zones.push(u)
        })
    }
}

unsafe extern "C" fn record_limit_conn(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as above.
    unsafe { record(cf, cmd, conf, &LIMIT_CONN, |r, u| r.limit_conns.push(u)) }
}

unsafe extern "C" fn record_map(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as above.
    unsafe { record(cf, cmd, conf, &MAP, |r, u| r.maps.push(u)) }
}

unsafe extern "C" fn record_set(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as above.
    unsafe { record(cf, cmd, conf, &SET, |r, u| r.sets.push(u)) }
}

/// The variable names `text` refers to (`$name`, `${name}`), lowercased as nginx does.
fn variables(text: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        let braced = text.get(i) == Some(&b'{');
        if braced {
            i += 1;
        }
        let start = i;
        while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'_') {
            i += 1;
        }
        if i > start {
            out.push(String::from_utf8_lossy(&text[start..i]).to_ascii_lowercase());
        }
    }
    out
}

/// The variables that are empty before the handshake: `$noise_*`, and every `map` result
/// fed by one (to a fixed point: maps of maps).
fn empty_before_handshake(r: &Recorded) -> Vec<String> {
    let is_noise = |v: &str| v.starts_with("noise_");
    let mut tainted: Vec<String> = Vec::new();
    loop {
        let before = tainted.len();
        for m in &r.maps {
            let (Some(source), Some(target)) = (m.args.first(), m.args.get(1)) else {
                continue;
            };
            let feeds = variables(source)
                .iter()
                .any(|v| is_noise(v) || tainted.contains(v));
            for t in variables(target) {
                if feeds && !tainted.contains(&t) {
                    tainted.push(t);
                }
            }
        }
        if tainted.len() == before {
            break;
        }
    }
    tainted
}

/// The `$noise_*`-derived variable `text` uses, if any: (the variable, what it comes from).
fn pre_handshake_variable(text: &[u8], tainted: &[String]) -> Option<String> {
    variables(text)
        .into_iter()
        .find(|v| v.starts_with("noise_") || tainted.contains(v))
}

/// The zone name of a `limit_conn_zone` argument list (`zone=NAME:SIZE`).
fn zone_name(args: &[Vec<u8>]) -> Option<&[u8]> {
    args.iter().find_map(|a| {
        let rest = a.strip_prefix(b"zone=")?;
        Some(rest.split(|b| *b == b':').next().unwrap_or(rest))
    })
}

/// The warnings for this configuration (postconfiguration), each one line.
pub fn warnings(main: &MainConf) -> Vec<String> {
    let r = &main.pre_handshake;
    let noise_servers: Vec<usize> = main.addresses.iter().map(|a| a.server).collect();
    let tainted = empty_before_handshake(r);
    let describe = |v: &str| {
        if v.starts_with("noise_") {
            format!("\"${v}\"")
        } else {
            format!("\"${v}\" (a map of a $noise_* variable)")
        }
    };
    // Which uses apply to a noise_listen server: its own, or the stream level's when it has
    // none of its own (how limit_conn inherits).
    let applies = |uses: &[Use], u: &Use| match u.server {
        Some(s) => noise_servers.contains(&s),
        None => noise_servers
            .iter()
            .any(|s| !uses.iter().any(|o| o.server == Some(*s))),
    };
    let mut out = Vec::new();
    for lc in &r.limit_conns {
        let Some(zone) = lc.args.first() else {
            continue;
        };
        if !applies(&r.limit_conns, lc) {
            continue;
        }
        for z in &r.limit_conn_zones {
            if zone_name(&z.args) != Some(zone.as_slice()) {
                continue;
            }
            let Some(key) = z.args.first() else { continue };
            if let Some(v) = pre_handshake_variable(key, &tainted) {
                out.push(format!(
                    "\"limit_conn {}\" in {} limits nothing on noise_listen servers: the key of \"limit_conn_zone\" in {} uses {}, which is empty before the NoiseSocket handshake (limit_conn runs first); use \"noise_limit_conn_per_key\" to limit connections per client key",
                    args::text(zone),
                    lc.at,
                    z.at,
                    describe(&v)
                ));
            }
        }
    }
    for s in &r.sets {
        if s.server.is_none_or(|srv| !noise_servers.contains(&srv)) {
            continue;
        }
        let Some(value) = s.args.get(1) else { continue };
        if let Some(v) = pre_handshake_variable(value, &tainted) {
            out.push(format!(
                "\"set\" in {} runs before the NoiseSocket handshake, where {} is empty: the variable is always empty; use {} itself where it is needed",
                s.at,
                describe(&v),
                describe(&v)
            ));
        }
    }
    out
}

/// Logs the warnings of the configuration being finished (postconfiguration).
pub fn warn(cf: &mut ngx_conf_t, main: &MainConf) {
    for w in warnings(main) {
        // SAFETY: cf->log is live while configuration is read.
        unsafe { log::write(cf.log, log::WARN, &format!("noise: {w}")) };
    }
}
