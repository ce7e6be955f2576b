//! The module's per-server (and `stream`-level) conf: what the directives set, and the
//! run-time sides ([`ServerSide`], [`UpstreamSide`]) that merge ([`super::merge`]) builds
//! from it once per server.

use std::sync::Arc;

use nginx_sys::{ngx_stream_complex_value_t, ngx_stream_session_t};

use super::auth::AuthConf;
use super::pins::ServerKey;
use super::side_conf::{KeysConf, SideConf};
use super::sides::{ServerSide, UpstreamSide};
use crate::core::negotiation::codec::Codec;
use crate::core::protocol::Protocol;

/// The module's per-server (and `stream`-level) configuration.
#[derive(Default)]
pub struct SrvConf {
    /// "file:line" of this server's first `noise_listen`, if any.
    pub listen_at: Option<String>,
    pub protocols: Option<Vec<Protocol>>,
    pub server: SideConf,
    pub upstream: Option<bool>,
    /// "file:line" of the `noise_upstream` directive in force (this server's or inherited).
    pub upstream_at: Option<String>,
    pub upstream_protocol: Option<Protocol>,
    pub upstream_negotiation: Option<Codec>,
    pub upstream_server_keys: Vec<ServerKey>,
    /// `noise_upstream_key_confirmation` (docs/protocol.md §4.8); unset means on.
    pub upstream_key_confirmation: Option<bool>,
    pub upstream_conf: SideConf,
    /// Built by merge for servers with `noise_listen`.
    pub server_side: Option<ServerSide>,
    /// Built by merge for servers with `noise_upstream on`.
    pub upstream_side: Option<Arc<UpstreamSide>>,
    /// `noise_limit_conn_per_key`: established connections per client static key.
    pub limit_conn_per_key: Option<u32>,
    /// `noise_multiplex` (docs/multiplex.md §12); unset means off.
    pub multiplex: Option<bool>,
    /// `noise_multiplex_trust_origin`; unset means off.
    pub multiplex_trust_origin: Option<bool>,
    /// `noise_keys`, this server's or inherited.
    pub keys: Option<KeysConf>,
    /// `noise_auth_request` and its settings.
    pub auth: AuthConf,
    /// What this server's `proxy_pass` was given (learnt by [`crate::nginx::upstream::proxy_pass`]).
    pub proxy_pass: Option<Vec<u8>>,
    /// Set at postconfiguration for `noise_upstream on` servers whose `proxy_pass` is a
    /// variable (`crate::nginx::upstream::target_guard`).
    pub variable_target: Option<VariableTarget>,
}

/// A `noise_upstream on` server's `proxy_pass` to a variable, as its content-phase guard
/// needs it.
pub struct VariableTarget {
    /// The `proxy_pass` argument compiled as a complex value (allocated in the
    /// configuration's pool, which outlives every session).
    pub value: *mut ngx_stream_complex_value_t,
    /// The content handler that `proxy_pass` installed (the proxy's), which the guard calls
    /// when the target is an upstream group.
    pub next: unsafe extern "C" fn(*mut ngx_stream_session_t),
}
