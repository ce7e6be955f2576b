//! Key confirmation: an nginx-noise extension to NoiseSocket by which a server tells its
//! client, under the session keys, whether it accepted the client's static key
//! (docs/protocol.md §4.8).
//!
//! In a three-message pattern (`XX`, `XK`, `XN`) the initiator writes the last handshake
//! message, the one that carries its static key, and NoiseSocket leaves the responder no
//! way to answer it: a server that refuses the key can only close, and a client cannot tell
//! "refused" from "the server has nothing to say yet". So, only when both sides take part:
//!
//! * the initiator puts [`MARKER`](crate::core::key_verdict::MARKER) as the body of its first handshake message (a request);
//! * a responder that knows the extension, and runs a three-message pattern as the Noise
//!   responder, puts [`MARKER`](crate::core::key_verdict::MARKER) as the body of its own first message (an offer);
//! * once it has judged the initiator's key, the responder sends one transport message
//!   whose body is a [`KeyVerdict`]; the initiator counts the handshake as done only when it
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
use super::key_verdict::{KeyVerdict, MARKER};
use super::transport::{Opened, Sealer, Transport, BODY_OFFSET};

/// The verdict that a responder's error about the initiator's key amounts to.
pub fn verdict_of(e: &Error) -> KeyVerdict {
    match e {
        Error::UntrustedKey { .. } | Error::Unauthorized { .. } => KeyVerdict::Untrusted,
        Error::RevokedKey { .. } => KeyVerdict::Revoked,
        Error::WrongRemoteKey { .. } => KeyVerdict::WrongKey,
        Error::NoPeerKey => KeyVerdict::NoKey,
        _ => KeyVerdict::Other,
    }
}

/// Responder: appends the transport frame that carries `verdict` to `out`.
pub fn seal(sealer: &mut Sealer, verdict: KeyVerdict, out: &mut Vec<u8>) -> Result<()> {
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
    ) -> Result<(usize, Option<KeyVerdict>)> {
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
            [m @ .., code] if m == MARKER => Ok((used, Some(KeyVerdict::from_code(*code)))),
            _ => Err(Error::BadConfirmation("not a verdict")),
        }
    }

    /// Whether part of the frame has arrived (EOF then truncates it).
    pub fn started(&self) -> bool {
        !self.frame.is_empty()
    }
}
