//! What a server runs with, built once per configuration by merge ([`super::merge`]): [`ServerSide`] for a
//! `noise_listen` server, [`UpstreamSide`] for a `noise_upstream on` one. Sessions share
//! them (`Arc`); nothing in them changes after merge.

use std::sync::Arc;

use nginx_sys::ngx_msec_t;

use super::auth::AuthSide;
use super::key_agent::AgentConf;
use super::pins::{self, Server, ServerKey};
use super::side_conf::KeysConf;
use crate::core::handshake::Settings;
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::{Credentials, Policy};
use crate::core::protocol::{Protocol, Role};
use crate::core::Error;

/// What a `noise_listen` server needs at run time.
pub struct ServerSide {
    pub policy: Arc<Policy>,
    pub settings: Arc<Settings>,
    pub handshake_timeout: ngx_msec_t,
    /// `noise_limit_conn_per_key`, if set.
    pub limit_per_key: Option<u32>,
    /// `noise_keys`: the zone that decides client keys.
    pub keys: Option<KeysConf>,
    /// `noise_auth_request`: the authority asked on a zone miss (`miss=lookup`).
    pub auth: Option<Arc<AuthSide>>,
    /// `noise_key_agent`: the private keys are in the agent.
    pub agent: Option<Arc<AgentConf>>,
    /// `noise_multiplex on`: clients that offer it get a multiplexed link.
    pub multiplex: bool,
    /// `noise_multiplex_trust_origin on`: a stream's `$remote_addr` is its origin address.
    pub trust_origin: bool,
}

/// What a `noise_upstream on` server needs at run time.
pub struct UpstreamSide {
    pub protocol: Protocol,
    pub codec: Codec,
    pub credentials: Credentials,
    pub settings: Arc<Settings>,
    pub server_keys: Vec<ServerKey>,
    /// `noise_upstream_handshake_timeout` when set (here or inherited); unset, the
    /// handshake is bounded by the proxy's `proxy_connect_timeout`, as with `proxy_ssl`.
    pub handshake_timeout: Option<ngx_msec_t>,
    /// `noise_upstream_key_agent`: our key is the agent's first.
    pub agent: Option<Arc<AgentConf>>,
}

impl UpstreamSide {
    /// With `noise_upstream_key_agent`: the one agent key this side uses (its first).
    pub fn agent_keys(&self) -> Option<Arc<[[u8; 32]]>> {
        let agent = self.agent.as_ref()?;
        Some(agent.keys.get(..1)?.into())
    }

    /// The key of the pin that applies to `server`, if any ([`super::pins`]).
    pub fn server_key(&self, server: &Server<'_>) -> Option<[u8; 32]> {
        pins::key_for(&self.server_keys, server)
    }

    /// Whether this side pins any server (`noise_upstream_server_key`).
    pub fn has_pins(&self) -> bool {
        !self.server_keys.is_empty()
    }

    /// Whether servers are checked against `noise_upstream_trusted_keys`.
    pub fn has_trusted_keys(&self) -> bool {
        self.settings.trusted.is_some()
    }

    /// Whether the protocol needs the server's key before the handshake.
    pub fn needs_server_key(&self) -> bool {
        self.protocol.needs_remote_static(Role::Initiator)
    }

    /// The initiator policy for a connection to a server whose pin (if any) is `key`.
    pub fn policy_for(&self, key: Option<[u8; 32]>) -> Result<Policy, Error> {
        let mut credentials = self.credentials.clone();
        credentials.remote_static = key;
        let mut policy = Policy::new(vec![self.protocol.clone()], self.codec, credentials)?;
        if let Some(keys) = self.agent_keys() {
            policy = policy.with_agent_keys(&keys);
        }
        policy.validate(Role::Initiator)?;
        Ok(policy)
    }
}
