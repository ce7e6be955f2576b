#!/usr/bin/env python3
"""NoiseSocket against TLS 1.3 and plain TCP, on the same two-hop nginx chain, in one run.

    load generator -> nginx A -> (link under test) -> nginx B -> nginx http backend

Each variant of the A->B link has its own pair of ports (our build/sbin/nginx):

    plain          listen / proxy_pass
    tls            listen ssl (TLS 1.3, ECDSA P-256, no session cache or tickets) /
                   proxy_ssl on, proxy_ssl_session_reuse off: every connection a full handshake
    tls-resumed    TLS 1.3 with nginx's defaults: session tickets on (B), proxy_ssl_session_reuse
                   on (A), so A resumes with the ticket of its previous connection (psk_dhe_ke)
    xx-chacha      Noise_XX_25519_ChaChaPoly_BLAKE2s      noise_listen / noise_upstream on
    xx-aesgcm      Noise_XX_25519_AESGCM_SHA256
    ik-chacha      Noise_IK_25519_ChaChaPoly_BLAKE2s      (A knows B's key)
    nk-chacha      Noise_NK_25519_ChaChaPoly_BLAKE2s      (A knows B's key, A has no key)
    xxpsk3-chacha  Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s  (a psk on both ends too)
    xx-agent       as xx-chacha, with both static keys in one `noisesocket agent` (unpinned):
                   noise_key_agent (B) / noise_upstream_key_agent (A); the agent's CPU is
                   counted with the workers' and reported apart (issue 22's cost goals)
References for the cost model of docs/performance.md, one-core layout only, new connections
and keep-alive only:
    direct         no A->B link: A proxies straight to the backend (what a connection costs
                   when A and B share a long-lived link and the link costs nothing)
    nnpsk0-chacha  Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s with a fixed psk: the public-key work
                   of a psk resumption handshake that keeps an ephemeral DH (like TLS psk_dhe_ke)

Layouts (modes):
    two-process    A and B are two nginx instances, one worker each (--workers); CPU of both
                   workers per operation
    one-core       A and B are the servers of one nginx with one worker; CPU of that worker
                   per operation (what one core does)
    two-workers    the two-process layout with worker_processes 2 everywhere: new connections
                   only, to show how the figures scale
Other modes: idle (memory per idle connection, two-process layout), floor (`cargo bench
--bench floor`: one X25519 DH and one key generation in process, and the floor per pattern),
profile (perf record -e cpu-clock and strace -c on the one-core worker during new-connection
runs of --profile-variants), cargo (`cargo bench --bench transport`, `--bench handshake`).

Figures, measured round after round with the variants alternating, medians reported:
    new conn/s      wrk, every request on a fresh connection (Connection: close), small file
    keep-alive      wrk, persistent connections, small file
    bulk MB/s       curl fetching the 256 MiB file (the better of two fetches per round)
    CPU µs per op   utime + stime of the proxy workers over the same wrk runs, divided
                    by the requests done: steadier than rates when neighbours steal cycles
    latency         wrk -c1 on fresh connections (two-process): p50/p99 of a whole request
    idle KiB/conn   RSS of the A and B workers with N idle connections open (each did one
                    request), minus before, divided by N; fresh instances per variant
    floor           plain's CPU per new connection in the same layout + the pattern's DH count
                    x one DH + its key-generation count x one key generation

Writes bench-results/results.md, results.json, chart.png (gnuplot) and, with the profile
mode, profile.md and the perf data; raw logs beside them. Binaries: NOISE_BENCH_NGINX,
NOISE_BENCH_MODULE, NOISE_BENCH_CLI override the build/ paths. Needs wrk, curl, openssl,
gnuplot, perf and strace (scripts/bench/run.sh installs them).
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = os.environ.get("NOISE_BENCH_NGINX") or os.path.join(REPO, "build/sbin/nginx")
MODULE = os.environ.get("NOISE_BENCH_MODULE") or os.path.join(
    REPO, "build/modules/ngx_stream_noise_module.so")
CLI = os.environ.get("NOISE_BENCH_CLI") or os.path.join(REPO, "build/bin/noisesocket")

# name -> (label, protocol or None, kind, reference-only)
VARIANTS = {
    "plain": ("plain TCP", None, "plain", False),
    "tls": ("TLS 1.3, no resumption", None, "tls", False),
    "tls-resumed": ("TLS 1.3, nginx defaults (resumption)", None, "tls-resumed", False),
    "xx-chacha": ("Noise XX ChaChaPoly BLAKE2s", "Noise_XX_25519_ChaChaPoly_BLAKE2s", "noise",
                  False),
    "xx-aesgcm": ("Noise XX AESGCM SHA256", "Noise_XX_25519_AESGCM_SHA256", "noise", False),
    "ik-chacha": ("Noise IK ChaChaPoly BLAKE2s", "Noise_IK_25519_ChaChaPoly_BLAKE2s", "noise",
                  False),
    "nk-chacha": ("Noise NK ChaChaPoly BLAKE2s", "Noise_NK_25519_ChaChaPoly_BLAKE2s", "noise",
                  False),
    "xxpsk3-chacha": ("Noise XXpsk3 ChaChaPoly BLAKE2s", "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s",
                      "noise", False),
    "xx-agent": ("Noise XX ChaChaPoly BLAKE2s, keys in a key agent",
                 "Noise_XX_25519_ChaChaPoly_BLAKE2s", "agent", False),
    "direct": ("no link: A → backend (reference)", None, "direct", True),
    "nnpsk0-chacha": ("Noise NNpsk0 ChaChaPoly BLAKE2s, fixed psk (reference)",
                      "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s", "noise", True),
}

# X25519 work per handshake, BOTH ends together, counted from the Noise spec's tokens: every
# "e" is one key generation at the end that sends it (random bytes, the aws-lc key, its public
# key); every DH token (ee, es, se, ss) is one DH at EACH end, since both compute the same
# secret. "s" costs nothing per connection: static keys are loaded once per worker
# (src/core/crypto.rs caches them), and "psk" is hashing only.
#   NN      -> e                 <- e, ee                 2 e, 1 DH token  -> 2 keygen, 2 DH
#   NNpsk0  -> psk, e            <- e, ee                 as NN
#   NK      <- s  ...  -> e, es  <- e, ee                 2 e, 2 DH tokens -> 2 keygen, 4 DH
#   XX      -> e  <- e, ee, s, es  -> s, se               2 e, 3 DH tokens -> 2 keygen, 6 DH
#   XXpsk3  as XX, with psk at the end of message 3       as XX
#   IK      <- s  ...  -> e, es, s, ss  <- e, ee, se      2 e, 4 DH tokens -> 2 keygen, 8 DH
PATTERN_COST = {"NN": (2, 2), "NK": (4, 2), "XX": (6, 2), "IK": (8, 2)}  # (DH, keygen)

# Targets of the issue (ratios; "floor" is measured CPU per new connection over the floor).
FLOOR_TARGET = 1.15
FLOOR_TARGET_PATTERNS = ("XX", "IK")

MODES = ("two-process", "one-core", "two-workers", "idle", "floor", "profile", "cargo")
LAYOUT_LABEL = {
    "two-process": "two-process: A and B in two nginx instances, one worker each; CPU of both "
                   "workers",
    "one-core": "one core: A and B in one nginx worker; CPU of that worker",
    "two-workers": "two-process layout with worker_processes 2 in A, B and the backend; CPU of "
                   "the four proxy workers",
}

SMALL_BYTES = 1024
NOFILE = 65536  # worker_rlimit_nofile; main() lowers it to the hard limit it may raise to


def log(msg):
    print(f"bench: {msg}", flush=True)


def pattern_of(proto):
    """'Noise_XXpsk3_25519_...' -> ('XXpsk3', 'XX')."""
    full = proto.split("_")[1]
    return full, re.sub(r"psk\d+", "", full)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def process_cpu_seconds(pid):
    """utime + stime of one process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Nginx:
    """One nginx instance in its own prefix directory."""

    def __init__(self, root, name, body, workers):
        self.name = name
        self.dir = os.path.join(root, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.error_log = os.path.join(self.dir, "logs/error.log")
        with open(self.conf, "w") as f:
            f.write(
                f"load_module {MODULE};\n"
                f"worker_processes {workers};\n"
                f"worker_rlimit_nofile {NOFILE};\n"
                f"pid {self.dir}/logs/nginx.pid;\n"
                f"error_log {self.error_log} error;\n"
                "events { worker_connections 20000; }\n" + body
            )
        self.master = None

    def cmd(self, *args):
        return [NGINX, "-p", self.dir + "/", "-c", self.conf, *args]

    def start(self):
        run(self.cmd("-t"))
        run(self.cmd())
        pidfile = os.path.join(self.dir, "logs/nginx.pid")
        for _ in range(100):
            if os.path.exists(pidfile):
                break
            time.sleep(0.05)
        with open(pidfile) as f:
            self.master = int(f.read())
        for _ in range(100):
            if self.workers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.dir}: no workers")

    def stop(self):
        if self.master is None:
            return
        try:
            os.kill(self.master, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(200):
            try:
                os.kill(self.master, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.master = None

    def workers(self):
        path = f"/proc/{self.master}/task/{self.master}/children"
        with open(path) as f:
            return [int(p) for p in f.read().split()]

    def cpu_seconds(self):
        """utime + stime of the workers so far."""
        return sum(process_cpu_seconds(pid) for pid in self.workers())

    def rss_kib(self):
        total = 0
        for pid in self.workers():
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def log_errors(self):
        """Lines at error level or worse in the error log."""
        try:
            with open(self.error_log, errors="replace") as f:
                return [l.rstrip("\n") for l in f
                        if re.search(r"\[(error|crit|alert|emerg)\]", l)]
        except OSError:
            return []


def wait_listening(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Material:
    """Keys, psk, certificate and documents, shared by every layout of the run."""

    def __init__(self, root):
        k = os.path.join(root, "keys")
        os.makedirs(k, exist_ok=True)
        old = os.umask(0o077)
        for name in ("a", "b", "psk"):
            key = run([CLI, "keygen"])
            with open(f"{k}/{name}.key", "w") as f:
                f.write(key)
            if name != "psk":
                with open(f"{k}/{name}.pub", "w") as f:
                    f.write(run([CLI, "pubkey"], input=key))
        os.umask(old)
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=bench", "-keyout", f"{k}/tls.key",
             "-out", f"{k}/tls.crt"])
        self.keydir = k
        docs = os.path.join(root, "html")
        os.makedirs(docs, exist_ok=True)
        with open(f"{docs}/small", "wb") as f:
            f.write(b"x" * SMALL_BYTES)
        big = f"{docs}/big"
        if not os.path.exists(big) or os.path.getsize(big) != 256 << 20:
            with open(big, "wb") as f:
                chunk = os.urandom(1 << 20)
                for _ in range(256):
                    f.write(chunk)
        self.docs = docs


class Chain:
    """The nginx instances of one layout: A and B (two-process) or AB (one-core), backend."""

    def __init__(self, root, mat, names, workers, layout):
        self.root = os.path.join(root, layout)
        self.mat = mat
        self.names = names
        self.workers = workers
        self.layout = layout
        ports = free_ports(2 * len(names) + 1)
        self.a_port = dict(zip(names, ports[: len(names)]))
        self.b_port = dict(zip(names, ports[len(names): 2 * len(names)]))
        self.http_port = ports[-1]
        self.backend = None
        self.proxies = []
        self.agent_socket = os.path.join(self.root, "agent.sock")
        self.agent = None

    def backend_conf(self):
        return (
            "http {\n"
            "  access_log off; sendfile on; tcp_nopush on;\n"
            "  keepalive_requests 10000000; keepalive_timeout 600s;\n"
            f"  server {{ listen 127.0.0.1:{self.http_port} backlog=4096; "
            f"root {self.mat.docs}; }}\n"
            "}\n"
        )

    def a_servers(self):
        k = self.mat.keydir
        out = []
        for n in self.names:
            _, proto, kind, _ = VARIANTS[n]
            up = f"127.0.0.1:{self.b_port[n]}"
            lines = [f"listen 127.0.0.1:{self.a_port[n]} backlog=4096;"]
            if kind == "direct":
                up = f"127.0.0.1:{self.http_port}"
            elif kind == "tls":
                lines += ["proxy_ssl on;", "proxy_ssl_protocols TLSv1.3;",
                          "proxy_ssl_session_reuse off;"]
            elif kind == "tls-resumed":
                # nginx's default, written out.
                lines += ["proxy_ssl on;", "proxy_ssl_protocols TLSv1.3;",
                          "proxy_ssl_session_reuse on;"]
            elif kind == "agent":
                lines += ["noise_upstream on;", f"noise_upstream_protocol {proto};",
                          f"noise_upstream_key_agent unix:{self.agent_socket} {k}/a.pub;"]
            elif kind == "noise":
                lines += ["noise_upstream on;", f"noise_upstream_protocol {proto};"]
                full, base = pattern_of(proto)
                if not base.startswith("N"):
                    lines.append(f"noise_upstream_private_key {k}/a.key;")
                if base[1] in "K":
                    lines.append(f"noise_upstream_server_key {up} {k}/b.pub;")
                if "psk" in full:
                    lines += ["noise_upstream_negotiation empty;",
                              f"noise_upstream_psk {k}/psk.key;"]
            lines.append(f"proxy_pass {up};")
            out.append("  server { " + " ".join(lines) + " }")
        return out

    def b_servers(self):
        k = self.mat.keydir
        out = []
        for n in self.names:
            _, proto, kind, _ = VARIANTS[n]
            port = self.b_port[n]
            if kind == "direct":
                continue
            if kind == "plain":
                lines = [f"listen 127.0.0.1:{port} backlog=4096;"]
            elif kind in ("tls", "tls-resumed"):
                lines = [f"listen 127.0.0.1:{port} ssl backlog=4096;",
                         f"ssl_certificate {k}/tls.crt;", f"ssl_certificate_key {k}/tls.key;",
                         "ssl_protocols TLSv1.3;"]
                if kind == "tls":
                    lines += ["ssl_session_tickets off;", "ssl_session_cache off;"]
                else:
                    # nginx's defaults, written out: stateless tickets, no server-side cache.
                    lines += ["ssl_session_tickets on;", "ssl_session_cache none;"]
            elif kind == "agent":
                lines = [f"noise_listen 127.0.0.1:{port} backlog=4096;",
                         f"noise_protocol {proto};",
                         f"noise_key_agent unix:{self.agent_socket} {k}/b.pub;"]
            else:
                lines = [f"noise_listen 127.0.0.1:{port} backlog=4096;",
                         f"noise_protocol {proto};", f"noise_private_key {k}/b.key;"]
                if "psk" in pattern_of(proto)[0]:
                    lines.append(f"noise_psk {k}/psk.key;")
            lines.append(f"proxy_pass 127.0.0.1:{self.http_port};")
            out.append("  server { " + " ".join(lines) + " }")
        return out

    def start(self):
        if self.backend is None:
            self.backend = Nginx(self.root, "backend", self.backend_conf(), self.workers)
            self.backend.start()
            wait_listening(self.http_port)
        if self.agent is None and any(VARIANTS[n][2] == "agent" for n in self.names):
            self.start_agent()
        self.start_proxies()

    def start_agent(self):
        """One `noisesocket agent` holding A's and B's keys, unpinned, as a unit would run it."""
        k = self.mat.keydir
        os.makedirs(self.root, exist_ok=True)
        if os.path.exists(self.agent_socket):
            os.unlink(self.agent_socket)
        self.agent_log = open(os.path.join(self.root, "agent.log"), "w")
        # As root, nginx's workers run as nobody: the agent's socket is given to them.
        user = ["--user", "nobody"] if os.geteuid() == 0 else []
        os.chmod(self.root, 0o711)
        self.agent = subprocess.Popen(
            [CLI, "agent", "--key", f"{k}/a.key", "--key", f"{k}/b.key",
             "--listen", f"unix:{self.agent_socket}"] + user,
            stdout=self.agent_log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if os.path.exists(self.agent_socket):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.root}: the key agent did not listen")

    def agent_cpu_seconds(self):
        """CPU used so far by the key agent (0 without one)."""
        return 0.0 if self.agent is None else process_cpu_seconds(self.agent.pid)

    def start_proxies(self):
        wrap = lambda servers: "stream {\n" + "\n".join(servers) + "\n}\n"
        if self.layout == "one-core":
            ab = Nginx(self.root, "ab", wrap(self.b_servers() + self.a_servers()), 1)
            ab.start()
            self.proxies = [ab]
        else:
            b = Nginx(self.root, "b", wrap(self.b_servers()), self.workers)
            a = Nginx(self.root, "a", wrap(self.a_servers()), self.workers)
            b.start()
            a.start()
            self.proxies = [a, b]
        for n in self.names:
            wait_listening(self.a_port[n])
            if VARIANTS[n][2] != "direct":
                wait_listening(self.b_port[n])

    def cpu_seconds(self):
        """CPU used so far by the proxy workers (A and B: both ends of the link) and the key
        agent, if any."""
        return sum(p.cpu_seconds() for p in self.proxies) + self.agent_cpu_seconds()

    def rss_kib(self):
        return sum(p.rss_kib() for p in self.proxies)

    def restart_proxies(self):
        self.errors_so_far = getattr(self, "errors_so_far", []) + self.log_errors()
        for p in self.proxies:
            p.stop()
        self.start_proxies()

    def log_errors(self):
        out = []
        for p in self.proxies + ([self.backend] if self.backend else []):
            out += [f"{self.layout}/{p.name}: {l}" for l in p.log_errors()]
        return out

    def stop(self):
        errors = getattr(self, "errors_so_far", []) + self.log_errors()
        for x in self.proxies + [self.backend]:
            if x is not None:
                x.stop()
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait()
            self.agent_log.close()
            self.agent = None
        return errors

    def url(self, name, path):
        return f"http://127.0.0.1:{self.a_port[name]}/{path}"


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def wrk(url, duration, conns, close, latency=False, logf=None):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    out = run(cmd)
    if logf:
        logf.write(" ".join(cmd) + "\n" + out + "\n")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    pct = {}
    for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(v) * UNITS[u]
    return rps, errors, pct, requests


def bulk(url, logf=None):
    out = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url])
    size, secs = out.split()
    size = int(size)
    if logf:
        logf.write(f"curl {url}: {size} bytes in {secs}s\n")
    if size != 256 << 20:
        raise RuntimeError(f"bulk fetch through {url} got {size} bytes")
    return size / float(secs) / 1e6


def idle_connections(port, n):
    """Opens n connections, does one request on each, leaves them open."""
    conns = []
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    for start in range(0, n, 100):
        batch = []
        for _ in range(min(100, n - start)):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(req)
            batch.append(s)
        for s in batch:
            got = b""
            while not got.endswith(b"x" * SMALL_BYTES):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("connection closed during the idle test")
                got += chunk
        conns.extend(batch)
    return conns


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def new_result():
    return {"newconn": [], "keepalive": [], "newconn_cpu": [], "keepalive_cpu": [],
            "newconn_agent_cpu": [], "keepalive_agent_cpu": [],
            "bulk": [], "p50": [], "p99": [], "errors": 0}


def run_layout(layout, root, mat, names, args, logf, tests, idle=False):
    """Rounds of the chosen tests over `names` in one layout; returns (results, log errors)."""
    workers = 2 if layout == "two-workers" else args.workers
    chain = Chain(root, mat, names, workers, "two-process" if layout == "two-workers" else
                  layout)
    chain.layout = layout
    res = {n: new_result() for n in names}
    try:
        chain.start()
        for n in names:  # warm-up and a sanity check of every path
            _, err, _, count = wrk(chain.url(n, "small"), 1, 4, close=True, logf=logf)
            if err or not count:
                raise RuntimeError(f"{layout}/{n}: warm-up got {count} requests, {err} errors "
                                   f"(see {chain.root}/*/logs/error.log)")
        for r in range(args.rounds):
            for n in names:
                ref = VARIANTS[n][3]
                log(f"{layout} round {r + 1}/{args.rounds}: {n}")
                url = chain.url(n, "small")
                for key, close in (("newconn", True), ("keepalive", False)):
                    if key not in tests:
                        continue
                    cpu = chain.cpu_seconds()
                    agent_cpu = chain.agent_cpu_seconds()
                    rps, err, _, count = wrk(url, args.duration, args.connections, close,
                                             logf=logf)
                    res[n][key].append(rps)
                    res[n][key + "_cpu"].append((chain.cpu_seconds() - cpu) * 1e6 / count)
                    res[n][key + "_agent_cpu"].append(
                        (chain.agent_cpu_seconds() - agent_cpu) * 1e6 / count)
                    res[n]["errors"] += err
                if "latency" in tests and not ref:
                    _, err, pct, _ = wrk(url, max(2, args.duration // 2), 1, True, True,
                                         logf=logf)
                    res[n]["p50"].append(pct.get("50", float("nan")))
                    res[n]["p99"].append(pct.get("99", float("nan")))
                    res[n]["errors"] += err
                if "bulk" in tests and not ref:
                    # The better of two fetches: one 256 MiB transfer is short enough for a
                    # neighbour's burst on this shared machine to halve it.
                    res[n]["bulk"].append(max(bulk(chain.url(n, "big"), logf=logf)
                                              for _ in range(2)))
        if idle:
            for n in names:
                if VARIANTS[n][3]:
                    continue
                log(f"idle memory: {n}")
                chain.restart_proxies()
                wrk(chain.url(n, "small"), 1, 4, close=True)
                time.sleep(0.5)
                before = chain.rss_kib()
                conns = idle_connections(chain.a_port[n], args.idle)
                time.sleep(1.0)
                after = chain.rss_kib()
                for s in conns:
                    s.close()
                res[n]["idle_kib"] = (after - before) / args.idle
                logf.write(f"idle {n}: rss {before} -> {after} KiB over {args.idle}\n")
    finally:
        errors = chain.stop()
    for e in errors:
        logf.write(f"error log: {e}\n")
    if errors:
        log(f"{layout}: {len(errors)} error-level lines in the nginx logs (raw.log has them)")
    return res, errors


# Profile: symbol -> group. First match wins; the kernel is recognised by perf's [k] marker.
GROUPS = [
    ("public-key crypto", r"x25519|curve25519|fiat_|ecp_nistz256|p256|nistp|_ec_|^ec_|EC_|"
                          r"ecdsa|ECDSA|bn_|BN_|mul_mont|sqr_mont|mulx|ossl_ec|felem|scalar"),
    ("hashing", r"sha256|sha512|sha1|SHA|blake2|Blake2|compress|hmac|HMAC|hkdf|HKDF|md5|keccak|"
                r"digest|Digest|EVP_MD|md_"),
    # core_arch: the AVX2 intrinsics of RustCrypto's chacha20 and poly1305 (snow's handshake
    # cipher), which this build does not inline.
    ("symmetric ciphers", r"aes|AES|gcm|GCM|chacha|ChaCha|poly1305|Poly1305|ghash|gmult|"
                          r"EVP_Cipher|EVP_Encrypt|EVP_Decrypt|core_arch::x86"),
    ("allocation", r"malloc|free|calloc|realloc|_int_|arena|tcache|unlink_chunk|ngx_palloc|"
                   r"ngx_pnalloc|ngx_pcalloc|ngx_alloc|ngx_create_pool|ngx_destroy_pool|"
                   r"ngx_pfree|__rust_alloc|__rust_dealloc|__rdl_|sysmalloc|mmap_chunk|"
                   r"CRYPTO_malloc|CRYPTO_free|CRYPTO_zalloc|OPENSSL_cleanse|zeroize"),
    ("memcpy / memset", r"memcpy|memmove|memset|memcmp|bcmp|__memcpy|__memset|__memmove"),
    ("nginx event loop, stream proxy", r"^ngx_"),
]


def group_of(dso, sym, kernel):
    if kernel or dso.startswith("[kernel") or dso in ("[unknown]", "[vdso]"):
        return "syscalls + kernel (TCP, epoll)"
    for name, rx in GROUPS:
        if re.search(rx, sym):
            return name
    if "libssl" in dso or "libcrypto" in dso:
        # Debian's libcrypto is stripped: its internal functions (the P-256 and X25519 code
        # among them) show as addresses.
        return "TLS library, other (OpenSSL, stripped)"
    if "noise" in dso:
        return "Noise state machine and module, other"
    return "other (libc, ...)"


def perf_profile(pids, seconds, data, url, args, logf):
    """perf record -e cpu-clock on the proxy workers during a new-connection wrk run."""
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p",
                             ",".join(map(str, pids)), "-o", data, "--", "sleep",
                             str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    _, err, _, count = wrk(url, seconds, args.connections, True, logf=logf)
    perf.wait()
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort",
                          "dso,sym"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3) == "k", m.group(4)))
    return rows, count, err


def strace_counts(pids, seconds, url, logf):
    """Syscalls of the proxy workers per new connection (strace -c during a wrk run)."""
    out = os.path.join(os.path.dirname(logf.name), f"strace-{pids[0]}.txt")
    st = subprocess.Popen(["strace", "-c", "-f", *[f"-p{p}" for p in pids], "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    _, _, _, count = wrk(url, seconds, 10, True, logf=logf)
    time.sleep(0.3)
    st.send_signal(signal.SIGINT)
    st.wait()
    calls, errors = {}, {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and re.match(r"[\d.]+$", parts[0]) and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
                if len(parts) == 6:
                    errors[parts[-1]] = int(parts[4])
    os.unlink(out)
    return calls, errors, count


def openssl_speed():
    """OpenSSL's own X25519 and ECDSA P-256 costs (µs), for the TLS side of the model."""
    out = subprocess.run(["openssl", "speed", "-seconds", "1", "ecdhx25519", "ecdsap256"],
                         capture_output=True, text=True).stdout
    got = {}
    m = re.search(r"ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out)
    if m:
        got["ecdsa_p256_sign_us"] = 1e6 / float(m.group(1))
        got["ecdsa_p256_verify_us"] = 1e6 / float(m.group(2))
    m = re.search(r"ecdh \(X25519\)\s+\S+\s+([\d.]+)", out)
    if m:
        got["x25519_derive_us"] = 1e6 / float(m.group(1))
    return got


def context_switches(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def run_profile(root, mat, args, logf, outdir):
    """perf and strace on the proxy workers, new connections, per profiled variant and
    layout (one-core: the one worker; two-process: the A and B workers together)."""
    if shutil.which("perf") is None or shutil.which("strace") is None:
        log("no perf or strace: profile skipped")
        return None
    names = [n for n in args.profile_variants.split(",") if n]
    out = {"layouts": {}}
    for layout in [l for l in args.profile_layouts.split(",") if l]:
        chain = Chain(root, mat, names, 1, layout)
        prof = {}
        try:
            chain.start()
            pids = [w for p in chain.proxies for w in p.workers()]
            for n in names:
                url = chain.url(n, "small")
                wrk(url, 1, 4, close=True)
                log(f"profile: perf record on the {layout} workers, {n}")
                cpu, switches = chain.cpu_seconds(), context_switches(pids)
                data = os.path.join(outdir, f"perf-{layout}-{n}.data")
                rows, count, err = perf_profile(pids, args.duration, data, url, args, logf)
                cpu_per_conn = (chain.cpu_seconds() - cpu) * 1e6 / max(count, 1)
                switches = (context_switches(pids) - switches) / max(count, 1)
                groups = {}
                for pct, dso, kernel, sym in rows:
                    g = group_of(dso, sym, kernel)
                    groups[g] = groups.get(g, 0.0) + pct
                top = [{"pct": p, "dso": d, "sym": s, "group": group_of(d, s, k)}
                       for p, d, k, s in rows[:25]]
                log(f"profile: strace -c on the {layout} workers, {n}")
                calls, failed, sconns = strace_counts(pids, 3, url, logf)
                prof[n] = {"cpu_per_conn": cpu_per_conn, "groups": groups, "top": top,
                           "errors": err, "syscalls": calls, "syscall_errors": failed,
                           "strace_conns": sconns, "switches_per_conn": switches}
        finally:
            errors = chain.stop()
        out["layouts"][layout] = {"variants": prof, "log_errors": errors}
    log("profile: openssl speed ecdhx25519 ecdsap256")
    out["openssl_speed"] = openssl_speed()
    return out


def run_floor(logf):
    log("cargo bench --bench floor")
    out = run(["cargo", "bench", "--quiet", "--bench", "floor"], cwd=REPO)
    logf.write(out)
    m = re.search(r"floor: dh_us=([\d.]+) keygen_us=([\d.]+)", out)
    hs = {name: float(us) for name, us in
          re.findall(r"floor: handshake (\S+) us=([\d.]+)", out)}
    table = "\n".join(l for l in out.splitlines() if l.startswith("|"))
    return {"dh_us": float(m.group(1)), "keygen_us": float(m.group(2)), "handshake_us": hs,
            "table": table}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument("--idle", type=int, default=2000, help="idle connections for memory")
    ap.add_argument("--workers", type=int, default=1,
                    help="workers per nginx in the two-process layout")
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--one-core", action="store_true",
                    help="only the one-core layout (and the floor): --modes one-core,floor")
    ap.add_argument("--profile-variants", default="plain,tls-resumed,xx-aesgcm",
                    help="variants the profile mode records")
    ap.add_argument("--profile-layouts", default="one-core,two-process",
                    help="layouts the profile mode records")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    ap.add_argument("--no-cargo-bench", action="store_true",
                    help="leave out the cargo and floor modes")
    ap.add_argument("--report-only", metavar="RESULTS_JSON",
                    help="measure nothing: write results.md and chart.png into --out again "
                         "from a results.json")
    args = ap.parse_args()
    if args.report_only:
        os.makedirs(args.out, exist_ok=True)
        return rerender(args.report_only, args)

    modes = ["one-core", "floor"] if args.one_core else [m for m in args.modes.split(",") if m]
    if args.no_cargo_bench:
        modes = [m for m in modes if m not in ("cargo", "floor")]
    for m in modes:
        if m not in MODES:
            sys.exit(f"bench: unknown mode {m} (have {', '.join(MODES)})")
    names = [n for n in args.only.split(",") if n]
    for n in names + [n for n in args.profile_variants.split(",") if n]:
        if n not in VARIANTS:
            sys.exit(f"bench: unknown variant {n} (have {', '.join(VARIANTS)})")
    for tool in ("wrk", "curl", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found (scripts/bench/run.sh installs it)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    global NOFILE
    NOFILE = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    if "idle" in modes and hard < args.idle + 100:
        sys.exit(f"bench: open-file limit {hard} too low for {args.idle} idle connections")
    args.modes = ",".join(modes)

    os.makedirs(args.out, exist_ok=True)
    root = os.path.join(args.out, "run")
    for sub in ("two-process", "one-core", "two-workers"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    logf = open(os.path.join(args.out, "raw.log"), "w")
    log(f"binaries: {NGINX}, {MODULE}, {CLI}")
    mat = Material(root)

    main_names = [n for n in names if not VARIANTS[n][3]]
    results = {"layouts": {}, "log_errors": {}}
    started = time.time()
    if "floor" in modes:  # first: a bench that does not build shows at once
        try:
            results["floor"] = run_floor(logf)
        except RuntimeError as e:
            log(f"floor skipped: {e}")
    plan = [("two-process", main_names, ("newconn", "keepalive", "latency", "bulk")),
            ("one-core", names, ("newconn", "keepalive", "bulk")),
            ("two-workers", main_names, ("newconn",))]
    for layout, ns, tests in plan:
        idle = layout == "two-process" and "idle" in modes
        if layout not in modes and not (layout == "two-process" and idle):
            continue
        if layout not in modes:
            tests = ()
        res, errors = run_layout(layout, root, mat, ns, args, logf, tests, idle)
        results["layouts"][layout] = res
        results["log_errors"][layout] = errors
    if "profile" in modes:
        results["profile"] = run_profile(os.path.join(root, "profile"), mat, args, logf,
                                         args.out)
    transport = handshake = ""
    if "cargo" in modes:
        log("cargo bench --bench transport, --bench handshake")
        try:
            transport = run(["cargo", "bench", "--quiet", "--bench", "transport"], cwd=REPO)
            handshake = run(["cargo", "bench", "--quiet", "--bench", "handshake"], cwd=REPO)
        except RuntimeError as e:
            log(f"cargo benches skipped: {e}")
        logf.write(transport + handshake)
    logf.close()
    results["seconds"] = time.time() - started
    results["cargo"] = {"transport": transport, "handshake": handshake}
    report(args, results, transport, handshake)


def rerender(path, args):
    """--report-only: results.md, chart.png (and profile.md) again from a results.json."""
    with open(path) as f:
        saved = json.load(f)
    results = saved["raw"]
    cargo = results.get("cargo") or {}
    for k, v in saved["args"].items():
        if k != "out":
            setattr(args, k, v)
    report(args, results, cargo.get("transport", ""), cargo.get("handshake", ""),
           when=saved.get("when"))


def fmt(x, digits=0):
    return "n/a" if x is None or x != x else f"{x:,.{digits}f}"


def figures(res):
    fig = {}
    for n, r in res.items():
        fig[n] = {k: median(r[k]) for k in ("newconn", "keepalive", "newconn_cpu",
                                           "keepalive_cpu", "bulk", "p50", "p99")}
        fig[n]["newconn_agent_cpu"] = median(r.get("newconn_agent_cpu", []))
        fig[n]["idle_kib"] = r.get("idle_kib", float("nan"))
        fig[n]["errors"] = r["errors"]
    return fig


def ratio(fig, n, key, base):
    try:
        a, b = fig[n][key], fig[base][key]
    except KeyError:
        return float("nan")
    if not b or b != b:
        return float("nan")
    return a / b


def floor_rows(fig, floor):
    """(variant, pattern, DH, keygen, floor µs, measured µs, ratio) per Noise variant."""
    rows = []
    if not floor or "plain" not in fig:
        return rows
    plain = fig["plain"]["newconn_cpu"]
    for n in fig:
        proto = VARIANTS[n][1]
        if not proto or VARIANTS[n][2] != "noise" or fig[n]["newconn_cpu"] != fig[n]["newconn_cpu"]:
            continue
        full, base = pattern_of(proto)
        dh, kg = PATTERN_COST[base]
        fl = plain + dh * floor["dh_us"] + kg * floor["keygen_us"]
        rows.append((n, full, base, dh, kg, fl, fig[n]["newconn_cpu"],
                     fig[n]["newconn_cpu"] / fl))
    return rows


def agent_rows(layout, fig, target):
    """Issue 22's cost goals: xx-agent (both static keys in the agent) beside xx-chacha
    (keys in the workers), CPU per new connection; the agent answers two X25519 per
    connection (B's es, A's se)."""
    inproc, agent = fig["xx-chacha"], fig["xx-agent"]
    a_cpu = agent["newconn_agent_cpu"]
    workers = agent["newconn_cpu"] - a_cpu
    base = inproc["newconn_cpu"]
    rows = [
        "",
        f"Keys in a key agent ({layout}): CPU µs per new connection, A and B together; "
        "`noisesocket agent` unpinned, answering A's se and B's es:",
        "",
        "| static keys in | workers µs | agent µs | system µs | workers × in-process "
        "| system × in-process |",
        "|---|---|---|---|---|---|",
        f"| the workers (xx-chacha) | {fmt(base)} | — | {fmt(base)} | 1.00 | 1.00 |",
        f"| the agent (xx-agent) | {fmt(workers)} | {fmt(a_cpu)} | {fmt(agent['newconn_cpu'])} "
        f"| {fmt(workers / base, 2)} | {fmt(agent['newconn_cpu'] / base, 2)} |",
    ]
    target(layout, "workers' CPU per new conn, keys in the agent ÷ in the workers",
           workers / base, 1.0, invert=True)
    target(layout, "system CPU per new conn, keys in the agent ÷ in the workers",
           agent["newconn_cpu"] / base, 1.15, invert=True)
    return rows


def report(args, results, transport, handshake, when=None):
    layouts = results["layouts"]
    figs = {l: figures(r) for l, r in layouts.items()}
    floor = results.get("floor")
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    when = when or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"
    lines = [
        f"# nginx-noise benchmark, {when}",
        "",
        f"Machine: {machine}. {args.rounds} rounds × {args.duration} s per figure, medians; "
        f"wrk -t1 -c{args.connections}; modes {args.modes}; "
        f"{results['seconds'] / 60:.1f} minutes. Rates move with what else runs on the "
        "machine; CPU per operation is steadier.",
    ]
    targets = []

    def target(layout, what, got, want, invert=False):
        if got != got:
            return
        ok = got <= want if invert else got >= want
        cmp = "≤" if invert else "≥"
        targets.append(f"| {layout} | {what} | {cmp} {want}× | {fmt(got, 2)}× "
                       f"| {'met' if ok else 'NOT met'} |")

    for layout in ("two-process", "one-core"):
        if layout not in figs or not figs[layout] or \
                not any(figs[layout][n]["newconn"] == figs[layout][n]["newconn"]
                        for n in figs[layout]):
            continue
        fig = figs[layout]
        names = list(fig)
        lines += [
            "",
            f"## Layout {LAYOUT_LABEL[layout]}",
            "",
            "| link A→B | CPU µs per new conn | new conn/s | ×TLS | ×TLS resumed "
            "| keep-alive req/s | ×plain | CPU µs per keep-alive req | bulk MB/s | ×TLS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in names:
            f = fig[n]
            lines.append(
                f"| {VARIANTS[n][0]} | {fmt(f['newconn_cpu'])} | {fmt(f['newconn'])}"
                f" | {fmt(ratio(fig, n, 'newconn', 'tls'), 2)}"
                f" | {fmt(ratio(fig, n, 'newconn', 'tls-resumed'), 2)}"
                f" | {fmt(f['keepalive'])} | {fmt(ratio(fig, n, 'keepalive', 'plain'), 2)}"
                f" | {fmt(f['keepalive_cpu'], 1)} | {fmt(f['bulk'])}"
                f" | {fmt(ratio(fig, n, 'bulk', 'tls'), 2)} |")
        if layout == "two-process" and any(fig[n]["p50"] == fig[n]["p50"] or
                                           fig[n]["idle_kib"] == fig[n]["idle_kib"]
                                           for n in names):
            lines += ["", "| link A→B | new-conn latency p50 / p99 µs (wrk -c1) | idle KiB/conn "
                      "| ×TLS |", "|---|---|---|---|"]
            for n in names:
                f = fig[n]
                lines.append(f"| {VARIANTS[n][0]} | {fmt(f['p50'])} / {fmt(f['p99'])} "
                             f"| {fmt(f['idle_kib'], 1)} | {fmt(ratio(fig, n, 'idle_kib', 'tls'), 2)} |")
        rows = floor_rows(fig, floor)
        if rows:
            lines += [
                "",
                f"Floor ({layout}): plain's {fmt(fig['plain']['newconn_cpu'])} µs + DH count × "
                f"{floor['dh_us']:.1f} µs + keygen count × {floor['keygen_us']:.1f} µs "
                "(both ends; `cargo bench --bench floor`, same run):",
                "",
                "| link A→B | DH | keygen | floor µs | measured CPU µs per new conn | ×floor |",
                "|---|---|---|---|---|---|",
            ]
            for n, full, base, dh, kg, fl, meas, r in rows:
                lines.append(f"| {VARIANTS[n][0]} | {dh} | {kg} | {fmt(fl)} | {fmt(meas)} "
                             f"| {fmt(r, 2)} |")
                if full in FLOOR_TARGET_PATTERNS:
                    target(layout, f"CPU per new conn over the floor ({VARIANTS[n][0]})", r,
                           FLOOR_TARGET, invert=True)
        if "xx-agent" in fig and "xx-chacha" in fig:
            lines += agent_rows(layout, fig, target)
        for n in names:
            if VARIANTS[n][2] != "noise" or VARIANTS[n][3]:
                continue
            target(layout, f"new conn/s vs TLS resumed ({VARIANTS[n][0]})",
                   ratio(fig, n, "newconn", "tls-resumed"), 2)
        for n in names:
            if VARIANTS[n][2] != "noise" or VARIANTS[n][3]:
                continue
            target(layout, f"keep-alive req/s vs plain ({VARIANTS[n][0]})",
                   ratio(fig, n, "keepalive", "plain"), 0.85)
        # The same two targets from CPU per operation (the rates' inverse when CPU-bound),
        # which neighbours on a shared machine disturb less than the rates.
        for n in names:
            if VARIANTS[n][2] != "noise" or VARIANTS[n][3]:
                continue
            target(layout, f"new conn by CPU: TLS resumed µs ÷ ours ({VARIANTS[n][0]})",
                   1 / ratio(fig, n, "newconn_cpu", "tls-resumed"), 2)
        for n in names:
            if VARIANTS[n][2] != "noise" or VARIANTS[n][3]:
                continue
            target(layout, f"keep-alive by CPU: plain µs ÷ ours ({VARIANTS[n][0]})",
                   1 / ratio(fig, n, "keepalive_cpu", "plain"), 0.85)
        if "xx-aesgcm" in fig:
            target(layout, "bulk MB/s vs TLS (Noise XX AESGCM SHA256)",
                   ratio(fig, "xx-aesgcm", "bulk", "tls"), 1.25)
        if layout == "two-process":
            for n in names:
                if VARIANTS[n][2] == "noise":
                    target(layout, f"idle memory per connection vs TLS ({VARIANTS[n][0]})",
                           ratio(fig, n, "idle_kib", "tls"), 0.5, invert=True)
    if "two-workers" in figs and figs["two-workers"]:
        fig2 = figs["two-workers"]
        fig1 = figs.get("two-process", {})
        lines += [
            "",
            f"## New connections, {LAYOUT_LABEL['two-workers']}",
            "",
            "| link A→B | new conn/s, 1 worker | 2 workers | ×(2 vs 1) | ×TLS resumed "
            "| CPU µs per new conn, 1 worker | 2 workers |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in fig2:
            one = fig1.get(n, {})
            lines.append(
                f"| {VARIANTS[n][0]} | {fmt(one.get('newconn'))} | {fmt(fig2[n]['newconn'])}"
                f" | {fmt(fig2[n]['newconn'] / one['newconn'] if one.get('newconn') else None, 2)}"
                f" | {fmt(ratio(fig2, n, 'newconn', 'tls-resumed'), 2)}"
                f" | {fmt(one.get('newconn_cpu'))} | {fmt(fig2[n]['newconn_cpu'])} |")
    errs = [f"{l}/{n}: {f['errors']}" for l, fig in figs.items() for n, f in fig.items()
            if f["errors"]]
    if errs:
        lines += ["", "Errors reported by wrk (socket errors, non-2xx): " + ", ".join(errs)]
    logerrs = {l: len(e) for l, e in results["log_errors"].items() if e}
    if logerrs:
        lines += ["", "Error-level lines in the nginx error logs (raw.log lists them): " +
                  ", ".join(f"{l}: {c}" for l, c in logerrs.items())]
    if floor:
        lines += ["", "In-process costs (`cargo bench --bench floor`):", "", floor["table"]]
    if targets:
        lines += ["", "## Targets", "", "| layout | target | wanted | measured | |",
                  "|---|---|---|---|---|", *targets]
    prof = results.get("profile")
    if prof:
        if "variants" in prof:  # a results.json from before --profile-layouts
            prof = {"layouts": {"one-core": prof}, "openssl_speed": prof.get("openssl_speed")}
        md = "\n".join(profile_md(p, layout) for layout, p in prof["layouts"].items())
        sp = prof.get("openssl_speed") or {}
        if sp:
            md += ("\nOpenSSL's own public-key costs on this machine (`openssl speed`, µs per "
                   "operation): " + ", ".join(f"{k[:-3].replace('_', ' ')} {x:.1f}"
                                              for k, x in sp.items()) + ".\n")
        with open(os.path.join(args.out, "profile.md"), "w") as f:
            f.write(md)
        lines += ["", "Profiles of the proxy workers: profile.md."]
    if transport:
        lines += ["", "Core transport (`cargo bench --bench transport`; target ≥ 0.9× the raw "
                  "AEAD; both copy the plaintext once):", "", transport.strip()]
    if handshake:
        lines += ["", "Core handshake, both sides in one thread (`cargo bench --bench handshake`):",
                  "", handshake.strip()]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"when": when, "machine": machine, "args": vars(args), "raw": results,
                   "figures": figs}, f, indent=1)
    chart(args.out, figs, floor)
    print(md)


def profile_md(prof, layout):
    v = prof["variants"]
    names = list(v)
    groups = sorted({g for n in names for g in v[n]["groups"]},
                    key=lambda g: -max(v[n]["groups"].get(g, 0) for n in names))
    lines = [
        f"# Where a new connection's CPU goes: {LAYOUT_LABEL[layout]}",
        "",
        "perf record -e cpu-clock on the proxy workers during a wrk new-connection run; self "
        "time per symbol, grouped. µs = share × the workers' CPU per connection during that "
        "run (perf's own overhead included).",
        "",
        "| group | " + " | ".join(f"{VARIANTS[n][0]} % / µs" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for g in groups:
        cells = []
        for n in names:
            p = v[n]["groups"].get(g, 0.0)
            cells.append(f"{p:.1f} % / {p * v[n]['cpu_per_conn'] / 100:.0f}")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| **total CPU µs per connection** | " +
                 " | ".join(f"{v[n]['cpu_per_conn']:.0f}" for n in names) + " |")
    if all("switches_per_conn" in v[n] for n in names):
        lines.append("| context switches per connection (voluntary + not) | " +
                     " | ".join(f"{v[n]['switches_per_conn']:.2f}" for n in names) + " |")
    for n in names:
        lines += ["", f"## {layout}, {VARIANTS[n][0]}: top symbols", "", "| % | dso | symbol | group |",
                  "|---|---|---|---|"]
        for t in v[n]["top"]:
            lines.append(f"| {t['pct']:.2f} | {t['dso']} | `{t['sym']}` | {t['group']} |")
    allsys = sorted({s for n in names for s in v[n]["syscalls"]},
                    key=lambda s: -max(v[n]["syscalls"].get(s, 0) / max(v[n]["strace_conns"], 1)
                                       for n in names))
    lines += ["", f"## {layout}: syscalls per connection (strace -c on the proxy workers, "
              "wrk -c10, Connection: close)", "",
              "| syscall | " + " | ".join(VARIANTS[n][0] for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for s in allsys:
        per = [v[n]["syscalls"].get(s, 0) / max(v[n]["strace_conns"], 1) for n in names]
        if max(per) < 0.05:
            continue
        cells = []
        for n, x in zip(names, per):
            e = v[n].get("syscall_errors", {}).get(s, 0) / max(v[n]["strace_conns"], 1)
            cells.append(f"{x:.2f}" + (f" ({e:.2f} failed)" if e >= 0.05 else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"{sum(v[n]['syscalls'].values()) / max(v[n]['strace_conns'], 1):.1f}" for n in names)
        + " |")
    lines.append("| connections traced | " + " | ".join(str(v[n]["strace_conns"]) for n in names)
                 + " |")
    if prof["log_errors"]:
        lines += ["", f"{len(prof['log_errors'])} error-level lines in the nginx logs."]
    return "\n".join(lines) + "\n"


def chart(out, figs, floor):
    """Ratios to plain TCP per figure and layout, and CPU per new connection against the
    floor (gnuplot, PNG, one panel each)."""
    if shutil.which("gnuplot") is None:
        log("no gnuplot: chart skipped")
        return
    panels = []
    specs = [
        ("two-process", "two-process layout (1 worker each)",
         [("newconn", "new conn/s"), ("keepalive", "keep-alive req/s"), ("bulk", "bulk MB/s"),
          ("idle_kib", "idle KiB/conn")]),
        ("one-core", "one core (A and B in one worker)",
         [("newconn", "new conn/s"), ("keepalive", "keep-alive req/s"), ("bulk", "bulk MB/s")]),
        ("two-workers", "two-process layout, 2 workers each",
         [("newconn", "new conn/s")]),
    ]
    for layout, title, keys in specs:
        fig = figs.get(layout)
        if not fig or "plain" not in fig:
            continue
        names = [n for n in fig if not VARIANTS[n][3]]
        keys = [(k, l) for k, l in keys
                if any(fig[n][k] == fig[n][k] for n in names)]
        if not keys:
            continue
        dat = os.path.join(out, f"chart-{layout}.dat")
        with open(dat, "w") as f:
            f.write("figure " + " ".join(f'"{VARIANTS[n][0]}"' for n in names) + "\n")
            for key, label in keys:
                base = fig["plain"][key] or float("nan")
                vals = " ".join(f"{fig[n][key] / base:.3f}" for n in names)
                f.write(f'"{label}" {vals}\n')
        panels.append((f"{title}: ratio to plain TCP (higher is better, except idle KiB)",
                       dat, len(names)))
    frows = []
    for layout in ("two-process", "one-core"):
        if layout in figs:
            frows += [(layout, r) for r in floor_rows(figs[layout], floor)]
    if frows:
        dat = os.path.join(out, "chart-floor.dat")
        with open(dat, "w") as f:
            f.write('variant "floor" "measured"\n')
            for layout, (n, full, base, dh, kg, fl, meas, r) in frows:
                short = "1 core" if layout == "one-core" else "2 proc"
                f.write(f'"{n}, {short}" {fl:.1f} {meas:.1f}\n')
        panels.append(("CPU µs per new connection: the floor (plain + DH + keygen) and measured",
                       dat, 2))
    if not panels:
        return
    script = [f'set terminal pngcairo size 1200,{380 * len(panels)} font ",9"',
              f'set output "{out}/chart.png"',
              f"set multiplot layout {len(panels)},1",
              "set style data histograms", "set style histogram clustered gap 1",
              "set style fill solid 0.85 border -1", "set key outside right top",
              "set yrange [0:*]", "set grid ytics"]
    for title, dat, cols in panels:
        if "floor" in dat:
            script.append("set xtics rotate by -25 font ',8'")
        script += [f'set title "{title}"',
                   f'plot for [i=2:{cols + 1}] "{dat}" using i:xtic(1) title columnheader(i)']
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)


if __name__ == "__main__":
    main()
