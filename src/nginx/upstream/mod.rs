//! The upstream side, `noise_upstream on`: NoiseSocket to back ends from stock
//! `proxy_pass`, with every balancer and `proxy_next_upstream`.
//!
//! * [`setup`]: postconfiguration: wraps every group's `peer.init`, checks the servers;
//! * [`peer`]: the balancer wrapper (`peer.init`/`get`/`free`/...), which opens each
//!   attempt's connection; [`wrap`] is the per-session state it keeps;
//! * [`attempt`]: one attempt's connect and handshake steps, ending in the proxy's
//!   connect handler, successful or failed; [`connect_state`] tells whether the TCP or
//!   unix-domain connect finished; [`proxy_header`] writes the PROXY protocol header in
//!   clear before the handshake;
//! * [`peers`]: the per-peer table of pinned keys; [`proxy_pass`] finds what a server
//!   proxies to;
//! * fail closed: [`target_guard`] refuses variable targets that are not upstream groups,
//!   and behind it [`fail_closed`] refuses to send toward a connection that is not
//!   NoiseSocket.
//!
//! Nothing here is used by the server side, nor uses it.

pub mod attempt;
pub mod connect_state;
pub mod fail_closed;
pub mod peer;
pub mod peers;
pub mod proxy_header;
pub mod proxy_pass;
pub mod setup;
pub mod target_guard;
pub mod wrap;
