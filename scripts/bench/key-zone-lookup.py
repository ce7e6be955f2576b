#!/usr/bin/env python3
"""What deciding a client key from a key zone (`noise_keys`) adds to a handshake.

    build/venv/bin/python scripts/bench/key-zone-lookup.py [--keys N] [--count N] [--rounds R]

(scripts/python-env.sh makes the venv: the XX client runs on PyPI `noiseprotocol`.)

One nginx (build/sbin/nginx and our module; NOISE_BENCH_NGINX, NOISE_BENCH_MODULE and
NOISE_BENCH_CLI override the paths), one worker, and one noise_listen server per variant,
each answering `return "ok"` after a Noise_XX_25519_ChaChaPoly_BLAKE2s handshake:

    files  the client key in a one-line `noise_trusted_keys` file: the reference, a key
           decided without a zone
    none   no client-key check at all
    zone   `noise_keys zone=devices`: the zone holds --keys random keys (1,000,000 by
           default, loaded through `noise_keys_api` with POST, one JSON object per line)
           plus the client's, allowed, with two attributes
    miss   the same zone, a client key that is not in it, `miss=allow`: the lookup of a key
           that is absent (the longer probe)

Figures: the worker's utime + stime (/proc/PID/stat) per handshake over --count
connections, the variants alternating for --rounds rounds, medians, with the difference
to `none` in microseconds and the ratio to `files`. Clock-tick resolution (10 ms) over a
few thousand connections: about 1 %, i.e. a few microseconds: run enough rounds for the
difference to mean something, and read it beside `cargo bench --bench key_table`, which
times the lookup alone.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import sys
import tempfile
import time

from benchlib import MODULE, free_port, keygen, measure, start_nginx, stop_nginx, worst_log_lines
from benchlib import xx as xx_handshake

VARIANTS = ("none", "files", "zone", "miss")


def config(d, ports, keys):
    size = max(8, keys * 128 // (1 << 20) + 8)
    server = ("    server {\n        noise_listen 127.0.0.1:%d;\n        noise_private_key %s/server.key;\n"
              "%s        return \"ok\\n\";\n    }\n")
    return ("load_module %s;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
            "events { worker_connections 1024; }\nstream {\n    noise_keys_zone devices %dm;\n"
            % (MODULE, d, d, size)
            + server % (ports["none"], d, "")
            + server % (ports["files"], d, "        noise_trusted_keys %s/client.pub;\n" % d)
            + server % (ports["zone"], d, "        noise_keys zone=devices;\n")
            + server % (ports["miss"], d, "        noise_keys zone=devices miss=allow;\n")
            + "}\nhttp {\n    access_log off;\n    client_body_buffer_size 256m;\n"
              "    client_max_body_size 256m;\n    server {\n        listen 127.0.0.1:%d;\n"
              "        location /keys/ { noise_keys_api zone=devices write=on; }\n    }\n}\n"
            % ports["api"])


def http(port, method, path, body=b""):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"%s %s HTTP/1.0\r\nHost: bench\r\nContent-Length: %d\r\n\r\n"
                  % (method.encode(), path.encode(), len(body)) + body)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def load(port, keys, client_pub):
    """Fills the zone through the API: --keys random keys, then the client's."""
    started = time.time()
    batch = 100000
    for first in range(0, keys, batch):
        lines = b"".join(
            b'{"key":"%s","verdict":"allow","attrs":{"device":"d-%d"}}\n'
            % (base64.b64encode(os.urandom(32)), i) for i in range(first, min(keys, first + batch)))
        status, body = http(port, "POST", "/keys/", lines)
        if status != 200:
            raise RuntimeError("bulk load: %d %s" % (status, body[:200]))
    status, body = http(port, "PUT", "/keys/" + client_pub.replace("+", "-").replace("/", "_"),
                        json.dumps({"verdict": "allow",
                                    "attrs": {"device": "bench", "tenant": "t1"}}).encode())
    if status not in (200, 201, 204):
        raise RuntimeError("client key: %d %s" % (status, body[:200]))
    return time.time() - started


def xx(port, client_key):
    if not xx_handshake(port, client_key):
        raise RuntimeError("port %d: refused (no answer after the handshake)" % port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1000000, help="keys in the zone besides the client's")
    ap.add_argument("--count", type=int, default=3000, help="handshakes per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="key-zone-lookup.")
    master = None
    try:
        keygen(d, "server")
        client, client_pub = keygen(d, "client")
        stranger, _ = keygen(d, "stranger")
        with open(os.path.join(d, "client.pub"), "w") as f:
            f.write(client_pub + "\n")
        ports = {v: free_port() for v in VARIANTS + ("api",)}
        master, pid = start_nginx(d, config(d, ports, a.keys))
        took = load(ports["api"], a.keys, client_pub)
        status, body = http(ports["api"], "GET", "/keys/")
        print("zone: %d keys loaded through the API in %.1f s: %s"
              % (a.keys + 1, took, body.decode().strip()))
        run = {v: (lambda p, k: lambda: xx(p, k))(ports[v], client) for v in VARIANTS}
        run["miss"] = lambda: xx(ports["miss"], stranger)
        median = measure(pid, run, VARIANTS, a.count, a.rounds)
        print("worker CPU per XX handshake (utime+stime, median of %d rounds of %d):"
              % (a.rounds, a.count))
        label = {"none": "no client-key check", "files": "noise_trusted_keys (1 key)",
                 "zone": "noise_keys, key allowed", "miss": "noise_keys, key absent"}
        for v in VARIANTS:
            print("  %-28s %7.1f us  %+6.1f us vs none  %.3f x files"
                  % (label[v], median[v], median[v] - median["none"], median[v] / median["files"]))
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
