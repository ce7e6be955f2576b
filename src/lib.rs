//! nginx-noise: NoiseSocket for nginx.
//!
//! * [`core`] is the sans-IO NoiseSocket implementation (framing, negotiation, handshake on
//!   `snow`, transport). It works on byte buffers and knows nothing of nginx; the CLI, the
//!   nginx layer and the fuzz targets all drive it.
//! * `nginx` (feature `nginx`) is the nginx layer: configuration, the stream phase handler,
//!   the upstream balancer wrapper and the replacement connection I/O functions. All `unsafe`
//!   code of the project lives there.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod agent_socket;
pub mod core;

#[cfg(feature = "nginx")]
pub mod nginx;
