"""What the single-nginx benchmarks in scripts/bench share: the binaries, free ports, key
files made by our CLI, one nginx with one worker and its CPU time, and a NoiseSocket XX
client on PyPI `noiseprotocol` (an independent stack, so the client's work is not ours).

The binaries are build/'s unless NOISE_BENCH_NGINX, NOISE_BENCH_MODULE or NOISE_BENCH_CLI
say otherwise.
"""

import base64
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

from noise.connection import Keypair, NoiseConnection

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = os.environ.get("NOISE_BENCH_NGINX") or os.path.join(REPO, "build/sbin/nginx")
MODULE = os.environ.get("NOISE_BENCH_MODULE") or os.path.join(
    REPO, "build/modules/ngx_stream_noise_module.so")
CLI = os.environ.get("NOISE_BENCH_CLI") or os.path.join(REPO, "build/bin/noisesocket")
TICK = os.sysconf("SC_CLK_TCK")
XX = "Noise_XX_25519_ChaChaPoly_BLAKE2s"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(d, name):
    """Writes d/NAME.key (mode 0600); returns (private key bytes, public key base64)."""
    key = subprocess.run([CLI, "keygen"], check=True, capture_output=True).stdout
    pub = subprocess.run([CLI, "pubkey"], input=key, check=True, capture_output=True).stdout
    path = os.path.join(d, name + ".key")
    with open(path, "wb") as f:
        f.write(key)
    os.chmod(path, 0o600)
    return base64.b64decode(key.strip()), pub.decode().strip()


def sized(data):
    return struct.pack(">H", len(data)) + data


def read_all(s):
    """Everything the peer sends until it closes (a reset counts as a close)."""
    got = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return got
        if not d:
            return got
        got += d


def xx(port, client_key, protocol=XX):
    """One whole XX handshake as the client with static key `client_key` (empty negotiation
    data: the server's only protocol); returns what the server sent after it, until close."""
    n = NoiseConnection.from_name(protocol.encode())
    n.set_as_initiator()
    n.set_prologue(b"NoiseSocketInit1" + struct.pack(">H", 0))
    n.set_keypair_from_private_bytes(Keypair.STATIC, client_key)
    n.start_handshake()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sized(b"") + sized(bytes(n.write_message(b""))))
        buf = b""
        while True:
            if len(buf) >= 4:
                neg = struct.unpack(">H", buf[:2])[0]
                if len(buf) >= 4 + neg:
                    ln = struct.unpack(">H", buf[2 + neg:4 + neg])[0]
                    if len(buf) >= 4 + neg + ln:
                        break
            d = s.recv(65536)
            if not d:
                raise RuntimeError("port %d: closed during the handshake" % port)
            buf += d
        n.read_message(buf[4 + neg:4 + neg + ln])
        s.sendall(sized(b"") + sized(bytes(n.write_message(b"\x00\x00"))))
        rest = read_all(s)
    if not n.handshake_finished:
        raise RuntimeError("port %d: handshake did not finish" % port)
    return rest


def cpu(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def start_nginx(d, conf):
    """Starts nginx with prefix d and config text `conf` (which must put its pid file at
    d/nginx.pid and run one worker); returns (master pid, worker pid)."""
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)  # nginx opens its compiled-in log first
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    subprocess.run([NGINX, "-p", d + "/", "-c", d + "/nginx.conf"], check=True)
    for _ in range(100):
        if os.path.exists(os.path.join(d, "nginx.pid")):
            break
        time.sleep(0.05)
    master = int(open(os.path.join(d, "nginx.pid")).read())
    time.sleep(0.3)
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True).stdout.split()
    if len(out) != 1:
        raise RuntimeError("expected one worker, found %s" % out)
    return master, int(out[0])


def stop_nginx(master):
    if master:
        try:
            os.kill(master, signal.SIGQUIT)
            time.sleep(0.5)
        except ProcessLookupError:
            pass


def worst_log_lines(d):
    """The alert and crit lines of d/error.log: a benchmark that made any failed."""
    log = open(os.path.join(d, "error.log")).read()
    return [l for l in log.splitlines() if "[alert]" in l or "[crit]" in l]


def measure(pid, run, variants, count, rounds):
    """Worker CPU (µs) per call of run[v], for each variant: the variants alternate for
    `rounds` rounds of `count` calls (after 20 uncounted ones); returns the medians."""
    figures = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            for _ in range(20):  # warm up: the worker's caches, not counted
                run[v]()
            time.sleep(0.1)
            before = cpu(pid)
            for _ in range(count):
                run[v]()
            time.sleep(0.2)  # the last connection's close
            figures[v].append((cpu(pid) - before) / count * 1e6)
        sys.stderr.write("round %d: %s\n" % (r + 1, " ".join(
            "%s=%.1f" % (v, figures[v][-1]) for v in variants)))
    return {v: statistics.median(figures[v]) for v in variants}
