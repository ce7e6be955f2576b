//! The data phase: stdio relay (like `nc`) and echo.
//!
//! Like OpenBSD `nc`: stdin EOF leaves the connection open and the output goes on until the
//! peer closes; with `-N` (`nc -N`, ncat's default) stdin EOF becomes a TCP FIN after the
//! last frame. A peer's FIN at a frame boundary ends the output; a FIN inside a frame is
//! truncation. The peer's close ends the relay even while stdin is still open.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use nginx_noise::core::deframer::Deframer;
use nginx_noise::core::payload::{FRAME_OVERHEAD, MAX_BODY};
use nginx_noise::core::transport::{Opener, Sealer};

use crate::session::Session;

const CHUNK: usize = 4 * MAX_BODY;

/// Encrypts `data` and writes it; `out` is reused between calls.
fn send(
    stream: &mut TcpStream,
    tr: &mut Sealer,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut rest = data;
    while !rest.is_empty() {
        out.resize(CHUNK + 4 * FRAME_OVERHEAD + 64, 0);
        let (used, n) = tr.seal(rest, out).map_err(|e| e.to_string())?;
        stream
            .write_all(&out[..n])
            .map_err(|e| format!("send: {e}"))?;
        rest = &rest[used..];
    }
    Ok(())
}

/// Reads frames until the peer's EOF, handing every body to `sink`.
fn receive(
    stream: &mut TcpStream,
    tr: &mut Opener,
    input: &mut Deframer,
    mut sink: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        while let Some(body) = input.next(tr).map_err(|e| e.to_string())? {
            if !body.is_empty() {
                sink(body)?;
            }
        }
        let n = stream
            .read(input.spare())
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return input.check_eof().map_err(|e| e.to_string());
        }
        input.commit(n);
    }
}

/// Splits a session into its two directions.
fn split(session: Session) -> (Sealer, Opener, Deframer) {
    let (send, recv) = session.transport.into_halves();
    (send, recv, session.input)
}

/// stdin -> peer, peer -> stdout, until the peer closes; `half_close`: a FIN at stdin EOF.
pub fn stdio(stream: TcpStream, session: Session, half_close: bool) -> Result<(), String> {
    let (mut tx, mut rx, mut input) = split(session);
    let mut writer_stream = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        let mut out = Vec::new();
        loop {
            let n = stdin.read(&mut buf).map_err(|e| format!("stdin: {e}"))?;
            if n == 0 {
                if half_close {
                    let _ = writer_stream.shutdown(Shutdown::Write);
                }
                return Ok(());
            }
            send(&mut writer_stream, &mut tx, &buf[..n], &mut out)?;
        }
    });
    let mut reader_stream = stream;
    let mut stdout = io::stdout().lock();
    let received = receive(&mut reader_stream, &mut rx, &mut input, |body| {
        stdout
            .write_all(body)
            .and_then(|_| stdout.flush())
            .map_err(|e| format!("stdout: {e}"))
    });
    received?;
    if !writer.is_finished() {
        // The peer is done; stdin may never end (a terminal): nothing more can be sent.
        return Ok(());
    }
    match writer.join() {
        Ok(result) => result,
        Err(_) => Err("writer thread failed".into()),
    }
}

/// Echoes every body back; after the peer's EOF, closes our side.
pub fn echo(mut stream: TcpStream, session: Session) -> Result<(), String> {
    let (mut tx, mut rx, mut input) = split(session);
    let mut out = Vec::new();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    receive(&mut stream, &mut rx, &mut input, |body| {
        send(&mut writer, &mut tx, body, &mut out)
    })?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}
