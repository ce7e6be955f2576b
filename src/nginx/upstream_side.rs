//! What a `noise_upstream on` server needs at run time, built once per configuration.

use std::sync::Arc;

use nginx_sys::ngx_msec_t;

use super::conf::ServerKey;
use super::listen::same_address;
use crate::core::handshake::Settings;
use crate::core::negotiation::codec::Codec;
use crate::core::negotiation::{Credentials, Policy};
use crate::core::protocol::{Protocol, Role};
use crate::core::Error;

pub struct UpstreamSide {
    pub protocol: Protocol,
    pub codec: Codec,
    pub credentials: Credentials,
    pub settings: Arc<Settings>,
    pub server_keys: Vec<ServerKey>,
    pub handshake_timeout: ngx_msec_t,
}

impl UpstreamSide {
    /// The configured key of the server at `sockaddr`, if any.
    pub fn server_key(&self, sockaddr: &[u8]) -> Option<[u8; 32]> {
        self.server_keys
            .iter()
            .find(|k| k.sockaddrs.iter().any(|a| same_address(a, sockaddr)))
            .map(|k| k.key)
    }

    /// Whether the protocol needs the server's key before the handshake.
    pub fn needs_server_key(&self) -> bool {
        self.protocol.needs_remote_static(Role::Initiator)
    }

    /// The initiator policy for a connection to the server at `sockaddr`.
    pub fn policy_for(&self, sockaddr: &[u8]) -> Result<Policy, Error> {
        let mut credentials = self.credentials.clone();
        credentials.remote_static = self.server_key(sockaddr);
        let policy = Policy::new(vec![self.protocol.clone()], self.codec, credentials)?;
        policy.validate(Role::Initiator)?;
        Ok(policy)
    }
}
