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
import os
import shutil
import socket
import sys
import tempfile

from benchlib import MODULE, free_port, keygen, measure, read_all, sized, start_nginx, stop_nginx
from benchlib import worst_log_lines, xx as xx_handshake

VARIANTS = ("xx", "kk", "ik", "kx", "kn", "tcp")
PROTOCOL = {p: "Noise_%s_25519_ChaChaPoly_BLAKE2s" % p.upper() for p in VARIANTS[:5]}


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
    xx_handshake(port, client_key, PROTOCOL["xx"])


def tcp(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        read_all(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="connections per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    variants = a.variants.split(",")
    d = tempfile.mkdtemp(prefix="junk-first-message.")
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
        master, pid = start_nginx(d, config(d, ports))
        run = {
            "xx": lambda: xx(ports["xx"], clients[0][0]),
            "tcp": lambda: tcp(ports["tcp"]),
        }
        for v in ("kk", "ik", "kx", "kn"):
            run[v] = (lambda v: lambda: junk(ports[v], v))(v)
        median = measure(pid, run, variants, a.count, a.rounds)
        print("worker CPU per connection (utime+stime, median of %d rounds of %d):"
              % (a.rounds, a.count))
        for v in variants:
            ratio = " (%.2f x xx)" % (median[v] / median["xx"]) if "xx" in median else ""
            label = {"xx": "XX, whole handshake", "tcp": "plain TCP connection"}.get(
                v, "%s junk message 1" % v.upper())
            print("  %-26s %7.0f us%s" % (label, median[v], ratio))
        worst = worst_log_lines(d)
        if worst:
            print("error log has alert/crit lines:\n" + "\n".join(worst[:5]))
            return 1
        return 0
    finally:
        stop_nginx(master)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
