#!/usr/bin/env python3
"""A multiplexing A for tests, written from docs/multiplex.md alone (not from src/core/mux):
it checks the document as much as B. The NoiseSocket handshake is ns_peer.py's.

  mux_client.py HOST:PORT SCENARIO [--key FILE] [--remote-key B64|FILE] [--streams N]
                [--size BYTES] [--hold-file PATH]

Prints one line per result ("stream 1 ok sha256=..", "refused 3", "goaway 41 0", ...) and
exits 0 unless the scenario itself failed. Scenarios:
  return       one stream, FIN at once; prints what B answered
  echo         --streams N at once, --size random bytes each, echoed; sha256-checked
  slow         stream 1 stops granting credit after its first window; the others (echo)
               finish; then stream 1 reads again and finishes
  halfclose    stream 1: B's FIN first (return), then ours; stream 3: ours first
  reset        stream 1 sends and is reset; stream 3 still works
  preread-reset  stream 1 is reset while ssl_preread waits for it; stream 3 still works
  limit        opens 130 streams and keeps them open: B refuses those beyond its limit
  garbage      an unknown frame type; unknown-stream DATA; window overflow: each on its own
               link (SCENARIO garbage-type, garbage-stream, garbage-window)
  flood        400 opens, each reset at once, in one message (rapid reset)
  garbage-first  an unknown frame type as A's very first frame
  reload       stream 1 open, then waits for --hold-file to exist (the test reloads B),
               finishes stream 1 and opens stream 3 after the go-away
"""
import hashlib
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ns_peer  # noqa: E402

DATA, OPEN, WINDOW, RESET, PING, GOAWAY, REKEY = range(7)
FIN, ACK = 1, 1
HELLO = b"NSMX\x00\x00\x00\x01"
INITIAL = 65536


def frame(kind, flags, sid, payload=b""):
    return struct.pack(">BBIH", kind, flags, sid, len(payload)) + payload


def parse(body):
    out, at = [], 0
    while at < len(body):
        if len(body) - at < 8:
            raise ns_peer.Fail("frame header cut short")
        kind, flags, sid, n = struct.unpack(">BBIH", body[at:at + 8])
        payload = body[at + 8:at + 8 + n]
        if len(payload) != n:
            raise ns_peer.Fail("frame payload cut short")
        out.append((kind, flags, sid, payload))
        at += 8 + n
    return out


class Stream:
    def __init__(self, sid):
        self.sid, self.got, self.fin, self.reset = sid, bytearray(), False, None
        self.window = INITIAL  # what we may send
        self.credit = True  # we return credit as we read


class Link:
    def __init__(self, address, o):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        o["negotiation"] = "virgil"
        orig = ns_peer.virgil
        ns_peer.virgil = lambda name: orig(name) + b"NSMX\x01"
        try:
            self.p, self.wire = ns_peer.handshake_initiator(self.sock, o)
        finally:
            ns_peer.virgil = orig
        self.streams, self.next_id, self.hello = {}, 1, False
        self.goaway, self.closed, self.refused = None, False, []

    def send(self, *frames):
        body = b"".join(frames)
        for ct in ns_peer.frames(self.p, body):
            self.sock.sendall(ct)

    def open(self, origin=b"\x04\xc0\x00\x02\x07\x9c\x40", first=b""):
        sid = self.next_id
        self.next_id += 2
        s = self.streams[sid] = Stream(sid)
        frames = [frame(OPEN, 0, sid, origin)]
        if first:
            frames.append(frame(DATA, 0, sid, first))
            s.window -= len(first)
        self.send(*frames)
        return s

    def write(self, s, data, fin=False):
        """Sends within the window, pumping input while it is closed."""
        while data:
            while s.window == 0:
                self.pump()
                if s.reset is not None or self.closed:
                    return
            n = min(len(data), s.window, 65509)
            self.send(frame(DATA, 0, s.sid, data[:n]))
            s.window -= n
            data = data[n:]
        if fin:
            self.send(frame(DATA, FIN, s.sid))

    def pump(self, timeout=30):
        self.sock.settimeout(timeout)
        try:
            ct = self.wire.sized()
        except socket.timeout:
            raise ns_peer.Fail("timed out waiting for B")
        except ConnectionResetError:
            ct = None
        if ct is None:
            self.closed = True
            return
        if not ct:
            return
        pt = self.p.noise.decrypt(ct)
        n = struct.unpack(">H", pt[:2])[0]
        for kind, flags, sid, payload in parse(pt[2:2 + n]):
            if not self.hello:
                if (kind, flags, sid, payload) != (PING, ACK, 0, HELLO):
                    raise ns_peer.Fail("B's first frame is not the hello")
                self.hello = True
                continue
            s = self.streams.get(sid)
            if kind == DATA and s:
                s.got += payload
                if payload and s.credit:
                    self.send(frame(WINDOW, 0, sid, struct.pack(">I", len(payload))))
                if flags & FIN:
                    s.fin = True
            elif kind == WINDOW and s:
                s.window += struct.unpack(">I", payload)[0]
            elif kind == RESET:
                code = struct.unpack(">H", payload)[0]
                if s:
                    s.reset = code
                if code == 1:
                    self.refused.append(sid)
            elif kind == PING and not flags:
                self.send(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                self.goaway = struct.unpack(">IH", payload)

    def until(self, cond, timeout=30):
        deadline = time.time() + timeout
        while not cond():
            if self.closed:
                return False
            if time.time() > deadline:
                raise ns_peer.Fail("timed out")
            self.pump(max(0.1, deadline - time.time()))
        return True


def main():
    argv = sys.argv[1:]
    extra = {"streams": 10, "size": 100000, "hold": None}
    rest = []
    it = iter(argv[2:])
    for a in it:
        if a == "--streams": extra["streams"] = int(next(it))
        elif a == "--size": extra["size"] = int(next(it))
        elif a == "--hold-file": extra["hold"] = next(it)
        else: rest.append(a)
    o = ns_peer.parse(["connect", argv[0]] + rest)
    scenario = argv[1]
    try:
        link = Link(argv[0], o)
    except ns_peer.Fail as e:
        print("handshake failed: %s" % e)
        return 0
    out = sys.stdout
    if scenario == "return":
        s = link.open()
        link.write(s, b"", fin=True)
        link.until(lambda: s.fin or s.reset is not None)
        out.write("stream %d fin=%s reset=%s data=%s\n" % (s.sid, s.fin, s.reset, s.got.decode()))
    elif scenario in ("echo", "slow"):
        n, size = extra["streams"], extra["size"]
        streams = []
        for _ in range(n):
            s = link.open()
            s.data = os.urandom(size)
            streams.append(s)
        if scenario == "slow":
            streams[0].credit = False
        # Interleave: a window's worth per stream per round.
        pending = {s.sid: 0 for s in streams}
        while pending:
            for s in streams:
                if s.sid not in pending:
                    continue
                at = pending[s.sid]
                n_ = min(s.window, len(s.data) - at, 65509)
                if n_ > 0:
                    link.send(frame(DATA, 0, s.sid, s.data[at:at + n_]))
                    s.window -= n_
                    at += n_
                pending[s.sid] = at
                if at == len(s.data):
                    del pending[s.sid]
            if pending:
                link.pump()
            if link.closed:
                break
        others = streams[1:] if scenario == "slow" else streams
        link.until(lambda: all(len(s.got) >= len(s.data) or s.reset is not None for s in others))
        if scenario == "slow":
            s0 = streams[0]
            out.write("stalled stream %d has %d of %d bytes while %d others finished\n"
                      % (s0.sid, len(s0.got), len(s0.data), len(others)))
            s0.credit = True
            link.send(frame(WINDOW, 0, s0.sid, struct.pack(">I", len(s0.got))))
            link.until(lambda: len(s0.got) >= len(s0.data) or s0.reset is not None)
        for s in streams:
            link.write(s, b"", fin=True)
        link.until(lambda: all(s.fin or s.reset is not None for s in streams))
        for s in streams:
            good = bytes(s.got) == s.data
            out.write("stream %d %s sha256=%s\n" % (s.sid, "ok" if good else "BAD",
                                                  hashlib.sha256(s.got).hexdigest()[:16]))
    elif scenario == "halfclose":
        # B first: a `return` server answers and sends its FIN while ours is still open.
        s = link.open()
        link.until(lambda: s.fin)
        out.write("stream %d: B's FIN first, data=%s\n" % (s.sid, s.got.decode().strip()))
        link.write(s, b"", fin=True)
        # Ours first: FIN at once, B still answers.
        s2 = link.open()
        link.write(s2, b"", fin=True)
        link.until(lambda: s2.fin)
        out.write("stream %d: our FIN first, data=%s\n" % (s2.sid, s2.got.decode().strip()))
    elif scenario == "reset":
        s = link.open(first=b"x" * 1000)
        link.until(lambda: len(s.got) >= 1000)
        link.send(frame(RESET, 0, s.sid, struct.pack(">H", 0)))
        s2 = link.open(first=b"after reset")
        link.until(lambda: len(s2.got) >= 11)
        link.write(s2, b"", fin=True)
        link.until(lambda: s2.fin)
        out.write("after reset: %s\n" % s2.got.decode())
    elif scenario == "preread-reset":
        # A TLS record header that promises more: ssl_preread waits; the stream is reset
        # while its session is in the preread phase, then the link goes on.
        s = link.open(first=b"\x16\x03\x01\x02\x00")
        time.sleep(0.3)
        link.send(frame(RESET, 0, s.sid, struct.pack(">H", 0)))
        time.sleep(0.3)
        s2 = link.open(first=b"\x16\x03\x01\x02\x00")
        link.send(frame(DATA, FIN, s2.sid))
        link.until(lambda: s2.fin or s2.reset is not None)
        out.write("after a reset in preread: fin=%s reset=%s\n" % (s2.fin, s2.reset))
    elif scenario == "limit":
        streams = [link.open(first=b"hi") for _ in range(130)]
        link.until(lambda: len(link.refused) >= 2, timeout=20)
        out.write("refused %s\n" % " ".join(str(i) for i in link.refused))
        for s in streams:
            if s.reset is None:
                link.write(s, b"", fin=True)
        link.until(lambda: all(s.fin or s.reset is not None for s in streams))
        out.write("closed %d\n" % sum(1 for s in streams if s.fin))
    elif scenario == "garbage-first":
        # Right behind the handshake, before B's hello can have left: B must still send
        # its hello before its go-away.
        link.send(frame(9, 0, 0, b"junk"))
        link.until(lambda: False, timeout=10)
        out.write("link closed hello=%s goaway=%s\n" % (link.hello, link.goaway))
    elif scenario.startswith("garbage"):
        s = link.open(first=b"hi")
        link.until(lambda: len(s.got) >= 2)
        bad = {"garbage-type": frame(9, 0, 0, b"junk"),
               "garbage-stream": frame(DATA, 0, 9, b"nobody"),
               "garbage-window": frame(WINDOW, 0, s.sid, struct.pack(">I", 0x7fffffff))}
        link.send(bad[scenario])
        link.until(lambda: False, timeout=10)
        out.write("link closed goaway=%s stream_reset=%s\n" % (link.goaway, s.reset))
    elif scenario == "flood":
        # Rapid reset: open and reset at once, 400 times in one message.
        frames = []
        for _ in range(400):
            sid = link.next_id
            link.next_id += 2
            frames += [frame(OPEN, 0, sid, b"\x00"), frame(RESET, 0, sid, b"\x00\x00")]
        link.send(*frames)
        link.until(lambda: False, timeout=10)
        out.write("link closed goaway=%s\n" % (link.goaway,))
    elif scenario == "reload":
        s = link.open(first=b"before")
        link.until(lambda: len(s.got) >= 6)
        out.write("stream 1 open\n")
        out.flush()
        while not os.path.exists(extra["hold"]):
            time.sleep(0.05)
        link.until(lambda: link.goaway is not None)
        out.write("goaway last=%d reason=%d\n" % link.goaway)
        link.write(s, b" after", fin=False)
        link.until(lambda: len(s.got) >= 12)
        link.write(s, b"", fin=True)
        link.until(lambda: s.fin)
        out.write("stream 1 finished: %s\n" % s.got.decode())
        link.until(lambda: False, timeout=10)
        out.write("link closed\n")
    else:
        raise ns_peer.Fail("unknown scenario %s" % scenario)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ns_peer.Fail as e:
        print("failed: %s" % e)
        sys.exit(1)
