//! Per-connection NoiseSocket state and where nginx code finds it.
//!
//! State is not reachable through `c->data`: the stream proxy sets it to the session and
//! `pass` clears it before handing the connection to `http`. Instead a per-worker side table
//! is indexed by the connection's slot in `ngx_cycle->connections` and validated with
//! `c->number`, which changes whenever nginx reuses the slot.
//!
//! Ownership: a [`NoiseConn`] lives in the pool it was attached with ([`crate::nginx::util::pool`]: the
//! connection's pool on the server side, the session pool for upstream connections, which
//! may be replaced during retries) and is dropped with it. Dropping zeroizes keys and
//! clears the slot if it still points at this state. nginx workers are
//! single-threaded and none of our functions re-enters another, so at most one `&mut` to a
//! state is live at a time.

pub mod gate;
pub mod handshake;
pub mod io;

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::Arc;

use nginx_sys::{ngx_atomic_uint_t, ngx_connection_t, ngx_cycle, ngx_pool_t};

use crate::metrics::{Side, State};
use crate::nginx::conf::AgentConf;
use crate::nginx::{keys::agent, keys::auth_request, keys::limit, util::counters, util::pool};

use crate::core::deframer::Deframer;
use crate::core::handshake::HandshakeInfo;
use crate::core::key_agent::{AgentError, AnyHandshake};
use crate::core::send_buffer::SendBuffer;
use crate::core::transport::Transport;

/// Plaintext a connection seals ahead of the socket: one 16 KiB body, as TLS holds one
/// 16 KiB record. Plaintext counts as sent once sealed, so this bounds what a peer that
/// stops reading costs (nginx stops feeding a connection whose send says NGX_AGAIN); the
/// stream proxy hands over at most `proxy_buffer_size` (16k) per call anyway, so bulk
/// transfers lose nothing (docs/nginx-integration.md §3.6).
pub const SEND_AHEAD: usize = 32 * 1024;

/// Send-buffer capacity for bodies padded to a multiple of `padding`: one [`SEND_AHEAD`]
/// frame, or one padded frame of a single byte if that is larger.
pub fn send_capacity(padding: usize) -> usize {
    use crate::core::payload::FRAME_OVERHEAD;
    (SEND_AHEAD + FRAME_OVERHEAD).max(FRAME_OVERHEAD + padding)
}

/// Why a client whose handshake waits for its key's verdict can never finish, if it cannot:
/// its connection failed (a reset), or it closed while the handshake still owes it a
/// message (IK/KK paused after message 1: it waits for message 2 and has nothing more to
/// send before). An end of file anywhere else may be a half-close after the client's last
/// message. Looks at the socket without reading it (`MSG_PEEK`).
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn gone_while_waiting(c: *mut ngx_connection_t) -> Option<String> {
    use crate::nginx::util::socket::{peek, Io};
    let mut byte = [0u8; 1];
    // SAFETY: the caller's promise.
    match peek(unsafe { (*c).fd }, &mut byte) {
        Io::Failed(errno) => Some(format!(
            "the client's connection failed: {}",
            crate::nginx::util::log::errno_text(errno)
        )),
        Io::Eof => {
            // SAFETY: the caller's promise; the reference ends in this statement.
            let owes = unsafe { get(c) }.is_some_and(|st| owes_message(st));
            owes.then(|| "the client closed the connection".to_string())
        }
        _ => None,
    }
}

/// How a `noise_auth_request` lookup reaches the connection that waits for it.
pub const LOOKUP_WAITER: auth_request::Waiter = auth_request::Waiter {
    deliver: deliver_lookup,
    gone: left_while_waiting,
};

/// [`auth_request::Waiter::deliver`]: the answer goes into the state of `c` if it still
/// waits on the lookup `id`.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn deliver_lookup(
    c: *mut ngx_connection_t,
    id: auth_request::LookupId,
    answer: auth_request::Answer,
) -> Result<(), auth_request::Answer> {
    // SAFETY: the caller's promise; the reference ends in this function.
    match unsafe { get(c) } {
        Some(st) if st.lookup.as_ref().is_some_and(|h| h.id() == id) => {
            if let Some(handle) = st.lookup.take() {
                handle.disarm();
            }
            st.answer = Some(answer);
            Ok(())
        }
        _ => Err(answer),
    }
}

/// [`auth_request::Waiter::gone`].
///
/// # Safety
/// `c` must be a live connection.
unsafe fn left_while_waiting(c: *mut ngx_connection_t) -> bool {
    // SAFETY: the caller's promise.
    unsafe { gone_while_waiting(c) }.is_some()
}

/// [`agent::Deliver`]: the key agent's answer goes into the state of `c` if it still waits
/// on the question `id`.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn deliver_agent_answer(
    c: *mut ngx_connection_t,
    id: agent::WaitId,
    answer: Result<[u8; 32], AgentError>,
) -> bool {
    // SAFETY: the caller's promise; the reference ends in this function.
    let Some(st) = (unsafe { get(c) }) else {
        return false;
    };
    if !st.agent_wait.as_ref().is_some_and(|w| w.id() == id) {
        return false;
    }
    if let Some(wait) = st.agent_wait.take() {
        wait.answered();
    }
    st.agent_answer = Some(answer);
    true
}

/// Whether the handshake, paused, still owes the client a message after the one that
/// proved its key.
fn owes_message(st: &NoiseConn) -> bool {
    let Phase::Handshake(hs) = &st.phase else {
        return false;
    };
    hs.protocol()
        .and_then(|p| Some(p.initiator_key_proven_in()? + 1 < p.message_count()))
        .unwrap_or(false)
}

/// Where a connection is in its NoiseSocket life.
pub enum Phase {
    Handshake(Box<AnyHandshake>),
    Transport(Box<Transport>),
    /// Failed or being moved between the two; every I/O call fails.
    Closed,
}

/// The NoiseSocket state of one connection.
pub struct NoiseConn {
    number: ngx_atomic_uint_t,
    slot: usize,
    pub phase: Phase,
    /// What the handshake established (for variables and logs), once it is done.
    pub info: Option<Box<HandshakeInfo>>,
    pub input: Deframer,
    pub output: SendBuffer,
    /// The peer closed its side (sticky; reported after buffered plaintext).
    pub read_eof: bool,
    /// A read-side failure (sticky; reported after buffered plaintext).
    pub read_error: bool,
    /// A write-side failure (sticky).
    pub write_error: bool,
    /// Server side: the handshake is done but the client is not authenticated until its
    /// first transport frame opens (its first message could be a replay, see
    /// `Protocol::initiator_auth_replayable`). Variables show nothing meanwhile.
    pub awaiting_first_frame: bool,
    /// Attributes of the client's key from the key zone (`$noise_key_attr_NAME`).
    pub key_attrs: Option<Box<Vec<(String, String)>>>,
    /// `noise_auth_request`: the lookup the handshake waits for (dropping it, with this
    /// state, cancels it).
    pub lookup: Option<auth_request::Handle>,
    /// The answer of a lookup that ended, for the handshake to take when it resumes.
    pub answer: Option<auth_request::Answer>,
    /// Bytes read behind the message that paused the handshake, fed to it on resume (at
    /// most one read, 4 KiB).
    pub held: Vec<u8>,
    /// `noise_key_agent`: the agent that holds this side's static key.
    pub agent: Option<Arc<AgentConf>>,
    /// The question to the agent the handshake waits for (dropping it cancels it).
    pub agent_wait: Option<agent::Wait>,
    /// The agent's answer, for the handshake to take when it resumes.
    pub agent_answer: Option<Result<[u8; 32], AgentError>>,
    /// Which end nginx is, for the counters.
    pub side: Side,
    /// The state this connection is counted in (`nginx_noise_connections`), if any.
    gauge: Option<State>,
    /// Its count under `noise_limit_conn_per_key`, released when the state is dropped.
    pub key_hold: Option<limit::Hold>,
}

impl NoiseConn {
    pub fn new(handshake: impl Into<AnyHandshake>, side: Side) -> Self {
        let handshake = handshake.into();
        let capacity = send_capacity(handshake.padding());
        NoiseConn {
            number: 0,
            slot: usize::MAX,
            phase: Phase::Handshake(Box::new(handshake)),
            info: None,
            input: Deframer::new(),
            output: SendBuffer::new(capacity),
            read_eof: false,
            read_error: false,
            write_error: false,
            awaiting_first_frame: false,
            key_attrs: None,
            lookup: None,
            answer: None,
            held: Vec::new(),
            agent: None,
            agent_wait: None,
            agent_answer: None,
            side,
            gauge: None,
            key_hold: None,
        }
    }

    /// Counts this connection in `state` from now on (and no longer in the previous one).
    pub fn count_as(&mut self, state: State) {
        if let Some(old) = self.gauge.replace(state) {
            counters::connection(self.side, old, -1);
        }
        counters::connection(self.side, state, 1);
    }

    /// Stops counting this connection (it failed; its state may linger in a pool).
    pub fn uncount(&mut self) {
        if let Some(old) = self.gauge.take() {
            counters::connection(self.side, old, -1);
        }
    }

    /// What the handshake established, once the peer is authenticated.
    pub fn established(&self) -> Option<&HandshakeInfo> {
        if self.awaiting_first_frame {
            return None;
        }
        self.info.as_deref()
    }

    pub fn transport(&mut self) -> Option<&mut Transport> {
        match &mut self.phase {
            Phase::Transport(t) => Some(t),
            Phase::Handshake(_) | Phase::Closed => None,
        }
    }
}

struct Table(UnsafeCell<Vec<*mut NoiseConn>>);

// SAFETY: the table is only touched from the worker's single event-loop thread.
unsafe impl Sync for Table {}

static TABLE: Table = Table(UnsafeCell::new(Vec::new()));

/// The slot of `c` in the worker's connection array.
///
/// # Safety
/// `c` must be a live connection of the current cycle.
unsafe fn slot_of(c: *const ngx_connection_t) -> Option<usize> {
    // SAFETY: ngx_cycle is set for the whole life of a worker; connections/connection_n
    // describe the array every ngx_connection_t comes from.
    let (base, n) = unsafe { ((*ngx_cycle).connections, (*ngx_cycle).connection_n) };
    let offset = (c as usize).checked_sub(base as usize)?;
    let slot = offset / std::mem::size_of::<ngx_connection_t>();
    (slot < n).then_some(slot)
}

/// The state of `c`, if it has one.
///
/// # Safety
/// `c` must be a live connection; the returned reference must not outlive the current
/// event handler and no other reference to the same state may be live.
pub unsafe fn get<'a>(c: *mut ngx_connection_t) -> Option<&'a mut NoiseConn> {
    // SAFETY: caller guarantees c is live.
    let slot = unsafe { slot_of(c)? };
    // SAFETY: single-threaded access, see the module doc.
    let table = unsafe { &*TABLE.0.get() };
    let p = *table.get(slot)?;
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null slots point at boxes owned by a live pool cleanup; the number check
    // rejects state left by an earlier user of the slot.
    let state = unsafe { &mut *p };
    // SAFETY: the caller's promise (c is live); number is a plain field.
    (state.number == unsafe { (*c).number }).then_some(state)
}

/// Gives `c` its state, owned by `pool`. Returns it, or `None` when the pool is out of
/// memory (the state is then dropped).
///
/// # Safety
/// `c` must be a live connection and `pool` must outlive every use of `c` with this state.
pub unsafe fn attach<'a>(
    c: *mut ngx_connection_t,
    pool: *mut ngx_pool_t,
    mut state: NoiseConn,
) -> Option<&'a mut NoiseConn> {
    // SAFETY: caller guarantees c is live.
    let slot = unsafe { slot_of(c)? };
    // SAFETY: the caller's promise (c is live); number is a plain field.
    state.number = unsafe { (*c).number };
    // SAFETY: pool is live and outlives the state's users (caller's promise).
    let raw = unsafe { pool::allocate(pool, state)? }.as_ptr();
    // SAFETY: raw was just written; only the table and the pool's cleanup know it.
    unsafe {
        (*raw).slot = slot;
        (*raw).count_as(State::Handshake);
    }
    // SAFETY: single-threaded access, see the module doc.
    let table = unsafe { &mut *TABLE.0.get() };
    if table.len() <= slot {
        // SAFETY: ngx_cycle is valid in a worker.
        let n = unsafe { (*ngx_cycle).connection_n };
        table.resize(n.max(slot + 1), ptr::null_mut());
    }
    // An older state in this slot belongs to another pool, which drops it.
    table[slot] = raw;
    // SAFETY: raw points at the state the pool owns until it is destroyed.
    Some(unsafe { &mut *raw })
}

/// Frees the worker's side table (worker exit: every connection, and so every state, is
/// gone by then; the table must not outlive the module's code, which nginx may unload).
pub fn free_table() {
    // SAFETY: single-threaded access, see the module doc; no state is live at exit.
    let table = unsafe { &mut *TABLE.0.get() };
    *table = Vec::new();
}

impl Drop for NoiseConn {
    /// Clears the slot if it still points at this state (keys wipe themselves), and stops
    /// counting the connection.
    fn drop(&mut self) {
        self.uncount();
        let me: *mut NoiseConn = self;
        // SAFETY: single-threaded access, see the module doc.
        let table = unsafe { &mut *TABLE.0.get() };
        if let Some(p) = table.get_mut(self.slot) {
            if *p == me {
                *p = ptr::null_mut();
            }
        }
    }
}
