//! The incremental parsers: handshake frames fed in arbitrary pieces, transport framing,
//! body_len, and the deframer's plaintext cursor over garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nginx_noise::core::deframer::Deframer;
use nginx_noise::core::frame::{transport_frame, HandshakeReader};
use nginx_noise::core::payload::body_range;
use nginx_noise::core::transport::{CipherState, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step % 17) + 1;

    // Handshake frames: the same bytes in `step`-sized pieces and whole must agree.
    let mut whole = HandshakeReader::new();
    let used_whole = whole.feed(rest);
    let mut pieces = HandshakeReader::new();
    let mut used = 0;
    for piece in rest.chunks(step) {
        used += pieces.feed(piece);
        if pieces.is_complete() {
            break;
        }
    }
    assert_eq!(used, used_whole);
    assert_eq!(whole.is_complete(), pieces.is_complete());
    if whole.is_complete() {
        assert_eq!(whole.take(), pieces.take());
    }

    let _ = transport_frame(rest);
    let _ = body_range(rest);

    // Garbage through the deframer never panics and never holds more than one frame.
    let c = |k: u8| CipherState::new(snow::params::CipherChoice::ChaChaPoly, &[k; 32]);
    let (Ok(a), Ok(b)) = (c(1), c(2)) else { return };
    let mut transport = Transport::new(a, b, 0);
    let mut deframer = Deframer::new();
    let mut out = [0u8; 300];
    for piece in rest.chunks(step * 13) {
        deframer.push(piece);
        assert!(deframer.buffered() <= 65537);
        match deframer.read_plain(&mut transport.opener, &mut out[..step * 11]) {
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let _ = deframer.check_eof();
});
