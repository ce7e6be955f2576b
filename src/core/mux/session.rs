//! One multiplexed link, sans-IO (docs/multiplex.md §4-§8).
//!
//! Input: the body of each transport message, as the transport opened it, to
//! [`Session::receive`], which appends [`Event`]s (data events point into that body, no
//! copy). Output: application calls ([`Session::open`], [`Session::send`],
//! [`Session::finish`], [`Session::reset`], [`Session::consumed`], ...) queue frames;
//! [`Session::poll_message`] hands out one message body at a time (whole frames, at most
//! 65517 bytes) for the caller to seal.
//!
//! Two queues keep the ordering that matters: stream frames (open, data, half-close, the
//! application's resets) leave in the order they were made, so a stream's open precedes its
//! data and its data precedes its half-close; link answers (window updates, pings, pongs,
//! go-away, refusals) go first, as they are small and unblock the peer.
//!
//! Bounds on what the peer controls: open streams ≤ `max_streams` (more are refused with a
//! reset), data per stream ≤ its window, answers queued ≤ `max_control_backlog`, cheap frames
//! by [`super::flood`]. Any violation is link-fatal: `receive` returns the error, queues a
//! best-effort go-away, and the session refuses all further work.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use super::error::MuxError;
use super::flood::FloodGuard;
use super::frame::{
    frame_len_at, Frame, Frames, GoAwayReason, Origin, ResetCode, StreamId, MAX_DATA,
    MAX_STREAM_ID, MAX_WINDOW,
};
use super::stream::{Stream, INITIAL_WINDOW};
use crate::core::payload::MAX_BODY;

/// Unanswered pings we allow ourselves.
pub const MAX_PINGS: usize = 4;

/// The payload of the acceptor's first frame, a ping answer nobody asked for: it confirms
/// in band that B multiplexes (docs/multiplex.md §2), so an A whose peer ignored the
/// negotiation field fails the link at its first message instead of reading garbage.
pub const HELLO: [u8; 8] = *b"NSMX\0\0\0\x01";

/// Which end of the link we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A, the NoiseSocket initiator (`noise_upstream`): opens streams, odd ids.
    Opener,
    /// B, the NoiseSocket responder (`noise_listen` with `noise_multiplex on`).
    Acceptor,
}

/// Limits of one link.
#[derive(Clone, Debug)]
pub struct Config {
    /// Streams open at once: the most we open (A) or accept (B; more are refused).
    pub max_streams: u32,
    /// Receive window we grant each stream, from [`INITIAL_WINDOW`] to 2^31-1.
    pub stream_window: u32,
    /// Frames per flood-accounting block.
    pub flood_block: u32,
    /// Cheap frames allowed per block.
    pub flood_max_cheap: u32,
    /// Bytes of answers (pongs, refusals, updates) we queue before a peer that makes us
    /// answer without reading is cut off.
    pub max_control_backlog: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_streams: 128,
            stream_window: 256 * 1024,
            flood_block: 1024,
            flood_max_cheap: 256,
            max_control_backlog: 64 * 1024,
        }
    }
}

/// What the peer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// (B) A opened a stream.
    StreamOpened { id: StreamId, origin: Origin },
    /// Stream bytes at `range` of the body given to [`Session::receive`]; count them with
    /// [`Session::consumed`] once the application took them.
    Data { id: StreamId, range: Range<usize> },
    /// The peer half-closed the stream: no more data will come.
    HalfClosed { id: StreamId },
    /// The stream is gone both ways. `REFUSED` (also for every stream above a go-away's
    /// last id) means it was never processed: safe to retry elsewhere.
    Reset { id: StreamId, code: ResetCode },
    /// We may send `window` bytes on the stream now.
    WindowOpened { id: StreamId, window: u32 },
    /// The answer to our [`Session::ping`].
    Pong { payload: [u8; 8] },
    /// The peer goes away: no new streams; streams up to `last_id` go on.
    GoAway {
        last_id: StreamId,
        reason: GoAwayReason,
    },
    /// The peer rekeyed its sending cipher: rekey the receiving one before opening the
    /// next transport message.
    Rekey,
}

/// A message body produced by [`Session::poll_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The body ends with a rekey frame: seal it, then rekey the sending cipher.
    pub rekey_after: bool,
}

/// The state of one multiplexed link.
#[derive(Debug)]
pub struct Session {
    side: Side,
    config: Config,
    streams: BTreeMap<StreamId, Stream>,
    /// The highest stream id opened on the link so far (by A; 0 before the first).
    highest: StreamId,
    go_away_sent: Option<StreamId>,
    go_away_received: Option<StreamId>,
    /// Link answers (window updates, pings, pongs, go-away, refusals).
    control: Vec<u8>,
    /// Stream frames in the order they were made.
    data: Vec<u8>,
    rekey_pending: bool,
    pings: VecDeque<[u8; 8]>,
    flood: FloodGuard,
    failed: bool,
    /// (A) The acceptor's hello arrived.
    hello_seen: bool,
}

impl Session {
    pub fn new(side: Side, config: Config) -> Result<Self, MuxError> {
        if config.max_streams == 0 {
            return Err(MuxError::Config("max_streams must be at least 1"));
        }
        if !(INITIAL_WINDOW..=MAX_WINDOW).contains(&config.stream_window) {
            return Err(MuxError::Config(
                "stream_window must be from 65536 to 2147483647",
            ));
        }
        if config.flood_block == 0 || config.max_control_backlog < 64 {
            return Err(MuxError::Config("flood and backlog limits too small"));
        }
        let mut control = Vec::new();
        if side == Side::Acceptor {
            Frame::Ping {
                ack: true,
                payload: HELLO,
            }
            .encode(&mut control);
        }
        Ok(Session {
            side,
            flood: FloodGuard::new(config.flood_block, config.flood_max_cheap),
            config,
            streams: BTreeMap::new(),
            highest: 0,
            go_away_sent: None,
            go_away_received: None,
            control,
            data: Vec::new(),
            rekey_pending: false,
            pings: VecDeque::new(),
            failed: false,
            hello_seen: side == Side::Acceptor,
        })
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// Open streams, in id order.
    pub fn stream_ids(&self) -> Vec<StreamId> {
        self.streams.keys().copied().collect()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether `id` is open (in at least one direction).
    pub fn is_open(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    /// Bytes we may send on `id` now.
    pub fn send_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).map(Stream::send_window)
    }

    /// What the peer may still send on `id` before we consume more.
    pub fn recv_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).map(Stream::recv_window)
    }

    /// Bytes queued and not yet handed out by [`Session::poll_message`]: the caller stops
    /// feeding [`Session::send`] while this is large (its own backpressure).
    pub fn queued_len(&self) -> usize {
        self.control.len() + self.data.len()
    }

    pub fn has_output(&self) -> bool {
        !self.control.is_empty() || !self.data.is_empty() || self.rekey_pending
    }

    /// A go-away was sent or received and no stream is left: the link can close.
    pub fn is_finished(&self) -> bool {
        (self.go_away_sent.is_some() || self.go_away_received.is_some()) && self.streams.is_empty()
    }

    /// The session hit a link-fatal error.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether a go-away was received (A must open new streams on another link).
    pub fn go_away_received(&self) -> Option<StreamId> {
        self.go_away_received
    }

    fn check_live(&self) -> Result<(), MuxError> {
        if self.failed {
            return Err(MuxError::LinkFailed);
        }
        Ok(())
    }

    /// A stream id that A opened on this link (open now or closed since).
    fn was_opened(&self, id: StreamId) -> bool {
        id % 2 == 1 && id <= self.highest
    }

    // ----- application calls -----

    /// (A) Opens a stream for a client connection from `origin`.
    pub fn open(&mut self, origin: Origin) -> Result<StreamId, MuxError> {
        self.check_live()?;
        if self.side != Side::Opener {
            return Err(MuxError::NotOpener);
        }
        if self.go_away_sent.is_some() || self.go_away_received.is_some() {
            return Err(MuxError::GoingAway);
        }
        if self.streams.len() >= self.config.max_streams as usize {
            return Err(MuxError::TooManyStreams(self.config.max_streams));
        }
        let id = if self.highest == 0 {
            1
        } else {
            self.highest + 2
        };
        if id > MAX_STREAM_ID {
            return Err(MuxError::IdsExhausted);
        }
        self.highest = id;
        let mut stream = Stream::new(id, self.config.stream_window);
        Frame::Open { id, origin }.encode(&mut self.data);
        // After the open, in the same queue: an update before it would name an unknown
        // stream.
        if let Some(increment) = stream.take_credit(true) {
            Frame::WindowUpdate { id, increment }.encode(&mut self.data);
        }
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// Queues as much of `data` as the stream's window allows; returns how much.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, MuxError> {
        self.check_live()?;
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(MuxError::NoSuchStream(id))?;
        if s.local_fin() {
            return Err(MuxError::AlreadyFinished(id));
        }
        let n = data.len().min(s.send_window() as usize);
        for chunk in data[..n].chunks(MAX_DATA) {
            Frame::Data {
                id,
                data: chunk,
                fin: false,
            }
            .encode(&mut self.data);
        }
        s.sent(n);
        Ok(n)
    }

    /// Half-closes our direction of the stream (the peer reads EOF after the data).
    pub fn finish(&mut self, id: StreamId) -> Result<(), MuxError> {
        self.check_live()?;
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(MuxError::NoSuchStream(id))?;
        s.finish()?;
        Frame::Data {
            id,
            data: &[],
            fin: true,
        }
        .encode(&mut self.data);
        if s.is_done() {
            self.streams.remove(&id);
        }
        Ok(())
    }

    /// Aborts the stream both ways. A stream that is already gone is left alone.
    pub fn reset(&mut self, id: StreamId, code: ResetCode) -> Result<(), MuxError> {
        self.check_live()?;
        if self.streams.remove(&id).is_none() {
            return if self.was_opened(id) {
                Ok(())
            } else {
                Err(MuxError::NoSuchStream(id))
            };
        }
        Frame::Reset { id, code }.encode(&mut self.data);
        Ok(())
    }

    /// The application took `n` bytes of the stream's data: credit goes back to the peer
    /// once half the window was taken. A stream already gone is ignored.
    pub fn consumed(&mut self, id: StreamId, n: usize) -> Result<(), MuxError> {
        self.check_live()?;
        if let Some(s) = self.streams.get_mut(&id) {
            s.consumed(n)?;
            if let Some(increment) = s.take_credit(false) {
                Frame::WindowUpdate { id, increment }.encode(&mut self.control);
            }
        }
        Ok(())
    }

    /// Sends a keep-alive ping; the answer is [`Event::Pong`] with the same payload.
    pub fn ping(&mut self, payload: [u8; 8]) -> Result<(), MuxError> {
        self.check_live()?;
        if self.pings.len() >= MAX_PINGS {
            return Err(MuxError::TooManyPings(self.pings.len()));
        }
        self.pings.push_back(payload);
        Frame::Ping {
            ack: false,
            payload,
        }
        .encode(&mut self.control);
        Ok(())
    }

    /// Announces that we take no new streams (B: those above the highest id seen so far
    /// are refused; A: it opens no more). Streams in flight go on. Sent once.
    pub fn go_away(&mut self, reason: GoAwayReason) {
        if self.failed || self.go_away_sent.is_some() {
            return;
        }
        let last_id = match self.side {
            Side::Acceptor => self.highest,
            Side::Opener => 0,
        };
        self.go_away_sent = Some(last_id);
        Frame::GoAway { last_id, reason }.encode(&mut self.control);
    }

    /// Rekeys our sending direction at the end of the next message (docs/multiplex.md §6).
    pub fn rekey(&mut self) {
        if !self.failed {
            self.rekey_pending = true;
        }
    }

    /// Appends the next message body (whole frames, at most 65517 bytes) to `out`.
    pub fn poll_message(&mut self, out: &mut Vec<u8>) -> Option<Outgoing> {
        if !self.has_output() {
            return None;
        }
        let rekey_after = self.rekey_pending;
        let mut room = MAX_BODY - if rekey_after { 8 } else { 0 };
        room -= take_whole_frames(&mut self.control, out, room);
        take_whole_frames(&mut self.data, out, room);
        if rekey_after {
            Frame::Rekey.encode(out);
            self.rekey_pending = false;
        }
        Some(Outgoing { rekey_after })
    }

    // ----- input -----

    /// Handles the body of one transport message. Any error is link-fatal (see the module
    /// doc); events pushed before it came from authenticated frames, but the caller fails
    /// every stream of the link anyway.
    pub fn receive(&mut self, body: &[u8], events: &mut Vec<Event>) -> Result<(), MuxError> {
        self.check_live()?;
        let r = self.receive_frames(body, events);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn fail(&mut self, e: &MuxError) {
        self.failed = true;
        self.control.clear();
        self.data.clear();
        self.rekey_pending = false;
        let reason = match e {
            MuxError::Flood { .. } | MuxError::ControlBacklog(_) => GoAwayReason::FLOOD,
            _ => GoAwayReason::PROTOCOL,
        };
        // Never above an earlier go-away's: opens ignored since then raised `highest`.
        let last_id = match self.side {
            Side::Acceptor => self.go_away_sent.unwrap_or(self.highest),
            Side::Opener => 0,
        };
        Frame::GoAway { last_id, reason }.encode(&mut self.control);
    }

    fn receive_frames(&mut self, body: &[u8], events: &mut Vec<Event>) -> Result<(), MuxError> {
        if body.len() > MAX_BODY {
            return Err(MuxError::MessageTooLarge(body.len()));
        }
        let mut frames = Frames::new(body);
        while let Some(next) = frames.next_with_range() {
            let (frame, range) = next?;
            if !self.hello_seen {
                if frame
                    != (Frame::Ping {
                        ack: true,
                        payload: HELLO,
                    })
                {
                    return Err(MuxError::NoHello(frame.kind()));
                }
                self.hello_seen = true;
                continue;
            }
            let cheap = self.handle(frame, range, events)?;
            self.flood.frame(cheap)?;
        }
        Ok(())
    }

    /// Queues an answer the peer made us write, within the backlog limit.
    fn answer(&mut self, frame: Frame<'_>) -> Result<(), MuxError> {
        if self.control.len() + frame.encoded_len() > self.config.max_control_backlog {
            return Err(MuxError::ControlBacklog(self.control.len()));
        }
        frame.encode(&mut self.control);
        Ok(())
    }

    /// One frame; returns what makes it cheap, if it is (docs/multiplex.md §8).
    fn handle(
        &mut self,
        frame: Frame<'_>,
        range: Range<usize>,
        events: &mut Vec<Event>,
    ) -> Result<Option<&'static str>, MuxError> {
        let kind = frame.kind();
        match frame {
            Frame::Open { id, origin } => self.on_open(id, origin, events),
            Frame::Data { id, data, fin } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.on_closed(kind, id, "data on a closed stream");
                };
                s.on_data(data.len(), fin)?;
                if !data.is_empty() {
                    events.push(Event::Data { id, range });
                }
                if fin {
                    events.push(Event::HalfClosed { id });
                    if s.is_done() {
                        self.streams.remove(&id);
                    }
                }
                Ok((data.is_empty() && !fin).then_some("empty data"))
            }
            Frame::WindowUpdate { id, increment } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.on_closed(kind, id, "window update on a closed stream");
                };
                let finished = s.local_fin();
                let window = s.on_window_update(increment)?;
                if finished {
                    return Ok(Some("window update for a finished direction"));
                }
                events.push(Event::WindowOpened { id, window });
                Ok(None)
            }
            Frame::Reset { id, code } => {
                if self.streams.remove(&id).is_none() {
                    return self.on_closed(kind, id, "reset of a closed stream");
                }
                events.push(Event::Reset { id, code });
                Ok(Some("reset"))
            }
            Frame::Ping {
                ack: false,
                payload,
            } => {
                self.answer(Frame::Ping { ack: true, payload })?;
                Ok(Some("ping"))
            }
            Frame::Ping { ack: true, payload } => {
                match self.pings.iter().position(|p| *p == payload) {
                    Some(i) => {
                        self.pings.remove(i);
                        events.push(Event::Pong { payload });
                        Ok(None)
                    }
                    None => Ok(Some("unexpected pong")),
                }
            }
            Frame::GoAway { last_id, reason } => self.on_go_away(last_id, reason, events),
            Frame::Rekey => {
                events.push(Event::Rekey);
                Ok(Some("rekey"))
            }
        }
    }

    fn on_closed(
        &self,
        kind: super::frame::FrameKind,
        id: StreamId,
        what: &'static str,
    ) -> Result<Option<&'static str>, MuxError> {
        if self.was_opened(id) {
            // A race with our reset or a refusal: ignored, but not free.
            Ok(Some(what))
        } else {
            Err(MuxError::UnknownStream { kind, id })
        }
    }

    fn on_open(
        &mut self,
        id: StreamId,
        origin: Origin,
        events: &mut Vec<Event>,
    ) -> Result<Option<&'static str>, MuxError> {
        if self.side == Side::Opener {
            return Err(MuxError::OpenByAcceptor(id));
        }
        if id % 2 == 0 {
            return Err(MuxError::WrongParity(id));
        }
        if self.go_away_received.is_some() {
            return Err(MuxError::OpenAfterGoAway(id));
        }
        if id <= self.highest {
            return Err(MuxError::IdReused {
                id,
                highest: self.highest,
            });
        }
        self.highest = id;
        if self.go_away_sent.is_some_and(|last| id > last) {
            // A knows from our go-away that this one is not processed.
            return Ok(Some("open after our go-away"));
        }
        if self.streams.len() >= self.config.max_streams as usize {
            self.answer(Frame::Reset {
                id,
                code: ResetCode::REFUSED,
            })?;
            return Ok(Some("refused open"));
        }
        let mut stream = Stream::new(id, self.config.stream_window);
        if let Some(increment) = stream.take_credit(true) {
            self.answer(Frame::WindowUpdate { id, increment })?;
        }
        self.streams.insert(id, stream);
        events.push(Event::StreamOpened { id, origin });
        Ok(None)
    }

    fn on_go_away(
        &mut self,
        last_id: StreamId,
        reason: GoAwayReason,
        events: &mut Vec<Event>,
    ) -> Result<Option<&'static str>, MuxError> {
        let previous = self.go_away_received;
        if let Some(previous) = previous {
            if last_id > previous {
                return Err(MuxError::GoAwayIncreased {
                    previous,
                    last: last_id,
                });
            }
        }
        self.go_away_received = Some(last_id);
        if self.side == Side::Opener {
            let refused: Vec<StreamId> = self
                .streams
                .range(last_id.saturating_add(1)..)
                .map(|(id, _)| *id)
                .collect();
            for id in refused {
                self.streams.remove(&id);
                events.push(Event::Reset {
                    id,
                    code: ResetCode::REFUSED,
                });
            }
        }
        events.push(Event::GoAway { last_id, reason });
        Ok(previous.map(|_| "repeated go-away"))
    }
}

/// Moves the whole frames at the start of `src` that fit in `room` bytes to `out`;
/// returns the bytes moved. Every queued frame is at most 65517 bytes, so a message with
/// full room always takes at least one.
fn take_whole_frames(src: &mut Vec<u8>, out: &mut Vec<u8>, room: usize) -> usize {
    let mut pos = 0;
    while let Some(len) = frame_len_at(&src[pos..]) {
        if pos + len > room {
            break;
        }
        pos += len;
    }
    out.extend_from_slice(&src[..pos]);
    src.drain(..pos);
    pos
}
