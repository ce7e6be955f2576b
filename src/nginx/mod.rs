//! The nginx layer: everything that touches nginx. All `unsafe` code of the project lives
//! here, each block with a `// SAFETY:` line.
//!
//! * [`conn`]: per-connection NoiseSocket state, found by connection slot.
//! * [`gate`]: which connections are NoiseSocket, and the I/O that refuses them until
//!   their handshake finished (fail closed).
//! * [`socket`]: raw non-blocking syscalls on a connection's fd.
//! * [`handshake`]: drives a core handshake over a connection, then installs [`io`].
//! * [`io`]: the replacement `recv`, `send`, `recv_chain`, `send_chain`.
//! * [`log`]: error-log lines and the error-to-level mapping.
//! * [`conf`]: the configuration (ground floor: the other modules read it, it reads none of
//!   them but [`sockaddr`], [`log`], [`key_zone`] and [`key_state`]); [`stream_conf`]: where nginx keeps
//!   stream confs.
//! * [`key_zone`]: `noise_keys_zone`, client keys and verdicts in shared memory, with
//!   [`key_state`] (its `state=` file) and [`key_change`] (the changes, journaled);
//!   [`keys_api`]: the http API that changes them; [`auth_request`]: `noise_auth_request`,
//!   the lookup at an HTTP authority that a handshake waits for; [`key_agent`]: the
//!   worker's connections to key agents, which a handshake with `noise_key_agent` waits for.
//! * [`module`]: the `extern "C"` entry points of the C glue; [`listen`]: `noise_listen`
//!   sockets; [`server`]: the server-side handshake phase; [`variables`]: `$noise_*`;
//!   [`upstream`] and [`proxy_pass`]: NoiseSocket to upstream servers, with
//!   [`connect_state`] (is the back end connected?), [`proxy_header`] (PROXY protocol in
//!   clear before the handshake) and [`target_guard`] (variable targets that are not
//!   upstream groups are refused before connecting).
//! * [`http`]: the http module of the .so (`$noise_*` for requests that came through `pass`).
//! * [`preread`]: preread phase handlers see plaintext.
//! * [`status`]: the counters in shared memory and the http `noise_status` handler.
//! * [`pre_handshake`]: the `nginx -t` warning for `$noise_*` used before the handshake.
//! * [`limit`]: `noise_limit_conn_per_key`, connections per client key in shared memory.
//! * [`shm`]: how the module adds its shared zones.
//! * [`pool`]: Rust values owned by nginx pools; [`sockaddr`]: addresses as raw bytes.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth_request;
pub mod conf;
pub mod conn;
pub mod connect_state;
pub mod gate;
pub mod handshake;
pub mod http;
pub mod io;
pub mod key_agent;
pub mod key_change;
pub mod key_state;
pub mod key_zone;
pub mod keys_api;
pub mod limit;
pub mod listen;
pub mod log;
pub mod module;
pub mod mux_link;
pub mod mux_stream;
pub mod peers;
pub mod pool;
pub mod pre_handshake;
pub mod preread;
pub mod proxy_header;
pub mod proxy_pass;
pub mod server;
pub mod shm;
pub mod sockaddr;
pub mod socket;
pub mod status;
pub mod stream_conf;
pub mod target_guard;
pub mod upstream;
pub mod variables;
