//! Key confirmation: an nginx-noise extension to NoiseSocket by which a server tells its
//! client, under the session keys, whether it accepted the client's static key
//! (docs/protocol.md §4.8).
//!
//! In a three-message pattern (`XX`, `XK`, `XN`) the initiator writes the last handshake
//! message, the one that carries its static key, and NoiseSocket leaves the responder no
//! way to answer it: a server that refuses the key can only close, and a client cannot tell
//! "refused" from "the server has nothing to say yet". So, only when both sides take part:
//!
//! * the initiator puts [`MARKER`] as the body of its first handshake message (a request);
//! * a responder that knows the extension, and runs a three-message pattern as the Noise
//!   responder, puts [`MARKER`] as the body of its own first message (an offer);
//! * once it has judged the initiator's key, the responder sends one transport message
//!   whose body is a [`Verdict`]; the initiator counts the handshake as done only when it
//!   has opened an accepting one.
//!
//! Invariants:
//! * Both markers are handshake payloads, so the handshake hash covers them: a request or
//!   an offer stripped or added on the way makes the next handshake message fail to
//!   authenticate. The verdict is the responder's first transport message (nonce 0), under
//!   keys that depend on every handshake message, the initiator's last one included.
//! * Nothing changes on the wire unless the initiator asks; a responder that does not know
//!   the extension sees an opaque first payload, which NoiseSocket peers ignore, and never
//!   offers, so the initiator then finishes as usual.
//! * The initiator buffers at most one transport frame while it waits.

use super::error::{Error, Result};
use super::frame::{transport_frame, FrameStatus};
use super::transport::{Opened, Sealer, Transport, BODY_OFFSET};

/// The request (initiator's first payload) and the offer (responder's first payload), and
/// the start of every verdict: `NSKC` (NoiseSocket key confirmation), version 1.
pub const MARKER: &[u8] = b"NSKC\x01";

/// The responder's judgement of the initiator's static key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// The key is not among the responder's trusted keys.
    Untrusted,
    /// The key is on the responder's revoked-keys list.
    Revoked,
    /// The key differs from the one the responder expects of this client.
    WrongKey,
    /// The responder requires a static key and the handshake proved none.
    NoKey,
    /// Any other reason.
    Other,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Accepted => 0,
            Verdict::Untrusted => 1,
            Verdict::Revoked => 2,
            Verdict::WrongKey => 3,
            Verdict::NoKey => 4,
            Verdict::Other => 0xff,
        }
    }

    fn from_code(code: u8) -> Verdict {
        match code {
            0 => Verdict::Accepted,
            1 => Verdict::Untrusted,
            2 => Verdict::Revoked,
            3 => Verdict::WrongKey,
            4 => Verdict::NoKey,
            _ => Verdict::Other,
        }
    }

    /// The verdict that a responder's error about the initiator's key amounts to.
    pub fn of(e: &Error) -> Verdict {
        match e {
            Error::UntrustedKey { .. } | Error::Unauthorized { .. } => Verdict::Untrusted,
            Error::RevokedKey { .. } => Verdict::Revoked,
            Error::WrongRemoteKey { .. } => Verdict::WrongKey,
            Error::NoPeerKey => Verdict::NoKey,
            _ => Verdict::Other,
        }
    }

    /// Why the responder refused, in words, for the initiator's error message.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Untrusted => "our static key is not in its trusted keys",
            Verdict::Revoked => "our static key is on its revoked-keys list",
            Verdict::WrongKey => "our static key is not the one it expects of us",
            Verdict::NoKey => "it requires a static key and we proved none",
            Verdict::Other => "for a reason it did not name",
        }
    }

    /// The verdict's body: [`MARKER`], then the code.
    pub fn body(self) -> [u8; 6] {
        let mut body = [0u8; 6];
        body[..5].copy_from_slice(MARKER);
        body[5] = self.code();
        body
    }
}

/// Responder: appends the transport frame that carries `verdict` to `out`.
pub fn seal(sealer: &mut Sealer, verdict: Verdict, out: &mut Vec<u8>) -> Result<()> {
    let body = verdict.body();
    let start = out.len();
    out.resize(start + sealer.frame_len(body.len()), 0);
    let frame = &mut out[start..];
    frame[BODY_OFFSET..][..body.len()].copy_from_slice(&body);
    let n = sealer.seal_prepared(frame, body.len())?;
    out.truncate(start + n);
    Ok(())
}

/// Initiator: collects the responder's first transport frame and opens it.
#[derive(Default)]
pub struct Reader {
    frame: Vec<u8>,
}

impl Reader {
    /// Consumes bytes of the verdict frame, never beyond its end. Returns how many were
    /// used and, once the frame is whole, the verdict (anything but a well-formed verdict
    /// is an error).
    pub fn feed(
        &mut self,
        input: &[u8],
        transport: &mut Transport,
    ) -> Result<(usize, Option<Verdict>)> {
        let mut used = 0;
        loop {
            let want = match transport_frame(&self.frame)? {
                FrameStatus::Incomplete(want) => want,
                FrameStatus::Complete(2) => return Err(Error::BadConfirmation("an empty frame")),
                FrameStatus::Complete(_) => break,
            };
            if used == input.len() {
                return Ok((used, None));
            }
            let take = (want - self.frame.len()).min(input.len() - used);
            self.frame.extend_from_slice(&input[used..used + take]);
            used += take;
        }
        let body = match transport.open(&mut self.frame)? {
            Opened::Frame { body, .. } => &self.frame[body],
            Opened::Incomplete => return Err(Error::Internal("verdict frame incomplete".into())),
        };
        match body {
            [m @ .., code] if m == MARKER => Ok((used, Some(Verdict::from_code(*code)))),
            _ => Err(Error::BadConfirmation("not a verdict")),
        }
    }

    /// Whether part of the frame has arrived (EOF then truncates it).
    pub fn started(&self) -> bool {
        !self.frame.is_empty()
    }
}
