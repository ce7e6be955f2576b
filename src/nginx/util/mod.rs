//! Small helpers every other part of the nginx layer uses, and that use nothing of it but
//! each other: the module's counters in shared memory ([`counters`]), error-log lines and the error-to-level mapping ([`log`]), Rust values owned
//! by nginx pools ([`pool`]), addresses as raw bytes ([`sockaddr`]), the module's shared
//! zones ([`shm`]) and raw non-blocking syscalls on a connection's fd ([`socket`]).

pub mod counters;
pub mod log;
pub mod pool;
pub mod shm;
pub mod sockaddr;
pub mod socket;
