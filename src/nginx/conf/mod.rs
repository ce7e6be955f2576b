//! The module's configuration, on the ground floor of the nginx layer: these modules use
//! the core, `nginx-sys`, [`super::util::sockaddr`] and [`super::util::log`], and nothing else of the
//! nginx layer, which in turn reads its configuration only from here.
//!
//! * [`directives`]: the one parser behind every directive of the C glue's table (adding a
//!   directive is one line there and one arm there);
//! * [`args`]: nginx's own parsers for times, sizes, paths and URLs, on directive arguments;
//! * [`srv`]: the per-server conf ([`SrvConf`], [`SideConf`]) and its merge;
//! * [`rules`]: each configuration rule once, with the directive names for messages;
//! * [`pins`]: `noise_upstream_server_key` pins by address or name, and which server each
//!   applies to;
//! * [`sides`]: what a server runs with, built by merge ([`ServerSide`], [`UpstreamSide`]);
//! * [`auth`]: `noise_auth_request` and its settings;
//! * [`key_agent`]: `noise_key_agent` / `noise_upstream_key_agent` (keys in the key agent);
//! * [`main`]: the main conf ([`MainConf`]): the configuration's `noise_listen` addresses
//!   and the upstream groups' original `peer.init`.
//!
//! Every directive works at `stream` and `server` level (`noise_listen` only in `server`);
//! a server inherits what it does not set, like `ssl_*`. Key files are read when the
//! directive is parsed (in the master, before workers start), so a bad file fails
//! `nginx -t` with the file and line.

pub mod args;
pub mod auth;
pub mod directives;
pub mod key_agent;
pub mod main;
pub mod merge;
pub mod pins;
pub mod rules;
pub mod side_conf;
pub mod sides;
pub mod srv;
pub mod stream_conf;

pub use auth::{AuthSide, Settle, Target};
pub use key_agent::AgentConf;
pub use main::{InitPeer, MainConf, NoiseAddress, Recorded, Use};
pub use pins::{HostPort, Pinned, ServerKey};
pub use side_conf::{KeysConf, Loaded, Miss, SideConf};
pub use sides::{ServerSide, UpstreamSide};
pub use srv::SrvConf;
