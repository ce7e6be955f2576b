//! `noisesocket agent`: holds static private keys and answers X25519 requests on a unix
//! `SOCK_SEQPACKET` socket (docs/key-agent.md), so that nginx's workers never hold them.
//!
//! One thread, one `poll` loop over the listening socket and every client: a client's
//! requests are read while fewer than [`MAX_IN_FLIGHT`] of its answers wait to be sent
//! (beyond, it is not read until it reads its answers), at most [`BATCH`] per turn so that
//! no client starves the others; at most [`MAX_CLIENTS`] clients. Each request gets exactly
//! one answer: a result, or a refusal (malformed, unknown key, low-order point).
//!
//! Invariants: keys are read before privileges are dropped and never written anywhere;
//! the socket is created mode 0660 (a umask during `bind`, no window with a wider mode);
//! with `--user`, groups, gid and uid are all dropped before the first client is accepted
//! (one thread: the per-thread system calls drop the whole process); a bad request costs
//! one refusal and one log line, never the connection or the agent.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nginx_noise::core::crypto::HeldKey;
use nginx_noise::core::key_agent::is_low_order;
use nginx_noise::core::key_agent::wire::{Request, Response, Status, REQUEST_LEN, RESPONSE_LEN};
use nginx_noise::core::keys;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::{
    accept_with, bind, listen, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};

/// Answers waiting to be sent to one client before its requests are no longer read.
pub const MAX_IN_FLIGHT: usize = 256;
/// Requests read from one client per turn of the loop.
const BATCH: usize = 32;
/// Clients at once (nginx needs one per worker, per configuration).
pub const MAX_CLIENTS: usize = 1024;
/// Bytes read per message: more than a request, so that a longer one is seen as such.
const RECV_BUF: usize = 128;

struct Client {
    fd: OwnedFd,
    id: u64,
    answers: VecDeque<[u8; RESPONSE_LEN]>,
}

fn log(line: &str) {
    eprintln!("noisesocket agent: {line}");
}

/// Runs the agent; returns only on a fatal error.
pub fn run(key_files: &[PathBuf], listen_at: &str, user: Option<&str>) -> Result<(), String> {
    let path = listen_at
        .strip_prefix("unix:")
        .map(PathBuf::from)
        .ok_or_else(|| format!("--listen {listen_at}: expected unix:/path"))?;
    let keys = load_keys(key_files)?;
    let account = user.map(lookup_user).transpose()?;
    let listener = bind_socket(&path)?;
    if let Some((name, uid, gid)) = &account {
        rustix::fs::chown(&path, Some(*uid), Some(*gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        drop_privileges(*uid, *gid).map_err(|e| format!("--user {name}: {e}"))?;
    }
    let fingerprints: Vec<String> = keys
        .iter()
        .map(|k| keys::fingerprint(k.public_key()))
        .collect();
    log(&format!(
        "listening on unix:{} with {} key(s): {}{}",
        path.display(),
        keys.len(),
        fingerprints.join(", "),
        account
            .as_ref()
            .map_or(String::new(), |(name, _, _)| format!(", as user {name}"))
    ));
    serve(&listener, &keys)
}

fn load_keys(files: &[PathBuf]) -> Result<Vec<HeldKey>, String> {
    if files.is_empty() {
        return Err("agent needs at least one --key FILE".into());
    }
    let mut held: Vec<HeldKey> = Vec::new();
    for file in files {
        if let Some(mode) = keys::loose_permissions(file) {
            log(&format!(
                "warning: {} is readable by others (mode {mode:o}); chmod 600 it",
                file.display()
            ));
        }
        let secret = keys::load_secret(file).map_err(|e| e.to_string())?;
        let key = HeldKey::new(&secret)
            .ok_or_else(|| format!("{}: not a usable X25519 key", file.display()))?;
        if held.iter().any(|k| k.public_key() == key.public_key()) {
            return Err(format!("{}: the same key is given twice", file.display()));
        }
        held.push(key);
    }
    if held.len() > usize::from(u16::MAX) {
        return Err("too many keys".into());
    }
    Ok(held)
}

/// `--user NAME`: its uid and primary gid, from /etc/passwd (local accounts).
fn lookup_user(name: &str) -> Result<(String, rustix::fs::Uid, rustix::fs::Gid), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let uid = fields[2]
                .parse()
                .map_err(|_| format!("/etc/passwd: bad uid for {name}"))?;
            let gid = fields[3]
                .parse()
                .map_err(|_| format!("/etc/passwd: bad gid for {name}"))?;
            return Ok((
                name.to_string(),
                rustix::fs::Uid::from_raw(uid),
                rustix::fs::Gid::from_raw(gid),
            ));
        }
    }
    Err(format!("--user {name}: no such user in /etc/passwd"))
}

fn drop_privileges(uid: rustix::fs::Uid, gid: rustix::fs::Gid) -> Result<(), String> {
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    let root = rustix::fs::Uid::ROOT;
    let dropped = rustix::process::getuid() == uid
        && rustix::process::geteuid() == uid
        && (uid.is_root() || set_thread_res_uid(root, root, root).is_err());
    if !dropped {
        return Err("privileges were not dropped".into());
    }
    Ok(())
}

/// Binds `path` mode 0660; a stale socket (nobody listening) is replaced, a live one is not.
fn bind_socket(path: &Path) -> Result<OwnedFd, String> {
    let shown = path.display();
    if path.exists() {
        if nginx_noise::agent_socket::AgentSocket::connect(path).is_ok() {
            return Err(format!("{shown}: another agent is listening there"));
        }
        std::fs::remove_file(path).map_err(|e| format!("{shown}: {e}"))?;
    }
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| format!("{shown}: {e}"))?;
    let old = rustix::process::umask(Mode::from_raw_mode(0o117));
    let bound = bind(&fd, &addr);
    rustix::process::umask(old);
    bound.map_err(|e| format!("bind {shown}: {e}"))?;
    rustix::fs::chmod(path, Mode::from_raw_mode(0o660))
        .map_err(|e| format!("chmod {shown}: {e}"))?;
    listen(&fd, 128).map_err(|e| format!("listen {shown}: {e}"))?;
    Ok(fd)
}

fn serve(listener: &OwnedFd, keys: &[HeldKey]) -> Result<(), String> {
    let mut clients: Vec<Client> = Vec::new();
    let mut next_id = 1u64;
    loop {
        let mut fds = Vec::with_capacity(clients.len() + 1);
        fds.push(PollFd::new(listener, PollFlags::IN));
        for c in &clients {
            let mut events = PollFlags::empty();
            if c.answers.len() < MAX_IN_FLIGHT {
                events |= PollFlags::IN;
            }
            if !c.answers.is_empty() {
                events |= PollFlags::OUT;
            }
            fds.push(PollFd::new(&c.fd, events));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        drop(fds);
        let mut closed = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let revents = ready[i + 1];
            if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
                && !read_requests(c, keys)
            {
                closed.push(i);
                continue;
            }
            if !flush(c) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let c = clients.swap_remove(i);
            log(&format!(
                "client {} disconnected ({} answers unsent)",
                c.id,
                c.answers.len()
            ));
        }
        if ready[0].contains(PollFlags::IN) {
            accept_clients(listener, &mut clients, &mut next_id);
        }
    }
}

fn accept_clients(listener: &OwnedFd, clients: &mut Vec<Client>, next_id: &mut u64) {
    loop {
        match accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) if clients.len() >= MAX_CLIENTS => {
                log(&format!(
                    "refused a client: already {MAX_CLIENTS} connected"
                ));
                drop(fd);
            }
            Ok(fd) => {
                let id = *next_id;
                *next_id += 1;
                log(&format!("client {id} connected"));
                clients.push(Client {
                    fd,
                    id,
                    answers: VecDeque::new(),
                });
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => return,
            Err(e) => {
                // EMFILE and the like: the pending connection waits for the next turn.
                log(&format!("accept: {e}"));
                return;
            }
        }
    }
}

/// Reads and answers up to [`BATCH`] requests; false when the client is gone.
fn read_requests(c: &mut Client, keys: &[HeldKey]) -> bool {
    for _ in 0..BATCH {
        if c.answers.len() >= MAX_IN_FLIGHT {
            return true;
        }
        let mut buf = [0u8; RECV_BUF];
        let answer = match recv(c.fd.as_fd(), &mut buf, RecvFlags::TRUNC) {
            Ok((_, 0)) => return false,
            Ok((_, n)) => {
                let decoded = if n > RECV_BUF {
                    let id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    Err((id, Status::BadRequest))
                } else {
                    Request::decode(&buf[..n])
                };
                match decoded {
                    Ok(request) => answer(c.id, &request, keys),
                    Err((id, status)) => {
                        log(&format!(
                            "client {}: refused a {n}-byte request ({}); requests are {REQUEST_LEN} bytes, version 1",
                            c.id,
                            status.describe()
                        ));
                        Response::refusal(id, status)
                    }
                }
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => return true,
            Err(_) => return false,
        };
        c.answers.push_back(answer.encode());
    }
    true
}

fn answer(client: u64, request: &Request, keys: &[HeldKey]) -> Response {
    match *request {
        Request::Dh { id, key, point } => {
            let Some(held) = keys.iter().find(|k| *k.public_key() == key) else {
                log(&format!(
                    "client {client}: no key {}",
                    keys::fingerprint(&key)
                ));
                return Response::refusal(id, Status::UnknownKey);
            };
            if is_low_order(&point) {
                log(&format!("client {client}: refused a low-order point"));
                return Response::refusal(id, Status::LowOrder);
            }
            match held.dh(&point) {
                Some(shared) => Response {
                    id,
                    status: Status::Ok,
                    count: 0,
                    value: *shared,
                },
                None => {
                    log(&format!("client {client}: refused a low-order point"));
                    Response::refusal(id, Status::LowOrder)
                }
            }
        }
        Request::PublicKey { id, index } => {
            let count = keys.len() as u16;
            match keys.get(usize::from(index)) {
                Some(k) => Response {
                    id,
                    status: Status::Ok,
                    count,
                    value: *k.public_key(),
                },
                None => Response {
                    count,
                    ..Response::refusal(id, Status::UnknownKey)
                },
            }
        }
    }
}

/// Sends what answers the socket takes; false when the client is gone.
fn flush(c: &mut Client) -> bool {
    while let Some(answer) = c.answers.front() {
        match send(
            c.fd.as_fd(),
            answer,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(_) => {
                c.answers.pop_front();
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => return true,
            Err(_) => return false,
        }
    }
    true
}
