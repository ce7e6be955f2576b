//! Merge: a server inherits from the `stream` level what it does not set, then its
//! run-time sides ([`ServerSide`], [`UpstreamSide`]) are built once, checking that every
//! protocol can actually run ([`super::rules`]).

use std::sync::Arc;

use super::auth::{AuthSide, Settle};
use super::rules::{self, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_UPSTREAM_PROTOCOL};
use super::side_conf::Miss;
use super::sides::{ServerSide, UpstreamSide};
use super::srv::SrvConf;
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::Policy;
use crate::core::protocol::{Protocol, Role};

impl SrvConf {
    /// Inherits unset values from the `stream` level and builds the run-time sides
    /// (`settle` places a `noise_auth_request` authority named by a host name).
    pub fn merge(&mut self, parent: &SrvConf, settle: &mut Settle) -> Result<(), String> {
        if self.protocols.is_none() {
            self.protocols.clone_from(&parent.protocols);
        }
        self.server.merge(&parent.server);
        if self.upstream.is_none() {
            self.upstream = parent.upstream;
            self.upstream_at.clone_from(&parent.upstream_at);
        }
        if self.upstream_protocol.is_none() {
            self.upstream_protocol.clone_from(&parent.upstream_protocol);
        }
        if self.upstream_negotiation.is_none() {
            self.upstream_negotiation = parent.upstream_negotiation;
        }
        if self.upstream_key_confirmation.is_none() {
            self.upstream_key_confirmation = parent.upstream_key_confirmation;
        }
        if self.upstream_server_keys.is_empty() {
            self.upstream_server_keys
                .clone_from(&parent.upstream_server_keys);
        }
        self.upstream_conf.merge(&parent.upstream_conf);
        if self.limit_conn_per_key.is_none() {
            self.limit_conn_per_key = parent.limit_conn_per_key;
        }
        if self.multiplex.is_none() {
            self.multiplex = parent.multiplex;
        }
        if self.multiplex_trust_origin.is_none() {
            self.multiplex_trust_origin = parent.multiplex_trust_origin;
        }
        if self.keys.is_none() {
            self.keys.clone_from(&parent.keys);
        }
        self.auth.merge(&parent.auth);
        if let Some(at) = self.listen_at.clone() {
            self.server_side =
                Some(server_side(self, settle).map_err(|e| format!("{e} (noise_listen in {at})"))?);
        }
        if self.upstream == Some(true) {
            let at = self.upstream_at.clone().unwrap_or_default();
            self.upstream_side = Some(Arc::new(
                upstream_side(self).map_err(|e| format!("{e} (noise_upstream on in {at})"))?,
            ));
        }
        Ok(())
    }
}

/// The server side of a merged conf.
fn server_side(conf: &SrvConf, settle: &mut Settle) -> Result<ServerSide, String> {
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

/// The upstream side of a merged conf.
fn upstream_side(conf: &SrvConf) -> Result<UpstreamSide, String> {
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
