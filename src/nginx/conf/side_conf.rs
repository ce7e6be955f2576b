//! The directives one side sets, as parsed, for either side (`noise_*` and
//! `noise_upstream_*` share them): key files, the key agent, prologue, padding, timeouts;
//! and `noise_keys`. Plain values; [`super::merge`] turns them into the run-time sides.

use std::path::PathBuf;
use std::sync::Arc;

use nginx_sys::ngx_msec_t;

use super::key_agent::AgentConf;
use crate::core::handshake::Settings;
use crate::core::keys::{KeySet, Secret};
use crate::core::negotiation::Credentials;
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
    /// [`crate::core::keys::MAX_PRIVATE_KEYS`]. The upstream side takes one.
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
    /// Inherits what this level does not set from `parent`.
    pub fn merge(&mut self, parent: &SideConf) {
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
