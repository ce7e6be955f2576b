#!/usr/bin/env python3
"""Fresh-key flood for scripts/bench/auth-flood.pl: N IK handshakes, each with a new random
static key, THREADS at a time, against a noise_listen server with miss=lookup. Prints
"admitted=A refused=R failed=F seconds=S".

  auth_flood_client.py PORT SERVER_PUBLIC_KEY_B64 N THREADS
"""

import base64
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/interop"))
import ns_peer  # noqa: E402

PORT, SERVER, N, THREADS = int(sys.argv[1]), base64.b64decode(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
counts = {"admitted": 0, "refused": 0, "failed": 0}
lock = threading.Lock()
todo = iter(range(N))


def one():
    o = ns_peer.parse(["connect", "127.0.0.1:%d" % PORT, "--protocol", "Noise_IK_25519_ChaChaPoly_BLAKE2s"])
    o["key"] = os.urandom(32)
    o["remote"] = SERVER
    s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    try:
        ns_peer.handshake_initiator(s, o)
        return "admitted"
    except ns_peer.Fail:
        return "refused"
    except OSError:
        return "failed"
    finally:
        s.close()


def worker():
    while True:
        with lock:
            try:
                next(todo)
            except StopIteration:
                return
        try:
            r = one()
        except OSError:
            r = "failed"
        with lock:
            counts[r] += 1


start = time.time()
threads = [threading.Thread(target=worker) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("admitted=%d refused=%d failed=%d seconds=%.1f" % (counts["admitted"], counts["refused"], counts["failed"], time.time() - start))
