//! `noisesocket agent` over its real socket (docs/key-agent.md): listing keys (rotation),
//! DH with each, refusals (low-order points, garbage, oversize, unknown key) that leave the
//! connection and the agent up, many requests in flight from several clients, a client
//! that leaves mid-flight, the socket's mode and `--user`, and a delegated handshake whose
//! static key is only in the agent.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_noise::agent_socket::{list_keys, AgentSocket, Received};
use nginx_noise::core::handshake::Handshake;
use nginx_noise::core::key_agent::client::{Ask, Client};
use nginx_noise::core::key_agent::wire::{Request, Response, Status, RESPONSE_LEN};
use nginx_noise::core::key_agent::DelegatedHandshake;
use nginx_noise::core::keys::{encode_key, Secret};
use nginx_noise::core::negotiation::codec::Codec;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use support::process::{cli, TempDir};
use support::*;

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl Agent {
    fn start(keys: &[u8], extra: &[&str]) -> Agent {
        let keys: Vec<Secret> = keys.iter().map(|&b| secret(b)).collect();
        Agent::start_keys(&keys, extra)
    }

    fn start_keys(keys: &[Secret], extra: &[&str]) -> Agent {
        let dir = TempDir::new("agent");
        let socket = dir.path("agent.sock");
        let mut cmd = Command::new(cli());
        cmd.arg("agent");
        for (i, key) in keys.iter().enumerate() {
            let file = dir.path(&format!("{i}.key"));
            std::fs::write(&file, format!("{}\n", encode_key(key.as_bytes()))).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            cmd.arg("--key").arg(&file);
        }
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()));
        cmd.args(extra).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let mut agent = Agent {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while AgentSocket::connect(&agent.socket).is_err() {
            assert!(agent.child.try_wait().unwrap().is_none(), "agent exited");
            assert!(Instant::now() < deadline, "agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn connect(&self) -> AgentSocket {
        AgentSocket::connect(&self.socket).unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the agent; its stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dh(key: u8, point: &[u8; 32]) -> [u8; 32] {
    let mut d = DefaultResolver.resolve_dh(&DHChoice::Curve25519).unwrap();
    d.set(secret(key).as_bytes());
    let mut out = [0u8; 32];
    d.dh(point, &mut out).unwrap();
    out
}

/// Sends every message (pipelined) and reads one answer per message, in any order.
fn exchange(socket: &AgentSocket, messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut answers) = (0, Vec::new());
    while answers.len() < messages.len() {
        assert!(
            Instant::now() < deadline,
            "answers missing: {} of {}",
            answers.len(),
            messages.len()
        );
        while sent < messages.len() && socket.send(&messages[sent]).unwrap() {
            sent += 1;
        }
        socket.wait_readable(Duration::from_millis(200)).unwrap();
        loop {
            let mut buf = [0u8; 256];
            match socket.recv(&mut buf).unwrap() {
                Received::Message(n) => answers.push(buf[..n].to_vec()),
                Received::WouldBlock => break,
                other => panic!("{other:?}"),
            }
        }
    }
    answers
}

fn request(id: u32, key: u8, point: [u8; 32]) -> Vec<u8> {
    Request::Dh {
        id,
        key: public(key),
        point,
    }
    .encode()
    .to_vec()
}

fn response(bytes: &[u8]) -> Response {
    Response::decode(bytes).unwrap()
}

#[test]
fn lists_its_keys_in_order_and_answers_dh_with_each() {
    let agent = Agent::start(&[1, 2], &[]);
    let keys = list_keys(&agent.socket, Duration::from_secs(10)).unwrap();
    assert_eq!(
        keys,
        vec![public(1), public(2)],
        "rotation: every key, in order"
    );
    let socket = agent.connect();
    let point = public(9);
    let answers = exchange(
        &socket,
        &[
            request(1, 1, point),
            request(2, 2, point),
            request(3, 3, point),
        ],
    );
    let mut by_id: Vec<Response> = answers.iter().map(|a| response(a)).collect();
    by_id.sort_by_key(|r| r.id);
    assert_eq!(
        (by_id[0].status, by_id[0].value),
        (Status::Ok, dh(1, &point))
    );
    assert_eq!(
        (by_id[1].status, by_id[1].value),
        (Status::Ok, dh(2, &point))
    );
    assert_eq!(
        by_id[2].status,
        Status::UnknownKey,
        "key 3 is not the agent's"
    );
    let index = exchange(
        &socket,
        &[Request::PublicKey { id: 4, index: 2 }.encode().to_vec()],
    );
    let r = response(&index[0]);
    assert_eq!(
        (r.status, r.count),
        (Status::UnknownKey, 2),
        "past the last key"
    );
}

#[test]
fn refuses_low_order_points_garbage_and_oversize_and_stays_up() {
    let mut agent = Agent::start(&[1], &[]);
    let socket = agent.connect();
    let mut one = [0u8; 32];
    one[0] = 1;
    one[31] = 0x80;
    let mut bad_version = request(12, 1, public(9));
    bad_version[0] = 9;
    let mut bad_kind = request(13, 1, public(9));
    bad_kind[1] = 7;
    let mut oversize = request(14, 1, public(9));
    oversize.resize(200, 0);
    let answers = exchange(
        &socket,
        &[
            request(10, 1, [0; 32]),
            request(11, 1, one),
            bad_version,
            bad_kind,
            oversize,
            vec![1, 1, 0],
        ],
    );
    let got: Vec<(u32, Status)> = answers
        .iter()
        .map(|a| response(a))
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(
        got,
        vec![
            (10, Status::LowOrder),
            (11, Status::LowOrder),
            (12, Status::BadVersion),
            (13, Status::BadRequest),
            (14, Status::BadRequest),
            (0, Status::BadRequest),
        ]
    );
    assert!(answers.iter().all(|a| a.len() == RESPONSE_LEN));
    let after = exchange(&socket, &[request(15, 1, public(9))]);
    assert_eq!(
        response(&after[0]).value,
        dh(1, &public(9)),
        "the connection still serves"
    );
    assert!(agent.alive());
    let log = agent.stop();
    assert!(log.contains("refused a low-order point"), "{log}");
    assert!(log.contains("refused a 200-byte request"), "{log}");
}

#[test]
fn many_requests_in_flight_from_several_clients() {
    let agent = Agent::start(&[1, 2], &[]);
    let points: Vec<[u8; 32]> = (20..24).map(public).collect();
    let want: Vec<[u8; 32]> = points.iter().map(|p| dh(2, p)).collect();
    let clients: Vec<AgentSocket> = (0..3).map(|_| agent.connect()).collect();
    // More than the agent keeps unsent per client: it must stop reading, not drop.
    let n = 700u32;
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| request(i, 2, points[i as usize % 4]))
        .collect();
    std::thread::scope(|s| {
        for c in &clients {
            let (messages, want) = (&messages, &want);
            s.spawn(move || {
                let answers = exchange(c, messages);
                let mut seen = vec![false; n as usize];
                for a in answers {
                    let r = response(&a);
                    assert_eq!(r.status, Status::Ok);
                    assert_eq!(
                        r.value,
                        want[r.id as usize % 4],
                        "answer {} is its request's",
                        r.id
                    );
                    assert!(!seen[r.id as usize], "one answer per request");
                    seen[r.id as usize] = true;
                }
            });
        }
    });
}

#[test]
fn a_client_that_leaves_mid_flight_does_not_disturb_the_others() {
    let mut agent = Agent::start(&[1], &[]);
    {
        let leaving = agent.connect();
        for i in 0..300 {
            if !leaving.send(&request(i, 1, public(9))).unwrap() {
                break;
            }
        }
    }
    let other = agent.connect();
    let answers = exchange(&other, &[request(1, 1, public(8))]);
    assert_eq!(response(&answers[0]).value, dh(1, &public(8)));
    assert!(agent.alive());
    let log = agent.stop();
    assert!(log.contains("disconnected"), "{log}");
}

#[test]
fn the_socket_is_mode_0660_and_user_drops_privileges() {
    let agent = Agent::start(&[1], &[]);
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    drop(agent);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let nobody: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("nobody:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|uid| uid.parse().ok())
        .expect("a nobody user");
    if rustix::process::getuid().is_root() {
        let agent = Agent::start(&[1], &["--user", "nobody"]);
        assert_eq!(
            std::fs::metadata(&agent.socket).unwrap().uid(),
            nobody,
            "socket owner"
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let uids: Vec<&str> = uids.split_whitespace().skip(1).collect();
        assert!(uids.iter().all(|u| *u == nobody.to_string()), "{uids:?}");
        // Still serves as nobody: the keys were read before.
        let answers = exchange(&agent.connect(), &[request(1, 1, public(9))]);
        assert_eq!(response(&answers[0]).value, dh(1, &public(9)));
        assert!(agent.stop().contains("as user nobody"));
    } else {
        let out = agent_output(&["--user", "nobody"]);
        assert!(!out.0 && out.1.contains("--user nobody"), "{}", out.1);
    }
}

/// Runs the agent expecting it to exit: (success, stderr).
fn agent_output(args: &[&str]) -> (bool, String) {
    let dir = TempDir::new("agent-bad");
    let key = dir.path("k.key");
    std::fs::write(&key, format!("{}\n", encode_key(secret(1).as_bytes()))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let socket = format!("unix:{}", dir.path("s").display());
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("KEY", key.to_str().unwrap())
                .replace("SOCK", &socket)
        })
        .collect();
    let mut cmd = Command::new(cli());
    cmd.arg("agent").args(&args);
    if !args.iter().any(|a| a == "--listen") {
        cmd.arg("--listen").arg(&socket);
    }
    if !args.iter().any(|a| a == "--key") {
        cmd.arg("--key").arg(&key);
    }
    let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refuses_to_start_on_bad_arguments() {
    let (ok, err) = agent_output(&["--listen", "/tmp/no-scheme"]);
    assert!(!ok && err.contains("expected unix:/path"), "{err}");
    let (ok, err) = agent_output(&["--key", "KEY", "--key", "KEY"]);
    assert!(!ok && err.contains("the same key is given twice"), "{err}");
    let (ok, err) = agent_output(&["--user", "no-such-user-here"]);
    assert!(!ok && err.contains("no such user"), "{err}");
    let agent = Agent::start(&[1], &[]);
    let listen = format!("unix:{}", agent.socket.display());
    let (ok, err) = agent_output(&["--listen", &listen]);
    assert!(!ok && err.contains("another agent is listening"), "{err}");
}

/// Answers a delegated handshake's pending operations through the agent's socket.
fn serve(h: &mut DelegatedHandshake, socket: &AgentSocket, client: &mut Client<u8>) {
    while let Some(op) = h.pending_key_op() {
        let message = client
            .ask(
                0,
                Ask::Dh {
                    key: op.public_key,
                    point: op.point,
                },
                0,
            )
            .unwrap();
        assert!(socket.send(&message).unwrap());
        let answer = loop {
            socket.wait_readable(Duration::from_secs(10)).unwrap();
            let mut buf = [0u8; 64];
            if let Received::Message(n) = socket.recv(&mut buf).unwrap() {
                break client.receive(&buf[..n]).unwrap().1;
            }
        };
        h.provide(answer.map(|r| r.value)).unwrap();
    }
}

#[test]
fn a_handshake_whose_static_key_is_only_in_the_agent() {
    let agent = Agent::start(&[2, 3], &[]);
    let keys: Arc<[[u8; 32]]> = list_keys(&agent.socket, Duration::from_secs(10))
        .unwrap()
        .into();
    let socket = agent.connect();
    let mut client = Client::new(4, 10_000);
    for (pattern, knows) in [("XX", None), ("IK", Some(public(3)))] {
        let name = format!("{pattern}_25519_ChaChaPoly_BLAKE2s");
        let server_policy =
            policy(&[&name], Codec::Virgil, creds(None, None)).with_agent_keys(&keys);
        let mut server =
            DelegatedHandshake::responder(Arc::new(server_policy), settings(None), keys.clone());
        let mut initiator = Handshake::initiator(
            Arc::new(policy(&[&name], Codec::Virgil, creds(Some(1), knows))),
            settings(None),
        )
        .unwrap();
        for _ in 0..4 {
            let out = initiator.pending_output().to_vec();
            initiator.consume_output(out.len());
            if !out.is_empty() {
                assert_eq!(server.read(&out).unwrap(), out.len());
                serve(&mut server, &socket, &mut client);
            }
            let back = server.pending_output().to_vec();
            server.consume_output(back.len());
            if !back.is_empty() {
                initiator.read(&back).unwrap();
            }
        }
        assert!(server.is_done() && initiator.is_done(), "{pattern}");
        let (s, c) = (server.finish().unwrap(), initiator.finish().unwrap());
        assert_eq!(s.info.handshake_hash, c.info.handshake_hash, "{pattern}");
        assert_eq!(
            c.info.remote_static,
            Some(if knows.is_some() {
                public(3)
            } else {
                public(2)
            })
        );
    }
}

/// Every readable byte of process `pid`'s memory (`/proc/PID/maps`, `/proc/PID/mem`).
fn memory_of(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut region).is_ok() {
            all.extend_from_slice(&region);
        }
    }
    assert!(!all.is_empty());
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_listener_using_the_agent_holds_no_copy_of_the_private_key() {
    // A key no memory holds by chance.
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(101));
    let key = Secret::from_bytes(key);
    let agent = Agent::start_keys(std::slice::from_ref(&key), &[]);
    let dir = TempDir::new("agent-mem");
    let key_file = dir.path("server.key");
    std::fs::write(&key_file, format!("{}\n", encode_key(key.as_bytes()))).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = encode_key(key.as_bytes());
    let client_key = dir.path("client.key");
    std::fs::write(
        &client_key,
        format!("{}\n", encode_key(secret(1).as_bytes())),
    )
    .unwrap();
    std::fs::set_permissions(&client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    for with_agent in [true, false] {
        let ready = dir.path(&format!("port-{with_agent}"));
        let mut listen = Command::new(cli());
        listen
            .args([
                "listen",
                "127.0.0.1:0",
                "--echo",
                "--count",
                "2",
                "--ready-file",
            ])
            .arg(&ready);
        if with_agent {
            listen
                .arg("--key-agent")
                .arg(format!("unix:{}", agent.socket.display()));
        } else {
            listen.arg("--key").arg(&key_file);
        }
        let mut listener = listen.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&ready) {
                if p.ends_with('\n') {
                    break p.trim().to_string();
                }
            }
            assert!(Instant::now() < deadline, "listener never ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut connect = Command::new(cli())
            .args(["connect", &format!("127.0.0.1:{port}"), "-N", "--key"])
            .arg(&client_key)
            .arg("--remote-key")
            .arg(encode_key(&key.public_key()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        connect.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        let out = connect.wait_with_output().unwrap();
        if !out.status.success() {
            let _ = listener.kill();
            let _ = listener.wait();
            panic!("connect failed");
        }
        assert_eq!(out.stdout, b"hello\n", "a handshake with our key happened");
        let memory = memory_of(listener.id());
        let _ = listener.kill();
        let _ = listener.wait();
        let found = contains(&memory, key.as_bytes()) || contains(&memory, text.as_bytes());
        assert_eq!(
            found, !with_agent,
            "the private key is in the listener's memory: {found} (agent: {with_agent})"
        );
    }
}
