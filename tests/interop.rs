//! Interop with an independent Noise stack: the Python peer in `tests/interop/ns_peer.py`,
//! built on PyPI's `noiseprotocol`, against the CLI in both roles, for XX, IK, NK and NN
//! with virgil negotiation data, 1 MiB each way, comparing handshake hashes.
//!
//! The Python interpreter comes from `NOISE_PYTHON` (set by scripts/test.sh), or is set up
//! by `scripts/python-env.sh` here.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::process::*;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NOISE_PYTHON") {
        return PathBuf::from(p);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(repo.join("scripts/python-env.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "scripts/python-env.sh failed");
    repo.join("build/venv/bin/python")
}

fn peer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ns_peer.py")
}

enum Side {
    Cli,
    Python,
}

fn command(side: &Side) -> Command {
    match side {
        Side::Cli => Command::new(cli()),
        Side::Python => {
            let mut c = Command::new(python());
            c.arg(peer());
            c
        }
    }
}

fn round_trip(server: Side, client: Side, pattern: &str) {
    let dir = TempDir::new("interop");
    let server_pub = keypair(&dir, "server");
    keypair(&dir, "client");
    let protocol = format!("Noise_{pattern}_25519_ChaChaPoly_BLAKE2s");
    let ready = dir.path("ready");
    let mut srv = command(&server)
        .args([
            "listen",
            "0",
            "--echo",
            "--count",
            "1",
            "--protocol",
            &protocol,
            "-v",
        ])
        .arg("--key")
        .arg(dir.path("server.key"))
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = wait_port(&ready, &mut srv);
    let data = test_data(1 << 20, 7);
    let mut cl = command(&client);
    if matches!(client, Side::Cli) {
        cl.arg("connect").arg("-N"); // the echo answers until it sees our end
    } else {
        cl.arg("connect");
    }
    cl.args([&format!("127.0.0.1:{port}"), "--protocol", &protocol, "-v"])
        .args(["--negotiation", "virgil"])
        .arg("--key")
        .arg(dir.path("client.key"))
        .arg("--remote-key")
        .arg(&server_pub);
    let out = run_with_input(cl, &data);
    let srv_out = srv.wait_with_output().unwrap();
    let (c_err, s_err) = (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&srv_out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{pattern}: client: {c_err} server: {s_err}"
    );
    assert!(srv_out.status.success(), "{pattern}: server: {s_err}");
    assert!(
        out.stdout == data,
        "{pattern}: data differs ({} bytes back)",
        out.stdout.len()
    );
    let hash = field(&c_err, "handshake_hash");
    assert!(hash.is_some(), "{pattern}: no hash in {c_err}");
    assert_eq!(hash, field(&s_err, "handshake_hash"), "{pattern}");
    assert_eq!(
        field(&c_err, "protocol").as_deref(),
        Some(protocol.as_str())
    );
}

const PATTERNS: [&str; 4] = ["XX", "IK", "NK", "NN"];

#[test]
fn cli_client_python_server() {
    for p in PATTERNS {
        round_trip(Side::Python, Side::Cli, p);
    }
}

#[test]
fn python_client_cli_server() {
    for p in PATTERNS {
        round_trip(Side::Cli, Side::Python, p);
    }
}
