//! The NoiseSocket handshake driver, both roles (docs/protocol.md §4), on `snow`.
//!
//! A [`Handshake`] consumes received bytes with [`Handshake::read`] (any split, one byte at a
//! time works; it stops exactly at the end of the last handshake message, leaving transport
//! bytes to the caller) and queues bytes to send, drained with [`Handshake::pending_output`] and
//! [`Handshake::consume_output`]. A [`Negotiator`] makes every decision: accept, switch
//! (the responder becomes the Noise initiator of a new protocol, prologue Init2), retry (the
//! initiator starts again, prologue Init3 in the 2018-05-01 layout) or explicit reject.
//!
//! Invariants:
//! * At most one protocol change per connection; only the first message of each side carries
//!   negotiation data, and any later non-empty data is an error.
//! * `body_len` framing applies exactly to encrypted handshake payloads
//!   ([`Protocol::payload_encrypted`]); after each write the table is checked against snow.
//! * The peer's static key is checked (expected key, trusted keys) as soon as it is learnt,
//!   before anything else is sent, so an initiator never reveals itself to an untrusted server.
//!   A configured peer key is a pin for every stage, except that after a switch a trusted-key
//!   list, when configured, decides instead (a stale IK key rescued by XX).
//! * After an error, [`Handshake::pending_output`] may still hold an explicit reject: send it,
//!   best effort, then close.
//! * With [`Settings::ask_verdict`], a responder stops once the initiator has proven its static
//!   key ([`Protocol::initiator_key_proven_in`]) and writes nothing more until the caller gives
//!   a [`Verdict`] ([`Handshake::pending_verdict`], [`Handshake::resolve`]); where the proof
//!   only comes with the first transport frame, [`HandshakeInfo::verdict_pending`] says the
//!   caller must decide then (docs/protocol.md §4.7).

use std::sync::Arc;

use zeroize::Zeroizing;

use super::confirm;
use super::crypto::{TriesMemo, TriesResolver};
use super::error::{Error, Result};
use super::frame::HandshakeReader;
use super::key_ops::KeyOps;
use super::key_verdict::{KeyVerdict, MARKER};
use super::keys::{self, KeySet};
use super::negotiation::{Decision, Negotiator, Response, Stage};
use super::payload::{self, MAX_BODY, MAX_MESSAGE};
use super::prologue;
use super::protocol::{Protocol, Role};
use super::requirements;
use super::trace::Step;
use super::transport::{CipherState, Transport};
pub use super::verdict::Verdict;

/// Settings shared by every connection of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Application prologue, appended to every NoiseSocket prologue.
    pub app_prologue: Vec<u8>,
    /// Pad bodies to a multiple of this many bytes (0 = no padding).
    pub padding: usize,
    /// When set, the peer's static key must be listed.
    pub trusted: Option<KeySet>,
    /// A peer whose static key is listed is refused, trusted or not.
    pub revoked: Option<KeySet>,
    /// Responder: the caller decides on every initiator static key once it is proven (after
    /// the file lists, which still refuse first); see the module doc.
    pub ask_verdict: bool,
    /// As an initiator, ask the responder to confirm that it accepted our static key
    /// (key confirmation, docs/protocol.md §4.8). Responders always honour the request.
    pub confirm: bool,
}

/// What the handshake established, for logs and variables.
#[derive(Clone, Debug)]
pub struct HandshakeInfo {
    pub protocol: Protocol,
    pub remote_static: Option<[u8; 32]>,
    pub handshake_hash: Vec<u8>,
    /// The initiator's first negotiation data.
    pub initial_negotiation: Vec<u8>,
    pub stage: Stage,
    /// Our static public key that served, when the negotiator knows it (a rotating
    /// responder: `$noise_server_key`).
    pub local_static: Option<[u8; 32]>,
    /// Responder with [`Settings::ask_verdict`]: the initiator's key was not decided during
    /// the handshake (its possession is proven only by the first transport frame), so the
    /// caller asks for a verdict once that frame opens, before any plaintext is used.
    pub verdict_pending: bool,
    /// Whether key confirmation ran (docs/protocol.md §4.8): the responder's verdict
    /// accepted our key (initiator), or we sent an accepting verdict (responder).
    pub key_confirmed: bool,
}

/// A finished handshake.
pub struct Established {
    pub transport: Transport,
    pub info: HandshakeInfo,
    /// Handshake bytes not yet sent (the initiator's last message): send them first.
    pub pending: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Responder: waiting for the initiator's first message.
    AwaitInitial,
    /// Initiator: waiting for the responder's first message (may negotiate).
    AwaitResponse,
    /// Responder: asked for a retry, waiting for the initiator's new first message.
    AwaitRetry(Protocol),
    /// Later messages: no negotiation data.
    Exchange,
    /// Responder: the initiator proved its key; waiting for [`Handshake::resolve`].
    AwaitVerdict,
    /// Initiator: the Noise handshake is over, waiting for the responder's key-confirmation
    /// verdict (docs/protocol.md §4.8).
    AwaitConfirmation,
    /// A message needs a DH with a key the key agent holds ([`Handshake::awaits_key_op`]);
    /// this handshake is abandoned and replayed once it is answered
    /// ([`crate::core::key_agent::DelegatedHandshake`]).
    AwaitKeyOp,
    Done,
    Failed,
}

/// One side of a NoiseSocket handshake; see the module doc.
pub struct Handshake {
    role: Role,
    negotiator: Arc<dyn Negotiator>,
    settings: Arc<Settings>,
    phase: Phase,
    reader: HandshakeReader,
    out: Vec<u8>,
    noise: Option<Box<snow::HandshakeState>>,
    protocol: Option<Protocol>,
    noise_role: Role,
    index: usize,
    stage: Stage,
    expected_remote: Option<[u8; 32]>,
    remote_checked: bool,
    neg_a1: Vec<u8>,
    msg_a1: Vec<u8>,
    neg_b1: Vec<u8>,
    next_payload: Option<Vec<u8>>,
    received: Vec<Vec<u8>>,
    /// While trying trusted keys as the initiator's (K patterns), the key being tried.
    remote_override: Option<[u8; 32]>,
    /// Recorded steps, once tracing is on ([`Handshake::trace`]).
    steps: Option<Vec<Step>>,
    /// Which of our static keys runs (0: the configured one, then the alternates).
    local_index: usize,
    /// A verdict on the initiator's key was given during the handshake.
    verdict_given: bool,
    /// While a first message is tried with several keys: the DH results of those tries
    /// (crypto's [`TriesMemo`]), closed when they end.
    tries_memo: Option<Arc<TriesMemo>>,
    /// Where key confirmation stands (docs/protocol.md §4.8).
    confirm: Confirm,
    /// The transport, when key confirmation needed it before [`Handshake::finish`].
    split: Option<Transport>,
    /// A delegated handshake's static-key operations ([`crate::core::key_agent`]).
    key_ops: Option<Arc<KeyOps>>,
}

/// Key confirmation (docs/protocol.md §4.8) on this connection.
#[derive(Default)]
enum Confirm {
    /// Not asked for, or not agreed.
    #[default]
    Off,
    /// Initiator: asked in the first message of the running protocol.
    Requested,
    /// Responder: offered; a verdict is owed once the initiator's key is judged.
    Promised,
    /// Initiator: agreed; the verdict is being read.
    Expected(confirm::Reader),
    /// The verdict accepted the initiator's key.
    Done,
}

impl Handshake {
    fn new(role: Role, negotiator: Arc<dyn Negotiator>, settings: Arc<Settings>) -> Self {
        Handshake {
            role,
            negotiator,
            settings,
            phase: if role.is_initiator() {
                Phase::AwaitResponse
            } else {
                Phase::AwaitInitial
            },
            reader: HandshakeReader::new(),
            out: Vec::new(),
            noise: None,
            protocol: None,
            noise_role: role,
            index: 0,
            stage: Stage::Initial,
            expected_remote: None,
            remote_checked: false,
            neg_a1: Vec::new(),
            msg_a1: Vec::new(),
            neg_b1: Vec::new(),
            next_payload: None,
            received: Vec::new(),
            remote_override: None,
            steps: None,
            local_index: 0,
            verdict_given: false,
            tries_memo: None,
            confirm: Confirm::Off,
            split: None,
            key_ops: None,
        }
    }

    /// Starts recording [`Step`]s (see [`crate::core::trace`]); an initiator's first
    /// message, queued at construction, is recorded now.
    pub fn trace(&mut self) {
        if self.steps.is_some() {
            return;
        }
        let mut steps = Vec::new();
        if self.role.is_initiator() && !self.msg_a1.is_empty() {
            steps.push(Step::Sent {
                message: 1,
                negotiation: self.neg_a1.len(),
                noise: self.msg_a1.len(),
            });
        }
        self.steps = Some(steps);
    }

    /// The steps recorded since the last call (none unless tracing).
    pub fn take_steps(&mut self) -> Vec<Step> {
        self.steps.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn note(&mut self, step: impl FnOnce() -> Step) {
        if let Some(steps) = &mut self.steps {
            steps.push(step());
        }
    }

    /// Starts an initiator; its first message is queued at once.
    pub fn initiator(negotiator: Arc<dyn Negotiator>, settings: Arc<Settings>) -> Result<Self> {
        Self::initiator_with_payload(negotiator, settings, Vec::new())
    }

    /// Starts an initiator whose first message carries `payload`.
    pub fn initiator_with_payload(
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        payload: Vec<u8>,
    ) -> Result<Self> {
        Self::initiator_with_key_ops(negotiator, settings, payload, None)
    }

    /// An initiator whose static-key DH may come from a key agent (`key_ops`); it may stop
    /// at once, its first message waiting for one ([`Handshake::awaits_key_op`]).
    pub(crate) fn initiator_with_key_ops(
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        payload: Vec<u8>,
        key_ops: Option<Arc<KeyOps>>,
    ) -> Result<Self> {
        let mut hs = Self::new(Role::Initiator, negotiator, settings);
        hs.key_ops = key_ops;
        let (protocol, neg) = hs.negotiator.initial()?;
        let prologue = prologue::init1(&neg, &hs.settings.app_prologue);
        hs.start_protocol(protocol, Role::Initiator, Stage::Initial, &prologue)?;
        let payload = if hs.settings.confirm && payload.is_empty() {
            hs.confirm = Confirm::Requested;
            MARKER.to_vec()
        } else {
            payload
        };
        hs.next_payload = Some(payload);
        hs.neg_a1 = neg;
        let neg = hs.neg_a1.clone();
        match hs.write_message(&neg) {
            Ok(msg) => hs.msg_a1 = msg,
            Err(Error::KeyOpPending) => hs.phase = Phase::AwaitKeyOp,
            Err(e) => return Err(e),
        }
        Ok(hs)
    }

    /// Starts a responder.
    pub fn responder(negotiator: Arc<dyn Negotiator>, settings: Arc<Settings>) -> Self {
        Self::new(Role::Responder, negotiator, settings)
    }

    /// A responder whose static-key DH may come from a key agent.
    pub(crate) fn responder_with_key_ops(
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        key_ops: Option<Arc<KeyOps>>,
    ) -> Self {
        let mut hs = Self::new(Role::Responder, negotiator, settings);
        hs.key_ops = key_ops;
        hs
    }

    /// Whether the handshake stopped for a key-agent operation (its `key_ops` say which).
    pub(crate) fn awaits_key_op(&self) -> bool {
        self.phase == Phase::AwaitKeyOp
    }

    /// A failed DH: the agent result it lacks, or the peer's low-order point.
    fn dh_error(key_ops: &Option<Arc<KeyOps>>) -> Error {
        if key_ops.as_ref().is_some_and(|ops| ops.missing().is_some()) {
            Error::KeyOpPending
        } else {
            Error::WeakPeerKey
        }
    }

    /// The body of the next handshake message this side writes (default empty).
    pub fn set_payload(&mut self, payload: Vec<u8>) {
        self.next_payload = Some(payload);
    }

    /// Bodies of the handshake messages received so far.
    pub fn received_payloads(&self) -> &[Vec<u8>] {
        &self.received
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Bodies are padded to a multiple of this (0: no padding).
    pub fn padding(&self) -> usize {
        self.settings.padding
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The protocol being run, once known.
    pub fn protocol(&self) -> Option<&Protocol> {
        self.protocol.as_ref()
    }

    /// The initiator's first negotiation data, once known.
    pub fn initial_negotiation(&self) -> &[u8] {
        &self.neg_a1
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Consumes received bytes and returns how many were used; stops when the handshake is
    /// done, so the rest of `input` belongs to the transport.
    pub fn read(&mut self, input: &[u8]) -> Result<usize> {
        if self.phase == Phase::Failed {
            return Err(Error::Internal("read after a failed handshake".into()));
        }
        let mut used = 0;
        while used < input.len()
            && !matches!(
                self.phase,
                Phase::Done | Phase::AwaitVerdict | Phase::AwaitKeyOp
            )
        {
            if self.phase == Phase::AwaitConfirmation {
                match self.read_verdict(&input[used..]) {
                    Ok(n) => used += n,
                    Err(e) => {
                        self.phase = Phase::Failed;
                        return Err(e);
                    }
                }
                continue;
            }
            used += self.reader.feed(&input[used..]);
            if let Some(e) = self.reader.take_error() {
                self.phase = Phase::Failed;
                return Err(e);
            }
            if self.reader.is_complete() {
                let (neg, noise) = self.reader.take();
                self.note(|| Step::Received {
                    negotiation: neg.len(),
                    noise: noise.len(),
                });
                match self.process(neg, noise) {
                    Ok(()) => {}
                    Err(Error::KeyOpPending) => {
                        self.phase = Phase::AwaitKeyOp;
                        return Ok(used);
                    }
                    Err(e) => {
                        self.phase = Phase::Failed;
                        return Err(e);
                    }
                }
            }
        }
        Ok(used)
    }

    /// The initiator key the handshake waits for a verdict on ([`Settings::ask_verdict`]).
    /// While it waits, `read` consumes nothing and nothing more is queued.
    pub fn pending_verdict(&self) -> Option<[u8; 32]> {
        if self.phase != Phase::AwaitVerdict {
            return None;
        }
        self.remote_key()
    }

    /// Resumes a handshake that waits for a verdict: `Allow` goes on (the next message is
    /// queued, or the handshake is done), `Deny` refuses as an untrusted key is refused (an
    /// explicit reject where the protocol still allows one), `Unavailable` fails as our own
    /// error. Either refusal ends the handshake.
    pub fn resolve(&mut self, verdict: Verdict) -> Result<()> {
        let Some(key) = self.pending_verdict() else {
            return Err(Error::Internal("verdict without a pending key".into()));
        };
        self.note(|| Step::Verdict(verdict.name()));
        let result = match verdict {
            Verdict::Allow => {
                self.verdict_given = true;
                self.answer()
            }
            Verdict::Deny => {
                // Only the responder's first message can carry a reject (docs/protocol.md §2.3).
                if self.stage == Stage::Initial && self.index == 1 {
                    self.queue_reject();
                }
                Err(self.refuse(Error::Unauthorized { key }))
            }
            Verdict::Unavailable(why) => Err(self.refuse(Error::VerdictUnavailable { key, why })),
        };
        match result {
            Err(Error::KeyOpPending) => {
                self.phase = Phase::AwaitKeyOp;
                Ok(())
            }
            Err(e) => {
                self.phase = Phase::Failed;
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// The peer closed the connection: the error that describes it.
    pub fn eof(&mut self) -> Error {
        let reject_without_message = self.phase == Phase::AwaitResponse
            && self.reader.has_negotiation()
            && !self.reader.negotiation().is_empty();
        let err = if let (Phase::AwaitConfirmation, Confirm::Expected(reader)) =
            (&self.phase, &self.confirm)
        {
            if reader.started() {
                Error::Truncated
            } else {
                Error::NotConfirmed
            }
        } else if reject_without_message {
            // A Go server's reject: negotiation data, then EOF before the noise length.
            Error::Rejected(self.reader.negotiation().to_vec())
        } else if self.reader.is_empty() {
            Error::ClosedDuringHandshake
        } else {
            Error::Truncated
        };
        self.phase = Phase::Failed;
        err
    }

    /// Completes the handshake into transport mode.
    pub fn finish(mut self) -> Result<Established> {
        if self.phase != Phase::Done {
            return Err(Error::Internal("handshake not finished".into()));
        }
        let (Some(mut noise), Some(protocol)) = (self.noise.take(), self.protocol.take()) else {
            return Err(Error::Internal("handshake state missing".into()));
        };
        let transport = match self.split.take() {
            Some(transport) => transport,
            None => split(
                &mut noise,
                &protocol,
                self.noise_role,
                self.settings.padding,
            )?,
        };
        let remote_static = noise.get_remote_static().and_then(|k| k.try_into().ok());
        let local_static = protocol
            .needs_local_static(self.noise_role)
            .then(|| self.negotiator.static_public_key(self.local_index))
            .flatten();
        let info = HandshakeInfo {
            protocol,
            remote_static,
            handshake_hash: noise.get_handshake_hash().to_vec(),
            initial_negotiation: std::mem::take(&mut self.neg_a1),
            stage: self.stage,
            local_static,
            verdict_pending: self.settings.ask_verdict
                && !self.role.is_initiator()
                && remote_static.is_some()
                && !self.verdict_given,
            key_confirmed: matches!(self.confirm, Confirm::Done),
        };
        Ok(Established {
            transport,
            info,
            pending: std::mem::take(&mut self.out),
        })
    }

    fn process(&mut self, neg: Vec<u8>, noise: Vec<u8>) -> Result<()> {
        match self.phase.clone() {
            Phase::AwaitInitial => self.on_initial(neg, noise),
            Phase::AwaitResponse => self.on_response(neg, noise),
            Phase::AwaitRetry(protocol) => self.on_retry(protocol, neg, noise),
            Phase::Exchange => {
                if !neg.is_empty() {
                    return Err(Error::LateNegotiation(neg.len()));
                }
                self.read_and_answer(&noise)
            }
            Phase::AwaitKeyOp => Err(Error::Internal(
                "message while waiting for the key agent".into(),
            )),
            Phase::AwaitVerdict => Err(Error::Internal(
                "message while waiting for a verdict".into(),
            )),
            Phase::AwaitConfirmation | Phase::Done | Phase::Failed => {
                Err(Error::Internal("message after the end".into()))
            }
        }
    }

    /// Responder: the initiator's first message.
    fn on_initial(&mut self, neg: Vec<u8>, noise: Vec<u8>) -> Result<()> {
        if noise.is_empty() {
            return Err(Error::EmptyHandshakeMessage);
        }
        self.neg_a1 = neg;
        self.msg_a1 = noise;
        let decision = self.negotiator.decide(&self.neg_a1);
        self.apply(decision, true)
    }

    fn apply(&mut self, decision: Decision, may_rescue: bool) -> Result<()> {
        match decision {
            Decision::Accept(protocol) => {
                self.note(|| Step::Accepted(protocol.name().to_string()));
                let prologue = prologue::init1(&self.neg_a1, &self.settings.app_prologue);
                let msg = std::mem::take(&mut self.msg_a1);
                let read = self.read_first(&protocol, Stage::Initial, &prologue, &msg);
                self.msg_a1 = msg;
                match read {
                    Ok(()) => {}
                    Err(Error::KeyOpPending) => return Err(Error::KeyOpPending),
                    Err(e) => {
                        return match self.negotiator.on_failure(&self.neg_a1) {
                            Some(d @ Decision::Switch { .. }) if may_rescue => self.apply(d, false),
                            _ => Err(e),
                        };
                    }
                }
                if let Err(e) = self.check_remote() {
                    self.queue_reject();
                    return Err(e);
                }
                self.answer_or_wait()
            }
            Decision::Switch { protocol, data } => {
                if data.is_empty() {
                    return Err(Error::Internal("switch without negotiation data".into()));
                }
                self.note(|| Step::Switching(protocol.name().to_string()));
                let prologue = prologue::init2(
                    &self.neg_a1,
                    &self.msg_a1,
                    &data,
                    &self.settings.app_prologue,
                );
                self.start_protocol(protocol, Role::Initiator, Stage::Switch, &prologue)?;
                self.neg_b1 = data;
                let neg = self.neg_b1.clone();
                self.write_message(&neg)?;
                self.phase = Phase::Exchange;
                Ok(())
            }
            Decision::Retry { protocol, data } => {
                if data.is_empty() {
                    return Err(Error::Internal("retry without negotiation data".into()));
                }
                self.note(|| Step::AskingRetry(protocol.name().to_string()));
                push_sized(&mut self.out, &data);
                push_sized(&mut self.out, &[]);
                self.neg_b1 = data;
                self.stage = Stage::Retry;
                self.phase = Phase::AwaitRetry(protocol);
                Ok(())
            }
            Decision::Reject { data } => {
                self.note(|| Step::Rejecting);
                push_sized(&mut self.out, &data);
                push_sized(&mut self.out, &[]);
                Err(Error::Refused(self.neg_a1.clone()))
            }
        }
    }

    /// Responder: reads the initiator's first message of `protocol` (at `stage`), trying
    /// each of our static keys (rotation) with each candidate initiator key (K patterns)
    /// until one authenticates.
    fn read_first(
        &mut self,
        protocol: &Protocol,
        stage: Stage,
        prologue: &[u8],
        msg: &[u8],
    ) -> Result<()> {
        let mut read = Err(Error::Internal("no candidate key".into()));
        let candidates = self.initiator_key_candidates(protocol)?;
        // Our own keys to try: all of them (rotation) when the initiator used the
        // one it knows in its first message, else the first.
        let locals = if protocol.needs_remote_static(Role::Initiator) {
            1 + self.negotiator.alternate_static_keys().len()
        } else {
            1
        };
        // Several tries of one message repeat DH: each private key's with the
        // message's ephemeral key (`es`) is kept for the next try; KK's `ss` comes
        // precomputed from the negotiator.
        if candidates.len() > 1 {
            self.tries_memo = Some(TriesMemo::new());
        }
        'keys: for local in 0..locals {
            for candidate in candidates.iter().copied() {
                self.local_index = local;
                self.remote_override = candidate;
                let started =
                    self.start_protocol(protocol.clone(), Role::Responder, stage, prologue);
                self.remote_override = None;
                if let Err(e) = started {
                    self.end_tries();
                    return Err(e);
                }
                read = self.read_noise(msg);
                if matches!(read, Err(Error::KeyOpPending)) {
                    // Asked of the agent: the tries start again with its answer.
                    self.end_tries();
                    return read;
                }
                let matched = read.is_ok();
                if let Some(key) = candidate {
                    self.note(|| Step::TriedKey {
                        fingerprint: keys::fingerprint(&key),
                        matched,
                    });
                }
                if locals > 1 {
                    let ours = self.negotiator.static_public_key(local);
                    self.note(|| Step::TriedOwnKey {
                        fingerprint: ours
                            .map_or_else(|| format!("#{}", local + 1), |k| keys::fingerprint(&k)),
                        matched,
                    });
                }
                if matched {
                    break 'keys;
                }
            }
        }
        self.end_tries();
        if read.is_err() {
            self.local_index = 0;
        }
        read
    }

    /// The tries of a first message are over: nothing from them is kept.
    fn end_tries(&mut self) {
        if let Some(memo) = self.tries_memo.take() {
            memo.close();
        }
    }

    /// Responder keys to try for a pattern in which the responder knows the initiator's key
    /// in advance (KN, KK, KX): from the credentials if given, else from the trusted keys.
    /// An encrypted first message (KK) tells the right one by authenticating; a cleartext one
    /// (KN, KX) cannot, so it needs exactly one trusted key. `[None]` means "as configured".
    fn initiator_key_candidates(&self, protocol: &Protocol) -> Result<Vec<Option<[u8; 32]>>> {
        let creds = self
            .negotiator
            .credentials(protocol, Role::Responder, Stage::Initial);
        if !protocol.needs_remote_static(Role::Responder) || creds.remote_static.is_some() {
            return Ok(vec![None]);
        }
        let trusted = self.settings.trusted.as_ref();
        let keys: Vec<[u8; 32]> = trusted
            .iter()
            .flat_map(|t| requirements::usable_trusted_keys(t, self.settings.revoked.as_ref()))
            .copied()
            .collect();
        let count = trusted.map_or(0, |t| t.len());
        if count > 0 && keys.is_empty() {
            // The configuration checks refuse this; say what it is if one did not run.
            return Err(Error::PeerKeys {
                protocol: protocol.name().to_string(),
                count,
                problem: requirements::PeerKeysProblem::AllRevoked,
            });
        }
        requirements::peer_key_candidates(protocol, keys.len())?;
        Ok(keys.into_iter().map(Some).collect())
    }

    /// Initiator: the responder's first message.
    fn on_response(&mut self, neg: Vec<u8>, noise: Vec<u8>) -> Result<()> {
        if neg.is_empty() {
            self.note(|| Step::PeerAnswered("accepted our offer"));
            return self.read_and_answer(&noise);
        }
        let response = self.negotiator.response(&neg, noise.is_empty())?;
        self.note(|| {
            Step::PeerAnswered(match &response {
                Response::Reject => "rejected our offer",
                Response::Switch(_) => "switched protocols",
                Response::Retry { .. } => "asked for a retry",
            })
        });
        match response {
            Response::Reject => Err(Error::Rejected(neg)),
            Response::Switch(protocol) => {
                if noise.is_empty() {
                    return Err(Error::EmptyHandshakeMessage);
                }
                let prologue = prologue::init2(
                    &self.neg_a1,
                    &self.msg_a1,
                    &neg,
                    &self.settings.app_prologue,
                );
                self.neg_b1 = neg;
                self.start_protocol(protocol, Role::Responder, Stage::Switch, &prologue)?;
                self.read_and_answer(&noise)
            }
            Response::Retry { protocol, data } => {
                if !noise.is_empty() {
                    return Err(Error::UnexpectedHandshakeMessage);
                }
                let prologue = prologue::init3(
                    &self.neg_a1,
                    &self.msg_a1,
                    &neg,
                    &data,
                    &self.settings.app_prologue,
                );
                self.neg_b1 = neg;
                self.start_protocol(protocol, Role::Initiator, Stage::Retry, &prologue)?;
                if matches!(self.confirm, Confirm::Requested) {
                    self.next_payload = Some(MARKER.to_vec());
                }
                self.write_message(&data)?;
                self.phase = Phase::Exchange;
                Ok(())
            }
        }
    }

    /// Responder: the initiator's retry message.
    fn on_retry(&mut self, protocol: Protocol, neg: Vec<u8>, noise: Vec<u8>) -> Result<()> {
        self.negotiator.check_retry(&neg, &protocol)?;
        let prologue = prologue::init3(
            &self.neg_a1,
            &self.msg_a1,
            &self.neg_b1,
            &neg,
            &self.settings.app_prologue,
        );
        // As a first message: K patterns take the initiator's key from the trusted keys,
        // and a rotating responder tries each of its keys.
        self.read_first(&protocol, Stage::Retry, &prologue, &noise)?;
        self.check_remote()?;
        self.answer_or_wait()
    }

    /// Reads a message of the running protocol, checks the peer's key, then writes our
    /// next message if the handshake goes on.
    fn read_and_answer(&mut self, noise: &[u8]) -> Result<()> {
        self.read_noise(noise)?;
        if let Err(e) = self.check_remote() {
            return Err(self.refuse(e));
        }
        self.answer_or_wait()
    }

    /// Goes on with [`Handshake::answer`], unless the message just read proved the
    /// initiator's key and the caller decides on it first.
    fn answer_or_wait(&mut self) -> Result<()> {
        if !self.verdict_due() {
            return self.answer();
        }
        if let Some(key) = self.remote_key() {
            self.note(|| Step::AwaitingVerdict(keys::fingerprint(&key)));
        }
        self.phase = Phase::AwaitVerdict;
        Ok(())
    }

    /// Whether the message just read is the one that proves the initiator's static key. Only
    /// where we run the Noise responder role (after a switch the client is the Noise
    /// responder, and its first transport frame is the proof instead).
    fn verdict_due(&self) -> bool {
        self.settings.ask_verdict
            && !self.role.is_initiator()
            && !self.noise_role.is_initiator()
            && !self.verdict_given
            && self.remote_key().is_some()
            && self
                .protocol
                .as_ref()
                .and_then(Protocol::initiator_key_proven_in)
                .is_some_and(|m| m + 1 == self.index)
    }

    /// The peer's static key, once snow knows it.
    fn remote_key(&self) -> Option<[u8; 32]> {
        self.noise
            .as_ref()
            .and_then(|n| n.get_remote_static())
            .and_then(|k| k.try_into().ok())
    }

    fn answer(&mut self) -> Result<()> {
        if !self.noise_finished() {
            self.negotiate_confirmation();
            self.write_message(&[])?;
        }
        self.phase = if self.noise_finished() {
            Phase::Done
        } else {
            Phase::Exchange
        };
        if self.phase == Phase::Done && self.settings.trusted.is_some() && !self.remote_checked {
            return Err(self.refuse(Error::NoPeerKey));
        }
        if self.phase == Phase::Done {
            self.conclude_confirmation()?;
        }
        Ok(())
    }

    /// Key confirmation (docs/protocol.md §4.8), before we write a message of a running
    /// handshake: a responder about to write its first message offers it if the initiator
    /// asked and the initiator writes the last message; an initiator that asked and is about
    /// to write its last message expects a verdict if the responder offered.
    fn negotiate_confirmation(&mut self) {
        let three = self
            .protocol
            .as_ref()
            .is_some_and(|p| p.message_count() == 3);
        let marked = self.received.last().is_some_and(|b| b == MARKER);
        let noise_initiator = self.noise_role.is_initiator();
        match self.confirm {
            Confirm::Off
                if !self.role.is_initiator()
                    && !noise_initiator
                    && self.index == 1
                    && three
                    && marked
                    && self.next_payload.is_none() =>
            {
                self.next_payload = Some(MARKER.to_vec());
                self.confirm = Confirm::Promised;
            }
            Confirm::Requested if noise_initiator && self.index == 2 => {
                self.confirm = if three && marked {
                    Confirm::Expected(confirm::Reader::default())
                } else {
                    Confirm::Off
                };
            }
            _ => {}
        }
    }

    /// The Noise handshake is over and the peer's key passed: a responder that promised a
    /// verdict queues an accepting one; an initiator that expects one waits for it.
    fn conclude_confirmation(&mut self) -> Result<()> {
        match self.confirm {
            Confirm::Promised => {
                let mut transport = self.split_now()?;
                confirm::seal(&mut transport.sealer, KeyVerdict::Accepted, &mut self.out)?;
                self.split = Some(transport);
                self.confirm = Confirm::Done;
                self.note(|| Step::Confirmed("sent the key-confirmation verdict"));
            }
            Confirm::Expected(_) => {
                self.split = Some(self.split_now()?);
                self.phase = Phase::AwaitConfirmation;
            }
            Confirm::Requested => self.confirm = Confirm::Off,
            _ => {}
        }
        Ok(())
    }

    /// A responder that promised a verdict refuses the initiator's key with `e`: it queues
    /// a refusing verdict (best effort, sent with any pending output) and returns `e`.
    fn refuse(&mut self, e: Error) -> Error {
        if matches!(self.confirm, Confirm::Promised) && self.noise_finished() {
            if let Ok(mut transport) = self.split_now() {
                if confirm::seal(
                    &mut transport.sealer,
                    confirm::verdict_of(&e),
                    &mut self.out,
                )
                .is_ok()
                {
                    self.note(|| Step::Confirmed("sent a refusing key-confirmation verdict"));
                }
            }
            self.confirm = Confirm::Off;
        }
        e
    }

    /// Initiator: reads the responder's verdict.
    fn read_verdict(&mut self, input: &[u8]) -> Result<usize> {
        let (Confirm::Expected(reader), Some(transport)) = (&mut self.confirm, &mut self.split)
        else {
            return Err(Error::Internal("no key confirmation to read".into()));
        };
        let (used, verdict) = reader.feed(input, transport)?;
        match verdict {
            None => {}
            Some(KeyVerdict::Accepted) => {
                self.confirm = Confirm::Done;
                self.phase = Phase::Done;
                self.note(|| Step::Confirmed("the server confirmed it accepted our key"));
            }
            Some(refused) => return Err(Error::KeyRefused(refused)),
        }
        Ok(used)
    }

    /// The transport keys of the finished Noise handshake.
    fn split_now(&mut self) -> Result<Transport> {
        let (Some(noise), Some(protocol)) = (self.noise.as_mut(), self.protocol.as_ref()) else {
            return Err(Error::Internal("no handshake state".into()));
        };
        split(noise, protocol, self.noise_role, self.settings.padding)
    }

    fn noise_finished(&self) -> bool {
        self.noise
            .as_ref()
            .is_some_and(|n| n.is_handshake_finished())
    }

    fn queue_reject(&mut self) {
        self.note(|| Step::Rejecting);
        let data = self.negotiator.reject_data();
        push_sized(&mut self.out, &data);
        push_sized(&mut self.out, &[]);
    }

    fn start_protocol(
        &mut self,
        protocol: Protocol,
        noise_role: Role,
        stage: Stage,
        prologue: &[u8],
    ) -> Result<()> {
        let mut creds = self.negotiator.credentials(&protocol, noise_role, stage);
        if let Some(key) = self.remote_override {
            creds.remote_static = Some(key);
        }
        if self.local_index > 0 {
            creds.static_key = self
                .negotiator
                .alternate_static_keys()
                .get(self.local_index - 1)
                .cloned();
        }
        requirements::check(&protocol, noise_role, &creds, false)?;
        let config = |what: &str, e: snow::Error| Error::Config(format!("{protocol}: {what}: {e}"));
        let resolver = TriesResolver {
            peer_dh: self.negotiator.peer_key_dh(),
            memo: self.tries_memo.clone(),
            key_ops: self.key_ops.clone(),
        };
        let mut builder =
            snow::Builder::with_resolver(protocol.params().clone(), Box::new(resolver))
                .prologue(prologue)
                .map_err(|e| config("prologue", e))?;
        if protocol.needs_local_static(noise_role) {
            let key = creds
                .static_key
                .as_ref()
                .ok_or_else(|| Error::Internal("private key vanished".into()))?;
            builder = builder
                .local_private_key(key.as_bytes())
                .map_err(|e| config("key", e))?;
        }
        self.expected_remote = None;
        if protocol.needs_remote_static(noise_role) {
            let key = creds
                .remote_static
                .as_ref()
                .ok_or_else(|| Error::Internal("peer key vanished".into()))?;
            if self.is_revoked(key) {
                let role = if noise_role.is_initiator() {
                    "server"
                } else {
                    "client"
                };
                return Err(Error::RevokedKey { role, key: *key });
            }
            builder = builder
                .remote_public_key(key)
                .map_err(|e| config("remote key", e))?;
        } else if !(stage == Stage::Switch && self.settings.trusted.is_some()) {
            // A pinned key holds through every stage; only after a switch (the responder saw
            // our pin fail) may a trusted-key list vouch for a new key instead.
            self.expected_remote = creds.remote_static;
        }
        for (i, position) in protocol.psk_positions().into_iter().enumerate() {
            let psk = creds
                .psks
                .get(i)
                .or(creds.psks.last())
                .ok_or_else(|| Error::Internal("psk vanished".into()))?;
            builder = builder
                .psk(position, psk.as_bytes())
                .map_err(|e| config("psk", e))?;
        }
        if let Some(e) = &creds.fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(e.as_bytes());
        }
        let state = if noise_role.is_initiator() {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(|e| config("build", e))?;
        self.noise = Some(Box::new(state));
        self.protocol = Some(protocol);
        self.noise_role = noise_role;
        self.index = 0;
        self.stage = stage;
        self.remote_checked = false;
        Ok(())
    }

    /// Writes the next Noise message, framed with `neg`; returns the Noise message bytes.
    fn write_message(&mut self, neg: &[u8]) -> Result<Vec<u8>> {
        let (Some(noise), Some(protocol)) = (self.noise.as_mut(), self.protocol.as_ref()) else {
            return Err(Error::Internal("no handshake state".into()));
        };
        let body = self.next_payload.take().unwrap_or_default();
        let encrypted = protocol.payload_encrypted(self.index);
        let framed = if encrypted {
            if body.len() > MAX_BODY {
                return Err(Error::Internal("handshake payload too large".into()));
            }
            let padded = payload::padded_len(body.len(), self.settings.padding);
            let mut framed = vec![0u8; 2 + padded];
            payload::encode(&body, padded, &mut framed);
            framed
        } else {
            body
        };
        let mut msg = vec![0u8; (framed.len() + 256).min(MAX_MESSAGE)];
        let n = match noise.write_message(&framed, &mut msg) {
            Ok(n) => n,
            Err(snow::Error::Dh) => return Err(Self::dh_error(&self.key_ops)),
            Err(e) => return Err(Error::Internal(format!("write handshake message: {e}"))),
        };
        if noise.was_write_payload_encrypted() != encrypted {
            return Err(Error::Internal(format!(
                "payload encryption of message {} of {protocol} disagrees with snow",
                self.index
            )));
        }
        msg.truncate(n);
        self.index += 1;
        push_sized(&mut self.out, neg);
        push_sized(&mut self.out, &msg);
        let message = self.index;
        self.note(|| Step::Sent {
            message,
            negotiation: neg.len(),
            noise: n,
        });
        Ok(msg)
    }

    fn read_noise(&mut self, message: &[u8]) -> Result<()> {
        let (Some(noise), Some(protocol)) = (self.noise.as_mut(), self.protocol.as_ref()) else {
            return Err(Error::Internal("no handshake state".into()));
        };
        if message.is_empty() {
            return Err(Error::EmptyHandshakeMessage);
        }
        let encrypted = protocol.payload_encrypted(self.index);
        let mut buf = vec![0u8; message.len()];
        let n = match noise.read_message(message, &mut buf) {
            Ok(n) => n,
            Err(snow::Error::Decrypt) => {
                return Err(Error::Decrypt("handshake message failed to authenticate"))
            }
            Err(snow::Error::Dh) => return Err(Self::dh_error(&self.key_ops)),
            Err(_) => return Err(Error::Decrypt("malformed handshake message")),
        };
        let body = if encrypted {
            let range = payload::body_range(&buf[..n])?;
            buf[range].to_vec()
        } else {
            buf.truncate(n);
            buf
        };
        self.received.push(body);
        self.index += 1;
        Ok(())
    }

    fn is_revoked(&self, key: &[u8; 32]) -> bool {
        self.settings
            .revoked
            .as_ref()
            .is_some_and(|r| r.contains(key))
    }

    fn check_remote(&mut self) -> Result<()> {
        if self.remote_checked {
            return Ok(());
        }
        let Some(key) = self.noise.as_ref().and_then(|n| n.get_remote_static()) else {
            return Ok(());
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| Error::Internal("remote static length".into()))?;
        self.remote_checked = true;
        let role = if self.role.is_initiator() {
            "server"
        } else {
            "client"
        };
        if self.is_revoked(&key) {
            return Err(Error::RevokedKey { role, key });
        }
        if self.expected_remote.is_some_and(|k| k != key) {
            return Err(Error::WrongRemoteKey { role, key });
        }
        if self
            .settings
            .trusted
            .as_ref()
            .is_some_and(|t| !t.contains(&key))
        {
            return Err(Error::UntrustedKey { role, key });
        }
        self.note(|| Step::PeerKey(keys::fingerprint(&key)));
        Ok(())
    }
}

/// Splits a finished Noise handshake into the transport, by its Noise role.
fn split(
    noise: &mut snow::HandshakeState,
    protocol: &Protocol,
    noise_role: Role,
    padding: usize,
) -> Result<Transport> {
    let (k1, k2) = noise.dangerously_get_raw_split();
    let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
    let (send, recv) = if noise_role.is_initiator() {
        (&k1, &k2)
    } else {
        (&k2, &k1)
    };
    Ok(Transport::new(
        CipherState::new(protocol.cipher(), send)?,
        CipherState::new(protocol.cipher(), recv)?,
        padding,
    ))
}

fn push_sized(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
#[path = "handshake_tries_tests.rs"]
mod tries_tests;
