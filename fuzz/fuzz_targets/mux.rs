//! The multiplex decoder and both kinds of session (docs/multiplex.md): the input is split
//! into message bodies at 0xfe 0xfe markers and fed to an acceptor and to an opener (which
//! first gets the acceptor's hello); whatever they do, the bounds of docs/multiplex.md §8
//! hold and everything they answer decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nginx_noise::core::mux::frame::{Frame, Frames};
use nginx_noise::core::mux::session::HELLO;
use nginx_noise::core::mux::{Config, Event, Origin, Session, Side};

fuzz_target!(|data: &[u8]| {
    let config = Config {
        max_streams: 8,
        max_control_backlog: 4096,
        ..Config::default()
    };
    let mut b = Session::new(Side::Acceptor, config.clone()).unwrap();
    let mut a = Session::new(Side::Opener, config.clone()).unwrap();
    let mut hello = Vec::new();
    Frame::Ping { ack: true, payload: HELLO }.encode(&mut hello);
    a.receive(&hello, &mut Vec::new()).unwrap();
    for _ in 0..3 {
        let _ = a.open(Origin::Unknown);
    }
    let mut events: Vec<Event> = Vec::new();
    let mut out = Vec::new();
    for body in data.split(|w| *w == 0xfe) {
        for s in [&mut a, &mut b] {
            events.clear();
            let _ = s.receive(body, &mut events);
            assert!(s.stream_count() <= config.max_streams as usize);
            assert!(s.queued_len() <= config.max_control_backlog + 64);
            for e in &events {
                if let Event::Data { range, .. } = e {
                    assert!(range.end <= body.len());
                }
            }
            out.clear();
            while s.poll_message(&mut out).is_some() {
                assert!(Frames::new(&out).all(|f| f.is_ok()));
                out.clear();
            }
        }
        let _ = Frames::new(body).count();
    }
});
