//! Configuration: the module's server conf, directive parsing and merging.
//!
//! Every directive works at `stream` and `server` level (`noise_listen` only in `server`);
//! a server inherits what it does not set, like `ssl_*`. Key files are read when the
//! directive is parsed (in the master, before workers start), so a bad file fails
//! `nginx -t` with the file and line. Merge builds the run-time sides ([`ServerSide`],
//! [`UpstreamSide`]) once per server, checking that every protocol can actually run.

use std::path::PathBuf;
use std::sync::Arc;

use nginx_sys::ngx_msec_t;

use super::server::ServerSide;
use super::upstream_side::UpstreamSide;
use crate::core::handshake::Settings;
use crate::core::keys::{KeySet, Secret};
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::{Credentials, Policy};
use crate::core::protocol::{Protocol, Role};

/// Default accepted protocols: XX and IK over 25519, both ciphers, all four hashes.
pub fn default_protocols() -> Vec<Protocol> {
    let mut out = Vec::new();
    for pattern in ["XX", "IK"] {
        for cipher in ["ChaChaPoly", "AESGCM"] {
            for hash in ["BLAKE2s", "BLAKE2b", "SHA256", "SHA512"] {
                if let Ok(p) = Protocol::parse(&format!("Noise_{pattern}_25519_{cipher}_{hash}")) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Trusted keys a K-pattern server may try per handshake (each try costs two DH).
pub const MAX_K_PATTERN_KEYS: usize = 32;

pub const DEFAULT_UPSTREAM_PROTOCOL: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
pub const DEFAULT_HANDSHAKE_TIMEOUT: ngx_msec_t = 60_000;

/// A key file loaded at configuration time, with where it came from.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub path: PathBuf,
    pub value: T,
}

/// One `noise_upstream_server_key`: the key the server at these addresses must prove.
#[derive(Clone, Debug)]
pub struct ServerKey {
    pub address: String,
    /// Socket addresses as raw `sockaddr` bytes.
    pub sockaddrs: Vec<Vec<u8>>,
    pub key: [u8; 32],
}

/// Settings shared by both sides' directive sets.
#[derive(Clone, Debug, Default)]
pub struct SideConf {
    pub private_key: Option<Loaded<Secret>>,
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
        inherit(&mut self.private_key, &parent.private_key);
        inherit(&mut self.trusted_keys, &parent.trusted_keys);
        inherit(&mut self.revoked_keys, &parent.revoked_keys);
        inherit(&mut self.psk, &parent.psk);
        inherit(&mut self.prologue, &parent.prologue);
        inherit(&mut self.padding, &parent.padding);
        inherit(&mut self.handshake_timeout, &parent.handshake_timeout);
    }

    fn settings(&self, trusted: bool) -> Arc<Settings> {
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
        })
    }

    fn credentials(&self) -> Credentials {
        Credentials {
            static_key: self.private_key.as_ref().map(|k| k.value.clone()),
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
    pub upstream_conf: SideConf,
    /// Built by merge for servers with `noise_listen`.
    pub server_side: Option<ServerSide>,
    /// Built by merge for servers with `noise_upstream on`.
    pub upstream_side: Option<Arc<UpstreamSide>>,
    /// What this server's `proxy_pass` was given (learnt by [`super::proxy_pass`]).
    pub proxy_pass: Option<Vec<u8>>,
}

impl SrvConf {
    /// Inherits unset values from the `stream` level and builds the run-time sides.
    pub fn merge(&mut self, parent: &SrvConf) -> Result<(), String> {
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
        if self.upstream_server_keys.is_empty() {
            self.upstream_server_keys
                .clone_from(&parent.upstream_server_keys);
        }
        self.upstream_conf.merge(&parent.upstream_conf);
        if let Some(at) = self.listen_at.clone() {
            self.server_side = Some(
                self.build_server_side()
                    .map_err(|e| format!("{e} (noise_listen in {at})"))?,
            );
        }
        if self.upstream == Some(true) {
            let at = self.upstream_at.clone().unwrap_or_default();
            self.upstream_side = Some(Arc::new(
                self.build_upstream_side()
                    .map_err(|e| format!("{e} (noise_upstream on in {at})"))?,
            ));
        }
        Ok(())
    }

    fn build_server_side(&self) -> Result<ServerSide, String> {
        let protocols = self.protocols.clone().unwrap_or_else(default_protocols);
        let side = &self.server;
        for p in &protocols {
            if p.needs_local_static(Role::Responder) && side.private_key.is_none() {
                return Err(format!("\"noise_private_key\" is required by \"{p}\""));
            }
            if p.needs_remote_static(Role::Responder) {
                // The client's key must be known before message 1: it comes from the
                // trusted keys, tried in turn when message 1 is encrypted (KK), or the only
                // one listed when it is not (KN, KX).
                let trusted = side.trusted_keys.as_ref().map_or(0, |k| k.value.len());
                if trusted == 0 {
                    return Err(format!(
                        "\"{p}\" needs the client's key before the handshake; set \"noise_trusted_keys\""
                    ));
                }
                if !p.payload_encrypted(0) && trusted != 1 {
                    return Err(format!(
                        "\"{p}\" can take the client's key only from exactly one \"noise_trusted_keys\" entry, not {trusted}"
                    ));
                }
                if trusted > MAX_K_PATTERN_KEYS {
                    return Err(format!(
                        "\"{p}\" tries each trusted key in turn; list at most {MAX_K_PATTERN_KEYS}, not {trusted}"
                    ));
                }
            }
            if p.has_psk() && side.psk.is_none() {
                return Err(format!("\"noise_psk\" is required by \"{p}\""));
            }
        }
        let trusted = side.trusted_keys.is_some();
        let policy = Policy::new(protocols, Codec::Virgil, side.credentials())
            .map_err(|e| e.to_string())?
            .with_initiator_static_required(trusted);
        policy
            .validate(Role::Responder)
            .map_err(|e| e.to_string())?;
        Ok(ServerSide {
            policy: Arc::new(policy),
            settings: side.settings(true),
            handshake_timeout: side.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }

    fn build_upstream_side(&self) -> Result<UpstreamSide, String> {
        let protocol = match &self.upstream_protocol {
            Some(p) => p.clone(),
            None => Protocol::parse(DEFAULT_UPSTREAM_PROTOCOL).map_err(|e| e.to_string())?,
        };
        let side = &self.upstream_conf;
        if protocol.needs_local_static(Role::Initiator) && side.private_key.is_none() {
            return Err(format!(
                "\"noise_upstream_private_key\" is required by \"{protocol}\""
            ));
        }
        if protocol.has_psk() && side.psk.is_none() {
            return Err(format!(
                "\"noise_upstream_psk\" is required by \"{protocol}\""
            ));
        }
        if protocol.needs_remote_static(Role::Initiator) && self.upstream_server_keys.is_empty() {
            return Err(format!(
                "\"noise_upstream_server_key\" is required by \"{protocol}\" (nginx must know the server's key before the handshake)"
            ));
        }
        let codec = self.upstream_negotiation.unwrap_or_default();
        if codec == Codec::Virgil && protocol.noise_c_ids().is_none() {
            return Err(format!(
                "\"{protocol}\" cannot be named in virgil negotiation data; set \"noise_upstream_negotiation empty\""
            ));
        }
        Ok(UpstreamSide {
            protocol,
            codec,
            credentials: side.credentials(),
            settings: side.settings(true),
            server_keys: self.upstream_server_keys.clone(),
            handshake_timeout: side.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }
}

/// Parses a NoiseSocket padding size: 0 (off) to 65517.
pub fn parse_padding(value: isize) -> Result<usize, String> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v <= crate::core::payload::MAX_BODY)
        .ok_or_else(|| "must be a size from 0 to 65517".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let d = default_protocols();
        assert_eq!(d.len(), 16);
        assert_eq!(d[0].name(), "Noise_XX_25519_ChaChaPoly_BLAKE2s");
    }
}
