//! The floor of one key-agent question (docs/key-agent.md): the CPU that two processes spend
//! on one round trip of a 72-byte request and a 48-byte answer over a unix `SOCK_SEQPACKET`
//! socket, with the asker waiting in `epoll_wait` as an nginx worker does and the answerer in
//! a blocking `recv`, the cheapest agent there can be (no X25519, no poll, no bookkeeping).
//! Whatever an agent does, each question costs at least this on top of its DH.
//! `cargo bench --bench agent_floor`.
//!
//! Two layouts, as in scripts/bench: both processes pinned to CPU 0 (one core), and the
//! asker on CPU 0, the answerer on CPU 1 (two-process). With one question at a time, each
//! round trip puts both processes to sleep and wakes them: on one CPU that is a context
//! switch each way; across CPUs every wake-up is a cross-CPU wake-up of an idle CPU.
//! CPU is utime + stime of each process (CLOCK_PROCESS_CPUTIME_ID), over 20,000 round trips.
//! The last line is for scripts: `agent floor: one_cpu_us=... two_cpu_us=...` (both
//! processes together, per round trip).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::event::epoll;
use rustix::net::{
    accept, bind, connect, listen, recv, send, socket, AddressFamily, RecvFlags, SendFlags,
    SocketAddrUnix, SocketType,
};
use rustix::thread::{sched_setaffinity, CpuSet};

const ROUND_TRIPS: u32 = 20_000;
const ANSWERER: &str = "NOISE_AGENT_FLOOR_ANSWERER";

#[path = "common/cpu_time.rs"]
mod cpu_time;

/// utime + stime of this process, in microseconds.
fn process_cpu_us() -> f64 {
    cpu_time::process_seconds() * 1e6
}

fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// The child: connects, answers ROUND_TRIPS requests, prints its CPU.
fn answer(path: &str, cpu: usize) {
    pin(cpu);
    let fd = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).expect("socket");
    connect(&fd, &SocketAddrUnix::new(path).expect("path")).expect("connect");
    let mut buf = [0u8; 128];
    let start = process_cpu_us();
    for _ in 0..ROUND_TRIPS {
        recv(&fd, &mut buf, RecvFlags::empty()).expect("recv");
        send(&fd, &buf[..48], SendFlags::NOSIGNAL).expect("send");
    }
    println!("{}", process_cpu_us() - start);
}

/// One layout: (asker µs, answerer µs) per round trip.
fn layout(answerer_cpu: usize) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("agent-floor.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    let listener = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).expect("socket");
    bind(
        &listener,
        &SocketAddrUnix::new(Path::new(&path)).expect("path"),
    )
    .expect("bind");
    listen(&listener, 1).expect("listen");
    pin(0);
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env(ANSWERER, format!("{},{answerer_cpu}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the answerer");
    let fd = accept(&listener).expect("accept");
    rustix::io::ioctl_fionbio(&fd, true).expect("non-blocking");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
    epoll::add(
        &ep,
        fd.as_fd(),
        epoll::EventData::new_u64(1),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )
    .expect("epoll add");
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4);
    let request = [7u8; 72];
    let mut buf = [0u8; 128];
    let start = process_cpu_us();
    for _ in 0..ROUND_TRIPS {
        send(&fd, &request, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).expect("send");
        loop {
            match recv(&fd, &mut buf, RecvFlags::DONTWAIT) {
                Ok(_) => break,
                Err(rustix::io::Errno::AGAIN) => {
                    events.clear();
                    epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)
                        .expect("epoll_wait");
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    let asker = process_cpu_us() - start;
    let out = child.wait_with_output().expect("answerer");
    let answerer: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the answerer's CPU");
    let _ = std::fs::remove_dir_all(&dir);
    let n = f64::from(ROUND_TRIPS);
    (asker / n, answerer / n)
}

fn main() {
    if let Ok(spec) = std::env::var(ANSWERER) {
        let (path, cpu) = spec.rsplit_once(',').expect("path,cpu");
        answer(path, cpu.parse().expect("cpu"));
        return;
    }
    println!("| one key-agent question, floor (no DH) | asker µs | answerer µs | both µs |");
    println!("|---|---|---|---|");
    let mut both = Vec::new();
    for (name, cpu) in [
        ("one core (both on CPU 0)", 0),
        ("two-process (CPU 0, CPU 1)", 1),
    ] {
        let (a, b) = layout(cpu);
        println!("| {name} | {a:.1} | {b:.1} | {:.1} |", a + b);
        both.push(a + b);
    }
    println!(
        "agent floor: one_cpu_us={:.1} two_cpu_us={:.1}",
        both[0], both[1]
    );
}
