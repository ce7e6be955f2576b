//! Error-log lines, and the one place where errors map to nginx log levels: the peer's
//! fault is `info` (as nginx logs client-caused TLS failures), ours is `error`. Lines go
//! through the `ngx` crate's logging (formatted on the stack, nothing when the level is
//! off); [`debug!`](crate::noise_debug) lines are `ngx_log_debug` lines with the `event`
//! mask, as `ngx_event_openssl.c` logs SSL: compiled out unless nginx is built
//! `--with-debug`, one mask test when it is.

use std::ffi::CStr;

use nginx_sys::{ngx_conf_t, ngx_connection_t, ngx_log_t, ngx_uint_t, NGX_LOG_ERR, NGX_LOG_INFO};

use crate::core::key_limit::{Denied, Refusal};
use crate::core::{Ended, Error};

/// `error` level.
pub const ERR: ngx_uint_t = NGX_LOG_ERR as ngx_uint_t;
/// `emerg` level (configuration errors outside a directive).
pub const EMERG: ngx_uint_t = nginx_sys::NGX_LOG_EMERG as ngx_uint_t;
/// `alert` level (the module cannot keep its promise for this connection).
pub const ALERT: ngx_uint_t = nginx_sys::NGX_LOG_ALERT as ngx_uint_t;
/// `warn` level.
pub const WARN: ngx_uint_t = nginx_sys::NGX_LOG_WARN as ngx_uint_t;
/// `notice` level (what the module did at start, as nginx's own start lines).
pub const NOTICE: ngx_uint_t = nginx_sys::NGX_LOG_NOTICE as ngx_uint_t;
/// `info` level.
pub const INFO: ngx_uint_t = NGX_LOG_INFO as ngx_uint_t;

/// Level of a failed handshake with a back end, whoever's fault: an upstream that cannot be
/// reached is the operator's concern, as nginx's own "connect() failed" lines are.
pub const UPSTREAM_FAILURE: ngx_uint_t = ERR;

/// Whether debug lines on `log` would be written: nginx built `--with-debug` (a constant:
/// without it every debug branch compiles away) and the `event` mask on.
///
/// # Safety
/// `log` must be null or a live log.
pub unsafe fn debug_on(log: *mut ngx_log_t) -> bool {
    // SAFETY: non-null, log is live (caller's promise).
    ngx::log::DEBUG
        && !log.is_null()
        && ngx::log::check_mask(ngx::log::DebugMask::Event, unsafe { (*log).log_level })
}

/// Log level for a core error.
pub fn level_of(e: &Error) -> ngx_uint_t {
    if let Error::Unconfirmed {
        ended: Ended::Socket { errno, .. },
    } = e
    {
        return level_of_errno(*errno);
    }
    if e.is_peer_fault() {
        INFO
    } else {
        ERR
    }
}

/// Log level for a connection `noise_limit_conn_per_key` turned away: `info` for a key at
/// its limit (the client's doing), `error` when the zone cannot count it (ours).
pub fn level_of_denied(d: &Denied) -> ngx_uint_t {
    match d {
        Denied::Refused(Refusal::Over { .. }) => INFO,
        Denied::Refused(Refusal::Full { .. }) | Denied::NoZone => ERR,
    }
}

/// Log level for a socket errno: resets and timeouts are the peer's doing.
pub fn level_of_errno(errno: i32) -> ngx_uint_t {
    match errno {
        libc::ECONNRESET
        | libc::EPIPE
        | libc::ENOTCONN
        | libc::ETIMEDOUT
        | libc::ECONNREFUSED
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::ENETDOWN => NGX_LOG_INFO as ngx_uint_t,
        _ => NGX_LOG_ERR as ngx_uint_t,
    }
}

/// Writes `msg` to `log` at `level` (nginx appends the client/server context).
///
/// # Safety
/// `log` must be null or a valid nginx log.
pub unsafe fn write(log: *mut ngx_log_t, level: ngx_uint_t, msg: &str) {
    // SAFETY: caller guarantees log is valid when non-null.
    if log.is_null() || unsafe { (*log).log_level } < level {
        return;
    }
    // SAFETY: log is valid (checked non-null above).
    unsafe { ngx::log::log_error(level, log, 0, msg.as_bytes()) };
}

/// Writes `msg` at `level` with the position of the directive being parsed (`nginx -t`
/// prints "in FILE:LINE").
pub fn conf(cf: &mut ngx_conf_t, level: ngx_uint_t, msg: &str) {
    ngx::ngx_conf_log_error!(level, cf, "{msg}");
}

/// Logs a core error with what we were doing, at the level of whose fault it is.
///
/// # Safety
/// As [`write`].
pub unsafe fn error(log: *mut ngx_log_t, doing: &str, e: &Error) {
    // SAFETY: forwarded.
    unsafe { write(log, level_of(e), &format!("noise: {doing}: {e}")) };
}

/// An errno the way nginx prints one: `111: Connection refused`.
pub fn errno_text(errno: i32) -> String {
    crate::core::error::errno_text(errno)
}

/// Logs a failed syscall.
///
/// # Safety
/// As [`write`].
pub unsafe fn errno(log: *mut ngx_log_t, doing: &str, errno: i32) {
    let text = errno_text(errno);
    // SAFETY: forwarded.
    unsafe {
        write(
            log,
            level_of_errno(errno),
            &format!("noise: {doing} ({text})"),
        )
    };
}

/// A failed `recv()` or `send()` on `c`, logged by nginx's own `ngx_connection_error`, so
/// that its level is the one nginx gives the same errno on a plain connection: `info` for a
/// client's reset or timeout, `error` for a back end's (the connection's `log_error`),
/// `alert` for an errno no peer causes, nothing for a reset where nginx ignores them.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn connection_error(c: *mut ngx_connection_t, errno: i32, text: &CStr) {
    // SAFETY: c is live (caller's promise); nginx only reads `text` (a NUL-terminated
    // string that outlives the call) despite the `char *` in its signature.
    unsafe {
        nginx_sys::ngx_connection_error(c, errno as nginx_sys::ngx_err_t, text.as_ptr().cast_mut())
    };
}

/// A debug-level line on `$log` (`*mut ngx_log_t`), with `format!` arguments; see the
/// module doc for its cost.
#[macro_export]
macro_rules! noise_debug {
    ($log:expr, $($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Event, $log, $($arg)+)
    };
}
