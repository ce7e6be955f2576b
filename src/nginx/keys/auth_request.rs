//! `noise_auth_request`: one lookup at an HTTP authority for a proven client key that the
//! key zone does not have (`noise_keys ... miss=lookup`), on nginx's own event loop
//! (docs/nginx-integration.md §6).
//!
//! * A lookup is a heap value owned by its [`Handle`], which the client connection's state
//!   holds while the handshake waits. The lookup knows that state only through the
//!   [`Waiter`] the caller gives (`crate::nginx::conn` imports this module, never the
//!   reverse). Dropping the handle
//!   (the client's pool is destroyed: it disconnected, its handshake timer ran out, the
//!   session failed) cancels the lookup: its connection is closed, its timer goes with it,
//!   and it never touches the client again. So a lookup never outlives its client, and
//!   never reads a freed connection.
//! * A lookup that ends on its own (answer, error, its timer) keeps an answer in the zone
//!   (`noise_auth_cache_valid`), gives the verdict to the client's state, disarms the handle
//!   and posts the client's read event: the handshake resumes from the posted queue, never
//!   from inside this module's handlers.
//! * An authority named by a host name in a server with a `resolver` is resolved first, by
//!   nginx's resolver (`ngx_resolve_name`: its cache, its `valid=`), one address of the
//!   answer in turn per lookup. The resolver may answer from its cache inside
//!   `ngx_resolve_name`; that answer is only recorded there and acted on by the caller
//!   ([`begin`]), so a lookup never ends inside a call that still uses it.
//! * It connects with `ngx_event_connect_peer`, is bounded by `noise_auth_request_timeout`
//!   from its start (the resolution's timeout is the smaller of that and `resolver_timeout`,
//!   the connection's timer on its read event what is left), reads at most 8 KiB of response
//!   headers and no body (`crate::core::auth_reply`). No call blocks.
//! * At most `noise_auth_request_concurrency` lookups are in flight (resolving, connecting
//!   or waiting for the answer) per worker; beyond that
//!   a key is refused at once (fail closed, whatever `noise_auth_request_fail` says: the cap
//!   is a brake against floods of fresh keys), or with `wait` queued in the worker's FIFO
//!   (unconnected, bounded by the clients' handshake timers) until a slot frees.
//! * nginx's own lines about the authority's connection (`connect() failed`, ...) are kept
//!   out by the lookup's own log (only `alert` and above pass): each failure is told once, by us, with the
//!   client's context ([`conclude`] or the handshake's failure line).

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nginx_sys::{
    ngx_add_timer, ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_ERR as NGX_ERROR_ERR,
    ngx_connection_t, ngx_current_msec, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_handle_read_event, ngx_handle_write_event, ngx_inet_set_port, ngx_log_t, ngx_msec_t,
    ngx_peer_connection_t, ngx_post_event, ngx_posted_events, ngx_resolve_name,
    ngx_resolve_name_done, ngx_resolve_start, ngx_resolver_ctx_t, ngx_resolver_strerror, ngx_str_t,
    NGX_AGAIN, NGX_LOG_ALERT, NGX_OK, NGX_RESOLVE_TIMEDOUT,
};

use crate::core::auth_reply::{self, Answer as Reply, Query, ReplyError, MAX_HEADER_BYTES};
use crate::core::handshake::Verdict;
use crate::core::keys;
use crate::nginx::conf::{AuthSide, Target};
use crate::nginx::util::socket::{self, Io};
use crate::nginx::{keys::zone, util::counters, util::log, util::sockaddr};
use crate::noise_debug;

/// What a lookup decided, as the handshake takes it.
#[derive(Debug)]
pub struct Answer {
    pub verdict: Verdict,
    /// The attributes the authority gave (allowing answers only).
    pub attrs: Option<Vec<(String, String)>>,
}

/// Why a lookup had no answer (our error: logged at `error`, fail closed unless
/// `noise_auth_request_fail open`).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the authority {url} did not answer within {ms}ms (noise_auth_request_timeout)")]
    Timeout { url: String, ms: ngx_msec_t },
    #[error("cannot connect to the authority {url} at {to}: {why}")]
    Connect {
        url: String,
        to: String,
        why: String,
    },
    #[error("{doing} the authority {url} failed: {why}")]
    Socket {
        doing: &'static str,
        url: String,
        why: String,
    },
    #[error("{error} ({url})")]
    Reply { error: ReplyError, url: String },
    #[error("cannot wait for the events of the authority connection ({url})")]
    Events { url: String },
    #[error("cannot resolve the authority's name {host} ({url}): {why}")]
    Resolve {
        host: String,
        url: String,
        why: String,
        timed_out: bool,
    },
    #[error("{0} lookups of this server are already in flight on this worker, the noise_auth_request_concurrency limit")]
    Busy(usize),
}

impl LookupError {
    /// The `result` label of `nginx_noise_auth_requests_total`.
    fn result(&self) -> counters::AuthResult {
        match self {
            LookupError::Timeout { .. } => counters::AuthResult::Timeout,
            LookupError::Resolve {
                timed_out: true, ..
            } => counters::AuthResult::Timeout,
            _ => counters::AuthResult::Error,
        }
    }
}

/// The server's lookups in flight in this worker (each worker is its own process).
fn in_flight(side: &AuthSide) -> usize {
    side.in_flight.load(Ordering::Relaxed)
}

/// Whether the server may start one more lookup.
fn has_room(side: &AuthSide) -> bool {
    in_flight(side) < side.concurrency
}

/// One lookup. Lives in a `Box` whose address the authority connection's `data` holds.
struct Lookup {
    /// The client connection waiting (live while the handle is: see the module doc).
    client: *mut ngx_connection_t,
    waiter: Waiter,
    side: Arc<AuthSide>,
    zone: usize,
    key: [u8; 32],
    pc: ngx_peer_connection_t,
    /// `pc.sockaddr`: the authority's address (fixed, or the resolver's answer with the
    /// port set).
    sockaddr: libc::sockaddr_storage,
    /// `pc.name`: the authority's address text, in `side`.
    name: ngx_str_t,
    /// The address connected to, as text (for messages).
    to: String,
    /// The resolution in progress, if any (ours to end with `ngx_resolve_name_done`).
    resolving: *mut ngx_resolver_ctx_t,
    /// Inside our own `ngx_resolve_name` call: an answer from the cache is kept here.
    in_resolve: bool,
    resolved: Option<Result<(), LookupError>>,
    /// Counted in its server's `in_flight` (from [`begin`] to [`free`]).
    counted: bool,
    /// When it began (`ngx_current_msec`), for what is left of its timeout.
    began: ngx_msec_t,
    /// The authority connection's log: the client's at `alert` only (nginx's own `error`
    /// and `crit` lines about the connect are ours to tell, once), without its context
    /// handler (which would read the client's session).
    log: ngx_log_t,
    /// Waiting in the worker's queue for a slot.
    queued: bool,
    connected: bool,
    request: Vec<u8>,
    sent: usize,
    response: Vec<u8>,
}

/// The client's hold on a lookup in flight; dropping it cancels the lookup.
pub struct Handle(NonNull<Lookup>);

/// Which lookup an answer comes from, to match it against the handle a client holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LookupId(*const Lookup);

/// How a lookup reaches the client that waits for it, given by the caller.
#[derive(Clone, Copy)]
pub struct Waiter {
    /// Gives `answer` to `client` if its state still holds the handle of the lookup `id`
    /// (taking the handle from it and disarming it: the lookup frees itself); gives the
    /// answer back if not.
    pub deliver: unsafe fn(
        client: *mut ngx_connection_t,
        id: LookupId,
        answer: Answer,
    ) -> Result<(), Answer>,
    /// Whether the client left while waiting (then a queued lookup is not dialled for).
    pub gone: unsafe fn(client: *mut ngx_connection_t) -> bool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("auth_request::Handle")
    }
}

impl Handle {
    /// The lookup this handle holds.
    pub fn id(&self) -> LookupId {
        LookupId(self.0.as_ptr())
    }

    /// Gives up the hold without cancelling (the lookup has ended and frees itself); only
    /// a [`Waiter::deliver`] given the answer may do this.
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: an armed handle owns a live lookup (a lookup that ends disarms its handle
        // first); nothing else frees it.
        unsafe { free(self.0.as_ptr()) };
    }
}

/// Starts a lookup of `key` for the client `c`, or queues it when the worker is at its
/// concurrency cap and the server says `wait`. `Err` carries an answer decided at once:
/// over the cap (`refuse`), or a connect that failed straight away.
///
/// # Safety
/// `c` must be the live client connection, with a state that will hold the handle.
pub unsafe fn start(
    c: *mut ngx_connection_t,
    waiter: Waiter,
    side: &Arc<AuthSide>,
    zone: usize,
    key: &[u8; 32],
    protocol: &str,
) -> Result<Handle, Answer> {
    let full = in_flight(side) >= side.concurrency;
    // A waiting lookup queues behind its server's lookups already waiting, so that none
    // overtakes them.
    let wait = side.wait_when_full && (full || side.queued.load(Ordering::Relaxed) > 0);
    if full && !wait {
        let e = LookupError::Busy(side.concurrency);
        counters::auth_result(e.result());
        return Err(Answer {
            verdict: Verdict::Unavailable(e.to_string()),
            attrs: None,
        });
    }
    // SAFETY: the caller's promise.
    let raw = unsafe { new_lookup(c, waiter, side, zone, key, protocol) };
    if wait {
        // SAFETY: raw is live; the queue holds it until it starts or its handle drops.
        unsafe {
            (*raw).queued = true;
            side.queued.fetch_add(1, Ordering::Relaxed);
            queue().push_back(raw);
            noise_debug!(
                (*c).log,
                "noise auth request: {} lookups in flight, waiting for a slot",
                in_flight(side)
            );
        }
    // SAFETY: raw is live and its client too.
    } else if let Err(e) = unsafe { begin(raw) } {
        // SAFETY: raw is live; nothing else knows it.
        let answer = unsafe { conclude(raw, Err(e)) };
        // SAFETY: as above.
        unsafe { free(raw) };
        return Err(answer);
    }
    // SAFETY: raw is a live box owned from now on by the handle alone.
    Ok(Handle(unsafe { NonNull::new_unchecked(raw) }))
}

/// A new lookup, not connected.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn new_lookup(
    c: *mut ngx_connection_t,
    waiter: Waiter,
    side: &Arc<AuthSide>,
    zone: usize,
    key: &[u8; 32],
    protocol: &str,
) -> *mut Lookup {
    let authority = &side.authority;
    // SAFETY: the caller's promise (c is live); addr_text is nginx's text of the address.
    let client_addr = String::from_utf8_lossy(unsafe { (*c).addr_text.as_bytes() }).into_owned();
    let request = auth_reply::request(&Query {
        host: &authority.host,
        uri: &authority.uri,
        key,
        protocol,
        client_addr: &client_addr,
    });
    // SAFETY: a peer connection is a plain C struct for which all-zero is nginx's own
    // initial state; the log is the client's, copied.
    let (pc, mut quiet): (ngx_peer_connection_t, ngx_log_t) =
        unsafe { (std::mem::zeroed(), *(*c).log) };
    quiet.log_level = quiet.log_level.min(NGX_LOG_ALERT as usize);
    quiet.handler = None;
    quiet.data = std::ptr::null_mut();
    quiet.action = std::ptr::null_mut();
    let name = match &side.target {
        Target::Fixed(fixed) => &fixed.name,
        Target::Resolve { name, .. } => name,
    };
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut sockaddr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut socklen = 0;
    if let Target::Fixed(fixed) = &side.target {
        sockaddr = fixed.sockaddr;
        socklen = fixed.socklen;
    }
    let raw = Box::into_raw(Box::new(Lookup {
        client: c,
        waiter,
        side: side.clone(),
        zone,
        key: *key,
        pc,
        sockaddr,
        name: ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        },
        to: String::from_utf8_lossy(name).into_owned(),
        resolving: std::ptr::null_mut(),
        in_resolve: false,
        resolved: None,
        counted: false,
        began: 0,
        log: quiet,
        queued: false,
        connected: false,
        request,
        sent: 0,
        response: Vec::with_capacity(1024),
    }));
    // SAFETY: raw is the box just leaked; its fields have stable addresses until `free`,
    // and the name lives in `side`, which the lookup holds.
    unsafe {
        let l = &mut *raw;
        l.pc.sockaddr = std::ptr::addr_of_mut!(l.sockaddr).cast();
        l.pc.socklen = socklen;
        l.pc.name = &mut l.name;
        l.pc.get = Some(ngx_event_get_peer);
        l.pc.log = &mut l.log;
        l.pc.set_log_error(NGX_ERROR_ERR);
    }
    raw
}

/// Starts a lookup: counts it in flight, then resolves the authority's name or connects.
/// `Err` when it ended at once (the caller concludes it).
///
/// # Safety
/// `raw` must be a live lookup that has not begun, whose client is live.
unsafe fn begin(raw: *mut Lookup) -> Result<(), LookupError> {
    // SAFETY: the caller's promise; the reference ends before anything that may free raw.
    let l = unsafe { &mut *raw };
    l.side.in_flight.fetch_add(1, Ordering::Relaxed);
    l.counted = true;
    // SAFETY: nginx's clock, read on its one thread.
    l.began = unsafe { ngx_current_msec };
    let side = Arc::clone(&l.side);
    let Target::Resolve {
        resolver,
        timeout,
        host,
        ..
    } = &side.target
    else {
        // SAFETY: the caller's promise.
        return unsafe { connect(raw) };
    };
    let failed = |why: &str| LookupError::Resolve {
        host: host.clone(),
        url: side.authority.url.clone(),
        why: why.to_string(),
        timed_out: false,
    };
    // SAFETY: the server's resolver, live for its configuration (which the client's
    // session holds).
    let ctx = unsafe { ngx_resolve_start(resolver.0.as_ptr(), std::ptr::null_mut()) };
    // NGX_NO_RESOLVER is (void *) -1; merge only targets resolvers with name servers.
    if ctx.is_null() || ctx as isize == -1 {
        return Err(failed("no resolver context"));
    }
    // SAFETY: ctx is the context just started, ours until `ngx_resolve_name_done`; the
    // name lives in `side`, held by the lookup.
    unsafe {
        (*ctx).name = ngx_str_t {
            len: host.len(),
            data: host.as_ptr().cast_mut(),
        };
        (*ctx).handler = Some(on_resolved);
        (*ctx).data = raw.cast();
        (*ctx).timeout = (*timeout).min(side.timeout);
        noise_debug!((*l.client).log, "noise auth request: resolving {host}");
    }
    l.resolving = ctx;
    l.in_resolve = true;
    // SAFETY: ctx is set up as nginx's own callers do.
    let rc = unsafe { ngx_resolve_name(ctx) };
    // SAFETY: raw is live: an answer inside the call was only recorded (on_resolved).
    let l = unsafe { &mut *raw };
    l.in_resolve = false;
    if rc != NGX_OK as isize {
        // nginx freed the context.
        l.resolving = std::ptr::null_mut();
        return Err(failed("cannot start the resolution"));
    }
    match l.resolved.take() {
        None => Ok(()),
        // SAFETY: raw is live with its address; its client too (caller's promise).
        Some(Ok(())) => unsafe { connect(raw) },
        Some(Err(e)) => Err(e),
    }
}

/// Which answer address the next lookup of this worker takes (spreads lookups over them).
static NEXT_ADDRESS: AtomicUsize = AtomicUsize::new(0);

/// The resolver's answer for a lookup: nginx calls it from `ngx_resolve_name` (an answer
/// in its cache) or from its event handlers.
unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: nginx calls with the context we started, whose data is our live lookup (a
    // lookup that goes ends its resolution first, so no answer comes after).
    let raw = unsafe { (*ctx).data.cast::<Lookup>() };
    // SAFETY: as above; the reference ends before anything that may free raw.
    let l = unsafe { &mut *raw };
    // SAFETY: ctx is live until ngx_resolve_name_done, which take_address calls.
    let result = unsafe { take_address(l, ctx) };
    if l.in_resolve {
        l.resolved = Some(result);
        return;
    }
    // SAFETY: raw is live, armed (it began from a client's handle or the queue), its client
    // live; finish ends it.
    if let Err(e) = result.and_then(|()| unsafe { connect(raw) }) {
        // SAFETY: as above.
        unsafe { finish(raw, Err(e)) };
    }
}

/// Copies one address of the answer (with the authority's port) into the lookup, and ends
/// the resolution.
///
/// # Safety
/// `ctx` must be the lookup's live resolution, with its answer.
unsafe fn take_address(l: &mut Lookup, ctx: *mut ngx_resolver_ctx_t) -> Result<(), LookupError> {
    let side = Arc::clone(&l.side);
    let url = &side.authority.url;
    let Target::Resolve { host, port, .. } = &side.target else {
        return Err(LookupError::Events { url: url.clone() });
    };
    // SAFETY: the caller's promise: state, naddrs and addrs are the answer's.
    let (state, naddrs, addrs) = unsafe { ((*ctx).state, (*ctx).naddrs, (*ctx).addrs) };
    let mut result = Ok(());
    if state != 0 || naddrs == 0 || addrs.is_null() {
        // SAFETY: nginx's static text for a resolver state.
        let why = unsafe { std::ffi::CStr::from_ptr(ngx_resolver_strerror(state)) };
        result = Err(LookupError::Resolve {
            host: host.clone(),
            url: url.clone(),
            why: if state == 0 {
                "no address".into()
            } else {
                why.to_string_lossy().into_owned()
            },
            timed_out: state == NGX_RESOLVE_TIMEDOUT as isize,
        });
    } else {
        let i = NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed) % naddrs;
        // SAFETY: addrs holds naddrs entries, each a sockaddr of socklen bytes.
        let (sa, len) = unsafe { ((*addrs.add(i)).sockaddr, (*addrs.add(i)).socklen) };
        if len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
            result = Err(LookupError::Resolve {
                host: host.clone(),
                url: url.clone(),
                why: "an address too long".into(),
                timed_out: false,
            });
        } else {
            // SAFETY: sa holds len bytes, which fit the storage (checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sa.cast::<u8>(),
                    std::ptr::addr_of_mut!(l.sockaddr).cast::<u8>(),
                    len as usize,
                );
                ngx_inet_set_port(std::ptr::addr_of_mut!(l.sockaddr).cast(), *port);
            }
            l.pc.socklen = len;
            // SAFETY: the storage holds the len bytes just copied.
            let raw = unsafe { sockaddr::view(std::ptr::addr_of!(l.sockaddr).cast(), len) };
            l.to = sockaddr::text(raw).unwrap_or_else(|| host.clone());
            // SAFETY: the client is live while the lookup is.
            unsafe {
                noise_debug!(
                    (*l.client).log,
                    "noise auth request: {host} resolved, {naddrs} address(es)"
                );
            }
        }
    }
    // SAFETY: the caller's promise; the context is not used again.
    unsafe { ngx_resolve_name_done(ctx) };
    l.resolving = std::ptr::null_mut();
    result
}

/// Connects a lookup to its authority and arms its timer; it is then in flight.
///
/// # Safety
/// `raw` must be a live lookup without a connection, whose client is live.
unsafe fn connect(raw: *mut Lookup) -> Result<(), LookupError> {
    // SAFETY: the caller's promise.
    let l = unsafe { &mut *raw };
    // SAFETY: pc describes one address and our log, as nginx's own callers fill it.
    let rc = unsafe { ngx_event_connect_peer(&mut l.pc) };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if rc != NGX_OK as isize && rc != NGX_AGAIN as isize {
        // nginx closed the connection and cleared pc.connection.
        return Err(LookupError::Connect {
            url: l.side.authority.url.clone(),
            to: l.to.clone(),
            why: log::errno_text(errno),
        });
    }
    let ac = l.pc.connection;
    // SAFETY: nginx's clock, read on its one thread.
    let spent = unsafe { ngx_current_msec }.wrapping_sub(l.began);
    let left = l.side.timeout.saturating_sub(spent).max(1);
    // SAFETY: the connect made ac live; its events exist for its whole life; the client
    // (and its log) is live (caller's promise).
    unsafe {
        (*ac).data = raw.cast();
        (*(*ac).read).handler = Some(on_event);
        (*(*ac).write).handler = Some(on_event);
        ngx_add_timer((*ac).read, left);
        noise_debug!(
            (*l.client).log,
            "noise auth request: connecting to {}",
            l.side.authority.url
        );
        if rc == NGX_OK as isize {
            // Connected at once: send from the posted queue, not from inside the handshake.
            ngx_post_event((*ac).write, std::ptr::addr_of_mut!(ngx_posted_events));
        }
    }
    Ok(())
}

/// Lookups waiting for a slot (`noise_auth_request_concurrency N wait`), oldest first.
struct Queue(UnsafeCell<VecDeque<*mut Lookup>>);

// SAFETY: only touched from the worker's single event-loop thread.
unsafe impl Sync for Queue {}

static QUEUE: Queue = Queue(UnsafeCell::new(VecDeque::new()));

/// The worker's queue.
///
/// # Safety
/// No other reference to it may be live (none of this module's functions holds one across
/// a call that could take another).
#[allow(clippy::mut_from_ref)]
unsafe fn queue() -> &'static mut VecDeque<*mut Lookup> {
    // SAFETY: single-threaded, and the caller's promise.
    unsafe { &mut *QUEUE.0.get() }
}

/// Starts queued lookups while there are free slots. A connect that fails at once ends its
/// lookup here (the client gets the answer by its posted event).
fn start_queued() {
    if STARTING.with(|s| s.replace(true)) {
        // An outer call is in this loop already (a lookup it started ended at once).
        return;
    }
    start_queued_now();
    STARTING.with(|s| s.set(false));
}

thread_local! {
    /// Inside [`start_queued`].
    static STARTING: Cell<bool> = const { Cell::new(false) };
}

fn start_queued_now() {
    loop {
        // The oldest queued lookup whose server has a free slot (each server's lookups
        // stay in order). SAFETY: queued lookups are live (a handle drop takes them out
        // first); the reference ends within this statement.
        let next = unsafe {
            let q = queue();
            let at = q.iter().position(|&l| has_room((*l).side.as_ref()));
            at.and_then(|i| q.remove(i))
        };
        let Some(next) = next else {
            return;
        };
        // SAFETY: as above.
        unsafe {
            (*next).queued = false;
            (*next).side.as_ref().queued.fetch_sub(1, Ordering::Relaxed);
        }
        // A client that left while queued is not dialled for: its own read event, still
        // to come, ends its wait (and drops this lookup, never begun).
        // SAFETY: the client is live while its handle is armed.
        if unsafe { ((*next).waiter.gone)((*next).client) } {
            continue;
        }
        // SAFETY: next is live, not begun, its client live (its handle is armed).
        if let Err(e) = unsafe { begin(next) } {
            // SAFETY: as above; the slot it frees is taken by this loop.
            unsafe { finish(next, Err(e)) };
        }
    }
}

/// Ends the lookup's resolution, closes its connection, or takes it out of the queue, and
/// frees it; a freed slot starts the next queued lookup.
///
/// # Safety
/// `raw` must be a live lookup that nothing will use again.
unsafe fn free(raw: *mut Lookup) {
    // SAFETY: the caller's promise.
    let l = unsafe { Box::from_raw(raw) };
    if l.queued {
        // SAFETY: no other reference to the queue is live.
        unsafe { queue().retain(|&p| p != raw) };
        l.side.queued.fetch_sub(1, Ordering::Relaxed);
    }
    if !l.resolving.is_null() {
        // SAFETY: the resolution is ours and pending: this cancels it (no answer comes).
        unsafe { ngx_resolve_name_done(l.resolving) };
    }
    if !l.pc.connection.is_null() {
        // SAFETY: the lookup's own connection (its timer and posted events go with it).
        unsafe { ngx_close_connection(l.pc.connection) };
    }
    if l.counted {
        l.side.in_flight.fetch_sub(1, Ordering::Relaxed);
        drop(l);
        start_queued();
    }
}

/// Both events of the authority connection.
unsafe extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls with one of the connection's events; its data is the connection,
    // whose data is our live lookup (freed only with the connection closed).
    let raw = unsafe {
        (*(*ev).data.cast::<ngx_connection_t>())
            .data
            .cast::<Lookup>()
    };
    // SAFETY: as above; the reference ends before `finish`.
    let result = unsafe { step(&mut *raw, ev) };
    if let Some(result) = result {
        // SAFETY: raw is live and ends here.
        unsafe { finish(raw, result) };
    }
}

/// Moves the lookup on; `Some` when it has ended.
///
/// # Safety
/// `ev` must be an event of `l`'s live connection.
unsafe fn step(l: &mut Lookup, ev: *mut ngx_event_t) -> Option<Result<Reply, LookupError>> {
    let url = l.side.authority.url.clone();
    let c = l.pc.connection;
    // SAFETY: the caller's promise; fd and events are the connection's.
    let (fd, rev, wev, timedout, write) = unsafe {
        (
            (*c).fd,
            (*c).read,
            (*c).write,
            (*ev).timedout() != 0,
            (*ev).write() != 0,
        )
    };
    if timedout {
        return Some(Err(LookupError::Timeout {
            url,
            ms: l.side.timeout,
        }));
    }
    if !l.connected {
        match socket::take_error(fd).unwrap_or_else(|errno| errno) {
            0 if write => l.connected = true,
            0 => return None,
            errno => {
                return Some(Err(LookupError::Connect {
                    url,
                    to: l.to.clone(),
                    why: log::errno_text(errno),
                }))
            }
        }
    }
    while l.sent < l.request.len() {
        match socket::send(fd, &l.request[l.sent..]) {
            Io::Done(n) => l.sent += n,
            Io::Again | Io::Eof => {
                // SAFETY: wev is the live connection's write event.
                if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as isize {
                    return Some(Err(LookupError::Events { url }));
                }
                return None;
            }
            Io::Failed(errno) => {
                return Some(Err(LookupError::Socket {
                    doing: "send() to",
                    url,
                    why: log::errno_text(errno),
                }))
            }
        }
    }
    // Sent: level-triggered event methods would report the writable socket again and
    // again; this takes the write event out (edge-triggered epoll: nothing to do).
    // SAFETY: wev is the live connection's write event.
    if unsafe { ngx_handle_write_event(wev, 0) } != NGX_OK as isize {
        return Some(Err(LookupError::Events { url }));
    }
    let mut buf = [0u8; 4096];
    loop {
        let room = (MAX_HEADER_BYTES - l.response.len().min(MAX_HEADER_BYTES)).min(buf.len());
        if room == 0 {
            // Full: parse says complete or too large, never "more to come".
            let parsed = auth_reply::parse(&l.response, true);
            return Some(
                parsed
                    .and_then(|a| a.ok_or(ReplyError::Truncated))
                    .map_err(|error| LookupError::Reply { error, url }),
            );
        }
        let closed = match socket::recv(fd, &mut buf[..room]) {
            Io::Done(n) => {
                l.response.extend_from_slice(&buf[..n]);
                false
            }
            Io::Eof => true,
            Io::Again => {
                // SAFETY: rev is the live connection's read event.
                if unsafe { ngx_handle_read_event(rev, 0) } != NGX_OK as isize {
                    return Some(Err(LookupError::Events { url }));
                }
                return None;
            }
            Io::Failed(errno) => {
                return Some(Err(LookupError::Socket {
                    doing: "recv() from",
                    url,
                    why: log::errno_text(errno),
                }))
            }
        };
        match auth_reply::parse(&l.response, closed) {
            Ok(Some(answer)) => return Some(Ok(answer)),
            Ok(None) => {}
            Err(error) => return Some(Err(LookupError::Reply { error, url })),
        }
    }
}

/// Turns what the authority said into the handshake's answer: keeps allow/deny in the zone,
/// counts it, and applies `noise_auth_request_fail` to an error (logged here only when it
/// lets the client in; a refusal is logged once by the handshake).
///
/// # Safety
/// `raw` must be a live lookup whose client is live.
unsafe fn conclude(raw: *mut Lookup, result: Result<Reply, LookupError>) -> Answer {
    // SAFETY: the caller's promise.
    let l = unsafe { &*raw };
    // SAFETY: the client is live (caller's promise); its log with it.
    let client_log = unsafe { (*l.client).log };
    let reply = match result {
        Ok(reply) => reply,
        Err(why) => {
            counters::auth_result(why.result());
            if l.side.fail_open {
                // SAFETY: the client's log is live.
                unsafe {
                    log::write(
                        client_log,
                        log::ERR,
                        &format!(
                            "noise: noise_auth_request: {why}; client key {} let in (noise_auth_request_fail open)",
                            keys::encode_key(&l.key)
                        ),
                    )
                };
                return Answer {
                    verdict: Verdict::Allow,
                    attrs: None,
                };
            }
            return Answer {
                verdict: Verdict::Unavailable(format!("noise_auth_request: {why}")),
                attrs: None,
            };
        }
    };
    let (ttl, verdict, attrs) = match &reply {
        Reply::Allow(attrs) => {
            counters::auth_result(counters::AuthResult::Allow);
            (l.side.cache_allow, Verdict::Allow, Some(attrs.clone()))
        }
        Reply::Deny => {
            counters::auth_result(counters::AuthResult::Deny);
            (l.side.cache_deny, Verdict::Deny, None)
        }
    };
    noise_debug!(
        client_log,
        "noise auth request: the authority says {} of {}",
        verdict.name(),
        keys::fingerprint(&l.key)
    );
    if ttl > 0 {
        let record = reply.record(zone::now().saturating_add(ttl));
        // SAFETY: the zone is the server's `noise_keys` zone, of the running cycle.
        if let Err(e) = unsafe { zone::cache(l.zone as *mut _, &l.key, &record) } {
            // SAFETY: the client's log is live.
            unsafe {
                log::write(
                    client_log,
                    log::ERR,
                    &format!("noise: noise_auth_request: the answer is not kept: {e}"),
                )
            };
        }
    }
    Answer { verdict, attrs }
}

/// Ends a lookup on its own: hands the answer to the client, wakes it, frees the lookup.
///
/// # Safety
/// `raw` must be a live lookup, armed (its client's state still holds its handle).
unsafe fn finish(raw: *mut Lookup, result: Result<Reply, LookupError>) {
    // SAFETY: the caller's promise.
    let answer = unsafe { conclude(raw, result) };
    // SAFETY: raw is live; its client is live while its handle is armed.
    let client = unsafe { (*raw).client };
    // SAFETY: as above.
    let deliver = unsafe { (*raw).waiter.deliver };
    // SAFETY: the client is live (above); deliver touches only its state.
    match unsafe { deliver(client, LookupId(raw), answer) } {
        Ok(()) => {
            // SAFETY: the client's read event is live; the handshake phase resumes from
            // the posted queue.
            unsafe { ngx_post_event((*client).read, std::ptr::addr_of_mut!(ngx_posted_events)) };
        }
        Err(_) => {
            // Cannot happen (the handle cancels the lookup before its client goes); leak
            // nothing all the same.
            // SAFETY: the client's log is live.
            unsafe {
                log::write(
                    (*client).log,
                    log::ALERT,
                    "noise: noise_auth_request ended for a connection that no longer waits",
                )
            };
        }
    }
    // SAFETY: the handle is disarmed (or was never found): raw is ours alone.
    unsafe { free(raw) };
}
