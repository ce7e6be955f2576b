//! The module's main conf (one per `stream {}` block): the NoiseSocket addresses of the
//! configuration, which the gate classifies connections by (docs/nginx-integration.md
//! §2.4), and the original `peer.init` of each upstream group that the upstream wrapper
//! replaced (§5).

use nginx_sys::{ngx_int_t, ngx_stream_session_t, ngx_stream_upstream_srv_conf_t};

use super::pins::HostPort;

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

/// What a wrapped directive said, and where.
#[derive(Debug, Clone)]
pub struct Use {
    /// Its arguments.
    pub args: Vec<Vec<u8>>,
    /// "file:line".
    pub at: String,
    /// The server it is in (its stream core srv conf), `None` at `stream` level.
    pub server: Option<usize>,
}

/// What the wrappers of [`crate::nginx::server::pre_handshake`] recorded for one configuration.
#[derive(Debug, Default)]
pub struct Recorded {
    pub limit_conn_zones: Vec<Use>,
    pub limit_conns: Vec<Use>,
    pub maps: Vec<Use>,
    pub sets: Vec<Use>,
}

impl MainConf {
    /// A `noise_keys` naming a zone that no `noise_keys_zone` of the stream block declares.
    pub fn undeclared_key_zone(&self) -> Option<String> {
        let (name, at) = self
            .key_zone_uses
            .iter()
            .find(|(name, _)| !self.key_zones.contains(name))?;
        Some(format!(
            "\"noise_keys\" in {at} names the key zone \"{name}\", which no \"noise_keys_zone {name} SIZE;\" in the stream block declares"
        ))
    }
}

/// An upstream group's `peer.init`.
pub type InitPeer = unsafe extern "C" fn(
    *mut ngx_stream_session_t,
    *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t;

/// The module's main conf.
#[derive(Default)]
pub struct MainConf {
    pub addresses: Vec<NoiseAddress>,
    /// The original `peer.init` of each upstream group, by the group's address.
    pub init_peers: Vec<(usize, InitPeer)>,
    /// Some level sets `noise_limit_conn_per_key`: the configuration needs its zone.
    pub limits_per_key: bool,
    /// Some level sets `noise_multiplex on`: workers keep the streams' dummy socket.
    pub multiplex: bool,
    /// Directives that may use `$noise_*` before the handshake (for the warning).
    pub pre_handshake: Recorded,
    /// `noise_keys_zone` names declared in this stream block.
    pub key_zones: Vec<String>,
    /// Each `noise_keys zone=NAME`: the name and "file:line".
    pub key_zone_uses: Vec<(String, String)>,
    /// Name pins whose name did not resolve when the configuration loaded, with the
    /// directive's "file:line": postconfiguration requires a `server NAME resolve` for each.
    pub unresolved_pins: Vec<(HostPort, String)>,
    /// Upstream groups (by address) that have a `server ... resolve`: their addresses are
    /// not known in advance, so a pinned side fails closed on any of them.
    pub resolving_groups: Vec<usize>,
    /// Their `state=` files (one zone per file).
    pub key_states: Vec<std::path::PathBuf>,
    /// Public keys learned from key agents while reading this configuration, by socket
    /// (asked once per socket, [`super::key_agent`]).
    pub agent_keys: Vec<(std::path::PathBuf, Vec<[u8; 32]>)>,
}

impl MainConf {
    /// The original `peer.init` of the group at `group`.
    pub fn init_peer_of(&self, group: *const ngx_stream_upstream_srv_conf_t) -> Option<InitPeer> {
        self.init_peers
            .iter()
            .find(|(g, _)| *g == group as usize)
            .map(|(_, init)| *init)
    }
}
