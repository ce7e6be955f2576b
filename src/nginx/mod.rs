//! The nginx layer: everything that touches nginx. All `unsafe` code of the project lives
//! here, each block with a `// SAFETY:` line.
//!
//! Folders by role, each using only the ones listed before it (nothing imports upward;
//! the server and upstream sides never import each other):
//!
//! * [`util`]: error-log lines and levels, pools, addresses, shared zones, raw syscalls.
//! * [`conf`]: the configuration, and where nginx keeps stream confs.
//! * [`keys`]: the key zone, its state file and API, `noise_auth_request`, key agents,
//!   connections per key: the answers a handshake waits for.
//! * [`conn`]: per-connection NoiseSocket state found by slot, the refusing gate (fail
//!   closed), the handshake driver and the replacement I/O, shared by both sides.
//! * [`mux`]: multiplexed links and their streams as fake connections.
//! * [`server`]: `noise_listen`, the handshake phase, preread.
//! * [`upstream`]: `noise_upstream`, the peer wrapper and its steps.
//! * [`http`]: the `$noise_*` variables (stream and http) and `noise_status`.
//! * [`module`]: the `extern "C"` entry points of the C glue.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod conf;
pub mod conn;
pub mod http;
pub mod keys;
pub mod module;
pub mod mux;
pub mod server;
pub mod upstream;
pub mod util;
