//! [`DelegatedHandshake`]: a [`Handshake`] whose static key is held by the key agent, run
//! again from its first byte each time the agent answers (see the parent module doc).
//!
//! snow's `HandshakeState` cannot be cloned or rolled back, and a message that fails half
//! way has already changed it; so on an answer the handshake is rebuilt from the same
//! negotiator, settings and payload and fed the same history (bytes read, payloads set,
//! verdicts given), with the ephemeral keys, their DH results and every agent answer taken
//! from [`KeyOps`]. Given those, a handshake is deterministic, so the replay writes the same
//! bytes as the first run; those the caller already took are dropped.
//!
//! Invariants: the history holds only what the handshake consumed (never transport bytes);
//! a replay that stops anywhere but at its last event, or writes less than was sent, is an
//! internal error, never a guess; on the end, success or failure, [`KeyOps`] is wiped.

use std::sync::Arc;

use super::AgentError;
use crate::core::error::{Error, Result};
use crate::core::handshake::{Established, Handshake, Settings, Verdict};
use crate::core::key_ops::{KeyOp, KeyOps};
use crate::core::negotiation::Negotiator;
use crate::core::protocol::{Protocol, Role};
use crate::core::trace::Step;

/// What the handshake was given, in order, to replay it.
enum Event {
    Input(Vec<u8>),
    Payload(Vec<u8>),
    Verdict(Verdict),
}

/// A handshake whose static-key DH comes from the key agent. Same use as [`Handshake`],
/// plus: when [`DelegatedHandshake::pending_key_op`] says so, ask the agent and give the
/// answer to [`DelegatedHandshake::provide`]; meanwhile `read` consumes nothing.
pub struct DelegatedHandshake {
    role: Role,
    negotiator: Arc<dyn Negotiator>,
    settings: Arc<Settings>,
    payload: Vec<u8>,
    ops: Arc<KeyOps>,
    inner: Handshake,
    history: Vec<Event>,
    /// Output bytes the caller consumed, since the start.
    sent: usize,
    tracing: bool,
    /// Steps already returned by `take_steps`, skipped after a replay.
    steps_seen: usize,
    /// Steps of a replay not yet returned.
    pending_steps: Vec<Step>,
    failed: bool,
}

impl DelegatedHandshake {
    /// An initiator; `keys` are the agent's public keys it may use (the negotiator's
    /// credentials name them by public key, see [`crate::core::negotiation::Policy::with_agent_keys`]).
    pub fn initiator(
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        payload: Vec<u8>,
        keys: Arc<[[u8; 32]]>,
    ) -> Result<Self> {
        let ops = KeyOps::new(keys);
        let inner = Handshake::initiator_with_key_ops(
            negotiator.clone(),
            settings.clone(),
            payload.clone(),
            Some(ops.clone()),
        )?;
        Ok(Self::wrap(
            Role::Initiator,
            negotiator,
            settings,
            payload,
            ops,
            inner,
        ))
    }

    /// A responder; see [`DelegatedHandshake::initiator`].
    pub fn responder(
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        keys: Arc<[[u8; 32]]>,
    ) -> Self {
        let ops = KeyOps::new(keys);
        let inner = Handshake::responder_with_key_ops(
            negotiator.clone(),
            settings.clone(),
            Some(ops.clone()),
        );
        Self::wrap(
            Role::Responder,
            negotiator,
            settings,
            Vec::new(),
            ops,
            inner,
        )
    }

    fn wrap(
        role: Role,
        negotiator: Arc<dyn Negotiator>,
        settings: Arc<Settings>,
        payload: Vec<u8>,
        ops: Arc<KeyOps>,
        inner: Handshake,
    ) -> Self {
        DelegatedHandshake {
            role,
            negotiator,
            settings,
            payload,
            ops,
            inner,
            history: Vec::new(),
            sent: 0,
            tracing: false,
            steps_seen: 0,
            pending_steps: Vec::new(),
            failed: false,
        }
    }

    /// The X25519 the handshake waits for: ask the agent for it.
    pub fn pending_key_op(&self) -> Option<KeyOp> {
        if self.failed || !self.inner.awaits_key_op() {
            return None;
        }
        self.ops.missing()
    }

    /// The agent's answer to [`DelegatedHandshake::pending_key_op`] (or why there is none):
    /// the handshake goes on (it may then wait for another operation, a verdict, or be
    /// done) or fails with [`Error::KeyAgent`].
    pub fn provide(&mut self, answer: std::result::Result<[u8; 32], AgentError>) -> Result<()> {
        let Some(op) = self.pending_key_op() else {
            return Err(Error::Internal(
                "key agent answer without a question".into(),
            ));
        };
        let stored = answer.and_then(|result| self.ops.answer(&op, &result));
        if let Err(e) = stored {
            return Err(self.fail(Error::KeyAgent(e)));
        }
        self.replay().map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = true;
        self.ops.close();
        e
    }

    /// Rebuilds the handshake and feeds it its history again (module doc).
    fn replay(&mut self) -> Result<()> {
        self.ops.rewind();
        let mut inner = match self.role {
            Role::Initiator => Handshake::initiator_with_key_ops(
                self.negotiator.clone(),
                self.settings.clone(),
                self.payload.clone(),
                Some(self.ops.clone()),
            )?,
            Role::Responder => Handshake::responder_with_key_ops(
                self.negotiator.clone(),
                self.settings.clone(),
                Some(self.ops.clone()),
            ),
        };
        if self.tracing {
            inner.trace();
        }
        let last = self.history.len();
        for (i, event) in self.history.iter().enumerate() {
            if inner.awaits_key_op() {
                return Err(Error::Internal(format!(
                    "replay stopped for the key agent at event {i} of {last}"
                )));
            }
            match event {
                Event::Input(bytes) => {
                    let used = inner.read(bytes)?;
                    if used != bytes.len() && !(inner.awaits_key_op() && i + 1 == last) {
                        return Err(Error::Internal("replay read differently".into()));
                    }
                }
                Event::Payload(p) => inner.set_payload(p.clone()),
                Event::Verdict(v) => inner.resolve(v.clone())?,
            }
        }
        if inner.pending_output().len() < self.sent {
            return Err(Error::Internal("replay wrote less than was sent".into()));
        }
        inner.consume_output(self.sent);
        if self.tracing {
            let steps = inner.take_steps();
            self.pending_steps = steps.into_iter().skip(self.steps_seen).collect();
        }
        self.inner = inner;
        Ok(())
    }

    /// As [`Handshake::read`]; consumes nothing while a key operation is pending.
    pub fn read(&mut self, input: &[u8]) -> Result<usize> {
        if self.failed {
            return Err(Error::Internal("read after a failed handshake".into()));
        }
        if self.inner.awaits_key_op() {
            return Ok(0);
        }
        match self.inner.read(input) {
            Ok(used) => {
                if used > 0 {
                    match self.history.last_mut() {
                        Some(Event::Input(bytes)) => bytes.extend_from_slice(&input[..used]),
                        _ => self.history.push(Event::Input(input[..used].to_vec())),
                    }
                }
                Ok(used)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    pub fn pending_output(&self) -> &[u8] {
        self.inner.pending_output()
    }

    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.inner.pending_output().len());
        self.sent += n;
        self.inner.consume_output(n);
    }

    pub fn pending_verdict(&self) -> Option<[u8; 32]> {
        self.inner.pending_verdict()
    }

    /// As [`Handshake::resolve`]; an `Allow` may lead to a pending key operation.
    pub fn resolve(&mut self, verdict: Verdict) -> Result<()> {
        self.history.push(Event::Verdict(verdict.clone()));
        self.inner.resolve(verdict).map_err(|e| self.fail(e))
    }

    pub fn set_payload(&mut self, payload: Vec<u8>) {
        self.history.push(Event::Payload(payload.clone()));
        self.inner.set_payload(payload);
    }

    pub fn eof(&mut self) -> Error {
        let e = self.inner.eof();
        self.fail(e)
    }

    pub fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// As [`Handshake::padding`].
    pub fn padding(&self) -> usize {
        self.settings.padding
    }

    pub fn protocol(&self) -> Option<&Protocol> {
        self.inner.protocol()
    }

    pub fn received_payloads(&self) -> &[Vec<u8>] {
        self.inner.received_payloads()
    }

    pub fn trace(&mut self) {
        self.tracing = true;
        self.inner.trace();
    }

    pub fn take_steps(&mut self) -> Vec<Step> {
        let mut steps = std::mem::take(&mut self.pending_steps);
        steps.extend(self.inner.take_steps());
        self.steps_seen += steps.len();
        steps
    }

    /// As [`Handshake::finish`]; the agent's answers and the ephemeral keys are wiped.
    pub fn finish(self) -> Result<Established> {
        self.ops.close();
        self.inner.finish()
    }
}
