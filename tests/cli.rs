//! The `noisesocket` CLI against itself: 1 MiB each way for every pattern (and psk
//! variants), keys made by `keygen`/`pubkey`, and the one-line failures.

mod support;

use std::process::{Command, Stdio};

use support::process::*;

/// The options each side needs for `pattern`: (server args, client args).
fn key_args(dir: &TempDir, pattern: &str) -> (Vec<String>, Vec<String>) {
    let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let (server_pub, client_pub) = (keypair(dir, "server"), keypair(dir, "client"));
    let mut server = vec!["--key".into(), s(dir.path("server.key"))];
    let mut client = vec!["--key".into(), s(dir.path("client.key"))];
    let base = &pattern[..2];
    if matches!(base, "NK" | "XK" | "KK" | "IK") {
        client.extend(["--remote-key".into(), s(server_pub)]);
    }
    if base.starts_with('K') {
        server.extend(["--remote-key".into(), s(client_pub)]);
    }
    if pattern.contains("psk") {
        let psk = dir.path("psk");
        std::fs::write(&psk, "c3VwZXItc2VjcmV0LXNoYXJlZC1rZXktZm9yLXRlc3Q=\n").unwrap();
        for side in [&mut server, &mut client] {
            side.extend([
                "--psk".into(),
                s(psk.clone()),
                "--negotiation".into(),
                "empty".into(),
            ]);
        }
    }
    (server, client)
}

fn round_trip(protocol: &str, padding: Option<&str>) {
    let dir = TempDir::new("cli");
    let pattern = protocol.split('_').nth(1).unwrap();
    let (server_args, client_args) = key_args(&dir, pattern);
    let ready = dir.path("ready");
    let mut server = Command::new(cli())
        .args([
            "listen",
            "0",
            "--echo",
            "--count",
            "1",
            "--protocol",
            protocol,
            "-v",
        ])
        .args(&server_args)
        .args(padding.map(|p| vec!["--padding", p]).unwrap_or_default())
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = wait_port(&ready, &mut server);
    let data = test_data(1 << 20, protocol.len() as u64);
    let mut client = Command::new(cli());
    client
        .args([
            "connect",
            &format!("127.0.0.1:{port}"),
            "-N", // the echo answers until it sees our end
            "--protocol",
            protocol,
            "-v",
        ])
        .args(&client_args)
        .args(padding.map(|p| vec!["--padding", p]).unwrap_or_default());
    let out = run_with_input(client, &data);
    let server_out = server.wait_with_output().unwrap();
    let (c_err, s_err) = (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&server_out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{protocol}: client failed: {c_err} / server: {s_err}"
    );
    assert!(
        server_out.status.success(),
        "{protocol}: server failed: {s_err}"
    );
    assert!(
        out.stdout == data,
        "{protocol}: echoed data differs ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(field(&c_err, "protocol").as_deref(), Some(protocol));
    assert_eq!(
        field(&c_err, "handshake_hash"),
        field(&s_err, "handshake_hash"),
        "{protocol}"
    );
    assert_eq!(
        field(&c_err, "handshake_hash").map(|h| h.len()),
        Some(
            if protocol.contains("SHA512") || protocol.contains("BLAKE2b") {
                128
            } else {
                64
            }
        )
    );
}

#[test]
fn every_pattern_round_trips_1_mib() {
    let patterns = [
        "NN", "NK", "NX", "XN", "XK", "XX", "KN", "KK", "KX", "IN", "IK", "IX",
    ];
    std::thread::scope(|s| {
        for chunk in patterns.chunks(4) {
            s.spawn(move || {
                for p in chunk {
                    round_trip(&format!("Noise_{p}_25519_ChaChaPoly_BLAKE2s"), None);
                }
            });
        }
    });
}

#[test]
fn psk_variants_suites_and_padding_round_trip() {
    for protocol in [
        "Noise_XXpsk3_25519_AESGCM_SHA256",
        "Noise_NNpsk0_25519_ChaChaPoly_SHA512",
        "Noise_IKpsk2_25519_AESGCM_BLAKE2b",
        "Noise_XX_25519_AESGCM_SHA512",
    ] {
        round_trip(protocol, None);
    }
    round_trip("Noise_XX_25519_AESGCM_SHA256", Some("1024"));
}

fn failing_client(dir: &TempDir, server_args: &[&str], client_args: &[String]) -> (String, String) {
    let ready = dir.path("ready");
    let _ = std::fs::remove_file(&ready);
    let mut server = Command::new(cli())
        .args(["listen", "0", "--echo", "--count", "1"])
        .args(server_args)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = wait_port(&ready, &mut server);
    let mut client = Command::new(cli());
    client
        .args(["connect", &format!("127.0.0.1:{port}")])
        .args(client_args);
    let out = run_with_input(client, b"secret");
    let server_out = server.wait_with_output().unwrap();
    assert!(!out.status.success(), "client should fail");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    (
        err,
        String::from_utf8_lossy(&server_out.stderr).into_owned(),
    )
}

#[test]
fn failures_say_what_failed_in_one_line() {
    let dir = TempDir::new("fail");
    let server_pub = keypair(&dir, "server");
    let client_pub = keypair(&dir, "client");
    let other_pub = keypair(&dir, "other");
    let p = |x: &std::path::Path| x.to_string_lossy().into_owned();
    let server_key = p(&dir.path("server.key"));
    let client_key = p(&dir.path("client.key"));

    // The server's key is not among the client's trusted keys.
    let (err, _) = failing_client(
        &dir,
        &["--key", &server_key],
        &[
            "--trusted-keys".into(),
            p(&other_pub),
            "--key".into(),
            client_key.clone(),
        ],
    );
    assert!(
        err.starts_with("noisesocket: handshake failed: server key not in trusted keys"),
        "{err}"
    );

    // The client's key is not among the server's trusted keys (IK: explicit reject).
    let ik = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
    let (err, server_err) = failing_client(
        &dir,
        &[
            "--key",
            &server_key,
            "--protocol",
            ik,
            "--trusted-keys",
            &p(&other_pub),
        ],
        &[
            "--protocol".into(),
            ik.into(),
            "--key".into(),
            client_key.clone(),
            "--remote-key".into(),
            p(&server_pub),
        ],
    );
    assert!(
        err.starts_with(
            "noisesocket: handshake failed: rejected by peer (negotiation data 0001ff): "
        ) && err.contains("it does not trust our key"),
        "{err}"
    );
    assert!(
        server_err.contains("client key not in trusted keys"),
        "{server_err}"
    );
    let _ = client_pub;

    // XX: the client's key arrives in the last message; the server's key-confirmation
    // verdict (docs/protocol.md §4.8) makes the refusal a failed connect, in words.
    let (err, server_err) = failing_client(
        &dir,
        &["--key", &server_key, "--trusted-keys", &p(&other_pub)],
        &["--key".into(), client_key.clone()],
    );
    assert_eq!(
        err.trim(),
        "noisesocket: handshake failed: the server refused our static key: our static key is not in its trusted keys"
    );
    assert!(
        server_err.contains("client key not in trusted keys"),
        "{server_err}"
    );

    // A wrong server key for NK: the server cannot read message 1 and closes.
    let nk = "Noise_NK_25519_ChaChaPoly_BLAKE2s";
    let (err, server_err) = failing_client(
        &dir,
        &["--key", &server_key, "--protocol", nk],
        &[
            "--protocol".into(),
            nk.into(),
            "--remote-key".into(),
            p(&other_pub),
        ],
    );
    assert_eq!(
        err.trim(),
        "noisesocket: handshake failed: connection closed during the handshake"
    );
    assert!(server_err.contains("decryption failed"), "{server_err}");

    // Configuration errors: before connecting.
    let bad = dir.path("bad.key");
    std::fs::write(&bad, "# comment\nnot-a-key\n").unwrap();
    let out = Command::new(cli())
        .args(["connect", "127.0.0.1:1", "--key"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("noisesocket: {}:2: not a base64 key", bad.display())
    );
    let out = Command::new(cli())
        .args(["connect", "127.0.0.1:1", "--protocol", ik])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("noisesocket: configuration: {ik} needs a private key")
    );
    let out = Command::new(cli())
        .args([
            "connect",
            "127.0.0.1:1",
            "--protocol",
            "Noise_XXfallback_25519_AESGCM_SHA256",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("fallback patterns are not supported"));
}

/// `listen PORT` binds every IPv4 address, as nginx's `listen PORT` does: a client reaches
/// it on 127.0.0.2, which a socket bound to 127.0.0.1 alone would refuse.
#[test]
fn listen_port_binds_every_address() {
    let dir = TempDir::new("bind");
    let (server_args, client_args) = key_args(&dir, "XX");
    let ready = dir.path("ready");
    let mut server = Command::new(cli())
        .args(["listen", "0", "--echo", "--count", "1"])
        .args(&server_args)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = wait_port(&ready, &mut server);
    let mut client = Command::new(cli());
    client
        .args(["connect", &format!("127.0.0.2:{port}"), "-N"])
        .args(&client_args);
    let out = run_with_input(client, b"any address");
    let server_out = server.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "client: {} / server: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&server_out.stderr)
    );
    assert_eq!(out.stdout, b"any address");
}

/// `--help` works at the top and for each command and exits 0; it says how stdin EOF and
/// `listen PORT` behave. Usage errors exit 2 (clap's convention, like most tools), apart
/// from failures of a well-formed command, which exit 1.
#[test]
fn help_and_usage_errors() {
    for (args, wants) in [
        (vec!["--help"], "stdin EOF leaves the connection open"),
        (vec!["connect", "--help"], "-N, --half-close"),
        (vec!["listen", "--help"], "binds every IPv4 address"),
        (vec!["help", "listen"], "--ready-file"),
    ] {
        let out = Command::new(cli()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(wants), "{args:?}: {text}");
    }
    for args in [
        vec!["bogus"],
        vec!["connect"],
        vec!["connect", "127.0.0.1:1", "--echo"],
        vec!["listen", "0", "--padding", "70000"],
        vec!["listen", "0", "--count", "many"],
        vec!["connect", "127.0.0.1:1", "--negotiation", "protobuf"],
    ] {
        let out = Command::new(cli()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
}
