//! Keys and the answers a handshake waits for: client keys and their verdicts in shared
//! memory ([`zone`], its directives in [`zone_conf`]) with its `state=` file ([`state`]) and its journaled
//! changes ([`change`]), which the http API `noise_keys_api` makes
//! ([`super::http::keys_api`]); the lookup at an HTTP authority ([`auth_request`], `noise_auth_request`); the worker's
//! connections to key agents ([`agent`], `noise_key_agent`); connections per client key
//! ([`limit`], `noise_limit_conn_per_key`).
//!
//! These modules use [`super::util`] and [`super::conf`]; a connection's state
//! ([`super::conn`]) holds their handles, never the other way round: an answer reaches
//! the connection that waits for it through the callback the connection's side gave.

pub mod agent;
pub mod auth_request;
pub mod change;
pub mod limit;
pub mod state;
pub mod zone;
pub mod zone_conf;
