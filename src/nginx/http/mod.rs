//! What the module shows: the `$noise_*` variables of stream sessions ([`variables`]) and
//! of http requests on connections handed over with `pass` ([`request_variables`]), and
//! the counters' http handler `noise_status` ([`status`]) and the key zone API
//! `noise_keys_api` ([`keys_api`]), which changes [`super::keys::zone`].

pub mod keys_api;
pub mod request_variables;
pub mod status;
pub mod variables;
