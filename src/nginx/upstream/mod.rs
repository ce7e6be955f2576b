//! The upstream side, `noise_upstream on`: NoiseSocket to back ends from stock
//! `proxy_pass`. [`peer`] wraps each group's `peer.init`/`peer.get`/`peer.free`;
//! [`connect_state`] tells whether the back end's TCP connect finished;
//! [`proxy_header`] writes the PROXY protocol header in clear before the handshake;
//! [`peers`] is the per-peer table of pinned keys; [`proxy_pass`] finds what a server
//! proxies to and [`target_guard`] refuses variable targets that are not upstream groups.
//! Nothing here is used by the server side.

pub mod connect_state;
pub mod peer;
pub mod peers;
pub mod proxy_header;
pub mod proxy_pass;
pub mod target_guard;
