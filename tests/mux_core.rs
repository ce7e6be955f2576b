//! The multiplexing core (docs/multiplex.md): frames byte for byte, two sessions wired back
//! to back (many interleaved streams, flow control, half-closes, resets, go-away, rekey),
//! every kind of malformed input with its documented error, the negotiation field through
//! real handshakes, and a deterministic fuzz of the decoder and the session.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use aws_lc_rs::digest::{digest, SHA256};
use nginx_noise::core::mux::frame::{Frame, FrameKind, Frames, HEADER_LEN, MAX_DATA};
use nginx_noise::core::mux::session::HELLO;
use nginx_noise::core::mux::stream::INITIAL_WINDOW;
use nginx_noise::core::mux::{
    Config, Event, Fault, GoAwayReason, MuxError, Origin, ResetCode, Session, Side, StreamId,
};
use nginx_noise::core::negotiation::codec::Codec;
use nginx_noise::core::negotiation::multiplex;
use nginx_noise::core::negotiation::Stage;
use nginx_noise::core::payload::MAX_BODY;
use nginx_noise::core::transport::{CipherState, Opened, Transport};
use nginx_noise::core::Error;
use snow::params::CipherChoice;
use support::*;

// ---------- helpers ----------

/// `Config` under a name that `use MuxError::*` does not shadow.
type LinkConfig = Config;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn enc(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

fn hello() -> Vec<u8> {
    enc(&[Frame::Ping {
        ack: true,
        payload: HELLO,
    }])
}

fn acceptor() -> Session {
    Session::new(Side::Acceptor, Config::default()).unwrap()
}

/// An opener that has seen the acceptor's hello.
fn opener() -> Session {
    let mut a = Session::new(Side::Opener, Config::default()).unwrap();
    a.receive(&hello(), &mut Vec::new()).unwrap();
    a
}

fn open1() -> Vec<u8> {
    enc(&[Frame::Open {
        id: 1,
        origin: Origin::Unknown,
    }])
}

/// Feeds `body` to `s`, returning the error and checking the link is lost afterwards.
fn fatal(s: &mut Session, body: &[u8]) -> MuxError {
    let err = s.receive(body, &mut Vec::new()).unwrap_err();
    assert_eq!(err.fault(), Fault::Peer, "{err}");
    assert!(s.is_failed());
    assert_eq!(s.receive(&[], &mut Vec::new()), Err(MuxError::LinkFailed));
    // What is left to send is exactly one go-away.
    let mut out = Vec::new();
    assert!(s.poll_message(&mut out).is_some());
    let frames: Vec<_> = Frames::new(&out).collect::<Result<_, _>>().unwrap();
    assert!(
        matches!(frames[..], [Frame::GoAway { .. }]),
        "{frames:?} after {err}"
    );
    err
}

/// Moves every queued message from one session to the other; returns the events and the
/// bodies (events' data ranges are resolved into owned bytes).
fn deliver(from: &mut Session, to: &mut Session) -> Vec<(Event, Vec<u8>)> {
    let mut got = Vec::new();
    let mut body = Vec::new();
    let mut events = Vec::new();
    while {
        body.clear();
        from.poll_message(&mut body).is_some()
    } {
        assert!(body.len() <= MAX_BODY);
        events.clear();
        to.receive(&body, &mut events).unwrap();
        for e in events.drain(..) {
            let bytes = match &e {
                Event::Data { range, .. } => body[range.clone()].to_vec(),
                _ => Vec::new(),
            };
            got.push((e, bytes));
        }
    }
    got
}

// ---------- frames ----------

#[test]
fn every_frame_round_trips() {
    let v4: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let big = vec![0xa5u8; MAX_DATA];
    let frames = [
        Frame::Data {
            id: 1,
            data: b"hello",
            fin: false,
        },
        Frame::Data {
            id: 3,
            data: b"",
            fin: true,
        },
        Frame::Data {
            id: 0x7fff_ffff,
            data: b"x",
            fin: true,
        },
        Frame::Open {
            id: 5,
            origin: Origin::Unknown,
        },
        Frame::Open {
            id: 7,
            origin: Origin::Ip(v4),
        },
        Frame::Open {
            id: 9,
            origin: Origin::Ip(v6),
        },
        Frame::WindowUpdate {
            id: 9,
            increment: 0x7fff_ffff,
        },
        Frame::Reset {
            id: 11,
            code: ResetCode::CONNECT_FAILED,
        },
        Frame::Reset {
            id: 11,
            code: ResetCode(0xbeef),
        },
        Frame::Ping {
            ack: false,
            payload: *b"12345678",
        },
        Frame::Ping {
            ack: true,
            payload: *b"abcdefgh",
        },
        Frame::GoAway {
            last_id: 41,
            reason: GoAwayReason::NORMAL,
        },
        Frame::Rekey,
    ];
    for f in &frames {
        let wire = enc(std::slice::from_ref(f));
        assert_eq!(wire.len(), f.encoded_len());
        let back: Vec<_> = Frames::new(&wire).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, std::slice::from_ref(f));
    }
    // All in one message, in order (the rekey last, as it must be).
    let wire = enc(&frames);
    let back: Vec<_> = Frames::new(&wire).collect::<Result<_, _>>().unwrap();
    assert_eq!(back, frames);
    // The largest data frame fills a transport body exactly.
    let wire = enc(&[Frame::Data {
        id: 1,
        data: &big,
        fin: false,
    }]);
    assert_eq!(wire.len(), MAX_BODY);
    assert_eq!(Frames::new(&wire).count(), 1);
    // Byte layouts of docs/multiplex.md §3.
    assert_eq!(
        enc(&[Frame::Open {
            id: 7,
            origin: Origin::Ip(v4)
        }]),
        [1, 0, 0, 0, 0, 7, 0, 7, 4, 192, 0, 2, 7, 0x9c, 0x40]
    );
    assert_eq!(
        enc(&[Frame::GoAway {
            last_id: 41,
            reason: GoAwayReason::FLOOD
        }]),
        [5, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 41, 0, 3]
    );
    assert_eq!(
        enc(&[Frame::Ping {
            ack: true,
            payload: HELLO
        }]),
        [4, 1, 0, 0, 0, 0, 0, 8, b'N', b'S', b'M', b'X', 0, 0, 0, 1]
    );
}

// ---------- malformed input ----------

fn header(t: u8, flags: u8, id: u32, len: u16) -> Vec<u8> {
    let mut h = vec![t, flags];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn with(mut h: Vec<u8>, p: &[u8]) -> Vec<u8> {
    h.extend_from_slice(p);
    h
}

#[test]
fn malformed_frames_give_their_error() {
    use MuxError::*;
    let cases: Vec<(&str, Vec<u8>, MuxError)> = vec![
        ("header cut", vec![0, 0, 0], Truncated { at: 0, len: 3 }),
        (
            "payload cut",
            with(header(0, 0, 1, 5), b"ab"),
            Truncated { at: 0, len: 10 },
        ),
        (
            "second frame cut",
            with(open1(), &[3, 0]),
            Truncated { at: 9, len: 11 },
        ),
        ("unknown type", header(7, 0, 1, 0), UnknownType(7)),
        ("unknown type ff", header(0xff, 0, 0, 0), UnknownType(0xff)),
        (
            "data flag",
            header(0, 2, 1, 0),
            BadFlags {
                kind: FrameKind::Data,
                flags: 2,
            },
        ),
        (
            "open flag",
            with(header(1, 1, 1, 1), &[0]),
            BadFlags {
                kind: FrameKind::Open,
                flags: 1,
            },
        ),
        (
            "window update length",
            with(header(2, 0, 1, 3), &[0, 0, 1]),
            BadLength {
                kind: FrameKind::WindowUpdate,
                len: 3,
            },
        ),
        (
            "reset length",
            with(header(3, 0, 1, 4), &[0; 4]),
            BadLength {
                kind: FrameKind::Reset,
                len: 4,
            },
        ),
        (
            "ping length",
            with(header(4, 0, 0, 7), &[0; 7]),
            BadLength {
                kind: FrameKind::Ping,
                len: 7,
            },
        ),
        (
            "go-away length",
            with(header(5, 0, 0, 5), &[0; 5]),
            BadLength {
                kind: FrameKind::GoAway,
                len: 5,
            },
        ),
        (
            "rekey length",
            with(header(6, 0, 0, 1), &[0]),
            BadLength {
                kind: FrameKind::Rekey,
                len: 1,
            },
        ),
        (
            "open without origin",
            header(1, 0, 1, 0),
            BadLength {
                kind: FrameKind::Open,
                len: 0,
            },
        ),
        (
            "open with a short v4",
            with(header(1, 0, 1, 5), &[4, 1, 2, 3, 4]),
            BadLength {
                kind: FrameKind::Open,
                len: 5,
            },
        ),
        (
            "open with trailing bytes",
            with(header(1, 0, 1, 2), &[0, 0]),
            BadLength {
                kind: FrameKind::Open,
                len: 2,
            },
        ),
        (
            "origin family",
            with(header(1, 0, 1, 1), &[9]),
            BadOrigin(9),
        ),
        (
            "reserved bit",
            header(0, 1, 0x8000_0001, 0),
            ReservedBit(0x8000_0001),
        ),
        (
            "go-away reserved bit",
            with(header(5, 0, 0, 6), &[0x80, 0, 0, 1, 0, 0]),
            ReservedBit(0x8000_0001),
        ),
        (
            "data on stream 0",
            header(0, 1, 0, 0),
            StreamIdRequired(FrameKind::Data),
        ),
        (
            "ping on a stream",
            with(header(4, 0, 1, 8), &[0; 8]),
            StreamIdForbidden {
                kind: FrameKind::Ping,
                id: 1,
            },
        ),
        (
            "zero increment",
            with(open1(), &with(header(2, 0, 1, 4), &[0; 4])),
            ZeroIncrement(1),
        ),
        (
            "oversize message",
            vec![0; MAX_BODY + 1],
            MessageTooLarge(MAX_BODY + 1),
        ),
        (
            "rekey not last",
            with(enc(&[Frame::Rekey]), &open1()),
            RekeyNotLast,
        ),
        (
            "data on a stream never opened",
            with(header(0, 0, 5, 1), b"x"),
            UnknownStream {
                kind: FrameKind::Data,
                id: 5,
            },
        ),
        (
            "window update on a stream never opened",
            with(header(2, 0, 3, 4), &[0, 0, 0, 1]),
            UnknownStream {
                kind: FrameKind::WindowUpdate,
                id: 3,
            },
        ),
        (
            "reset of a stream never opened",
            with(header(3, 0, 9, 2), &[0, 0]),
            UnknownStream {
                kind: FrameKind::Reset,
                id: 9,
            },
        ),
        (
            "open with an even id",
            with(header(1, 0, 2, 1), &[0]),
            WrongParity(2),
        ),
        (
            "open with a used id",
            with(open1(), &open1()),
            IdReused { id: 1, highest: 1 },
        ),
        (
            "open with a lower id",
            with(with(header(1, 0, 5, 1), &[0]), &open1()),
            IdReused { id: 1, highest: 5 },
        ),
        (
            "window overflow beyond 2^31-1",
            with(
                open1(),
                &with(header(2, 0, 1, 4), &[0x7f, 0xff, 0xff, 0xff]),
            ),
            WindowOverflow {
                id: 1,
                window: INITIAL_WINDOW,
                increment: 0x7fff_ffff,
            },
        ),
        (
            "data after the peer's half-close",
            with(
                open1(),
                &enc(&[
                    Frame::Data {
                        id: 1,
                        data: b"",
                        fin: true,
                    },
                    Frame::Data {
                        id: 1,
                        data: b"late",
                        fin: false,
                    },
                ]),
            ),
            DataAfterFin(1),
        ),
        (
            "go-away raising the last id",
            enc(&[
                Frame::GoAway {
                    last_id: 0,
                    reason: GoAwayReason::NORMAL,
                },
                Frame::GoAway {
                    last_id: 1,
                    reason: GoAwayReason::NORMAL,
                },
            ]),
            GoAwayIncreased {
                previous: 0,
                last: 1,
            },
        ),
        (
            "open after the opener's go-away",
            with(
                enc(&[Frame::GoAway {
                    last_id: 0,
                    reason: GoAwayReason::NORMAL,
                }]),
                &open1(),
            ),
            OpenAfterGoAway(1),
        ),
    ];
    // A window of exactly the initial 64 KiB, so "beyond the window" fits in one message.
    let config = LinkConfig {
        stream_window: INITIAL_WINDOW,
        ..LinkConfig::default()
    };
    for (what, body, want) in cases {
        let mut b = Session::new(Side::Acceptor, config.clone()).unwrap();
        assert_eq!(fatal(&mut b, &body), want, "{what}");
    }
    // Data beyond the window (two messages: the window is larger than one).
    let mut b = Session::new(Side::Acceptor, config.clone()).unwrap();
    let first = with(
        open1(),
        &enc(&[Frame::Data {
            id: 1,
            data: &[0; 60000],
            fin: false,
        }]),
    );
    b.receive(&first, &mut Vec::new()).unwrap();
    let over = enc(&[Frame::Data {
        id: 1,
        data: &[0; 5537],
        fin: false,
    }]);
    assert_eq!(
        fatal(&mut b, &over),
        MuxError::FlowControl {
            id: 1,
            len: 5537,
            window: 5536
        }
    );
    // The opener's own rules: B never opens, and its first frame is the hello.
    let mut a = opener();
    assert_eq!(fatal(&mut a, &open1()), MuxError::OpenByAcceptor(1));
    let mut a = Session::new(Side::Opener, LinkConfig::default()).unwrap();
    a.receive(&[], &mut Vec::new()).unwrap(); // an empty message is no frame
    assert_eq!(fatal(&mut a, &open1()), MuxError::NoHello(FrameKind::Open));
    // Data on a stream A opened and B reset (a race): ignored, not an error.
    let mut a = opener();
    let id = a.open(Origin::Unknown).unwrap();
    a.reset(id, ResetCode::CANCEL).unwrap();
    let mut ev = Vec::new();
    a.receive(
        &enc(&[
            Frame::Data {
                id,
                data: b"late",
                fin: true,
            },
            Frame::WindowUpdate { id, increment: 10 },
            Frame::Reset {
                id,
                code: ResetCode::ABORTED,
            },
        ]),
        &mut ev,
    )
    .unwrap();
    assert!(ev.is_empty(), "{ev:?}");
    // ... but an id A never opened is.
    assert_eq!(
        fatal(&mut a, &with(header(0, 0, 3, 1), b"x")),
        MuxError::UnknownStream {
            kind: FrameKind::Data,
            id: 3
        }
    );
}

#[test]
fn floods_are_cut_off() {
    // Pings: each costs a pong; 257 in one block is too many.
    let mut b = acceptor();
    let pings: Vec<u8> = (0..257u32)
        .flat_map(|i| {
            enc(&[Frame::Ping {
                ack: false,
                payload: [i as u8; 8],
            }])
        })
        .collect();
    assert!(matches!(
        fatal(&mut b, &pings),
        MuxError::Flood { what: "ping", .. }
    ));

    // Rapid reset (CVE-2023-44487): open, reset, open, reset, ... over many messages.
    let mut b = acceptor();
    let mut opened = 0;
    let mut err = None;
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        let body = enc(&[
            Frame::Open {
                id,
                origin: Origin::Unknown,
            },
            Frame::Reset {
                id,
                code: ResetCode::CANCEL,
            },
        ]);
        let mut ev = Vec::new();
        match b.receive(&body, &mut ev) {
            Ok(()) => opened += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        assert!(b.stream_count() <= 1);
    }
    assert!(matches!(err, Some(MuxError::Flood { what: "reset", .. })));
    assert_eq!(
        opened, 256,
        "the block of 1024 frames allows 256 cheap ones"
    );

    // Real traffic between the resets earns no more than its share: with three data
    // frames per stream the ratio is 1 in 5 and the link lives.
    let mut b = acceptor();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        let body = enc(&[
            Frame::Open {
                id,
                origin: Origin::Unknown,
            },
            Frame::Data {
                id,
                data: b"a",
                fin: false,
            },
            Frame::Data {
                id,
                data: b"b",
                fin: false,
            },
            Frame::Data {
                id,
                data: b"c",
                fin: false,
            },
            Frame::Reset {
                id,
                code: ResetCode::CANCEL,
            },
        ]);
        b.receive(&body, &mut Vec::new()).unwrap();
    }

    // Opens beyond max_streams are refused, and refusals are cheap too.
    let config = Config {
        max_streams: 2,
        ..Config::default()
    };
    let mut b = Session::new(Side::Acceptor, config).unwrap();
    let mut refused = 0;
    let mut err = None;
    for i in 0..1000u32 {
        let body = enc(&[Frame::Open {
            id: 2 * i + 1,
            origin: Origin::Unknown,
        }]);
        if let Err(e) = b.receive(&body, &mut Vec::new()) {
            err = Some(e);
            break;
        }
        refused += u32::from(i >= 2);
        assert!(b.stream_count() <= 2);
    }
    assert!(matches!(
        err,
        Some(MuxError::Flood {
            what: "refused open",
            ..
        })
    ));
    assert_eq!(refused, 256);

    // A peer that makes us answer but never reads: the backlog is bounded.
    let config = Config {
        flood_max_cheap: 100_000,
        max_control_backlog: 1024,
        ..Config::default()
    };
    let mut b = Session::new(Side::Acceptor, config).unwrap();
    let ping = enc(&[Frame::Ping {
        ack: false,
        payload: [1; 8],
    }]);
    let mut err = None;
    for _ in 0..1000 {
        if let Err(e) = b.receive(&ping, &mut Vec::new()) {
            err = Some(e);
            break;
        }
        assert!(b.queued_len() <= 1024);
    }
    assert!(matches!(err, Some(MuxError::ControlBacklog(_))), "{err:?}");
}

// ---------- two sessions back to back ----------

/// The application on one side of one stream.
#[derive(Default)]
struct App {
    to_send: Vec<u8>,
    sent: usize,
    fin_sent: bool,
    received: Vec<u8>,
    fin_received: bool,
    reset: Option<ResetCode>,
    /// Delivered bytes not yet consumed (a slow reader keeps them).
    unread: usize,
}

struct Pair {
    a: Session,
    b: Session,
    apps_a: BTreeMap<StreamId, App>,
    apps_b: BTreeMap<StreamId, App>,
    origins: BTreeMap<StreamId, Origin>,
    slow_b: Vec<StreamId>,
    max_unread_b: usize,
}

fn payload_for(seed: u64, len: usize) -> Vec<u8> {
    Rng(seed | 1).bytes(len)
}

impl Pair {
    fn new(config_a: Config, config_b: Config) -> Pair {
        let a = Session::new(Side::Opener, config_a).unwrap();
        let b = Session::new(Side::Acceptor, config_b).unwrap();
        Pair {
            a,
            b,
            apps_a: BTreeMap::new(),
            apps_b: BTreeMap::new(),
            origins: BTreeMap::new(),
            slow_b: Vec::new(),
            max_unread_b: 0,
        }
    }

    fn open(&mut self, origin: Origin, request: Vec<u8>) -> StreamId {
        let id = self.a.open(origin).unwrap();
        self.apps_a.insert(
            id,
            App {
                to_send: request,
                ..App::default()
            },
        );
        id
    }

    /// One round: each application writes what its window allows in chunks of up to
    /// `chunk` bytes (streams in a shuffled order), then messages go both ways.
    fn round(&mut self, rng: &mut Rng, chunk: usize) {
        for (session, apps) in [
            (&mut self.a, &mut self.apps_a),
            (&mut self.b, &mut self.apps_b),
        ] {
            let mut ids: Vec<StreamId> = apps.keys().copied().collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for id in ids {
                let app = apps.get_mut(&id).unwrap();
                if app.reset.is_some() || app.fin_sent {
                    continue;
                }
                let n = (1 + rng.below(chunk as u64) as usize).min(app.to_send.len() - app.sent);
                let window = session.send_window(id).unwrap() as usize;
                let took = session
                    .send(id, &app.to_send[app.sent..app.sent + n])
                    .unwrap();
                assert_eq!(took, n.min(window), "send takes what the window allows");
                app.sent += took;
                if app.sent == app.to_send.len() {
                    session.finish(id).unwrap();
                    app.fin_sent = true;
                }
            }
        }
        let to_b = deliver(&mut self.a, &mut self.b);
        self.apply_b(to_b);
        let to_a = deliver(&mut self.b, &mut self.a);
        self.apply_a(to_a);
    }

    fn apply_b(&mut self, events: Vec<(Event, Vec<u8>)>) {
        for (e, bytes) in events {
            match e {
                Event::StreamOpened { id, origin } => {
                    self.origins.insert(id, origin);
                    // B answers each stream with its own payload, sent as it reads.
                    let app = App {
                        to_send: payload_for(u64::from(id) * 7919, 1000 + id as usize * 37),
                        ..App::default()
                    };
                    assert!(self.apps_b.insert(id, app).is_none());
                }
                Event::Data { id, .. } => {
                    let app = self.apps_b.get_mut(&id).expect("data on a known stream");
                    app.received.extend_from_slice(&bytes);
                    if self.slow_b.contains(&id) {
                        app.unread += bytes.len();
                        self.max_unread_b = self.max_unread_b.max(app.unread);
                    } else {
                        self.b.consumed(id, bytes.len()).unwrap();
                    }
                }
                Event::HalfClosed { id } => self.apps_b.get_mut(&id).unwrap().fin_received = true,
                Event::Reset { id, code } => self.apps_b.get_mut(&id).unwrap().reset = Some(code),
                Event::WindowOpened { .. } | Event::Pong { .. } => {}
                other => panic!("unexpected event at B: {other:?}"),
            }
        }
    }

    fn apply_a(&mut self, events: Vec<(Event, Vec<u8>)>) {
        for (e, bytes) in events {
            match e {
                Event::Data { id, .. } => {
                    self.apps_a
                        .get_mut(&id)
                        .unwrap()
                        .received
                        .extend_from_slice(&bytes);
                    self.a.consumed(id, bytes.len()).unwrap();
                }
                Event::HalfClosed { id } => self.apps_a.get_mut(&id).unwrap().fin_received = true,
                Event::Reset { id, code } => self.apps_a.get_mut(&id).unwrap().reset = Some(code),
                Event::WindowOpened { .. } | Event::Pong { .. } | Event::GoAway { .. } => {}
                other => panic!("unexpected event at A: {other:?}"),
            }
        }
    }

    fn done(&self, id: StreamId) -> bool {
        let (a, b) = (&self.apps_a[&id], self.apps_b.get(&id));
        a.fin_sent && a.fin_received && b.is_some_and(|b| b.fin_sent && b.fin_received)
    }

    fn check_hashes(&self, id: StreamId) {
        let (a, b) = (&self.apps_a[&id], &self.apps_b[&id]);
        assert_eq!(
            digest(&SHA256, &b.received).as_ref(),
            digest(&SHA256, &a.to_send).as_ref(),
            "A to B on stream {id}"
        );
        assert_eq!(
            digest(&SHA256, &a.received).as_ref(),
            digest(&SHA256, &b.to_send).as_ref(),
            "B to A on stream {id}"
        );
    }
}

#[test]
fn many_interleaved_streams_arrive_whole_and_in_order() {
    let mut rng = Rng(0x5eed);
    let config = Config {
        max_streams: 300,
        ..Config::default()
    };
    let mut p = Pair::new(config.clone(), config);
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let len = rng.below(if i % 10 == 0 { 700_000 } else { 20_000 }) as usize;
        let origin = if i % 2 == 0 {
            Origin::Ip(SocketAddr::from((
                [10, 0, (i / 256) as u8, i as u8],
                1000 + i as u16,
            )))
        } else {
            Origin::Ip(format!("[2001:db8::{i:x}]:80").parse().unwrap())
        };
        ids.push((p.open(origin, payload_for(i + 1, len)), origin));
    }
    for _ in 0..2000 {
        if ids.iter().all(|(id, _)| p.done(*id)) {
            break;
        }
        p.round(&mut rng, 40_000);
    }
    for (id, origin) in &ids {
        assert!(p.done(*id), "stream {id} did not finish");
        p.check_hashes(*id);
        assert_eq!(p.origins[id], *origin);
    }
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn a_stream_that_stops_reading_stalls_only_itself() {
    let mut rng = Rng(42);
    let mut p = Pair::new(Config::default(), Config::default());
    let window = Config::default().stream_window as usize;
    let slow = p.open(Origin::Unknown, payload_for(99, 3_000_000));
    p.slow_b.push(slow);
    let others: Vec<StreamId> = (0..20)
        .map(|i| p.open(Origin::Unknown, payload_for(i, 200_000)))
        .collect();
    for _ in 0..500 {
        p.round(&mut rng, 64 * 1024);
    }
    for id in &others {
        assert!(p.done(*id), "stream {id} stalled behind the slow one");
        p.check_hashes(*id);
    }
    // The slow stream got exactly its window and no more; A's sender is blocked.
    let unread = p.apps_b[&slow].unread;
    assert_eq!(unread, window);
    assert_eq!(p.max_unread_b, window);
    assert_eq!(p.a.send_window(slow), Some(0));
    assert_eq!(p.apps_a[&slow].sent, window);
    // Reading again lets it finish.
    p.slow_b.clear();
    p.b.consumed(slow, unread).unwrap();
    p.apps_b.get_mut(&slow).unwrap().unread = 0;
    for _ in 0..500 {
        if p.done(slow) {
            break;
        }
        p.round(&mut rng, 64 * 1024);
    }
    assert!(p.done(slow));
    p.check_hashes(slow);
}

#[test]
fn half_close_each_way_and_reset() {
    let mut p = Pair::new(Config::default(), Config::default());
    let mut rng = Rng(7);
    // A half-closes at once (an empty request), B still answers in full.
    let quiet = p.open(Origin::Unknown, Vec::new());
    p.round(&mut rng, 1000);
    assert!(p.apps_b[&quiet].fin_received);
    assert!(p.a.is_open(quiet) && p.b.is_open(quiet));
    for _ in 0..50 {
        p.round(&mut rng, 1000);
    }
    assert!(p.done(quiet));
    p.check_hashes(quiet);

    // B half-closes first (its answer is short), A keeps sending a long request.
    let long = p.open(Origin::Unknown, payload_for(5, 500_000));
    p.round(&mut rng, 100);
    p.apps_b.get_mut(&long).unwrap().to_send.truncate(10);
    for _ in 0..200 {
        if p.done(long) {
            break;
        }
        p.round(&mut rng, 30_000);
    }
    assert!(p.done(long));
    p.check_hashes(long);
    assert!(!p.a.is_open(long) && !p.b.is_open(long));

    // B resets a stream (its upstream failed): A sees the code; A's late data is ignored.
    let failed = p.open(Origin::Unknown, payload_for(6, 100_000));
    p.round(&mut rng, 1000);
    p.b.reset(failed, ResetCode::CONNECT_FAILED).unwrap();
    p.apps_b.get_mut(&failed).unwrap().reset = Some(ResetCode::CONNECT_FAILED);
    for _ in 0..5 {
        p.round(&mut rng, 1000);
    }
    assert_eq!(p.apps_a[&failed].reset, Some(ResetCode::CONNECT_FAILED));
    assert!(!p.a.is_open(failed) && !p.b.is_open(failed));
    assert_eq!(p.a.send(failed, b"x"), Err(MuxError::NoSuchStream(failed)));

    // A cancels (its client went away): B sees it.
    let cancelled = p.open(Origin::Unknown, payload_for(8, 10));
    p.round(&mut rng, 1);
    p.a.reset(cancelled, ResetCode::CANCEL).unwrap();
    p.apps_a.get_mut(&cancelled).unwrap().reset = Some(ResetCode::CANCEL);
    p.round(&mut rng, 1);
    assert_eq!(p.apps_b[&cancelled].reset, Some(ResetCode::CANCEL));
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn go_away_finishes_streams_below_the_last_id_and_refuses_the_others() {
    let mut p = Pair::new(Config::default(), Config::default());
    let mut rng = Rng(3);
    let s1 = p.open(Origin::Unknown, payload_for(1, 300_000));
    let s3 = p.open(Origin::Unknown, payload_for(3, 300_000));
    p.round(&mut rng, 1000);
    // A opens two more; before they arrive, B goes away (reload).
    let s5 = p.open(Origin::Unknown, payload_for(5, 10));
    let s7 = p.open(Origin::Unknown, payload_for(7, 10));
    p.b.go_away(GoAwayReason::NORMAL);
    let to_a = deliver(&mut p.b, &mut p.a);
    let events: Vec<&Event> = to_a.iter().map(|(e, _)| e).collect();
    assert!(events.contains(&&Event::GoAway {
        last_id: s3,
        reason: GoAwayReason::NORMAL
    }));
    for id in [s5, s7] {
        assert!(events.contains(&&Event::Reset {
            id,
            code: ResetCode::REFUSED
        }));
    }
    p.apply_a(to_a);
    assert_eq!(p.a.open(Origin::Unknown), Err(MuxError::GoingAway));
    assert_eq!(p.a.go_away_received(), Some(s3));
    // A's opens of 5 and 7 reach B after its go-away: ignored, nothing is started.
    for _ in 0..300 {
        if p.done(s1) && p.done(s3) {
            break;
        }
        p.round(&mut rng, 30_000);
    }
    assert!(!p.apps_b.contains_key(&s5) && !p.apps_b.contains_key(&s7));
    for id in [s1, s3] {
        assert!(p.done(id));
        p.check_hashes(id);
    }
    assert!(p.a.is_finished() && p.b.is_finished());
}

#[test]
fn pings_and_limits_of_our_own_calls() {
    let mut p = Pair::new(
        Config {
            max_streams: 2,
            ..Config::default()
        },
        Config::default(),
    );
    p.a.ping(*b"pingpong").unwrap();
    deliver(&mut p.a, &mut p.b);
    let back = deliver(&mut p.b, &mut p.a);
    assert!(back.iter().any(|(e, _)| *e
        == Event::Pong {
            payload: *b"pingpong"
        }));
    for _ in 0..4 {
        p.a.ping([0; 8]).unwrap();
    }
    assert_eq!(p.a.ping([0; 8]), Err(MuxError::TooManyPings(4)));
    p.a.open(Origin::Unknown).unwrap();
    p.a.open(Origin::Unknown).unwrap();
    let err = p.a.open(Origin::Unknown).unwrap_err();
    assert_eq!(err, MuxError::TooManyStreams(2));
    assert_eq!(err.fault(), Fault::Local);
    assert_eq!(p.b.open(Origin::Unknown), Err(MuxError::NotOpener));
    assert!(Session::new(
        Side::Opener,
        Config {
            stream_window: 1000,
            ..Config::default()
        }
    )
    .is_err());
}

// ---------- rekey ----------

#[test]
fn rekey_in_band_switches_keys_at_the_same_message() {
    let key = |k: u8| CipherState::new(CipherChoice::ChaChaPoly, &[k; 32]).unwrap();
    let mut ta = Transport::new(key(1), key(2), 0);
    let mut tb = Transport::new(key(2), key(1), 0);
    let mut a = Session::new(Side::Opener, Config::default()).unwrap();
    let mut b = acceptor();
    let mut got = Vec::new();
    // Seals every queued message of `from` and opens it at the other end, honouring rekeys.
    let carry = |from: &mut Session,
                 tf: &mut Transport,
                 to: &mut Session,
                 tt: &mut Transport,
                 got: &mut Vec<u8>| {
        let mut body = Vec::new();
        while let Some(out) = {
            body.clear();
            from.poll_message(&mut body)
        } {
            let mut wire = vec![0u8; body.len() + 64];
            let n = if body.is_empty() {
                0
            } else {
                tf.seal(&body, &mut wire).unwrap().1
            };
            if out.rekey_after {
                tf.sealer.rekey().unwrap();
            }
            if n == 0 {
                continue;
            }
            let Opened::Frame { body: r, .. } = tt.open(&mut wire[..n]).unwrap() else {
                panic!("incomplete");
            };
            let mut events = Vec::new();
            to.receive(&wire[r.clone()], &mut events).unwrap();
            for e in events {
                match e {
                    Event::Rekey => tt.opener.rekey().unwrap(),
                    Event::Data { id, range } => {
                        got.extend_from_slice(&wire[r.start..][range.clone()]);
                        to.consumed(id, range.len()).ok();
                    }
                    _ => {}
                }
            }
        }
    };
    carry(&mut b, &mut tb, &mut a, &mut ta, &mut got);
    let id = a.open(Origin::Unknown).unwrap();
    a.send(id, b"before").unwrap();
    a.rekey();
    carry(&mut a, &mut ta, &mut b, &mut tb, &mut got);
    a.send(id, b" after").unwrap();
    carry(&mut a, &mut ta, &mut b, &mut tb, &mut got);
    assert_eq!(got, b"before after");
    // The keys did change: a receiver that ignored the rekey cannot read the next message.
    let mut stale = Transport::new(key(2), key(1), 0);
    let mut wire = vec![0u8; 64];
    let mut fresh = Transport::new(key(1), key(2), 0);
    fresh.sealer.rekey().unwrap();
    let (_, n) = fresh.seal(b"x", &mut wire).unwrap();
    assert!(stale.open(&mut wire[..n]).is_err());
}

#[test]
fn rekey_is_the_noise_rekey_of_snow() {
    for (name, cipher) in [
        (
            "Noise_NN_25519_ChaChaPoly_BLAKE2s",
            CipherChoice::ChaChaPoly,
        ),
        ("Noise_NN_25519_AESGCM_SHA256", CipherChoice::AESGCM),
    ] {
        let mut i = snow::Builder::new(name.parse().unwrap())
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(name.parse().unwrap())
            .build_responder()
            .unwrap();
        let mut buf = [0u8; 256];
        let mut tmp = [0u8; 256];
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut tmp).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut tmp).unwrap();
        let (i_to_r, _) = r.dangerously_get_raw_split();
        let mut snow_i = i.into_transport_mode().unwrap();
        let mut ours = CipherState::new(cipher, &i_to_r).unwrap();
        for round in 0..3 {
            let n = snow_i.write_message(b"rekeyed?", &mut buf).unwrap();
            let pt = ours.open_in_place(&mut buf[..n]).unwrap();
            assert_eq!(&buf[..pt], b"rekeyed?", "{name} round {round}");
            snow_i.rekey_outgoing();
            ours.rekey().unwrap();
        }
    }
}

// ---------- negotiation ----------

const XX_CHACHA: &str = "XX_25519_ChaChaPoly_BLAKE2s";
const XX_AES: &str = "XX_25519_AESGCM_SHA256";

#[test]
fn negotiation_agrees_or_falls_back_cleanly() {
    let side = |names: &[&str], key: u8, mux: bool| {
        policy(names, Codec::Virgil, creds(Some(key), None)).with_multiplex(mux)
    };
    // Both multiplex.
    let (a, b) = start(
        side(&[XX_CHACHA], 1, true),
        side(&[XX_CHACHA], 2, true),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 5);
    let (alice, bob) = (out.alice.unwrap(), out.bob.unwrap());
    assert_eq!(
        bob.info.initial_negotiation,
        [0, 1, 1, 1, 1, 9, b'N', b'S', b'M', b'X', 1]
    );
    assert!(multiplex::agreed(&alice.info.initial_negotiation));
    assert!(multiplex::agreed(&bob.info.initial_negotiation));

    // B without it refuses explicitly: A learns at once and falls back.
    let (a, b) = start(
        side(&[XX_CHACHA], 1, true),
        side(&[XX_CHACHA], 2, false),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    assert!(
        matches!(out.alice, Err(Error::Rejected(_))),
        "{:?}",
        out.alice.err()
    );
    assert!(matches!(out.bob, Err(Error::Refused(_))));
    let (a, b) = start(
        side(&[XX_CHACHA], 1, false),
        side(&[XX_CHACHA], 2, false),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    assert!(!multiplex::agreed(
        &out.alice.unwrap().info.initial_negotiation
    ));

    // A B that multiplexes still serves ordinary clients.
    let (a, b) = start(
        side(&[XX_CHACHA], 1, false),
        side(&[XX_CHACHA], 2, true),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 100);
    assert!(!multiplex::agreed(
        &out.bob.unwrap().info.initial_negotiation
    ));

    // A retry keeps the field: B repeats it and A's retry message carries it again.
    let (a, b) = start(
        side(&[XX_AES, XX_CHACHA], 1, true),
        side(&[XX_CHACHA], 2, true),
        settings(None),
        settings(None),
    );
    let out = pump(a, b, 3);
    assert_eq!(
        &out.bob_wire[..15],
        &[0, 11, 0, 1, 1, 1, 1, 9, b'N', b'S', b'M', b'X', 1, 0, 0]
    );
    let (alice, bob) = (out.alice.unwrap(), out.bob.unwrap());
    assert_eq!(alice.info.stage, Stage::Retry);
    assert!(multiplex::agreed(&bob.info.initial_negotiation));

    // A version B does not speak is refused like any unknown data.
    let p = side(&[XX_CHACHA], 2, true);
    use nginx_noise::core::negotiation::{Decision, Negotiator};
    assert!(matches!(
        p.decide(&[0, 1, 1, 1, 1, 9, b'N', b'S', b'M', b'X', 2]),
        Decision::Reject { .. }
    ));
}

// ---------- randomized ----------

/// Feeds `body` to `s` and checks the bounds that hold whatever the peer sends.
fn feed_checked(s: &mut Session, body: &[u8], config: &Config) {
    let mut ev = Vec::new();
    let _ = s.receive(body, &mut ev);
    assert!(s.stream_count() <= config.max_streams as usize);
    assert!(s.queued_len() <= config.max_control_backlog + 64);
    assert!(ev.len() <= body.len() / HEADER_LEN + config.max_streams as usize + 1);
    for e in &ev {
        if let Event::Data { id, range } = e {
            assert!(range.end <= body.len());
            if let Some(w) = s.recv_window(*id) {
                assert!(w <= config.stream_window);
            }
        }
    }
}

/// Frame-shaped garbage: a random header of a known type most of the time.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let t = if rng.below(8) == 0 {
        rng.next() as u8
    } else {
        rng.below(7) as u8
    };
    let id = match rng.below(4) {
        0 => 0,
        1 => rng.below(16) as u32,
        2 => rng.next() as u32,
        _ => 2 * rng.below(8) as u32 + 1,
    };
    let flags = if rng.below(4) == 0 {
        rng.next() as u8
    } else {
        rng.below(2) as u8
    };
    let len = match rng.below(4) {
        0 => rng.below(20) as usize,
        1 => [0, 1, 2, 4, 6, 7, 8, 19][rng.below(8) as usize],
        _ => rng.below(300) as usize,
    };
    let mut f = header(t, flags, id, len as u16);
    let cut = if rng.below(10) == 0 { len / 2 } else { len };
    let payload = rng.bytes(cut);
    f.extend_from_slice(&payload);
    f
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = Rng(0xdead_beef);
    let config = Config {
        max_streams: 8,
        max_control_backlog: 4096,
        ..Config::default()
    };
    for round in 0..20_000 {
        let mut b = Session::new(Side::Acceptor, config.clone()).unwrap();
        let mut a = Session::new(Side::Opener, config.clone()).unwrap();
        if round % 2 == 0 {
            a.receive(&hello(), &mut Vec::new()).unwrap();
            for _ in 0..rng.below(4) {
                let _ = a.open(Origin::Unknown);
            }
        }
        for _ in 0..1 + rng.below(6) {
            let body = if rng.below(3) == 0 {
                let n = rng.below(200) as usize;
                rng.bytes(n)
            } else {
                (0..1 + rng.below(6))
                    .flat_map(|_| random_frame(&mut rng))
                    .collect()
            };
            feed_checked(&mut b, &body, &config);
            feed_checked(&mut a, &body, &config);
            // What we answer is always well-formed.
            let mut out = Vec::new();
            while {
                out.clear();
                b.poll_message(&mut out).is_some()
            } {
                assert!(out.len() <= MAX_BODY);
                assert!(Frames::new(&out).all(|f| f.is_ok()));
            }
        }
    }
}

#[test]
fn mutated_valid_traffic_never_panics_and_stays_bounded() {
    // Record what a real A sends over a busy link.
    let mut rng = Rng(11);
    let mut p = Pair::new(Config::default(), Config::default());
    for i in 0..30 {
        p.open(Origin::Unknown, payload_for(i, rng.below(100_000) as usize));
    }
    let mut recorded = Vec::new();
    for _ in 0..40 {
        for (session, apps) in [(&mut p.a, &mut p.apps_a)] {
            for (id, app) in apps.iter_mut() {
                if !app.fin_sent {
                    let end = (app.sent + 5000).min(app.to_send.len());
                    app.sent += session.send(*id, &app.to_send[app.sent..end]).unwrap();
                    if app.sent == app.to_send.len() {
                        session.finish(*id).unwrap();
                        app.fin_sent = true;
                    }
                }
            }
        }
        if rng.below(5) == 0 {
            p.a.ping(rng.next().to_be_bytes()).ok();
        }
        let mut body = Vec::new();
        while {
            body.clear();
            p.a.poll_message(&mut body).is_some()
        } {
            recorded.push(body.clone());
            let mut ev = Vec::new();
            p.b.receive(&body, &mut ev).unwrap();
            for e in ev {
                if let Event::Data { id, range } = e {
                    p.b.consumed(id, range.len()).unwrap();
                }
            }
        }
        let back = deliver(&mut p.b, &mut p.a);
        p.apply_a(back);
    }
    assert!(recorded.len() > 30);
    let config = Config::default();
    for _ in 0..3000 {
        let mut b = acceptor();
        for body in &recorded {
            let mut m = body.clone();
            match rng.below(6) {
                0 => {
                    let at = rng.below(m.len() as u64) as usize;
                    m[at] ^= 1 << rng.below(8);
                }
                1 => {
                    let at = rng.below(m.len() as u64) as usize;
                    m.truncate(at);
                }
                2 => {
                    let at = rng.below(m.len() as u64 + 1) as usize;
                    let n = 1 + rng.below(12) as usize;
                    let extra = rng.bytes(n);
                    m.splice(at..at, extra);
                }
                3 => {
                    let at = rng.below(m.len() as u64) as usize;
                    m.remove(at);
                }
                4 => {
                    // A header field set to an extreme.
                    let at = rng.below(m.len().saturating_sub(8) as u64 + 1) as usize;
                    for b in m.iter_mut().skip(at).take(8) {
                        *b = if rng.below(2) == 0 { 0xff } else { 0 };
                    }
                }
                _ => {}
            }
            feed_checked(&mut b, &m, &config);
        }
    }
}
