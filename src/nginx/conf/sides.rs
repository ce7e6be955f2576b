//! What a server runs with, built once per configuration by merge: [`ServerSide`] for a
//! `noise_listen` server, [`UpstreamSide`] for a `noise_upstream on` one. Sessions share
//! them (`Arc`); nothing in them changes after merge.

use std::sync::Arc;

use nginx_sys::ngx_msec_t;

use super::auth::{AuthSide, Settle};
use super::key_agent::AgentConf;
use super::pins::{self, Server, ServerKey};
use super::rules::{self, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_UPSTREAM_PROTOCOL};
use super::srv::{KeysConf, Miss, SrvConf};
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

impl ServerSide {
    /// The server side of a merged conf.
    pub fn build(conf: &SrvConf, settle: &mut Settle) -> Result<ServerSide, String> {
        let protocols = conf
            .protocols
            .clone()
            .unwrap_or_else(rules::default_protocols);
        let side = &conf.server;
        rules::server_keys(&protocols, side)?;
        let trusted = side.trusted_keys.is_some();
        let mut policy = Policy::new(protocols, Codec::Virgil, side.credentials())
            .map_err(|e| e.to_string())?
            .with_initiator_static_required(trusted)
            .with_multiplex(conf.multiplex == Some(true));
        policy = match &side.key_agent {
            // Every static-key DH is the agent's (KK's `ss` included, asked per handshake).
            Some(agent) => policy.with_agent_keys(&agent.keys),
            None => policy
                .with_alternate_static_keys(side.alternate_keys())
                // KK's `ss` for every (private key, trusted key) pair, once per configuration.
                .with_peer_key_dh(&side.usable_trusted_keys()),
        };
        // The rules above already hold; this is the core's own check of the same facts.
        policy
            .validate(Role::Responder)
            .map_err(|e| e.to_string())?;
        let auth = lookup_rules(conf, settle)?;
        let mut settings = (*side.settings(true)).clone();
        settings.ask_verdict = conf.keys.is_some();
        Ok(ServerSide {
            policy: Arc::new(policy),
            settings: Arc::new(settings),
            handshake_timeout: side.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            limit_per_key: conf.limit_conn_per_key,
            keys: conf.keys.clone(),
            auth,
            agent: side.key_agent.clone(),
            multiplex: conf.multiplex == Some(true),
            trust_origin: conf.multiplex_trust_origin == Some(true),
        })
    }
}

/// `noise_keys miss=lookup` and `noise_auth_request` go together: the answers are kept in
/// the zone, and a lookup needs somewhere to ask.
fn lookup_rules(conf: &SrvConf, settle: &mut Settle) -> Result<Option<Arc<AuthSide>>, String> {
    let auth = conf.auth.side(settle)?;
    match (&conf.keys, &auth) {
        (Some(keys), None) if keys.miss == Miss::Lookup => Err(format!(
            "\"noise_keys\" in {} has \"miss=lookup\" but no \"noise_auth_request\" says where to look up",
            keys.at
        )),
        (Some(keys), Some(_)) if keys.miss == Miss::Lookup => Ok(auth),
        (_, Some(_)) => Err(format!(
            "\"noise_auth_request\" in {} needs \"noise_keys zone=NAME miss=lookup\" (the answers are kept in the zone)",
            conf.auth.at.clone().unwrap_or_default()
        )),
        (_, None) => Ok(None),
    }
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
    /// The upstream side of a merged conf.
    pub fn build(conf: &SrvConf) -> Result<UpstreamSide, String> {
        let protocol = match &conf.upstream_protocol {
            Some(p) => p.clone(),
            None => Protocol::parse(DEFAULT_UPSTREAM_PROTOCOL).map_err(|e| e.to_string())?,
        };
        let side = &conf.upstream_conf;
        rules::upstream_keys(&protocol, side, !conf.upstream_server_keys.is_empty())?;
        let codec = conf.upstream_negotiation.unwrap_or_default();
        rules::nameable(&protocol, codec)?;
        let mut settings = (*side.settings(true)).clone();
        // Ask an nginx-noise back end to confirm that it accepted our key, so that a
        // refusal is a failed attempt (docs/protocol.md §4.8); off for back ends that
        // cannot take a first-message payload.
        settings.confirm = conf.upstream_key_confirmation.unwrap_or(true);
        Ok(UpstreamSide {
            protocol,
            codec,
            credentials: side.credentials(),
            settings: Arc::new(settings),
            server_keys: conf.upstream_server_keys.clone(),
            handshake_timeout: side.handshake_timeout,
            agent: side.key_agent.clone(),
        })
    }

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
