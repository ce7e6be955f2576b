//! The `extern "C"` entry points that the C glue (`nginx-module/ngx_stream_noise_module.c`)
//! puts into the module definition: conf creation and merge, the directive parser,
//! pre/postconfiguration, `init_module`, and the two stream phase handlers. Each turns
//! nginx's pointers into references once, here, and hands them to the module that does the
//! work.
//!
//! Confs are Rust values in the configuration pool, dropped by a pool cleanup when the
//! cycle ends ([`crate::nginx::util::pool`]); directive errors go through
//! `ngx_conf_log_error` so `nginx -t` prints them with the file and line.

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_array_push, ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_stream_conf_ctx_t,
    ngx_stream_handler_pt, ngx_stream_phases_NGX_STREAM_POST_ACCEPT_PHASE,
    ngx_stream_phases_NGX_STREAM_SSL_PHASE, ngx_stream_session_t, NGX_DECLINED, NGX_ERROR, NGX_OK,
    NGX_STREAM_INTERNAL_SERVER_ERROR,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use crate::nginx::conf::stream_conf::Confs;
use crate::nginx::conf::{directives, MainConf, Settle, SrvConf};
use crate::nginx::conn::gate;
use crate::nginx::server::accept::{self, Class};
use crate::nginx::{
    conn, http::variables, keys, keys::agent, keys::limit, mux::link, mux::stream, server::listen,
    server::phase, server::pre_handshake, server::preread, upstream::proxy_pass, upstream::setup,
    util::counters, util::log, util::pool,
};

const OK: ngx_int_t = NGX_OK as ngx_int_t;
const ERROR: ngx_int_t = NGX_ERROR as ngx_int_t;

/// A default `T` in `cf`'s pool, dropped when the pool goes (null when out of memory).
fn alloc_conf<T: Default>(cf: &mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf->pool is the configuration's pool, destroyed with the cycle after every
    // user of its confs.
    unsafe { pool::allocate(cf.pool, T::default()) }
        .map_or(std::ptr::null_mut(), |p| p.as_ptr().cast())
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes the configuration being parsed.
    alloc_conf::<MainConf>(unsafe { &mut *cf })
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: as above.
    alloc_conf::<SrvConf>(unsafe { &mut *cf })
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_merge_srv_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration and two distinct SrvConf values that our
    // create function made (the parent level's and this server's).
    let (cf, parent, child) = unsafe {
        (
            &mut *cf,
            &*(parent as *const SrvConf),
            &mut *(child as *mut SrvConf),
        )
    };
    let cf_log = cf.log;
    // SAFETY: during merge cf->ctx is this server's context (ngx_stream_merge_servers),
    // whose core conf the core module (merged before any dynamic module) has completed.
    let resolver = unsafe { server_resolver(cf) };
    match child.merge(parent, &mut Settle { cf, resolver }) {
        Ok(()) => NGX_CONF_OK,
        Err(msg) => {
            // Merge has no directive position; the message carries it.
            // SAFETY: cf->log is live while configuration is read.
            unsafe { log::write(cf_log, log::EMERG, &msg) };
            NGX_CONF_ERROR
        }
    }
}

/// The server's `resolver` (its own or inherited) and `resolver_timeout`, when it has
/// name servers (the core gives every server a resolver, empty when none is configured).
///
/// # Safety
/// `cf->ctx` must be a server's context whose core conf is merged.
unsafe fn server_resolver(
    cf: &ngx_conf_t,
) -> Option<(
    std::ptr::NonNull<nginx_sys::ngx_resolver_t>,
    nginx_sys::ngx_msec_t,
)> {
    // SAFETY: the caller's promise.
    let cscf = unsafe { &*Confs::of_conf(cf).core_srv() };
    let resolver = std::ptr::NonNull::new(cscf.resolver)?;
    // SAFETY: a resolver nginx created, live for the configuration.
    (unsafe { resolver.as_ref() }.connections.nelts > 0)
        .then_some((resolver, cscf.resolver_timeout))
}

/// The one parser of every directive (see [`directives`]).
///
/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_directive(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, the command being parsed and our
    // SrvConf for this level; cf->ctx is a stream conf context (a stream directive).
    let (cf, name, conf, mut confs) = unsafe {
        let cf = &mut *cf;
        let confs = Confs::of_conf(cf);
        (
            cf,
            (*cmd).name.as_bytes(),
            &mut *(conf as *mut SrvConf),
            confs,
        )
    };
    let name = String::from_utf8_lossy(name).into_owned();
    // SAFETY: configuration runs one directive at a time; nothing else holds the main conf.
    let main = unsafe { confs.noise_main_mut() };
    let ctx = directives::Context {
        cf: &mut *cf,
        main,
        conf,
    };
    let parsed = match name.as_str() {
        "noise_keys_zone" | "noise_keys" => keys::zone_conf::parse(ctx, &name),
        _ => directives::parse(ctx, &name),
    };
    match parsed {
        Ok(()) => NGX_CONF_OK,
        Err(msg) => {
            if !msg.is_empty() {
                log::conf(cf, log::EMERG, &msg);
            }
            NGX_CONF_ERROR
        }
    }
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx passes the stream configuration, in preconfiguration.
    let cf = unsafe { &mut *cf };
    if proxy_pass::wrap(cf) != OK || pre_handshake::wrap(cf) != OK {
        return ERROR;
    }
    // SAFETY: cf is the configuration being read.
    if unsafe { counters::add_zone(cf) } != OK {
        return ERROR;
    }
    variables::add(cf)
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx passes the stream configuration, in postconfiguration: cf->ctx is the
    // stream block's context.
    let (cf, confs) = unsafe {
        let cf = &mut *cf;
        let confs = Confs::of_conf(cf);
        (cf, confs)
    };
    if let Some(msg) = confs.noise_main().undeclared_key_zone() {
        // SAFETY: cf->log is live.
        unsafe { log::write(cf.log, log::EMERG, &msg) };
        return ERROR;
    }
    pre_handshake::warn(cf, confs.noise_main());
    // SAFETY: cf is the configuration being read.
    if confs.noise_main().limits_per_key && unsafe { limit::add_zone(cf) } != OK {
        return ERROR;
    }
    let cmcf = confs.core_main();
    for (phase, handler) in [
        (
            ngx_stream_phases_NGX_STREAM_POST_ACCEPT_PHASE,
            post_accept_handler as unsafe extern "C" fn(_) -> _,
        ),
        (ngx_stream_phases_NGX_STREAM_SSL_PHASE, phase_handler),
    ] {
        // SAFETY: the core main conf's phase arrays exist (ngx_stream_init_phases creates
        // them before postconfiguration) and hold ngx_stream_handler_pt entries.
        unsafe {
            let phase = &mut (*cmcf).phases[phase as usize];
            let h = ngx_array_push(&mut phase.handlers) as *mut ngx_stream_handler_pt;
            if h.is_null() {
                return ERROR;
            }
            *h = Some(handler);
        }
    }
    #[cfg(ngx_stream_virtual_servers)]
    {
        // SAFETY: cmcf is the core main conf, in postconfiguration.
        if let Err(msg) = unsafe { listen::check_shared_addresses(&*cmcf, confs.noise_main()) } {
            // SAFETY: cf->log is live.
            unsafe { log::write(cf.log, log::EMERG, &msg) };
            return ERROR;
        }
    }
    setup::install(cf, confs)
}

/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the cycle being initialised, whose configuration is read; the
    // confs live in its pool.
    let Some(confs) = (unsafe { Confs::of_cycle(cycle) }) else {
        return OK; // no stream block
    };
    let is_noise_server =
        |ctx: &ngx_stream_conf_ctx_t| Confs::of_ctx(ctx).noise_srv().listen_at.is_some();
    if !confs.noise_main().addresses.is_empty() {
        // SAFETY: the cycle's stream core main conf, its phase engine built, no session yet.
        unsafe { preread::take_over(&mut *confs.core_main()) };
    }
    // SAFETY: as above; nothing else uses the cycle while init_module runs.
    let cycle = unsafe { &mut *cycle };
    match listen::resolve(cycle, confs.noise_main(), &is_noise_server) {
        Ok(()) => OK,
        Err(msg) => {
            // SAFETY: cycle->log is live.
            unsafe { log::write(cycle.log, log::EMERG, &msg) };
            ERROR
        }
    }
}

/// Worker start: finds the `noise_limit_conn_per_key` zone and sweeps it of the counts of
/// processes that are gone.
///
/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the worker's cycle, its shared zones initialised.
    unsafe { limit::start_worker(cycle) };
    // SAFETY: as above; the conf lives as long as the cycle.
    if unsafe { Confs::of_cycle(cycle) }.is_some_and(|confs| confs.noise_main().multiplex) {
        // Made now, so a worker's descriptors do not grow with its first stream.
        stream::start_worker();
    }
    OK
}

/// Worker exit: frees what the worker holds outside nginx's pools, and drops its counts
/// under `noise_limit_conn_per_key` (connections still open now are never closed by their
/// pools).
///
/// # Safety
/// Called only by nginx, through the module definition, with its own arguments.
#[no_mangle]
pub unsafe extern "C" fn ngx_stream_noise_exit_process(_cycle: *mut ngx_cycle_t) {
    limit::forget_own();
    agent::exit();
    conn::free_table();
    link::free_table();
    stream::free_worker_state();
}

/// `NGX_STREAM_POST_ACCEPT_PHASE` handler: gate layer 2 (see [`gate`]).
unsafe extern "C" fn post_accept_handler(s: *mut ngx_stream_session_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live session and its connection.
    let (s, c) = unsafe { (&*s, &mut *(*s).connection) };
    let main = Confs::of_session(s).noise_main();
    // SAFETY: c is live; the state reference ends in this expression.
    let has_state = unsafe { conn::get(c) }.is_some() || unsafe { stream::is_stream(c) };
    // SAFETY: c->listening of a session's connection is its live listening socket.
    let class = unsafe { accept::classify(main, c.listening) };
    if class != Class::Plain && !has_state && !gate::is_gated(c) {
        gate::install(c);
    }
    NGX_DECLINED as ngx_int_t
}

/// `NGX_STREAM_SSL_PHASE` handler: the server handshake on NoiseSocket addresses, and gate
/// layer 3 (see [`gate`]): nothing from such an address goes on without a finished one.
unsafe extern "C" fn phase_handler(s: *mut ngx_stream_session_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live session and its connection.
    let (s, c) = unsafe { (&*s, &mut *(*s).connection) };
    let confs = Confs::of_session(s);
    // A stream of a multiplexed link: its link did the handshake (docs/multiplex.md §12).
    // SAFETY: c is live.
    if unsafe { stream::is_stream(c) } {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: c->listening of a session's connection is its live listening socket.
    match unsafe { accept::classify(confs.noise_main(), c.listening) } {
        Class::Noise => {}
        Class::Plain if !gate::is_gated(c) => return NGX_DECLINED as ngx_int_t,
        class => {
            // SAFETY: c->log is live.
            unsafe {
                log::write(
                    c.log,
                    log::ALERT,
                    &format!("noise: refusing a connection the module cannot classify ({class:?} socket with NoiseSocket I/O refusal installed, or a wildcard socket on a noise_listen port)"),
                )
            };
            return NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
    }
    match &confs.noise_srv().server_side {
        Some(side) => phase::handshake_phase(s, side),
        None => {
            // SAFETY: c->log is live.
            unsafe {
                log::write(
                    c.log,
                    log::ALERT,
                    "noise: the default server of this noise_listen socket has no noise_listen",
                )
            };
            NGX_STREAM_INTERNAL_SERVER_ERROR as ngx_int_t
        }
    }
}
