//! The module's counters, as they lie in shared memory, and their Prometheus text
//! (version 0.0.4). No nginx here: the nginx layer puts a [`Counters`] in a shared zone and
//! calls the increments; the http `noise_status` handler calls [`render`].
//!
//! Invariants: everything is an atomic, so any process may add at any time and a reader
//! never sees a torn value; each worker adds into its own [`Slot`] (by worker index, one
//! cache line apart from the others), so the hot path costs one uncontended atomic add and
//! never a lock; a reader sums the slots. Protocol names are registered once each, under a
//! spin lock taken only for a protocol not seen before, and never change after their count
//! is published. The layout is `repr(C)` and all-zero is a valid, empty state.

#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::core::error::Error;

/// Per-worker slots (worker index modulo this; workers beyond share, still exactly).
pub const SLOTS: usize = 32;
/// Distinct protocol names counted; further ones count as "other".
pub const MAX_PROTOCOLS: usize = 64;
const NAME_LEN: usize = 64;

/// Which end of a NoiseSocket connection nginx is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `noise_listen`: nginx is the responder.
    Server = 0,
    /// `noise_upstream`: nginx is the initiator.
    Upstream = 1,
}

impl Side {
    const ALL: [Side; 2] = [Side::Server, Side::Upstream];
    fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Upstream => "upstream",
        }
    }
}

/// Where a connection is, for the `connections` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Handshake = 0,
    Established = 1,
}

/// What a `noise_auth_request` lookup came to, for `auth_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    Allow = 0,
    Deny = 1,
    /// Refused connection, bad answer, over the concurrency cap, ...
    Error = 2,
    Timeout = 3,
}

impl AuthResult {
    const ALL: [AuthResult; 4] = [
        AuthResult::Allow,
        AuthResult::Deny,
        AuthResult::Error,
        AuthResult::Timeout,
    ];
    fn label(self) -> &'static str {
        match self {
            AuthResult::Allow => "allow",
            AuthResult::Deny => "deny",
            AuthResult::Error => "error",
            AuthResult::Timeout => "timeout",
        }
    }
}

/// Plaintext direction, for `bytes_total`: `In` is what nginx read from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In = 0,
    Out = 1,
}

/// Why a handshake failed, as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The handshake timer ran out.
    Timeout,
    /// A message failed to authenticate (wrong key, tampering, garbage).
    Decrypt,
    /// The peer's key is not in the trusted keys.
    UntrustedKey,
    /// The peer's key is revoked.
    RevokedKey,
    /// The peer's key is not the one configured for it.
    WrongKey,
    /// Trusted keys are required and the pattern sent none.
    NoPeerKey,
    /// The negotiation failed (refused, rejected, unreadable, not allowed).
    Negotiation,
    /// The peer closed (or cut a message) before the end.
    Closed,
    /// The peer sent a low-order public key.
    LowOrderKey,
    /// The client never proved its keys after a replayable first message.
    Replay,
    /// A message broke the framing rules.
    Malformed,
    /// The peer refused our static key (its key-confirmation verdict, docs/protocol.md §4.8).
    Refused,
    /// A socket error during the handshake.
    Socket,
    /// The TCP connect to a back end failed.
    Connect,
    /// Our side: configuration or an internal error.
    Local,
    /// Refused after the handshake by `noise_limit_conn_per_key`.
    Limit,
    /// The key agent could not give a DH with our static key (docs/key-agent.md).
    KeyAgent,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 17] = [
        Reason::Timeout,
        Reason::Decrypt,
        Reason::UntrustedKey,
        Reason::RevokedKey,
        Reason::WrongKey,
        Reason::NoPeerKey,
        Reason::Negotiation,
        Reason::Closed,
        Reason::LowOrderKey,
        Reason::Replay,
        Reason::Malformed,
        Reason::Refused,
        Reason::Socket,
        Reason::Connect,
        Reason::Local,
        Reason::Limit,
        Reason::KeyAgent,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Decrypt => "decrypt",
            Reason::UntrustedKey => "untrusted_key",
            Reason::RevokedKey => "revoked_key",
            Reason::WrongKey => "wrong_key",
            Reason::NoPeerKey => "no_peer_key",
            Reason::Negotiation => "negotiation",
            Reason::Closed => "closed",
            Reason::LowOrderKey => "low_order_key",
            Reason::Replay => "replay",
            Reason::Malformed => "malformed",
            Reason::Refused => "refused",
            Reason::Socket => "socket",
            Reason::Connect => "connect",
            Reason::Local => "local",
            Reason::Limit => "limit",
            Reason::KeyAgent => "key_agent",
        }
    }

    /// The reason of a core error.
    pub fn of(e: &Error) -> Reason {
        match e {
            Error::Decrypt(_) => Reason::Decrypt,
            // A refused verdict is an untrusted key, decided elsewhere.
            Error::UntrustedKey { .. } | Error::Unauthorized { .. } => Reason::UntrustedKey,
            Error::RevokedKey { .. } => Reason::RevokedKey,
            Error::WrongRemoteKey { .. } => Reason::WrongKey,
            Error::NoPeerKey => Reason::NoPeerKey,
            Error::Rejected(_)
            | Error::BadNegotiation(_)
            | Error::ProtocolNotAllowed(_)
            | Error::Refused(_)
            | Error::SecondProtocolChange
            | Error::LateNegotiation(_) => Reason::Negotiation,
            Error::ClosedDuringHandshake | Error::Truncated => Reason::Closed,
            Error::WeakPeerKey => Reason::LowOrderKey,
            Error::Unconfirmed { .. } => Reason::Replay,
            Error::KeyRefused(_) => Reason::Refused,
            Error::NotConfirmed => Reason::Closed,
            Error::BadConfirmation(_) => Reason::Malformed,
            Error::FrameTooShort(_)
            | Error::BodyLength { .. }
            | Error::EmptyHandshakeMessage
            | Error::UnexpectedHandshakeMessage
            | Error::HandshakeFieldTooLong { .. } => Reason::Malformed,
            Error::Config(_)
            | Error::Missing { .. }
            | Error::PeerKeys { .. }
            | Error::Internal(_)
            | Error::NonceExhausted
            | Error::VerdictUnavailable { .. }
            | Error::KeyOpPending => Reason::Local,
            Error::KeyAgent(_) => Reason::KeyAgent,
        }
    }
}

const REASONS: usize = Reason::ALL.len();

/// One worker's counters.
#[repr(C, align(64))]
pub struct Slot {
    ok: [AtomicU64; 2],
    failed: [[AtomicU64; REASONS]; 2],
    /// Successful handshakes by protocol index; the last is "other".
    by_protocol: [[AtomicU64; MAX_PROTOCOLS + 1]; 2],
    connections: [[AtomicI64; 2]; 2],
    bytes: [[AtomicU64; 2]; 2],
    /// `noise_auth_request` lookups by [`AuthResult`].
    auth: [AtomicU64; 4],
    /// `miss=lookup` key zone hits (0) and misses (1).
    auth_cache: [AtomicU64; 2],
}

/// Everything in the shared zone.
#[repr(C)]
pub struct Counters {
    names_lock: AtomicU32,
    names_count: AtomicU32,
    names: [[AtomicU8; NAME_LEN]; MAX_PROTOCOLS],
    name_lens: [AtomicU8; MAX_PROTOCOLS],
    slots: [Slot; SLOTS],
}

impl Counters {
    fn slot(&self, worker: usize) -> &Slot {
        &self.slots[worker % SLOTS]
    }

    /// A handshake on `side` succeeded with `protocol`.
    pub fn handshake_ok(&self, worker: usize, side: Side, protocol: &str) {
        let slot = self.slot(worker);
        slot.ok[side as usize].fetch_add(1, Ordering::Relaxed);
        let index = self.protocol_index(protocol);
        slot.by_protocol[side as usize][index].fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake on `side` failed.
    pub fn handshake_failed(&self, worker: usize, side: Side, reason: Reason) {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.slot(worker).failed[side as usize][index].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection on `side` entered (`delta` 1) or left (-1) `state`.
    pub fn connection(&self, worker: usize, side: Side, state: State, delta: i64) {
        self.slot(worker).connections[side as usize][state as usize]
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// `n` plaintext bytes went `direction` on `side`.
    pub fn bytes(&self, worker: usize, side: Side, direction: Direction, n: u64) {
        self.slot(worker).bytes[side as usize][direction as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A `noise_auth_request` lookup ended so.
    pub fn auth_result(&self, worker: usize, result: AuthResult) {
        self.slot(worker).auth[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A `miss=lookup` server found the key in its zone (`hit`) or had to ask.
    pub fn auth_cache(&self, worker: usize, hit: bool) {
        self.slot(worker).auth_cache[usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    fn name(&self, i: usize) -> String {
        let len = usize::from(self.name_lens[i].load(Ordering::Relaxed)).min(NAME_LEN);
        self.names[i][..len]
            .iter()
            .map(|b| char::from(b.load(Ordering::Relaxed)))
            .collect()
    }

    fn find(&self, protocol: &str, count: usize) -> Option<usize> {
        (0..count).find(|&i| {
            let len = usize::from(self.name_lens[i].load(Ordering::Relaxed));
            len == protocol.len()
                && self.names[i][..len]
                    .iter()
                    .zip(protocol.bytes())
                    .all(|(a, b)| a.load(Ordering::Relaxed) == b)
        })
    }

    /// The index of `protocol`, registering it if new; [`MAX_PROTOCOLS`] ("other") when
    /// the table is full or the name does not fit.
    fn protocol_index(&self, protocol: &str) -> usize {
        let count = self.names_count.load(Ordering::Acquire) as usize;
        if let Some(i) = self.find(protocol, count.min(MAX_PROTOCOLS)) {
            return i;
        }
        if protocol.len() > NAME_LEN || !protocol.is_ascii() {
            return MAX_PROTOCOLS;
        }
        while self
            .names_lock
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let count = (self.names_count.load(Ordering::Acquire) as usize).min(MAX_PROTOCOLS);
        let index = match self.find(protocol, count) {
            Some(i) => i,
            None if count < MAX_PROTOCOLS => {
                for (slot, b) in self.names[count].iter().zip(protocol.bytes()) {
                    slot.store(b, Ordering::Relaxed);
                }
                self.name_lens[count].store(protocol.len() as u8, Ordering::Relaxed);
                self.names_count.store(count as u32 + 1, Ordering::Release);
                count
            }
            None => MAX_PROTOCOLS,
        };
        self.names_lock.store(0, Ordering::Release);
        index
    }
}

/// A zeroed [`Counters`] on the heap (tests; nginx zeroes its shared zone itself).
pub fn empty() -> Box<Counters> {
    // Built field by field from atomics' zero values: no unsafe needed.
    fn zeros<T, const N: usize>(f: impl Fn() -> T) -> [T; N] {
        std::array::from_fn(|_| f())
    }
    let slot = || Slot {
        ok: zeros(|| AtomicU64::new(0)),
        failed: zeros(|| zeros(|| AtomicU64::new(0))),
        by_protocol: zeros(|| zeros(|| AtomicU64::new(0))),
        connections: zeros(|| zeros(|| AtomicI64::new(0))),
        bytes: zeros(|| zeros(|| AtomicU64::new(0))),
        auth: zeros(|| AtomicU64::new(0)),
        auth_cache: zeros(|| AtomicU64::new(0)),
    };
    Box::new(Counters {
        names_lock: AtomicU32::new(0),
        names_count: AtomicU32::new(0),
        names: zeros(|| zeros(|| AtomicU8::new(0))),
        name_lens: zeros(|| AtomicU8::new(0)),
        slots: zeros(slot),
    })
}

/// The counters in the Prometheus text format, summed over the slots.
pub fn render(c: &Counters) -> String {
    let sum = |f: &dyn Fn(&Slot) -> i64| c.slots.iter().map(f).sum::<i64>();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP nginx_noise_handshakes_total NoiseSocket handshakes, by side, result and failure reason.\n# TYPE nginx_noise_handshakes_total counter"
    );
    for side in Side::ALL {
        let s = side as usize;
        let ok = sum(&|slot| load(&slot.ok[s]));
        let _ = writeln!(
            out,
            "nginx_noise_handshakes_total{{side=\"{}\",result=\"ok\"}} {ok}",
            side.label()
        );
        for (r, reason) in Reason::ALL.iter().enumerate() {
            let n = sum(&|slot| load(&slot.failed[s][r]));
            let _ = writeln!(
                out,
                "nginx_noise_handshakes_total{{side=\"{}\",result=\"failed\",reason=\"{}\"}} {n}",
                side.label(),
                reason.label()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP nginx_noise_handshakes_by_protocol_total Successful NoiseSocket handshakes, by side and protocol.\n# TYPE nginx_noise_handshakes_by_protocol_total counter"
    );
    let count = (c.names_count.load(Ordering::Acquire) as usize).min(MAX_PROTOCOLS);
    for side in Side::ALL {
        let s = side as usize;
        for i in (0..count).chain([MAX_PROTOCOLS]) {
            let n = sum(&|slot| load(&slot.by_protocol[s][i]));
            if n == 0 {
                continue;
            }
            let name = if i == MAX_PROTOCOLS {
                "other".to_string()
            } else {
                c.name(i)
            };
            let _ = writeln!(
                out,
                "nginx_noise_handshakes_by_protocol_total{{side=\"{}\",protocol=\"{name}\"}} {n}",
                side.label()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP nginx_noise_connections NoiseSocket connections now, by side and state.\n# TYPE nginx_noise_connections gauge"
    );
    for side in Side::ALL {
        for (state, label) in [
            (State::Handshake, "handshake"),
            (State::Established, "established"),
        ] {
            let n = sum(&|slot| {
                slot.connections[side as usize][state as usize].load(Ordering::Relaxed)
            });
            let _ = writeln!(
                out,
                "nginx_noise_connections{{side=\"{}\",state=\"{label}\"}} {n}",
                side.label()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP nginx_noise_bytes_total Plaintext bytes through NoiseSocket connections, by side and direction (in: read from the peer).\n# TYPE nginx_noise_bytes_total counter"
    );
    for side in Side::ALL {
        for (direction, label) in [(Direction::In, "in"), (Direction::Out, "out")] {
            let n = sum(&|slot| load(&slot.bytes[side as usize][direction as usize]));
            let _ = writeln!(
                out,
                "nginx_noise_bytes_total{{side=\"{}\",direction=\"{label}\"}} {n}",
                side.label()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP nginx_noise_auth_requests_total noise_auth_request lookups, by result.\n# TYPE nginx_noise_auth_requests_total counter"
    );
    for result in AuthResult::ALL {
        let n = sum(&|slot| load(&slot.auth[result as usize]));
        let _ = writeln!(
            out,
            "nginx_noise_auth_requests_total{{result=\"{}\"}} {n}",
            result.label()
        );
    }
    let _ = writeln!(
        out,
        "# HELP nginx_noise_auth_cache_total Client keys of miss=lookup servers found in the key zone (hit) or looked up (miss).\n# TYPE nginx_noise_auth_cache_total counter"
    );
    for (i, label) in ["hit", "miss"].iter().enumerate() {
        let n = sum(&|slot| load(&slot.auth_cache[i]));
        let _ = writeln!(
            out,
            "nginx_noise_auth_cache_total{{result=\"{label}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_workers_and_render() {
        let c = empty();
        c.handshake_ok(0, Side::Server, "Noise_XX_25519_ChaChaPoly_BLAKE2s");
        c.handshake_ok(1, Side::Server, "Noise_XX_25519_ChaChaPoly_BLAKE2s");
        c.handshake_ok(1, Side::Upstream, "Noise_IK_25519_ChaChaPoly_BLAKE2s");
        c.handshake_failed(0, Side::Server, Reason::Decrypt);
        c.handshake_failed(SLOTS + 1, Side::Server, Reason::Decrypt);
        c.connection(0, Side::Server, State::Handshake, 1);
        c.connection(1, Side::Server, State::Handshake, -1);
        c.connection(1, Side::Server, State::Established, 1);
        c.bytes(3, Side::Upstream, Direction::Out, 1000);
        c.auth_result(0, AuthResult::Deny);
        c.auth_result(1, AuthResult::Deny);
        c.auth_result(1, AuthResult::Timeout);
        c.auth_cache(0, true);
        c.auth_cache(2, false);
        c.auth_cache(3, false);
        let text = render(&c);
        assert!(text.contains("nginx_noise_auth_requests_total{result=\"deny\"} 2\n"));
        assert!(text.contains("nginx_noise_auth_requests_total{result=\"timeout\"} 1\n"));
        assert!(text.contains("nginx_noise_auth_requests_total{result=\"allow\"} 0\n"));
        assert!(text.contains("nginx_noise_auth_cache_total{result=\"hit\"} 1\n"));
        assert!(text.contains("nginx_noise_auth_cache_total{result=\"miss\"} 2\n"));
        assert!(text.contains("nginx_noise_handshakes_total{side=\"server\",result=\"ok\"} 2\n"));
        assert!(text.contains(
            "nginx_noise_handshakes_total{side=\"server\",result=\"failed\",reason=\"decrypt\"} 2\n"
        ));
        assert!(text.contains("nginx_noise_handshakes_by_protocol_total{side=\"server\",protocol=\"Noise_XX_25519_ChaChaPoly_BLAKE2s\"} 2\n"));
        assert!(text.contains("nginx_noise_handshakes_by_protocol_total{side=\"upstream\",protocol=\"Noise_IK_25519_ChaChaPoly_BLAKE2s\"} 1\n"));
        assert!(text.contains("nginx_noise_connections{side=\"server\",state=\"handshake\"} 0\n"));
        assert!(text.contains("nginx_noise_connections{side=\"server\",state=\"established\"} 1\n"));
        assert!(
            text.contains("nginx_noise_bytes_total{side=\"upstream\",direction=\"out\"} 1000\n")
        );
    }

    #[test]
    fn protocol_table_overflows_into_other() {
        let c = empty();
        for i in 0..MAX_PROTOCOLS + 3 {
            c.handshake_ok(0, Side::Server, &format!("P{i}"));
        }
        c.handshake_ok(0, Side::Server, &"X".repeat(NAME_LEN + 1));
        let text = render(&c);
        assert!(text.contains("protocol=\"P0\"} 1\n"));
        assert!(text.contains("protocol=\"other\"} 4\n"));
    }
}
