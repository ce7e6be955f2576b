//! Drives a core [`crate::core::handshake::Handshake`] over a connection's socket, non-blocking and resumable, and
//! switches the connection to NoiseSocket I/O when it completes.
//!
//! Used by both sides: the stream phase handler (responder) and the upstream peer wrapper
//! (initiator). Handshake output is flushed before anything is read, so when the core says
//! done nothing of the handshake is left to send. Bytes that arrive behind the last
//! handshake message are kept as transport input.

use nginx_sys::ngx_connection_t;

use crate::core::handshake::{HandshakeInfo, Verdict};
use crate::core::key_agent::AnyHandshake;
use crate::core::keys;
use crate::core::{Ended, Error};
use crate::metrics::{Reason, State};
use crate::nginx::conn::{self, Phase};
use crate::nginx::util::socket::{self, Io};
use crate::nginx::{conn::io, keys::agent, util::counters, util::log};
use crate::noise_debug;

/// Where a handshake stands after [`drive`].
#[derive(Debug)]
pub enum Progress {
    /// Established; the connection now speaks NoiseSocket through [`io`].
    Done,
    /// Waiting for the peer's bytes.
    WantRead,
    /// Waiting for room in the socket.
    WantWrite,
    /// Paused for a verdict on the client's key that `decide` will give later (a lookup in
    /// flight, docs/protocol.md §4.7): call again once it has an answer.
    WantVerdict,
    /// Paused for the key agent's answer to a question in flight ([`crate::core::key_agent`]): its
    /// answer posts the connection's read event; call again then.
    WantKeyOp,
    /// Failed; the connection must be closed.
    Failed(Failure),
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum Failure {
    Noise(Error),
    Socket { doing: &'static str, errno: i32 },
}

impl Failure {
    /// The `reason` label of the counters.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Noise(e) => Reason::of(e),
            Failure::Socket { .. } => Reason::Socket,
        }
    }
}

/// What the caller says when the handshake asks for a verdict.
#[derive(Debug)]
pub enum Decision {
    /// Decided now (the key zone, or the answer of a lookup that has ended).
    Now(Verdict),
    /// Asked elsewhere: the handshake pauses ([`Progress::WantVerdict`]).
    Pending,
}

/// Decides on a client key the handshake waits for (docs/protocol.md §4.7), given the
/// protocol's name: the server side's key zone, or a lookup at its authority.
pub type Decide<'a> = &'a mut dyn FnMut(&[u8; 32], &str) -> Decision;

/// Advances the handshake of `c` as far as the socket allows; `decide` answers the
/// handshake's verdict requests (a handshake that asks without one fails closed).
///
/// # Safety
/// `c` must be a live connection with a [`conn::NoiseConn`] attached.
pub unsafe fn drive(c: *mut ngx_connection_t, mut decide: Option<Decide<'_>>) -> Progress {
    // SAFETY: caller guarantees c is live with state; the reference ends with this call.
    let Some(st) = (unsafe { conn::get(c) }) else {
        return Progress::Failed(Failure::Noise(Error::Internal(
            "no connection state".into(),
        )));
    };
    // SAFETY: the caller's promise (a live connection); fd and log are plain fields.
    let (fd, log) = unsafe { ((*c).fd, (*c).log) };
    // SAFETY: the connection's log is live.
    let debug = unsafe { log::debug_on(log) };
    let mut buf = [0u8; 4096];
    let mut drained = false;
    let mut sent = false;
    loop {
        let Phase::Handshake(hs) = &mut st.phase else {
            return Progress::Done;
        };
        if debug {
            hs.trace();
            log_steps(log, hs);
        }
        while !hs.pending_output().is_empty() {
            match socket::send(fd, hs.pending_output()) {
                Io::Done(n) => {
                    noise_debug!(
                        log,
                        "noise handshake: send() {n} of {} bytes",
                        hs.pending_output().len()
                    );
                    hs.consume_output(n);
                    sent = true;
                }
                Io::Again | Io::Eof => return Progress::WantWrite,
                Io::Failed(errno) if awaits_confirmation(hs) => {
                    // Message 1 was read and answered; the client never got to prove it.
                    return Progress::Failed(Failure::Noise(Error::Unconfirmed {
                        ended: Ended::Socket {
                            doing: "send() failed",
                            errno,
                        },
                    }));
                }
                Io::Failed(errno) => {
                    return Progress::Failed(Failure::Socket {
                        doing: "send() failed",
                        errno,
                    })
                }
            }
        }
        if let Some(answer) = st.agent_answer.take() {
            // Resumed by the key agent's answer: the handshake replays with it, then its
            // output is flushed and what was read behind the message is fed.
            if let Err(e) = hs.provide(answer) {
                return Progress::Failed(Failure::Noise(e));
            }
            continue;
        }
        if let Some(op) = hs.pending_key_op() {
            if st.agent_wait.is_none() {
                let asked = match &st.agent {
                    // SAFETY: c is live with this state (the caller's promise).
                    Some(agent) => unsafe {
                        agent::ask(c, agent, &op, super::deliver_agent_answer)
                    },
                    None => Err(crate::core::key_agent::AgentError::Unreachable(
                        "no key agent configured".into(),
                    )),
                };
                match asked {
                    Ok(wait) => st.agent_wait = Some(wait),
                    Err(e) => {
                        let e = hs.provide(Err(e)).err().unwrap_or_else(|| {
                            Error::Internal("a failed key agent question went on".into())
                        });
                        return Progress::Failed(Failure::Noise(e));
                    }
                }
            }
            return Progress::WantKeyOp;
        }
        // SAFETY: c is live; its read event exists for its whole life.
        let rev = unsafe { &mut *(*c).read };
        if hs.pending_verdict().is_some() || !st.held.is_empty() {
            // Resumed after a pause: decide, then feed what was read behind the message.
            let held = std::mem::take(&mut st.held);
            match read_deciding(hs, &held, &mut decide) {
                Ok((used, true)) => {
                    st.held = held[used..].to_vec();
                    if hs.pending_key_op().is_some() {
                        continue;
                    }
                    return Progress::WantVerdict;
                }
                Ok((used, false)) => {
                    st.input.push(&held[used..]);
                }
                Err(e) => {
                    if !hs.pending_output().is_empty() {
                        let _ = socket::send(fd, hs.pending_output());
                    }
                    return Progress::Failed(Failure::Noise(e));
                }
            }
            if debug {
                log_steps(log, hs);
            }
            continue;
        }
        if hs.is_done() {
            // Ready for the caller's next reader unless the socket is known to be empty (the
            // last read drained it, or nothing arrived since a pause that found it empty)
            // and no early transport bytes came with the last message.
            rev.set_ready(u32::from(
                (!drained && rev.ready() != 0) || st.input.buffered() > 0,
            ));
            // SAFETY: c is live and st is its state.
            return match unsafe { establish(c, st) } {
                Ok(()) => Progress::Done,
                Err(e) => Progress::Failed(Failure::Noise(e)),
            };
        }
        if drained || (sent && rev.ready() == 0) {
            // The socket is empty: the last read drained it (see io::short_read_drains),
            // or we have just written and no event has said there is anything to read (the
            // peer cannot have answered yet). The answer comes with a new event, so skip
            // the recv() that would only say EAGAIN.
            rev.set_ready(0);
            return Progress::WantRead;
        }
        match socket::recv(fd, &mut buf) {
            Io::Done(n) => {
                noise_debug!(log, "noise handshake: recv() {n} bytes");
                let result = read_deciding(hs, &buf[..n], &mut decide);
                if debug {
                    log_steps(log, hs);
                }
                match result {
                    Ok((used, true)) => {
                        // Paused: the rest waits with the state (no more reads meanwhile).
                        st.held = buf[used..n].to_vec();
                        if n < buf.len() && io::short_read_drains(rev) {
                            // Known empty: the resumed handshake skips the recv() that
                            // would only say EAGAIN (what arrives meanwhile sets ready).
                            rev.set_ready(0);
                        }
                        if hs.pending_key_op().is_some() {
                            continue; // asks the agent
                        }
                        return Progress::WantVerdict;
                    }
                    Ok((used, false)) => {
                        drained = n < buf.len() && io::short_read_drains(rev);
                        // At most 4 KiB behind the last message: always fits the empty input.
                        st.input.push(&buf[used..n]);
                    }
                    Err(e) => {
                        // An explicit reject may be pending: one best-effort write.
                        if !hs.pending_output().is_empty() {
                            let _ = socket::send(fd, hs.pending_output());
                        }
                        return Progress::Failed(Failure::Noise(e));
                    }
                }
            }
            Io::Eof => return Progress::Failed(Failure::Noise(hs.eof())),
            Io::Again => {
                rev.set_ready(0);
                return Progress::WantRead;
            }
            Io::Failed(errno) => {
                return Progress::Failed(Failure::Socket {
                    doing: "recv() failed",
                    errno,
                })
            }
        }
    }
}

/// Whether `hs` is a responder that has read the client's message 1 of a protocol whose
/// message 1 could be a replay (and answered it): from here the client counts as
/// authenticated only once its first transport frame opens.
fn awaits_confirmation(hs: &AnyHandshake) -> bool {
    !hs.role().is_initiator()
        && hs.is_done()
        && hs.protocol().is_some_and(|p| p.initiator_auth_replayable())
}

/// [`AnyHandshake::read`], answering each verdict request with `decide` and reading on; the
/// flag says the handshake paused (`decide` said pending, or it waits for the key agent)
/// with the rest of `input` unused.
fn read_deciding(
    hs: &mut AnyHandshake,
    input: &[u8],
    decide: &mut Option<Decide<'_>>,
) -> Result<(usize, bool), Error> {
    let mut used = hs.read(input)?;
    loop {
        if hs.pending_key_op().is_some() {
            return Ok((used, true));
        }
        let Some(key) = hs.pending_verdict() else {
            break;
        };
        let protocol = hs
            .protocol()
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        let verdict = match decide {
            Some(decide) => match decide(&key, &protocol) {
                Decision::Now(v) => v,
                Decision::Pending => return Ok((used, true)),
            },
            None => Verdict::Unavailable("nothing decides client keys here".into()),
        };
        hs.resolve(verdict)?;
        used += hs.read(&input[used..])?;
    }
    Ok((used, false))
}

/// Logs the handshake's recorded steps at debug level.
fn log_steps(log: *mut nginx_sys::ngx_log_t, hs: &mut AnyHandshake) {
    for step in hs.take_steps() {
        noise_debug!(log, "noise handshake: {step}");
    }
}

/// The end of every successful handshake, on both sides, once the side has admitted the
/// connection: the handshake is counted by its protocol and the connection as established,
/// and the write event is marked ready ([`drive`] left the read event's `ready` saying
/// whether there may be something to read). `keep` sees what the handshake established.
///
/// # Safety
/// `c` must be a live connection whose attached state has just finished its handshake
/// ([`drive`] or [`await_first_frame`] returned [`Progress::Done`]).
pub unsafe fn established<R>(
    c: *mut ngx_connection_t,
    keep: impl FnOnce(&HandshakeInfo) -> R,
) -> Option<R> {
    // SAFETY: the caller's promise; the reference ends in this block.
    let kept = unsafe { conn::get(c) }.and_then(|st| {
        let kept = st.info.as_deref().map(|info| {
            counters::ok(st.side, info.protocol.name());
            keep(info)
        });
        st.count_as(State::Established);
        kept
    });
    // SAFETY: the connection's write event lives as long as it.
    unsafe { (*(*c).write).set_ready(1) };
    kept
}

/// Moves the finished handshake into transport mode and installs the I/O functions.
///
/// # Safety
/// `c` must be live and `st` its state.
unsafe fn establish(c: *mut ngx_connection_t, st: &mut conn::NoiseConn) -> Result<(), Error> {
    let Phase::Handshake(hs) = std::mem::replace(&mut st.phase, Phase::Closed) else {
        return Err(Error::Internal("no handshake to finish".into()));
    };
    let initiator = hs.role().is_initiator();
    let est = hs.finish()?;
    if !est.pending.is_empty() {
        return Err(Error::Internal(
            "handshake bytes left after completion".into(),
        ));
    }
    let replayable = est.info.protocol.initiator_auth_replayable();
    // SAFETY: the caller's promise (c is live); log is a plain field.
    let log = unsafe { (*c).log };
    // SAFETY: the connection's log is live.
    if unsafe { log::debug_on(log) } {
        let peer = est
            .info
            .remote_static
            .map_or_else(|| "none".to_string(), |k| keys::fingerprint(&k));
        noise_debug!(
            log,
            "noise: {} established ({:?} stage), peer static key {peer}, handshake hash {}...",
            est.info.protocol,
            est.info.stage,
            est.info.handshake_hash[..8.min(est.info.handshake_hash.len())]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        st.input.record_frames();
    }
    st.phase = Phase::Transport(Box::new(est.transport));
    st.info = Some(Box::new(est.info));
    // SAFETY: c is live and now has an established state.
    unsafe { io::install(c) };
    if replayable {
        if initiator {
            // Prove we hold the session keys at once (the back end may be waiting for it
            // before it speaks first): an empty frame, flushed now or with the next write.
            // SAFETY: c is live and st is its established state.
            if !unsafe { io::send_empty_frame(c, st) } {
                return Err(Error::Internal(
                    "cannot send the first transport frame".into(),
                ));
            }
        } else {
            st.awaiting_first_frame = true;
        }
    } else if !initiator && st.info.as_ref().is_some_and(|i| i.verdict_pending) {
        // After a switch the client's key is proven by its first frame only (§4.7).
        st.awaiting_first_frame = true;
    }
    Ok(())
}

/// Server side, after [`drive`] said done on a protocol whose first message could be a
/// replay: waits until the client's first transport frame opens. Its body stays buffered
/// for the next reader.
///
/// # Safety
/// `c` must be a live connection with an established [`conn::NoiseConn`].
pub unsafe fn await_first_frame(c: *mut ngx_connection_t) -> Progress {
    // SAFETY: caller guarantees c is live with state; the reference ends with this call.
    let Some(st) = (unsafe { conn::get(c) }) else {
        return Progress::Failed(Failure::Noise(Error::Internal(
            "no connection state".into(),
        )));
    };
    // SAFETY: c is live; its read event exists for its whole life.
    let (fd, rev) = unsafe { ((*c).fd, &mut *(*c).read) };
    loop {
        let conn::NoiseConn {
            phase: Phase::Transport(tr),
            input,
            ..
        } = &mut *st
        else {
            return Progress::Failed(Failure::Noise(Error::Internal("not in transport".into())));
        };
        // Whatever ends the wait, the client never proved itself: a replay, as far as
        // anyone can tell (the counters' reason and the log line say so).
        let unconfirmed = |ended| Progress::Failed(Failure::Noise(Error::Unconfirmed { ended }));
        match input.open_first(&mut tr.opener) {
            Ok(true) => {
                st.awaiting_first_frame = false;
                // The body, or frames behind it, may be waiting: let the next reader look.
                rev.set_ready(1);
                return Progress::Done;
            }
            Ok(false) => {}
            Err(e) if e.is_peer_fault() => return unconfirmed(Ended::Frame(Box::new(e))),
            Err(e) => return Progress::Failed(Failure::Noise(e)),
        }
        if rev.ready() == 0 {
            return Progress::WantRead;
        }
        match socket::recv(fd, st.input.spare()) {
            Io::Done(n) => st.input.commit(n),
            Io::Eof => {
                return match st.input.check_eof() {
                    Ok(()) => unconfirmed(Ended::Closed),
                    Err(e) if e.is_peer_fault() => unconfirmed(Ended::Frame(Box::new(e))),
                    Err(e) => Progress::Failed(Failure::Noise(e)),
                };
            }
            Io::Again => {
                rev.set_ready(0);
                return Progress::WantRead;
            }
            Io::Failed(errno) => {
                return unconfirmed(Ended::Socket {
                    doing: "recv() failed",
                    errno,
                })
            }
        }
    }
}
