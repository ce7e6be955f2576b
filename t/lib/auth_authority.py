#!/usr/bin/env python3
"""A scriptable HTTP authority for t/77-auth-request.t (noise_auth_request).

  auth_authority.py PORT|/unix/socket/path DIR

Threaded, raw sockets (so it can answer garbage or close mid-response). What it does is
chosen by the request path:

  /allow          200 with X-Noise-Attr-Device (the key's first 8 characters, letters and
                  digits only, lowercased) and X-Noise-Attr-Tenant: acme
  /deny           403
  /error          500
  /garbage        not HTTP
  /cut            the first bytes of a 200 response, then close
  /silent         reads the request and never answers (until the test ends)
  /hold           waits until DIR/release exists, then as /allow
  /slow           waits 2 s, then as /allow
  /big            a 200 whose headers go on past 8 KiB
  /keys           200 when the key is a line of DIR/allowed.keys, else 401
  /device-auth    the README's example (t/99-readme.t): as /allow

Every request appends "path key protocol addr" to DIR/requests.log; DIR/inflight holds the
number of requests waiting for their answer (a request stops counting just before its
answer is sent, so one that nginx has had its answer to never counts next to the lookup
that takes its place) and DIR/max the most seen at once.
"""

import os
import re
import socket
import sys
import threading
import time

PORT = sys.argv[1]  # a TCP port on 127.0.0.1, or a unix socket path
DIR = sys.argv[2]
lock = threading.Lock()
state = {"now": 0, "max": 0}


def write(name, text):
    tmp = os.path.join(DIR, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(DIR, name))


def count(delta):
    with lock:
        state["now"] += delta
        state["max"] = max(state["max"], state["now"])
        write("inflight", str(state["now"]))
        write("max", str(state["max"]))


def allow(key):
    device = re.sub(r"[^a-z0-9]", "", key.lower())[:8]
    return (
        "HTTP/1.1 200 OK\r\nX-Noise-Attr-Device: d-%s\r\nX-Noise-Attr-Tenant: acme\r\n"
        "Content-Length: 2\r\n\r\nok" % device
    ).encode()


def serve(conn):
    count(1)
    counted = [True]

    def answered():
        if counted[0]:
            counted[0] = False
            count(-1)

    def send(data):
        answered()
        conn.sendall(data)

    try:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        key = headers.get("x-noise-client-key", "-")
        with lock:
            with open(os.path.join(DIR, "requests.log"), "a") as f:
                f.write("%s %s %s %s %s\n" % (path, key, headers.get("x-noise-protocol", "-"),
                                              headers.get("x-noise-client-addr", "-"),
                                              lines[0].split(" ")[-1]))
        if path in ("/allow", "/device-auth"):
            send(allow(key))
        elif path == "/deny":
            send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        elif path == "/error":
            send(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        elif path == "/garbage":
            send(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
        elif path == "/cut":
            send(b"HTTP/1.1 200 OK\r\nX-Noise-Attr-Dev")
        elif path == "/big":
            send(b"HTTP/1.1 200 OK\r\n" + (b"X-Pad: " + b"a" * 500 + b"\r\n") * 20 + b"\r\n")
        elif path == "/silent":
            time.sleep(60)
        elif path == "/hold":
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(DIR, "release")) and time.time() < deadline:
                time.sleep(0.02)
            send(allow(key))
        elif path == "/slow":
            time.sleep(2)
            send(allow(key))
        elif path == "/keys":
            try:
                with open(os.path.join(DIR, "allowed.keys")) as f:
                    allowed = {l.strip() for l in f}
            except OSError:
                allowed = set()
            if key in allowed:
                conn.sendall(allow(key))
            else:
                conn.sendall(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")
    except OSError:
        pass
    finally:
        answered()
        try:
            conn.close()
        except OSError:
            pass


def main():
    if PORT.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(PORT)
        os.chmod(PORT, 0o777)  # nginx's workers run as another user
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(PORT)))
    s.listen(1024)
    write("inflight", "0")
    write("max", "0")
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
