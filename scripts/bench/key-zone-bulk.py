#!/usr/bin/env python3
"""A bulk load of 1,000,000 keys into a key zone through its API, with and without a state file.

    python3 scripts/bench/key-zone-bulk.py [--keys N] [--rounds R] [--size 128m]

One nginx (build/sbin/nginx and our module; NOISE_BENCH_NGINX and NOISE_BENCH_MODULE
override the paths), 2 workers, a `noise_keys_zone devices SIZE` (and, for the `state`
variant, `state=FILE` on the same disk as the temporary directory) and an http location
with `noise_keys_api zone=devices write=on`. The body is N lines of
`{"key": ..., "verdict": "allow", "attrs": {"device": "d-N"}}` (random keys), made once,
sent with `curl --data-binary` to `POST /`; nginx buffers it to its temporary file as for
any large body.

Figures, per variant, the median of --rounds fresh instances:
    load s        wall time of the POST, from the first byte sent to the answer (parse,
                  check, apply in chunks of 4096 and, with state=, one journal write per
                  chunk and the fdatasync)
    keys/s        N / load s
    restart s     state only: `nginx` (start) until the zone's "keys loaded" line and the
                  pid file: the master replays the file and writes it back compacted
    file MiB      state only: the state file's size after the load
    compact ms    state only: the same body loaded twice more makes the journal pass twice
                  the live set; the worker that appends then rewrites it as a snapshot; from
                  the worker's own "compacted" log line
    lock ms       of which the zone's lock was held (copying the table, then adding what
                  was appended meanwhile and renaming): what handshakes on every worker
                  waited at most
The goal (issue 20) is load s <= 10 for 1,000,000 keys. Needs curl.
"""

import argparse
import base64
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = os.environ.get("NOISE_BENCH_NGINX", os.path.join(REPO, "build/sbin/nginx"))
MODULE = os.environ.get(
    "NOISE_BENCH_MODULE", os.path.join(REPO, "build/modules/ngx_stream_noise_module.so")
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_body(path, n):
    with open(path, "w") as f:
        for i in range(n):
            key = base64.b64encode(os.urandom(32)).decode()
            f.write('{"key":"%s","verdict":"allow","attrs":{"device":"d-%d"}}\n' % (key, i))


def give_to_workers(path):
    """Workers run as nobody when nginx starts as root: they write the temp and state dirs."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


class Nginx:
    def __init__(self, base, size, state):
        self.dir = tempfile.mkdtemp(prefix="key-zone-bulk-", dir=base)
        os.chmod(self.dir, 0o755)
        for d in ("logs", "body", "state"):
            os.mkdir(os.path.join(self.dir, d))
        give_to_workers(os.path.join(self.dir, "body"))
        give_to_workers(os.path.join(self.dir, "state"))
        self.port = free_port()
        self.state = os.path.join(self.dir, "state/devices.journal") if state else None
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(
                f"""load_module {MODULE};
worker_processes 2;
pid {self.dir}/logs/nginx.pid;
error_log {self.dir}/logs/error.log notice;
events {{ worker_connections 1024; }}
stream {{
    noise_keys_zone devices {size}{' state=' + self.state if state else ''};
}}
http {{
    access_log off;
    client_max_body_size 1g;
    client_body_temp_path {self.dir}/body;
    server {{
        listen 127.0.0.1:{self.port};
        location /keys/ {{ noise_keys_api zone=devices write=on; }}
    }}
}}
"""
            )

    def start(self):
        """Starts nginx; returns the seconds until it serves (the zone loaded)."""
        pid = os.path.join(self.dir, "logs/nginx.pid")
        if os.path.exists(pid):
            os.unlink(pid)
        t0 = time.monotonic()
        subprocess.run([NGINX, "-p", self.dir + "/", "-c", self.dir + "/nginx.conf"], check=True)
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.01)
        return time.monotonic() - t0

    def stop(self):
        pid = os.path.join(self.dir, "logs/nginx.pid")
        with open(pid) as f:
            master = int(f.read())
        os.kill(master, 3)  # QUIT
        for _ in range(1000):
            try:
                os.kill(master, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)

    def api(self, *args):
        out = subprocess.run(
            ["curl", "-s", "-S", *args], capture_output=True, text=True, check=True
        ).stdout
        return out

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def round_of(base, body, n, size, state):
    ng = Nginx(base, size, state)
    try:
        ng.start()
        t0 = time.monotonic()
        out = ng.api(
            "-X", "POST", "--data-binary", "@" + body, f"http://127.0.0.1:{ng.port}/keys/"
        )
        load = time.monotonic() - t0
        if f'"applied":{n}' not in out:
            sys.exit(f"the load failed: {out.strip()}")
        result = {"load": load}
        if state:
            result["file"] = os.path.getsize(ng.state) / 1048576
            # Twice more: the journal passes twice the live set and is compacted, in the
            # worker that appended, under the zone's lock (it logs how long it took).
            for _ in range(2):
                ng.api("-X", "POST", "--data-binary", "@" + body, f"http://127.0.0.1:{ng.port}/keys/")
            with open(os.path.join(ng.dir, "logs/error.log")) as f:
                ms = re.findall(
                    r"compacted from \d+ to \d+ records in (\d+) ms \(the zone's lock held (\d+) ms\)",
                    f.read(),
                )
            if not ms:
                sys.exit("no compaction after three loads")
            result["compact"], result["locked"] = (int(x) for x in ms[-1])
            ng.stop()
            result["restart"] = ng.start()
            count = ng.api(f"http://127.0.0.1:{ng.port}/keys/")
            if f'"keys":{n}' not in count:
                sys.exit(f"the restart lost keys: {count.strip()}")
        ng.stop()
        return result
    finally:
        ng.remove()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="128m")
    p.add_argument("--tmp", default=None, help="where the instances and the body go")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="key-zone-bench-", dir=a.tmp)
    os.chmod(base, 0o755)
    body = os.path.join(base, "body.ndjson")
    try:
        write_body(body, a.keys)
        print(f"{a.keys} keys, body {os.path.getsize(body) / 1048576:.1f} MiB, zone {a.size}, "
              f"{a.rounds} rounds, medians")
        results = {"no state": [], "state": []}
        for _ in range(a.rounds):
            for variant in results:
                results[variant].append(round_of(base, body, a.keys, a.size, variant == "state"))
        print(f"{'variant':10} {'load s':>8} {'keys/s':>10} {'restart s':>10} {'file MiB':>9} {'compact ms':>11} {'lock ms':>8}")
        for variant, rounds in results.items():
            load = statistics.median(r["load"] for r in rounds)
            line = f"{variant:10} {load:8.2f} {a.keys / load:10.0f}"
            if variant == "state":
                line += f" {statistics.median(r['restart'] for r in rounds):10.2f}"
                line += f" {statistics.median(r['file'] for r in rounds):9.1f}"
                line += f" {statistics.median(r['compact'] for r in rounds):11.0f}"
                line += f" {statistics.median(r['locked'] for r in rounds):8.0f}"
            print(line)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
