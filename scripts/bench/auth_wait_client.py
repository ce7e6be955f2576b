#!/usr/bin/env python3
"""The client side of scripts/bench/auth-wait.pl: what a handshake that waits for an
authority does to everything else on the same worker. Prints one line per phase.

  auth_wait_client.py SERVER_PUB_B64 TRUSTED_KEY_B64 PORTS DIR AUTHORITY_PY

PORTS is "slow,other,est,silent,auth": the noise_listen servers of auth-wait.pl and
the authority's port. The script runs the authority itself (AUTHORITY_PY, the suites'
t/lib/auth_authority.py, in DIR) so that it can take it down in phase 2.

1. wait:   64 IK handshakes with fresh keys against `slow` (the authority answers after
           2 s), then, while they wait, 200 XX handshakes against `other` (no authority)
           20 at a time: how many of the 200 finished before the first slow one was
           answered, and their latencies.
2. down:   20 sessions through `est` (lookup allowed, then echoing), the authority killed,
           then 200 fresh IK keys against `est` (connection refused by the authority's
           address), 20 at a time: all refused, and how long a refusal took; meanwhile
           each established session echoes every 100 ms (any failure counted) and 100
           `other` handshakes measure that the worker answers.
3. silent: 100 fresh IK keys against `silent`, whose authority accepts and never answers
           (noise_auth_request_timeout 1s): all refused, the slowest within the timeout.
"""

import base64
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/interop"))
import ns_peer  # noqa: E402

SERVER = base64.b64decode(sys.argv[1])
TRUSTED = base64.b64decode(sys.argv[2])
SLOW, OTHER, EST, SILENT, AUTH = (int(p) for p in sys.argv[3].split(","))
DIR, AUTHORITY = sys.argv[4], sys.argv[5]
IK, XX = "Noise_IK_25519_ChaChaPoly_BLAKE2s", "Noise_XX_25519_ChaChaPoly_BLAKE2s"


def handshake(port, protocol, key, timeout=30):
    """(outcome, seconds, (peer, wire, sock) or None)."""
    o = ns_peer.parse(["connect", "127.0.0.1:%d" % port, "--protocol", protocol])
    o["key"] = key
    o["remote"] = SERVER
    start = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        p, wire = ns_peer.handshake_initiator(s, o)
        return "admitted", time.time() - start, (p, wire, s)
    except ns_peer.Fail:
        s.close()
        return "refused", time.time() - start, None
    except OSError:
        s.close()
        return "failed", time.time() - start, None


def close(session):
    if session:
        session[2].close()


def run_many(n, threads, job):
    results, lock, todo = [], threading.Lock(), iter(range(n))

    def worker():
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            r = job()
            with lock:
                results.append(r)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def ms(values):
    v = sorted(values)
    if not v:
        return "-"
    return "p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        1000 * statistics.median(v), 1000 * v[min(len(v) - 1, int(len(v) * 0.99))], 1000 * v[-1])


def start_authority():
    proc = subprocess.Popen([sys.executable, AUTHORITY, str(AUTH), DIR])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", AUTH), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    sys.exit("the authority did not start")


def echo(session, data):
    p, wire, s = session
    for f in ns_peer.frames(p, data):
        s.sendall(f)
    got = b""
    while len(got) < len(data):
        ct = wire.sized()
        if ct is None:
            raise OSError("closed")
        pt = p.noise.decrypt(ct)
        n = int.from_bytes(pt[:2], "big")
        got += pt[2:2 + n]
    return got == data


authority = start_authority()

# 1. wait
slow_done = []
slow_threads = []
t0 = time.time()


def slow_one():
    r = handshake(SLOW, IK, os.urandom(32))
    slow_done.append((r[0], time.time() - t0))
    close(r[2])


for _ in range(64):
    th = threading.Thread(target=slow_one)
    th.start()
    slow_threads.append(th)
time.sleep(0.2)  # the 64 lookups are in flight


def other_one():
    r = handshake(OTHER, XX, TRUSTED)
    close(r[2])
    return r[0], r[1], time.time() - t0


others = run_many(200, 20, other_one)
for th in slow_threads:
    th.join()
first_slow = min(t for _, t in slow_done)
before = sum(1 for o, _, end in others if o == "admitted" and end < first_slow)
print("wait: %d of 200 other handshakes done before the first of 64 waiting lookups was answered (%.2f s after they started); "
      "latency %s; the 64: %d admitted" % (before, first_slow, ms([d for _, d, _ in others]),
                                           sum(1 for o, _ in slow_done if o == "admitted")))

# 2. down
sessions = []
for _ in range(20):
    r = handshake(EST, IK, os.urandom(32))
    if r[0] != "admitted" or not echo(r[2], b"hello"):
        sys.exit("could not establish a session through est: %s" % r[0])
    sessions.append(r[2])
authority.kill()
authority.wait()
stop = threading.Event()
echo_failures, echoes = [0], [0]


def keep_echoing(session):
    while not stop.is_set():
        try:
            ok = echo(session, b"ping %f" % time.time())
        except (OSError, ns_peer.Fail, Exception):
            ok = False
        echoes[0] += 1
        if not ok:
            echo_failures[0] += 1
            return
        time.sleep(0.1)


echo_threads = [threading.Thread(target=keep_echoing, args=(s,)) for s in sessions]
for th in echo_threads:
    th.start()
responsive = []
resp_thread = threading.Thread(target=lambda: responsive.extend(run_many(100, 2, lambda: handshake(OTHER, XX, TRUSTED)[:2])))
resp_thread.start()
phase = time.time()
down = run_many(200, 20, lambda: handshake(EST, IK, os.urandom(32))[:2])
resp_thread.join()
time.sleep(max(0.0, 2.0 - (time.time() - phase)))  # the sessions echo for 2 s at least
stop.set()
for th in echo_threads:
    th.join()
for s in sessions:
    s[2].close()
print("down: %d of 200 fresh keys refused (%d admitted, %d failed), refusal %s; established sessions: %d echoes, %d failed; "
      "other handshakes meanwhile: %d of 100 done, %s" % (
          sum(1 for o, _ in down if o == "refused"), sum(1 for o, _ in down if o == "admitted"),
          sum(1 for o, _ in down if o == "failed"), ms([d for _, d in down]), echoes[0], echo_failures[0],
          sum(1 for o, _ in responsive if o == "admitted"), ms([d for _, d in responsive])))

# 3. silent
silent = run_many(100, 20, lambda: handshake(SILENT, IK, os.urandom(32))[:2])
print("silent: %d of 100 fresh keys refused (%d admitted, %d failed), refusal %s (noise_auth_request_timeout 1s)" % (
    sum(1 for o, _ in silent if o == "refused"), sum(1 for o, _ in silent if o == "admitted"),
    sum(1 for o, _ in silent if o == "failed"), ms([d for _, d in silent])))
