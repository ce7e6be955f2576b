//! The server side, `noise_listen`: which listening sockets are NoiseSocket addresses and
//! the accept-time gate on them ([`listen`]), the handshake phase handler ([`phase`]),
//! plaintext for preread handlers ([`preread`]) and the `nginx -t` warning for `$noise_*`
//! used before the handshake ([`pre_handshake`]). Nothing here is used by the upstream side.

pub mod listen;
pub mod phase;
pub mod pre_handshake;
pub mod preread;
