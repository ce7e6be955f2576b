//! The keys for running one protocol in one role: what a side brings to a handshake. A leaf
//! below both [`crate::core::requirements`] (which checks them) and
//! [`crate::core::negotiation`] (whose policies carry them).

use super::keys::Secret;

/// The keys for running one protocol in one role.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Our static private key.
    pub static_key: Option<Secret>,
    /// The peer's static public key: given to Noise when the pattern needs it in advance,
    /// otherwise compared with the key learnt in the handshake.
    pub remote_static: Option<[u8; 32]>,
    /// Pre-shared keys, one per psk modifier, in the order of the protocol name.
    pub psks: Vec<Secret>,
    /// Fixed ephemeral key, for test vectors only.
    #[doc(hidden)]
    pub fixed_ephemeral: Option<Secret>,
}
