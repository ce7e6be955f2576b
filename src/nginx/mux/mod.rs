//! Multiplexed links (`noise_multiplex`, docs/multiplex.md §12): a link's connection
//! driving `core::mux::Session` ([`link`]) and each of its streams as a fake connection
//! with a stream session of its own ([`stream`]).

pub mod link;
pub mod stream;
