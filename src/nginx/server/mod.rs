//! The server side, `noise_listen`: the checks of the listening sockets at `init_module`
//! ([`listen`]), which sockets are NoiseSocket addresses and the accept-time gate on them
//! ([`accept`]), the handshake phase handler ([`phase`]),
//! plaintext for preread handlers ([`preread`]) and the `nginx -t` warning for `$noise_*`
//! used before the handshake ([`pre_handshake`]). Nothing here is used by the upstream side.

pub mod accept;
pub mod listen;
pub mod phase;
pub mod pre_handshake;
pub mod preread;
