//! A NoiseSocket session over a blocking `TcpStream`: the handshake, then frames.

use std::io::{Read, Write};
use std::net::TcpStream;

use nginx_noise::core::deframer::Deframer;
use nginx_noise::core::handshake::HandshakeInfo;
use nginx_noise::core::keys::encode_key;
use nginx_noise::core::transport::Transport;

use crate::delegated::Driven;

/// An established session: the transport, what the handshake learnt, and ciphertext that
/// arrived with the last handshake message.
pub struct Session {
    pub transport: Transport,
    pub info: HandshakeInfo,
    pub input: Deframer,
}

/// Runs the handshake to completion. Errors are one line for the user.
pub fn handshake(stream: &mut TcpStream, mut hs: impl Driven) -> Result<Session, String> {
    let mut input = Deframer::new();
    let mut buf = [0u8; 16 * 1024];
    // An initiator's first message may wait for the key agent (IK, KK: `ss`).
    hs.answer_key_ops()
        .map_err(|e| format!("handshake failed: {e}"))?;
    loop {
        flush(stream, &mut hs)?;
        if hs.is_done() {
            break;
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("handshake failed: {e}"))?;
        if n == 0 {
            return Err(format!("handshake failed: {}", hs.eof()));
        }
        match read_all(&mut hs, &buf[..n]) {
            Ok(used) => {
                input.push(&buf[used..n]);
            }
            Err(e) => {
                // An explicit reject may be pending; the peer deserves to see it.
                let _ = flush(stream, &mut hs);
                return Err(format!("handshake failed: {e}"));
            }
        }
    }
    let initiator = hs.role().is_initiator();
    let mut est = hs.finish().map_err(|e| format!("handshake failed: {e}"))?;
    let mut out = est.pending;
    if initiator && est.info.protocol.initiator_auth_replayable() {
        // The server takes us for who we say only once a transport frame opens
        // (docs/protocol.md §4.6): send an empty one with the last handshake bytes.
        let start = out.len();
        out.resize(start + est.transport.sealer.frame_len(0), 0);
        est.transport
            .sealer
            .seal_prepared(&mut out[start..], 0)
            .map_err(|e| format!("handshake failed: {e}"))?;
    }
    stream
        .write_all(&out)
        .map_err(|e| format!("handshake failed: {e}"))?;
    Ok(Session {
        transport: est.transport,
        info: est.info,
        input,
    })
}

/// Feeds `input` to the handshake, answering its key-agent operations as they come (it
/// reads nothing while one is pending); returns how many bytes the handshake used.
fn read_all(hs: &mut impl Driven, input: &[u8]) -> Result<usize, nginx_noise::core::Error> {
    let mut used = 0;
    loop {
        let n = hs.read(&input[used..])?;
        used += n;
        hs.answer_key_ops()?;
        if hs.is_done() || used == input.len() || n == 0 {
            return Ok(used);
        }
    }
}

fn flush(stream: &mut TcpStream, hs: &mut impl Driven) -> Result<(), String> {
    let out = hs.pending_output();
    if !out.is_empty() {
        let n = out.len();
        stream
            .write_all(out)
            .map_err(|e| format!("handshake failed: {e}"))?;
        hs.consume_output(n);
    }
    Ok(())
}

/// The `-v` report, one `name=value` per line.
pub fn describe(info: &HandshakeInfo) -> String {
    let hash: String = info
        .handshake_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "protocol={}\nremote_key={}\nhandshake_hash={}\n",
        info.protocol,
        info.remote_static
            .map(|k| encode_key(&k))
            .unwrap_or_default(),
        hash
    )
}
