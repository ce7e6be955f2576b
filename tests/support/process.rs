//! Running NoiseSocket peers as processes: the `noisesocket` CLI (and, for interop, the
//! Python peer), keys made by the CLI, deterministic test data, and a 1 MiB round trip.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_noisesocket"))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nginx-noise-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `<name>.key` (private, mode 0600) and `<name>.pub` with the CLI; returns the pub path.
pub fn keypair(dir: &TempDir, name: &str) -> PathBuf {
    let out = Command::new(cli()).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = dir.path(&format!("{name}.key"));
    std::fs::write(&key, &out.stdout).unwrap();
    let mut child = Command::new(cli())
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let public = dir.path(&format!("{name}.pub"));
    std::fs::write(&public, &out.stdout).unwrap();
    public
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits for a responder's ready file and returns the port in it.
pub fn wait_port(ready: &Path, server: &mut Child) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            if let Ok(port) = text.trim().parse() {
                return port;
            }
        }
        if let Ok(Some(status)) = server.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = server.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("responder exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "responder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `client` with `input` on stdin, killing it after a minute; returns its output.
pub fn run_with_input(mut client: Command, input: &[u8]) -> Output {
    let mut child = client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    drop(watchdog);
    out
}

/// Extracts `name=value` from a `-v` report.
pub fn field(report: &str, name: &str) -> Option<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
}
