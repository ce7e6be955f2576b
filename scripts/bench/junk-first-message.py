#!/usr/bin/env python3
"""What a forged first handshake message costs a noise_listen worker, next to a whole normal
XX handshake, at the largest key configuration `nginx -t` allows.

    build/venv/bin/python scripts/bench/junk-first-message.py [--count N] [--rounds R]

(scripts/python-env.sh makes the venv: the XX client runs on PyPI `noiseprotocol`.)

One nginx (build/sbin/nginx and our module; NOISE_BENCH_NGINX, NOISE_BENCH_MODULE and
NOISE_BENCH_CLI override the paths), one worker, error_log at nginx's default level (error),
and one noise_listen server per variant, each answering `return "ok"` after the handshake:

    xx   Noise_XX_25519_ChaChaPoly_BLAKE2s, a real client (client key 1 of 4 trusted):
         the reference, a whole normal handshake
    kk   Noise_KK: 8 noise_private_key x 4 noise_trusted_keys; junk message 1 (a random
         ephemeral key and a random encrypted payload): the server tries every (private key,
         trusted key) pair before it gives up
    ik   Noise_IK: 8 noise_private_key, 4 trusted keys; junk message 1 (random ephemeral,
         random encrypted static key and payload): one try per private key
    kx   Noise_KX: 8 noise_private_key (the first serves), exactly 1 trusted key; junk
         message 1 (a random ephemeral, cleartext): the server answers message 2 and then
         waits for a first transport frame the sender cannot make
    kn   Noise_KN: as kx
    tcp  a plain `listen` server with the same `return`: what a connection costs at all

Each junk sender waits for the server's answer or close before the next, so the worker's
work is done when it is counted. Figures: the worker's utime + stime (/proc/PID/stat) over
--count connections of a variant, divided by --count, in microseconds; the variants
alternate for --rounds rounds and the median is printed, with the ratio to xx. Clock-tick
resolution (10 ms) over a few thousand connections: about 1 %.
"""

import argparse
import base64
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from noise.connection import Keypair, NoiseConnection

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = os.environ.get("NOISE_BENCH_NGINX") or os.path.join(REPO, "build/sbin/nginx")
MODULE = os.environ.get("NOISE_BENCH_MODULE") or os.path.join(
    REPO, "build/modules/ngx_stream_noise_module.so")
CLI = os.environ.get("NOISE_BENCH_CLI") or os.path.join(REPO, "build/bin/noisesocket")
TICK = os.sysconf("SC_CLK_TCK")
VARIANTS = ("xx", "kk", "ik", "kx", "kn", "tcp")
PROTOCOL = {p: "Noise_%s_25519_ChaChaPoly_BLAKE2s" % p.upper() for p in VARIANTS[:5]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(d, name):
    key = subprocess.run([CLI, "keygen"], check=True, capture_output=True).stdout
    pub = subprocess.run([CLI, "pubkey"], input=key, check=True, capture_output=True).stdout
    with open(os.path.join(d, name + ".key"), "wb") as f:
        f.write(key)
    os.chmod(os.path.join(d, name + ".key"), 0o600)
    return base64.b64decode(key.strip()), pub.decode().strip()


def config(d, ports):
    keys = "".join("        noise_private_key %s/server%d.key;\n" % (d, i) for i in range(8))
    out = ["load_module %s;\nworker_processes 1;\npid %s/nginx.pid;\n"
           "error_log %s/error.log;\nevents { worker_connections 1024; }\nstream {\n"
           % (MODULE, d, d)]
    for v in VARIANTS:
        if v == "tcp":
            out.append("    server {\n        listen 127.0.0.1:%d;\n        return \"ok\\n\";\n    }\n"
                       % ports[v])
            continue
        trusted = "one.pub" if v in ("kx", "kn") else "four.pub"
        out.append("    server {\n        noise_listen 127.0.0.1:%d;\n        noise_protocol %s;\n"
                   "%s        noise_trusted_keys %s/%s;\n        return \"ok\\n\";\n    }\n"
                   % (ports[v], PROTOCOL[v], keys, d, trusted))
    out.append("}\n")
    return "".join(out)


def sized(data):
    return struct.pack(">H", len(data)) + data


def read_all(s):
    while True:
        try:
            if not s.recv(65536):
                return
        except ConnectionResetError:
            return


def junk(port, variant):
    """One forged message 1, empty negotiation data (the server's only protocol)."""
    e = os.urandom(32)
    noise = {"kk": e + os.urandom(18), "ik": e + os.urandom(48 + 18)}.get(variant, e)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sized(b"") + sized(noise))
        if variant in ("kx", "kn"):
            s.recv(65536)  # message 2; then give up, as the sender can go no further
        else:
            read_all(s)


def xx(port, client_key):
    n = NoiseConnection.from_name(PROTOCOL["xx"].encode())
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
                raise RuntimeError("xx: closed during the handshake")
            buf += d
        n.read_message(buf[4 + neg:4 + neg + ln])
        s.sendall(sized(b"") + sized(bytes(n.write_message(b"\x00\x00"))))
        read_all(s)
    if not n.handshake_finished:
        raise RuntimeError("xx: handshake did not finish")


def tcp(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        read_all(s)


def cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def worker(d):
    master = int(open(os.path.join(d, "nginx.pid")).read())
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True).stdout.split()
    if len(out) != 1:
        raise RuntimeError("expected one worker, found %s" % out)
    return int(out[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="connections per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    variants = a.variants.split(",")
    d = tempfile.mkdtemp(prefix="junk-first-message.")
    os.mkdir(os.path.join(d, "logs"))  # nginx opens its compiled-in error log first
    master = None
    try:
        for i in range(8):
            keygen(d, "server%d" % i)
        clients = [keygen(d, "client%d" % i) for i in range(4)]
        with open(os.path.join(d, "four.pub"), "w") as f:
            f.write("".join(pub + "\n" for _, pub in clients))
        with open(os.path.join(d, "one.pub"), "w") as f:
            f.write(clients[0][1] + "\n")
        ports = {v: free_port() for v in VARIANTS}
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(config(d, ports))
        subprocess.run([NGINX, "-p", d + "/", "-c", d + "/nginx.conf"], check=True)
        for _ in range(100):
            if os.path.exists(os.path.join(d, "nginx.pid")):
                break
            time.sleep(0.05)
        master = int(open(os.path.join(d, "nginx.pid")).read())
        time.sleep(0.3)
        pid = worker(d)
        run = {
            "xx": lambda: xx(ports["xx"], clients[0][0]),
            "tcp": lambda: tcp(ports["tcp"]),
        }
        for v in ("kk", "ik", "kx", "kn"):
            run[v] = (lambda v: lambda: junk(ports[v], v))(v)
        figures = {v: [] for v in variants}
        for r in range(a.rounds):
            for v in variants:
                for _ in range(20):  # warm up: the worker's caches, not counted
                    run[v]()
                time.sleep(0.1)
                before = cpu(pid)
                for _ in range(a.count):
                    run[v]()
                time.sleep(0.2)  # the last connection's close
                figures[v].append((cpu(pid) - before) / a.count * 1e6)
            sys.stderr.write("round %d: %s\n" % (r + 1, " ".join(
                "%s=%.0f" % (v, figures[v][-1]) for v in variants)))
        median = {v: statistics.median(figures[v]) for v in variants}
        print("worker CPU per connection (utime+stime, median of %d rounds of %d):"
              % (a.rounds, a.count))
        for v in variants:
            ratio = " (%.2f x xx)" % (median[v] / median["xx"]) if "xx" in median else ""
            label = {"xx": "XX, whole handshake", "tcp": "plain TCP connection"}.get(
                v, "%s junk message 1" % v.upper())
            print("  %-26s %7.0f us%s" % (label, median[v], ratio))
        log = open(os.path.join(d, "error.log")).read()
        worst = [l for l in log.splitlines() if "[alert]" in l or "[crit]" in l]
        if worst:
            print("error log has alert/crit lines:\n" + "\n".join(worst[:5]))
            return 1
        return 0
    finally:
        if master:
            try:
                os.kill(master, signal.SIGQUIT)
                time.sleep(0.5)
            except ProcessLookupError:
                pass
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
