//! nginx-noise: NoiseSocket for nginx.
//!
//! * [`core`] is the sans-IO NoiseSocket implementation (framing, negotiation, handshake on
//!   `snow`, transport). It works on byte buffers and knows nothing of nginx; the CLI, the
//!   nginx layer and the fuzz targets all drive it.
//! * [`metrics`] is the module's counters as they lie in shared memory and their Prometheus
//!   text: nginx's series, not the protocol, so beside the core rather than in it (no nginx
//!   either: the nginx layer puts them in a zone).
//! * `nginx` (feature `nginx`) is the nginx layer: configuration, the stream phase handler,
//!   the upstream balancer wrapper and the replacement connection I/O functions. All `unsafe`
//!   code of the project lives there.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod agent_socket;
pub mod core;
pub mod metrics;

#[cfg(feature = "nginx")]
pub mod nginx;
