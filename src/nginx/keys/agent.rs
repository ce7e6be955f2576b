//! The worker's connections to key agents (`noise_key_agent`, `noise_upstream_key_agent`;
//! docs/key-agent.md), on nginx's event loop: a handshake whose static key is in the agent
//! asks here for each X25519 it needs and pauses; the answer resumes it.
//!
//! * One `SOCK_SEQPACKET` connection per agent socket and worker, connected lazily on the
//!   first question (a unix connect succeeds or fails at once), registered with nginx as a
//!   connection of its own (`ngx_get_connection`, its read event added as
//!   `ngx_resolver.c` does for its UDP sockets). Requests are multiplexed by id
//!   ([`Client`]); a request the socket cannot take now waits in a queue, bounded by the
//!   requests in flight, and is sent on the write event.
//! * Each request is bounded by [`ANSWER_TIMEOUT_MS`] (one cancelable timer per agent, for
//!   the earliest deadline). A connection that ends (the agent stopped or restarted) or
//!   says something that is no response fails every request in flight; the next question
//!   connects again, so a restarted agent serves without a reload.
//! * A question is owned by its [`Wait`], which the asking connection's state holds:
//!   dropping it (the connection closed, its timer fired, the session failed) cancels the
//!   request, whose late answer is then dropped. An answer goes through the [`Deliver`]
//!   the asker gave, which takes it only if that connection's state still holds that very
//!   `Wait` (a unique [`WaitId`], so a reused connection slot never gets another's
//!   answer); then its read event is posted: the handshake resumes from the posted queue.
//!   (`crate::nginx::conn` imports this module, never the other way.)
//! * Worker exit closes the connections ([`exit`]); a `Wait` dropped later finds nothing.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::path::PathBuf;

use nginx_sys::{
    ngx_add_timer, ngx_close_connection, ngx_connection_t, ngx_current_msec, ngx_cycle,
    ngx_del_timer, ngx_event_t, ngx_get_connection, ngx_handle_read_event, ngx_handle_write_event,
    ngx_post_event, ngx_posted_events, NGX_OK,
};

use crate::agent_socket::{recv_on, send_on, AgentSocket, Received};
use crate::core::key_agent::client::{Ask, Client};
use crate::core::key_agent::wire::{Response, REQUEST_LEN, RESPONSE_LEN};
use crate::core::key_agent::{AgentError, KeyOp};
use crate::nginx::conf::key_agent::ANSWER_TIMEOUT_MS;
use crate::nginx::conf::AgentConf;
use crate::noise_debug;

/// Requests in flight to one agent from one worker at most (beyond: `Busy`, the handshake
/// fails closed); a worker has at most `worker_connections` handshakes anyway.
const MAX_IN_FLIGHT: usize = 4096;

/// Who asked: a unique id, the asking connection and how its answer reaches it.
#[derive(Clone, Copy, Debug)]
struct Token {
    id: u64,
    c: usize,
    deliver: Deliver,
}

/// One question is one id: `deliver` follows from who asked.
impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.id == other.id && self.c == other.c
    }
}

/// Which question a [`Wait`] is, for a [`Deliver`] to compare with what the connection
/// holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitId(u64);

/// Gives `answer` to question `id` of connection `c`: `true` if its state still holds
/// that question's [`Wait`] (the deliverer takes it with [`Wait::answered`] and stores
/// the answer), `false` to drop the answer.
///
/// # Safety
/// Called only with a live connection `c` and no reference to the agents live.
pub type Deliver =
    unsafe fn(c: *mut ngx_connection_t, id: WaitId, answer: Result<[u8; 32], AgentError>) -> bool;

/// One agent socket, as this worker uses it.
struct Agent {
    name: String,
    path: PathBuf,
    /// The connection, or null when there is none (not yet, or it ended).
    conn: *mut ngx_connection_t,
    client: Client<Token>,
    /// Requests the socket could not take yet, oldest first.
    queued: VecDeque<[u8; REQUEST_LEN]>,
    /// Fires at the earliest deadline of the requests in flight.
    timer: ngx_event_t,
}

/// Boxed: each agent's timer event is linked into nginx's timer tree by address, so an
/// agent must not move when another is added.
#[allow(clippy::vec_box)]
struct Agents(UnsafeCell<(Vec<Box<Agent>>, u64)>);

// SAFETY: only touched from the worker's single event-loop thread.
unsafe impl Sync for Agents {}

static AGENTS: Agents = Agents(UnsafeCell::new((Vec::new(), 0)));

/// The worker's agents and the last id handed out.
///
/// # Safety
/// No other reference to them may be live: every function here takes it, uses it and lets
/// it go before calling anything that could take it again (delivering answers, dropping a
/// [`Wait`]).
#[allow(clippy::mut_from_ref, clippy::vec_box)]
unsafe fn agents() -> &'static mut (Vec<Box<Agent>>, u64) {
    // SAFETY: single-threaded, and the caller's promise.
    unsafe { &mut *AGENTS.0.get() }
}

/// A question in flight for a connection; dropping it cancels the question.
pub struct Wait {
    agent: usize,
    token: Token,
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key_agent::Wait({})", self.token.id)
    }
}

impl Wait {
    /// Which question this is.
    pub fn id(&self) -> WaitId {
        WaitId(self.token.id)
    }

    /// Ends the wait of a question that was answered: nothing is left to cancel.
    pub fn answered(self) {
        std::mem::forget(self);
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        // SAFETY: no reference to the agents is live while a Wait drops (see `agents`).
        if let Some(agent) = unsafe { agents() }.0.get_mut(self.agent) {
            agent.client.cancel(&self.token);
        }
    }
}

/// What the failure of one question says in the handshake's log line.
fn at(agent: &str, error: AgentError) -> AgentError {
    AgentError::At {
        agent: agent.to_string(),
        error: Box::new(error),
    }
}

fn now() -> u64 {
    // SAFETY: nginx's clock, read in its own thread.
    u64::try_from(unsafe { ngx_current_msec }).unwrap_or(u64::MAX)
}

/// Asks the agent of `conf` for `op` on behalf of connection `c`, whose state will hold
/// the returned [`Wait`]; the answer goes to `deliver`, then `c`'s read event is posted.
/// An error is the answer now (the agent cannot be reached, too many in flight).
///
/// # Safety
/// `c` must be a live connection whose state `deliver` knows how to find.
pub unsafe fn ask(
    c: *mut ngx_connection_t,
    conf: &AgentConf,
    op: &KeyOp,
    deliver: Deliver,
) -> Result<Wait, AgentError> {
    // SAFETY: no other reference to the agents is live (module functions do not nest).
    let (list, next_id) = unsafe { agents() };
    let index = match list.iter().position(|a| a.path == conf.path) {
        Some(i) => i,
        None => {
            list.push(Box::new(Agent {
                name: conf.name.clone(),
                path: conf.path.clone(),
                conn: std::ptr::null_mut(),
                client: Client::new(MAX_IN_FLIGHT, ANSWER_TIMEOUT_MS),
                queued: VecDeque::new(),
                // SAFETY: ngx_event_t is a plain C struct; all-zero is an idle event.
                timer: unsafe { std::mem::zeroed() },
            }));
            list.len() - 1
        }
    };
    *next_id += 1;
    let token = Token {
        id: *next_id,
        c: c as usize,
        deliver,
    };
    let agent = &mut list[index];
    if agent.conn.is_null() {
        // SAFETY: the agent is boxed (stable address) and not connected.
        unsafe { connect(agent, index) }.map_err(|e| at(&agent.name, e))?;
    }
    let request = agent
        .client
        .ask(
            token,
            Ask::Dh {
                key: op.public_key,
                point: op.point,
            },
            now(),
        )
        .map_err(|e| at(&agent.name, e))?;
    // SAFETY: connected above: conn is live until `disconnect`.
    let (fd, wev) = unsafe { ((*agent.conn).fd, (*agent.conn).write) };
    let sent = if agent.queued.is_empty() {
        // SAFETY: the connection's descriptor, open while the connection is.
        send_on(unsafe { BorrowedFd::borrow_raw(fd) }, &request)
            .map_err(|e| AgentError::Unreachable(format!("send() failed ({e})")))
    } else {
        Ok(false)
    };
    let sent = sent.and_then(|sent| {
        if !sent {
            agent.queued.push_back(request);
            // SAFETY: wev is the live connection's write event.
            if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as isize {
                return Err(AgentError::Unreachable(
                    "cannot wait for the write event".into(),
                ));
            }
        }
        Ok(())
    });
    if let Err(why) = sent {
        agent.client.cancel(&token);
        let name = agent.name.clone();
        // The connection is unusable: it ends, with every other question on it. The
        // reference to the agents is not used again.
        // SAFETY: as above.
        unsafe { disconnect(index, why.clone()) };
        return Err(at(&name, why));
    }
    if agent.timer.timer_set() == 0 {
        // SAFETY: the agent's own timer event (data, handler and log set at connect).
        unsafe { ngx_add_timer(&mut agent.timer, ANSWER_TIMEOUT_MS as _) };
    }
    // SAFETY: c is live (caller's promise).
    let log = unsafe { (*c).log };
    noise_debug!(
        log,
        "noise key agent: asked {} (request {})",
        agent.name,
        token.id
    );
    Ok(Wait {
        agent: index,
        token,
    })
}

/// Connects `agent` (number `index`) and registers the connection with nginx.
///
/// # Safety
/// `agent` must be the boxed agent number `index`, not connected.
unsafe fn connect(agent: &mut Agent, index: usize) -> Result<(), AgentError> {
    let socket = AgentSocket::connect(&agent.path)
        .map_err(|e| AgentError::Unreachable(format!("connect() failed ({e})")))?;
    let fd = socket.into_fd().into_raw_fd();
    // SAFETY: ngx_cycle is the worker's; its log lives as long as it.
    let log = unsafe { (*ngx_cycle).log };
    // SAFETY: fd is an open socket that nginx owns from now on (closed with the connection).
    let c = unsafe { ngx_get_connection(fd, log) };
    if c.is_null() {
        // SAFETY: nginx did not take fd.
        unsafe { libc::close(fd) };
        return Err(AgentError::Unreachable(
            "no free connection (worker_connections)".into(),
        ));
    }
    // SAFETY: c was just handed out with both events; nothing else knows it.
    unsafe {
        (*c).data = index as *mut _;
        let (rev, wev) = ((*c).read, (*c).write);
        (*rev).log = log;
        (*wev).log = log;
        (*rev).handler = Some(on_read);
        (*wev).handler = Some(on_write);
        // A unix socket is writable at once; a full buffer says EAGAIN.
        (*wev).set_ready(1);
        agent.timer.data = index as *mut _;
        agent.timer.log = log;
        agent.timer.handler = Some(on_timer);
        // A pending answer never keeps an exiting worker alive.
        agent.timer.set_cancelable(1);
        agent.conn = c;
        if ngx_handle_read_event(rev, 0) != NGX_OK as isize {
            agent.conn = std::ptr::null_mut();
            ngx_close_connection(c);
            return Err(AgentError::Unreachable(
                "cannot wait for the read event".into(),
            ));
        }
        noise_debug!(log, "noise key agent: connected to {}", agent.name);
    }
    Ok(())
}

/// Closes agent `index`'s connection and fails every request in flight with `why`.
///
/// # Safety
/// No reference to the agents may be live after the call begins (the caller's ends).
unsafe fn disconnect(index: usize, why: AgentError) {
    let (failed, name) = {
        // SAFETY: the caller's reference has ended.
        let Some(agent) = (unsafe { agents() }).0.get_mut(index) else {
            return;
        };
        if !agent.conn.is_null() {
            // SAFETY: the agent's live connection (its events and fd go with it).
            unsafe { ngx_close_connection(agent.conn) };
            agent.conn = std::ptr::null_mut();
        }
        if agent.timer.timer_set() != 0 {
            // SAFETY: the agent's timer is in the tree.
            unsafe { ngx_del_timer(&mut agent.timer) };
        }
        agent.queued.clear();
        (agent.client.disconnected(), agent.name.clone())
    };
    for token in failed {
        // SAFETY: no reference to the agents is live.
        unsafe { deliver(token, Err(at(&name, why.clone()))) };
    }
}

/// Gives an answer to the connection that asked, if it still waits for it.
///
/// # Safety
/// No reference to the agents may be live.
unsafe fn deliver(token: Token, answer: Result<[u8; 32], AgentError>) {
    let c = token.c as *mut ngx_connection_t;
    // SAFETY: c points into the worker's connection array (it was a live connection and
    // the array lives as long as the worker); the deliverer checks that its state holds
    // this very question (unique id) before it takes anything.
    if !unsafe { (token.deliver)(c, WaitId(token.id), answer) } {
        return;
    }
    // SAFETY: the waiting connection is live (its state is); its read event resumes the
    // handshake from the posted queue.
    unsafe { ngx_post_event((*c).read, std::ptr::addr_of_mut!(ngx_posted_events)) };
}

/// The agent number of an event of its connection.
///
/// # Safety
/// `ev` must be an event of an agent connection.
unsafe fn index_of(ev: *mut ngx_event_t) -> usize {
    // SAFETY: the caller's promise: its data is the connection, whose data is the index.
    unsafe { (*(*ev).data.cast::<ngx_connection_t>()).data as usize }
}

/// The agent connection's read event: answers, the end, or garbage.
unsafe extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls with the agent connection's read event.
    let index = unsafe { index_of(ev) };
    let mut answers = Vec::new();
    let mut ended = None;
    {
        // SAFETY: no other reference is live; it ends with this block.
        let Some(agent) = (unsafe { agents() }).0.get_mut(index) else {
            return;
        };
        if agent.conn.is_null() {
            return;
        }
        // SAFETY: the agent's live connection.
        let (fd, rev) = unsafe { ((*agent.conn).fd, (*agent.conn).read) };
        let mut buf = [0u8; RESPONSE_LEN];
        loop {
            // SAFETY: the connection's open descriptor.
            match recv_on(unsafe { BorrowedFd::borrow_raw(fd) }, &mut buf) {
                Ok(Received::Message(n)) => {
                    if let Err(why) = Response::decode(&buf[..n]) {
                        ended = Some(AgentError::Malformed(why));
                        break;
                    }
                    // None: an answer after its timeout or cancel, dropped.
                    if let Some((token, outcome)) = agent.client.receive(&buf[..n]) {
                        answers.push((token, outcome.map(|r| r.value)));
                    }
                }
                Ok(Received::Oversize(_)) => {
                    ended = Some(AgentError::Malformed("a message longer than a response"));
                    break;
                }
                Ok(Received::WouldBlock) => {
                    // SAFETY: rev is the live connection's read event.
                    if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as isize {
                        ended = Some(AgentError::Unreachable(
                            "cannot wait for the read event".into(),
                        ));
                    }
                    break;
                }
                Ok(Received::Closed) => {
                    ended = Some(AgentError::Disconnected);
                    break;
                }
                Err(e) => {
                    ended = Some(AgentError::Unreachable(format!("recv() failed ({e})")));
                    break;
                }
            }
        }
        let name = agent.name.clone();
        answers = answers
            .into_iter()
            .map(|(t, a)| (t, a.map_err(|e| at(&name, e))))
            .collect();
        if agent.client.in_flight() == 0 && agent.timer.timer_set() != 0 {
            // SAFETY: the agent's timer is in the tree.
            unsafe { ngx_del_timer(&mut agent.timer) };
        }
    }
    for (token, answer) in answers {
        // SAFETY: the reference to the agents has ended.
        unsafe { deliver(token, answer) };
    }
    if let Some(why) = ended {
        // SAFETY: as above.
        unsafe { disconnect(index, why) };
    }
}

/// The agent connection's write event: sends the queued requests.
unsafe extern "C" fn on_write(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls with the agent connection's write event.
    let index = unsafe { index_of(ev) };
    let failed = {
        // SAFETY: no other reference is live; it ends with this block.
        let Some(agent) = (unsafe { agents() }).0.get_mut(index) else {
            return;
        };
        if agent.conn.is_null() {
            return;
        }
        // SAFETY: the agent's live connection.
        let (fd, wev) = unsafe { ((*agent.conn).fd, (*agent.conn).write) };
        let mut failed = None;
        while let Some(request) = agent.queued.front() {
            // SAFETY: the connection's open descriptor.
            match send_on(unsafe { BorrowedFd::borrow_raw(fd) }, request) {
                Ok(true) => {
                    agent.queued.pop_front();
                }
                Ok(false) => break,
                Err(e) => {
                    failed = Some(AgentError::Unreachable(format!("send() failed ({e})")));
                    break;
                }
            }
        }
        // SAFETY: wev is the live connection's write event (taken out when nothing waits,
        // for level-triggered methods).
        if failed.is_none() && unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as isize {
            failed = Some(AgentError::Unreachable(
                "cannot wait for the write event".into(),
            ));
        }
        failed
    };
    if let Some(why) = failed {
        // SAFETY: the reference to the agents has ended.
        unsafe { disconnect(index, why) };
    }
}

/// The agent's timer: the requests past their deadline fail.
unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its agent's number (set at connect).
    let index = unsafe { (*ev).data as usize };
    let (expired, name) = {
        // SAFETY: no other reference is live; it ends with this block.
        let Some(agent) = (unsafe { agents() }).0.get_mut(index) else {
            return;
        };
        let now = now();
        let expired = agent.client.expire(now);
        if let Some(next) = agent.client.next_deadline() {
            // SAFETY: the agent's own timer, just fired (not in the tree).
            unsafe { ngx_add_timer(&mut agent.timer, next.saturating_sub(now).max(1) as _) };
        }
        (expired, agent.name.clone())
    };
    for token in expired {
        // SAFETY: the reference to the agents has ended.
        unsafe {
            deliver(
                token,
                Err(at(&name, AgentError::Timeout(ANSWER_TIMEOUT_MS))),
            )
        };
    }
}

/// Worker exit: closes every agent connection; questions still waiting are dropped with
/// their connections (their [`Wait`] then finds nothing).
pub fn exit() {
    // SAFETY: no other reference is live at exit.
    let (list, _) = unsafe { agents() };
    for agent in list.iter_mut() {
        if agent.timer.timer_set() != 0 {
            // SAFETY: the agent's timer is in the tree.
            unsafe { ngx_del_timer(&mut agent.timer) };
        }
        if !agent.conn.is_null() {
            // SAFETY: the agent's live connection.
            unsafe { ngx_close_connection(agent.conn) };
            agent.conn = std::ptr::null_mut();
        }
    }
    list.clear();
}
