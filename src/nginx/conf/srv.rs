//! The per-server (and `stream`-level) conf and its merge: a server inherits what it does
//! not set; merge then builds the run-time sides ([`ServerSide`], [`UpstreamSide`]) once
//! per server, checking that every protocol can actually run ([`super::rules`]).

use std::path::PathBuf;
use std::sync::Arc;

use nginx_sys::{ngx_msec_t, ngx_stream_complex_value_t, ngx_stream_session_t};

use super::auth::{AuthConf, Settle};
use super::key_agent::AgentConf;
use super::pins::ServerKey;
use super::sides::{ServerSide, UpstreamSide};
use crate::core::handshake::Settings;
use crate::core::keys::{KeySet, Secret};
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::Credentials;
use crate::core::protocol::Protocol;
use crate::core::requirements;

/// A key file loaded at configuration time, with where it came from.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub path: PathBuf,
    pub value: T,
}

/// What `noise_keys` does with a key its zone does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    Deny,
    Allow,
    /// Ask `noise_auth_request`, and keep the answer in the zone.
    Lookup,
}

/// `noise_keys zone=NAME [miss=deny|allow|lookup]`: client keys decided by a key zone.
#[derive(Clone, Debug)]
pub struct KeysConf {
    /// The zone (an `ngx_shm_zone_t` of this cycle); only passed back to nginx.
    pub zone: usize,
    pub zone_name: String,
    /// What a key that is not in the zone gets.
    pub miss: Miss,
    /// "file:line" of the directive.
    pub at: String,
}

/// Settings shared by both sides' directive sets.
#[derive(Clone, Debug, Default)]
pub struct SideConf {
    /// `noise_private_key`, in order: the first is sent where the pattern sends it, all
    /// are accepted where the client knows the key in advance (rotation); at most
    /// [`super::rules::MAX_PRIVATE_KEYS`]. The upstream side takes one.
    pub private_keys: Vec<Loaded<Secret>>,
    /// `noise_key_agent` / `noise_upstream_key_agent`: the private keys are in the agent
    /// (never with `private_keys` at one level).
    pub key_agent: Option<Arc<AgentConf>>,
    pub trusted_keys: Option<Loaded<KeySet>>,
    /// `noise_revoked_keys` / `noise_upstream_revoked_keys`: refused even when trusted.
    pub revoked_keys: Option<Loaded<KeySet>>,
    pub psk: Option<Loaded<Secret>>,
    pub prologue: Option<Vec<u8>>,
    pub padding: Option<usize>,
    pub handshake_timeout: Option<ngx_msec_t>,
}

impl SideConf {
    fn merge(&mut self, parent: &SideConf) {
        fn inherit<T: Clone>(child: &mut Option<T>, parent: &Option<T>) {
            if child.is_none() {
                child.clone_from(parent);
            }
        }
        // The keys and the agent go together: a level that sets either keeps only its own.
        if self.private_keys.is_empty() && self.key_agent.is_none() {
            self.private_keys.clone_from(&parent.private_keys);
            self.key_agent.clone_from(&parent.key_agent);
        }
        inherit(&mut self.trusted_keys, &parent.trusted_keys);
        inherit(&mut self.revoked_keys, &parent.revoked_keys);
        inherit(&mut self.psk, &parent.psk);
        inherit(&mut self.prologue, &parent.prologue);
        inherit(&mut self.padding, &parent.padding);
        inherit(&mut self.handshake_timeout, &parent.handshake_timeout);
    }

    pub fn settings(&self, trusted: bool) -> Arc<Settings> {
        Arc::new(Settings {
            app_prologue: self.prologue.clone().unwrap_or_default(),
            padding: self.padding.unwrap_or(0),
            trusted: trusted
                .then(|| self.trusted_keys.as_ref().map(|k| k.value.clone()))
                .flatten(),
            revoked: self
                .revoked_keys
                .as_ref()
                .map(|k| k.value.clone())
                .filter(|k| !k.is_empty()),
            ask_verdict: false,
            // Set by the side that needs it: `noise_keys` (server), key confirmation
            // (upstream, `noise_upstream_key_confirmation`).
            confirm: false,
        })
    }

    /// The trusted keys that are not also revoked: those a client may use.
    pub fn usable_trusted_keys(&self) -> Vec<[u8; 32]> {
        let revoked = self.revoked_keys.as_ref().map(|k| &k.value);
        self.trusted_keys
            .iter()
            .flat_map(|k| requirements::usable_trusted_keys(&k.value, revoked))
            .copied()
            .collect()
    }

    /// The private keys after the first, for rotation.
    pub fn alternate_keys(&self) -> Vec<Secret> {
        self.private_keys
            .iter()
            .skip(1)
            .map(|k| k.value.clone())
            .collect()
    }

    /// How many static keys this side has (in process or in the agent).
    pub fn key_count(&self) -> usize {
        match &self.key_agent {
            Some(agent) => agent.keys.len(),
            None => self.private_keys.len(),
        }
    }

    /// The side's credentials. With a key agent, the static key is the agent's first
    /// public key standing in for the private one (`Policy::with_agent_keys`): it computes
    /// nothing.
    pub fn credentials(&self) -> Credentials {
        let agent_key = self
            .key_agent
            .as_ref()
            .and_then(|a| a.keys.first())
            .map(|k| Secret::from_bytes(*k));
        Credentials {
            static_key: self
                .private_keys
                .first()
                .map(|k| k.value.clone())
                .or(agent_key),
            remote_static: None,
            psks: self.psk.iter().map(|k| k.value.clone()).collect(),
            fixed_ephemeral: None,
        }
    }
}

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
    /// What this server's `proxy_pass` was given (learnt by [`super::proxy_pass`]).
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
            self.server_side = Some(
                ServerSide::build(self, settle)
                    .map_err(|e| format!("{e} (noise_listen in {at})"))?,
            );
        }
        if self.upstream == Some(true) {
            let at = self.upstream_at.clone().unwrap_or_default();
            self.upstream_side = Some(Arc::new(
                UpstreamSide::build(self)
                    .map_err(|e| format!("{e} (noise_upstream on in {at})"))?,
            ));
        }
        Ok(())
    }
}
