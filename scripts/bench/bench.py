#!/usr/bin/env python3
"""NoiseSocket against TLS 1.3 and plain TCP, on the same two-hop nginx chain, in one run.

    load generator -> nginx A -> (link under test) -> nginx B -> nginx http backend

Each variant of the A->B link has its own pair of ports in the same three nginx instances
(our build/sbin/nginx, one worker each unless --workers says otherwise):

    plain      listen / proxy_pass
    tls        listen ssl (TLS 1.3, ECDSA P-256, no session cache or tickets) / proxy_ssl on
               (no session reuse)
    xx-chacha  Noise_XX_25519_ChaChaPoly_BLAKE2s   noise_listen / noise_upstream on
    xx-aesgcm  Noise_XX_25519_AESGCM_SHA256
    ik-chacha  Noise_IK_25519_ChaChaPoly_BLAKE2s

Figures, measured round after round with the variants alternating, medians reported:
    new conn/s      wrk, every request on a fresh connection (Connection: close), small file
    keep-alive      wrk, persistent connections, small file
    bulk MB/s       curl fetching the 256 MiB file (the better of two fetches per round)
    CPU µs per op   utime + stime of the A and B workers over the same wrk runs, divided
                    by the requests done: steadier than rates when neighbours steal cycles
    latency         wrk -c1 on fresh connections: p50/p99 of a whole first request; the
                    difference from plain is what the A->B handshake costs
    idle KiB/conn   RSS of the A and B workers with N idle connections open (each did one
                    request), minus before, divided by N; fresh instances per variant
The core's `cargo bench --bench transport` and `--bench handshake` run last; their tables
are included.

Writes bench-results/results.md, results.json and chart.png (gnuplot), plus raw logs.
Needs wrk, curl, openssl and gnuplot (scripts/bench/run.sh installs them).
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
NGINX = os.path.join(REPO, "build/sbin/nginx")
MODULE = os.path.join(REPO, "build/modules/ngx_stream_noise_module.so")
CLI = os.path.join(REPO, "build/bin/noisesocket")

# name -> (label, protocol or None, kind)
VARIANTS = {
    "plain": ("plain TCP", None, "plain"),
    "tls": ("TLS 1.3 ECDSA P-256", None, "tls"),
    "xx-chacha": ("Noise XX ChaChaPoly BLAKE2s", "Noise_XX_25519_ChaChaPoly_BLAKE2s", "noise"),
    "xx-aesgcm": ("Noise XX AESGCM SHA256", "Noise_XX_25519_AESGCM_SHA256", "noise"),
    "ik-chacha": ("Noise IK ChaChaPoly BLAKE2s", "Noise_IK_25519_ChaChaPoly_BLAKE2s", "noise"),
}

SMALL_BYTES = 1024


def log(msg):
    print(f"bench: {msg}", flush=True)


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


class Nginx:
    """One nginx instance in its own prefix directory."""

    def __init__(self, root, name, body, workers):
        self.dir = os.path.join(root, name)
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"load_module {MODULE};\n"
                f"worker_processes {workers};\n"
                "worker_rlimit_nofile 65536;\n"
                f"pid {self.dir}/logs/nginx.pid;\n"
                f"error_log {self.dir}/logs/error.log error;\n"
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
        total = 0
        for pid in self.workers():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        total = 0
        for pid in self.workers():
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total


def wait_listening(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Chain:
    def __init__(self, root, names, workers):
        self.root = root
        self.names = names
        self.workers = workers
        ports = free_ports(2 * len(names) + 1)
        self.a_port = dict(zip(names, ports[: len(names)]))
        self.b_port = dict(zip(names, ports[len(names) : 2 * len(names)]))
        self.http_port = ports[-1]
        self.keys()
        self.backend = Nginx(root, "backend", self.backend_conf(), workers)
        self.a = None
        self.b = None

    def keys(self):
        k = os.path.join(self.root, "keys")
        os.makedirs(k, exist_ok=True)
        old = os.umask(0o077)
        for name in ("a", "b"):
            key = run([CLI, "keygen"])
            with open(f"{k}/{name}.key", "w") as f:
                f.write(key)
            with open(f"{k}/{name}.pub", "w") as f:
                f.write(run([CLI, "pubkey"], input=key))
        os.umask(old)
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=bench", "-keyout", f"{k}/tls.key",
             "-out", f"{k}/tls.crt"])
        self.keydir = k
        docs = os.path.join(self.root, "html")
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

    def backend_conf(self):
        return (
            "http {\n"
            "  access_log off; sendfile on; tcp_nopush on;\n"
            "  keepalive_requests 10000000; keepalive_timeout 600s;\n"
            f"  server {{ listen 127.0.0.1:{self.http_port} backlog=4096; root {self.docs}; }}\n"
            "}\n"
        )

    def a_conf(self):
        k = self.keydir
        out = ["stream {"]
        for n in self.names:
            _, proto, kind = VARIANTS[n]
            up = f"127.0.0.1:{self.b_port[n]}"
            lines = [f"listen 127.0.0.1:{self.a_port[n]} backlog=4096;"]
            if kind == "tls":
                lines += ["proxy_ssl on;", "proxy_ssl_protocols TLSv1.3;",
                          "proxy_ssl_session_reuse off;"]
            elif kind == "noise":
                lines += ["noise_upstream on;", f"noise_upstream_protocol {proto};",
                          f"noise_upstream_private_key {k}/a.key;"]
                if "_IK_" in proto:
                    lines.append(f"noise_upstream_server_key {up} {k}/b.pub;")
            lines.append(f"proxy_pass {up};")
            out.append("  server { " + " ".join(lines) + " }")
        out.append("}")
        return "\n".join(out) + "\n"

    def b_conf(self):
        k = self.keydir
        out = ["stream {"]
        for n in self.names:
            _, proto, kind = VARIANTS[n]
            port = self.b_port[n]
            if kind == "plain":
                lines = [f"listen 127.0.0.1:{port} backlog=4096;"]
            elif kind == "tls":
                lines = [f"listen 127.0.0.1:{port} ssl backlog=4096;",
                         f"ssl_certificate {k}/tls.crt;", f"ssl_certificate_key {k}/tls.key;",
                         "ssl_protocols TLSv1.3;", "ssl_session_tickets off;",
                         "ssl_session_cache off;"]
            else:
                lines = [f"noise_listen 127.0.0.1:{port} backlog=4096;",
                         f"noise_protocol {proto};", f"noise_private_key {k}/b.key;"]
            lines.append(f"proxy_pass 127.0.0.1:{self.http_port};")
            out.append("  server { " + " ".join(lines) + " }")
        out.append("}")
        return "\n".join(out) + "\n"

    def start(self):
        if self.backend.master is None:
            self.backend.start()
            wait_listening(self.http_port)
        self.a = Nginx(self.root, "a", self.a_conf(), self.workers)
        self.b = Nginx(self.root, "b", self.b_conf(), self.workers)
        self.b.start()
        self.a.start()
        for n in self.names:
            wait_listening(self.a_port[n])
            wait_listening(self.b_port[n])

    def cpu_seconds(self):
        """CPU used so far by the workers of A and B, the two ends of the link."""
        return self.a.cpu_seconds() + self.b.cpu_seconds()

    def restart_proxies(self):
        self.a.stop()
        self.b.stop()
        self.start()

    def stop(self):
        for x in (self.a, self.b, self.backend):
            if x is not None:
                x.stop()

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument("--idle", type=int, default=2000, help="idle connections for memory")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    ap.add_argument("--no-cargo-bench", action="store_true")
    args = ap.parse_args()

    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in VARIANTS:
            sys.exit(f"bench: unknown variant {n} (have {', '.join(VARIANTS)})")
    for tool in ("wrk", "curl", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found (scripts/bench/run.sh installs it)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 100:
        sys.exit(f"bench: open-file limit {hard} too low for {args.idle} idle connections")

    os.makedirs(args.out, exist_ok=True)
    root = os.path.join(args.out, "run")
    for sub in ("a", "b", "backend"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    logf = open(os.path.join(args.out, "raw.log"), "w")

    chain = Chain(root, names, args.workers)
    res = {n: {"newconn": [], "keepalive": [], "newconn_cpu": [], "keepalive_cpu": [],
               "bulk": [], "p50": [], "p99": [], "errors": 0} for n in names}
    try:
        chain.start()
        for n in names:  # warm-up and a sanity check of every path
            wrk(chain.url(n, "small"), 1, 4, close=True)
        for r in range(args.rounds):
            for n in names:
                log(f"round {r + 1}/{args.rounds}: {n}")
                url = chain.url(n, "small")
                for key, close in (("newconn", True), ("keepalive", False)):
                    cpu = chain.cpu_seconds()
                    rps, err, _, count = wrk(url, args.duration, args.connections, close,
                                             logf=logf)
                    res[n][key].append(rps)
                    res[n][key + "_cpu"].append((chain.cpu_seconds() - cpu) * 1e6 / count)
                    res[n]["errors"] += err
                _, err, pct, _ = wrk(url, max(2, args.duration // 2), 1, True, True, logf=logf)
                res[n]["p50"].append(pct.get("50", float("nan")))
                res[n]["p99"].append(pct.get("99", float("nan")))
                res[n]["errors"] += err
                # The better of two fetches: one 256 MiB transfer is short enough for a
                # neighbour's burst on this shared machine to halve it.
                res[n]["bulk"].append(max(bulk(chain.url(n, "big"), logf=logf) for _ in range(2)))
        for n in names:
            log(f"idle memory: {n}")
            chain.restart_proxies()
            wrk(chain.url(n, "small"), 1, 4, close=True)
            time.sleep(0.5)
            before = chain.a.rss_kib() + chain.b.rss_kib()
            conns = idle_connections(chain.a_port[n], args.idle)
            time.sleep(1.0)
            after = chain.a.rss_kib() + chain.b.rss_kib()
            for s in conns:
                s.close()
            res[n]["idle_kib"] = (after - before) / args.idle
            logf.write(f"idle {n}: rss {before} -> {after} KiB over {args.idle}\n")
    finally:
        chain.stop()

    transport = handshake = ""
    if not args.no_cargo_bench:
        log("cargo bench --bench transport, --bench handshake")
        transport = run(["cargo", "bench", "--quiet", "--bench", "transport"], cwd=REPO)
        handshake = run(["cargo", "bench", "--quiet", "--bench", "handshake"], cwd=REPO)
        logf.write(transport + handshake)
    logf.close()
    report(args, names, res, transport, handshake)


def fmt(x, digits=0):
    return "n/a" if x != x else f"{x:,.{digits}f}"


def report(args, names, res, transport, handshake):
    fig = {}
    for n in names:
        r = res[n]
        fig[n] = {
            "newconn": median(r["newconn"]),
            "keepalive": median(r["keepalive"]),
            "newconn_cpu": median(r["newconn_cpu"]),
            "keepalive_cpu": median(r["keepalive_cpu"]),
            "bulk": median(r["bulk"]),
            "p50": median(r["p50"]),
            "p99": median(r["p99"]),
            "idle_kib": r.get("idle_kib", float("nan")),
            "errors": r["errors"],
        }

    def ratio(n, key, base):
        if base not in fig or fig[base][key] in (0, None):
            return float("nan")
        return fig[n][key] / fig[base][key]

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"
    lines = [
        f"# nginx-noise benchmark, {when}",
        "",
        f"Machine: {machine}. {args.rounds} rounds × {args.duration} s per figure, medians; "
        f"{args.workers} worker per nginx; wrk -c{args.connections}; "
        f"idle memory over {args.idle} connections (A + B workers).",
        "",
        "| link A→B | new conn/s | ×plain | ×TLS | keep-alive req/s | ×plain | ×TLS "
        "| bulk MB/s | ×plain | ×TLS | new-conn latency p50 / p99 µs | idle KiB/conn | ×TLS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        f = fig[n]
        lines.append(
            f"| {VARIANTS[n][0]} | {fmt(f['newconn'])} | {fmt(ratio(n, 'newconn', 'plain'), 2)}"
            f" | {fmt(ratio(n, 'newconn', 'tls'), 2)} | {fmt(f['keepalive'])}"
            f" | {fmt(ratio(n, 'keepalive', 'plain'), 2)} | {fmt(ratio(n, 'keepalive', 'tls'), 2)}"
            f" | {fmt(f['bulk'])} | {fmt(ratio(n, 'bulk', 'plain'), 2)}"
            f" | {fmt(ratio(n, 'bulk', 'tls'), 2)} | {fmt(f['p50'])} / {fmt(f['p99'])}"
            f" | {fmt(f['idle_kib'], 1)} | {fmt(ratio(n, 'idle_kib', 'tls'), 2)} |"
        )
    lines += [
        "",
        "CPU time of the A and B workers per operation (utime + stime over the same wrk runs;",
        "steadier than rates on a shared machine, where neighbours steal cycles):",
        "",
        "| link A→B | µs per new connection | ×plain | ×TLS | µs per keep-alive request | ×plain "
        "| ×TLS |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        f = fig[n]
        lines.append(
            f"| {VARIANTS[n][0]} | {fmt(f['newconn_cpu'])} | {fmt(ratio(n, 'newconn_cpu', 'plain'), 2)}"
            f" | {fmt(ratio(n, 'newconn_cpu', 'tls'), 2)} | {fmt(f['keepalive_cpu'], 1)}"
            f" | {fmt(ratio(n, 'keepalive_cpu', 'plain'), 2)}"
            f" | {fmt(ratio(n, 'keepalive_cpu', 'tls'), 2)} |"
        )
    errs = [f"{n}: {fig[n]['errors']}" for n in names if fig[n]["errors"]]
    if errs:
        lines += ["", "Errors reported by wrk (socket errors, non-2xx): " + ", ".join(errs)]

    targets = []
    noise = [n for n in names if VARIANTS[n][2] == "noise"]

    def target(what, n, key, base, want, invert=False):
        if n not in fig or base not in fig:
            return
        x = ratio(n, key, base)
        ok = x <= want if invert else x >= want
        cmp = "≤" if invert else "≥"
        targets.append(f"| {what} ({VARIANTS[n][0]}) | {cmp} {want}× | {fmt(x, 2)}× "
                       f"| {'met' if ok else 'NOT met'} |")

    for n in noise:
        target("new connections/s vs TLS", n, "newconn", "tls", 4)
    for n in noise:
        target("keep-alive req/s vs plain", n, "keepalive", "plain", 0.85)
    target("bulk MB/s vs TLS", "xx-aesgcm", "bulk", "tls", 1.25)
    for n in noise:
        target("idle memory per connection vs TLS", n, "idle_kib", "tls", 0.5, invert=True)
    if targets:
        lines += ["", "| target | wanted | measured | |", "|---|---|---|---|", *targets]
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
        json.dump({"when": when, "machine": machine, "args": vars(args), "raw": res,
                   "figures": fig}, f, indent=1)
    chart(args.out, names, fig)
    print(md)


def chart(out, names, fig):
    """Ratios to plain TCP per figure, one bar per variant (gnuplot, PNG)."""
    if shutil.which("gnuplot") is None or "plain" not in fig:
        log("no gnuplot or no plain variant: chart skipped")
        return
    keys = [("newconn", "new conn/s"), ("keepalive", "keep-alive req/s"), ("bulk", "bulk MB/s"),
            ("idle_kib", "idle KiB/conn")]
    dat = os.path.join(out, "chart.dat")
    with open(dat, "w") as f:
        f.write("figure " + " ".join(f'"{VARIANTS[n][0]}"' for n in names) + "\n")
        for key, label in keys:
            base = fig["plain"][key] or float("nan")
            vals = " ".join(f"{fig[n][key] / base:.3f}" for n in names)
            f.write(f'"{label}" {vals}\n')
    script = f"""
set terminal pngcairo size 1100,520 font ",10"
set output "{out}/chart.png"
set title "nginx-noise: A→B link, ratio to plain TCP (higher is better, except idle KiB)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key outside right top
set yrange [0:*]
set grid ytics
plot for [i=2:{len(names) + 1}] "{dat}" using i:xtic(1) title columnheader(i)
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


if __name__ == "__main__":
    main()
