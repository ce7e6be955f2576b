#!/usr/bin/env python3
"""An independent NoiseSocket peer on the PyPI package `noiseprotocol` (not on our Rust code).

Used by the interop tests (cargo tests/interop.rs and t/*.t) to check our CLI and nginx
module against a second Noise stack, and to send crafted bad input.

  ns_peer.py connect HOST:PORT [options]      initiator: stdin -> peer, peer -> stdout
  ns_peer.py listen [HOST:]PORT [options]     responder: one connection (or --echo --count N)

Options: --protocol NAME, --key FILE, --remote-key BASE64|FILE, --negotiation virgil|empty,
--prologue STRING, --psk FILE, --echo, --count N, --ready-file PATH, -v.
Key confirmation (our extension, docs/protocol.md §4.8), listen only: --offer-confirm MODE
offers it when asked and then sends `accept` (verdict 00, then echo as usual), `refuse`
(verdict 01, then close), `close` (close without a verdict) or `garbage` (a data frame where
the verdict belongs).
Bad-input knobs: --corrupt-frame N (flip a ciphertext bit in the N-th transport frame sent),
--truncate (end with half a frame, then FIN), --no-read (never read after the handshake),
and for connect only --stall (send half of message 1 and wait) and --keep-open (no FIN
after stdin ends: for peers such as HTTP servers that take a FIN as an abort). With listen they apply to
the echo. --reset: after the handshake and one transport frame (sent by connect, read by
listen), close with a TCP reset (SO_LINGER 0).

Wire format (2018-05-01 NoiseSocket): handshake message `u16 neg_len | neg | u16 len | noise`,
transport `u16 len | ciphertext`, encrypted payload `u16 body_len | body | padding`;
body_len framing applies to handshake payloads only when they are encrypted.
"""
import base64
import os
import socket
import struct
import sys
import threading

from noise.connection import Keypair, NoiseConnection

MAX_BODY = 65517
PATTERNS = {"NN": 4, "NK": 5, "NX": 6, "XN": 7, "XK": 8, "XX": 9, "KN": 10, "KK": 11,
            "KX": 12, "IN": 13, "IK": 14, "IX": 15}
CIPHERS = {"ChaChaPoly": 1, "AESGCM": 2}
HASHES = {"BLAKE2s": 1, "BLAKE2b": 2, "SHA256": 3, "SHA512": 4}
REJECT = b"\x00\x01\xff"
CONFIRM = b"NSKC\x01"


class Fail(Exception):
    pass


def die(msg):
    sys.stderr.write("ns_peer: %s\n" % msg)
    sys.exit(1)


def read_key_text(arg):
    """A base64 key given inline or in a file (first non-comment line)."""
    if not os.path.exists(arg):
        raw = base64.b64decode(arg)
    else:
        data = open(arg, "rb").read()
        lines = [l.split(b"#")[0].strip() for l in data.splitlines()]
        lines = [l for l in lines if l]
        raw = base64.b64decode(lines[0]) if lines else data
    if len(raw) != 32:
        raise Fail("key is %d bytes, expected 32" % len(raw))
    return raw


def parts(name):
    fields = name.split("_")
    if len(fields) != 5 or fields[0] != "Noise" or fields[2] != "25519":
        raise Fail("unsupported protocol %s" % name)
    return fields[1], fields[3], fields[4]


def virgil(name):
    pattern, cipher, hash_ = parts(name)
    if pattern not in PATTERNS:
        raise Fail("%s cannot be named in virgil negotiation data" % name)
    return bytes([0, 1, 1, CIPHERS[cipher], HASHES[hash_], PATTERNS[pattern]])


def from_virgil(data):
    if len(data) != 6 or data[:2] != b"\x00\x01" or data[2] != 1:
        return None
    p = {v: k for k, v in PATTERNS.items()}.get(data[5])
    c = {v: k for k, v in CIPHERS.items()}.get(data[3])
    h = {v: k for k, v in HASHES.items()}.get(data[4])
    if not (p and c and h):
        return None
    return "Noise_%s_25519_%s_%s" % (p, c, h)


def first_encrypted(name):
    pattern = parts(name)[0]
    return "psk" in pattern or pattern[:2] in ("NK", "XK", "KK", "IK")


class Wire:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def exact(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(max(65536, n - len(self.buf)))
            if not d:
                if self.buf:
                    raise Fail("connection closed inside a frame")
                return None
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def sized(self):
        head = self.exact(2)
        if head is None:
            return None
        n = struct.unpack(">H", head)[0]
        return self.exact(n) if n else b""


class Peer:
    def __init__(self, opts, initiator):
        self.o = opts
        self.initiator = initiator
        self.index = 0

    def setup(self, name, neg):
        n = NoiseConnection.from_name(name.encode())
        (n.set_as_initiator if self.initiator else n.set_as_responder)()
        n.set_prologue(b"NoiseSocketInit1" + struct.pack(">H", len(neg)) + neg + self.o["prologue"])
        pattern = parts(name)[0]
        base = pattern[:2]
        if self.o["key"] is not None:
            needs = (base[0] in "XKI") if self.initiator else base != "NN" and base[1] in "KX"
            if needs:
                n.set_keypair_from_private_bytes(Keypair.STATIC, self.o["key"])
        if self.o["remote"] is not None:
            known = (base[1] == "K") if self.initiator else (base[0] == "K")
            if known:
                n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self.o["remote"])
        if "psk" in pattern:
            n.set_psks(psk=self.o["psk"])
        n.start_handshake()
        self.noise, self.name, self.index = n, name, 0
        self.remote = self.o["remote"] if (base[1] == "K") == self.initiator else None

    def encrypted(self):
        return self.index >= 1 or first_encrypted(self.name)

    def write(self, neg=b"", body=b""):
        body = struct.pack(">H", len(body)) + body if self.encrypted() else body
        msg = bytes(self.noise.write_message(body))
        self.index += 1
        return struct.pack(">H", len(neg)) + neg + struct.pack(">H", len(msg)) + msg

    def read(self, msg):
        state = self.noise.noise_protocol.handshake_state
        payload = bytes(self.noise.read_message(msg))
        if getattr(state.rs, "public_bytes", None):
            self.remote = state.rs.public_bytes
        if self.encrypted() and len(payload) >= 2:
            n = struct.unpack(">H", payload[:2])[0]
            if n > len(payload) - 2:
                raise Fail("body length %d exceeds the payload" % n)
            payload = payload[2:2 + n]
        self.index += 1
        return payload


def handshake_initiator(sock, o):
    wire = Wire(sock)
    p = Peer(o, True)
    neg = virgil(o["protocol"]) if o["negotiation"] == "virgil" else b""
    p.setup(o["protocol"], neg)
    first = p.write(neg)
    if o["stall"]:
        sock.sendall(first[: len(first) // 2])
        threading.Event().wait(3600)
    sock.sendall(first)
    response = True
    while not p.noise.handshake_finished:
        rneg = wire.sized()
        if rneg is None:
            raise Fail("connection closed during the handshake")
        if rneg:
            if not response:
                raise Fail("unexpected negotiation data")
            if rneg == REJECT or rneg == b"\xff":
                raise Fail("rejected by peer")
            raise Fail("unsupported negotiation response %s" % rneg.hex())
        response = False
        msg = wire.sized()
        if msg is None:
            raise Fail("connection closed during the handshake")
        p.read(msg)
        if not p.noise.handshake_finished:
            sock.sendall(p.write())
    return p, wire


def handshake_responder(sock, o):
    wire = Wire(sock)
    p = Peer(o, False)
    neg = wire.sized()
    if neg is None:
        raise Fail("connection closed during the handshake")
    name = o["protocol"] if not neg else from_virgil(neg)
    if name != o["protocol"]:
        sock.sendall(b"\x00\x03" + REJECT + b"\x00\x00")
        raise Fail("refused negotiation data %s" % neg.hex())
    msg = wire.sized()
    if not msg:
        raise Fail("empty first message")
    p.setup(name, neg)
    asked = False
    while True:
        body = p.read(msg)
        if p.index == 1 and body == CONFIRM:
            asked = True
        if p.noise.handshake_finished:
            break
        offer = CONFIRM if asked and p.index == 1 and o["offer_confirm"] else b""
        sock.sendall(p.write(body=offer))
        if p.noise.handshake_finished:
            break
        if wire.sized() != b"":
            raise Fail("unexpected negotiation data")
        msg = wire.sized()
        if msg is None:
            raise Fail("connection closed during the handshake")
    if asked and o["offer_confirm"]:
        mode = o["offer_confirm"]
        if mode == "accept":
            sock.sendall(frames(p, CONFIRM + b"\x00")[0])
        elif mode == "refuse":
            sock.sendall(frames(p, CONFIRM + b"\x01")[0])
            raise Fail("refused the initiator's key (key confirmation)")
        elif mode == "close":
            raise Fail("closing without a key-confirmation verdict")
        else:
            sock.sendall(frames(p, b"hello")[0])
    return p, wire


def report(o, p):
    if o["verbose"]:
        key = base64.b64encode(p.remote).decode() if p.remote else ""
        sys.stderr.write("protocol=%s\nremote_key=%s\nhandshake_hash=%s\n"
                         % (p.name, key, p.noise.get_handshake_hash().hex()))


def frames(p, data):
    out = []
    for i in range(0, len(data), MAX_BODY):
        body = data[i:i + MAX_BODY]
        ct = p.noise.encrypt(struct.pack(">H", len(body)) + body)
        out.append(struct.pack(">H", len(ct)) + ct)
    return out


def receive(p, wire, sink):
    while True:
        ct = wire.sized()
        if ct is None:
            return
        if len(ct) == 0:
            continue
        if len(ct) < 18:
            raise Fail("transport frame shorter than 18 bytes")
        pt = p.noise.decrypt(ct)
        n = struct.unpack(">H", pt[:2])[0]
        if n > len(pt) - 2:
            raise Fail("body length exceeds the payload")
        if n:
            sink(pt[2:2 + n])


def relay(sock, o, p, wire):
    sent = [0]
    if o["reset"]:
        sock.sendall(frames(p, b"reset follows\n")[0])
        threading.Event().wait(0.5)
        reset(sock)
        return

    def writer():
        out = sys.stdin.buffer
        while True:
            data = out.read1(MAX_BODY * 4) if hasattr(out, "read1") else out.read(MAX_BODY)
            if not data:
                break
            fs = frames(p, data)
            for f in fs:
                sent[0] += 1
                if o["corrupt"] and sent[0] == o["corrupt"]:
                    f = f[:-1] + bytes([f[-1] ^ 1])
                sock.sendall(f)
        if o["truncate"]:
            f = frames(p, b"tail")[0]
            sock.sendall(f[: len(f) // 2])
        if not o["no_read"] and not o["keep_open"]:
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    if o["no_read"]:
        t.join()
        threading.Event().wait(3600)
    stdout = sys.stdout.buffer
    receive(p, wire, lambda b: (stdout.write(b), stdout.flush()))
    t.join()


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo(sock, o, p, wire):
    sent = [0]
    if o["reset"]:
        wire.sized()  # the first frame: the session is proxying by now
        reset(sock)
        return

    def send(body):
        for f in frames(p, body):
            sent[0] += 1
            if o["corrupt"] and sent[0] == o["corrupt"]:
                f = f[:-1] + bytes([f[-1] ^ 1])
            sock.sendall(f)

    if o["no_read"]:
        threading.Event().wait(3600)
    receive(p, wire, send)
    if o["truncate"]:
        f = frames(p, b"tail")[0]
        sock.sendall(f[: len(f) // 2])
    sock.shutdown(socket.SHUT_WR)


def parse(argv):
    o = {"protocol": "Noise_XX_25519_ChaChaPoly_BLAKE2s", "key": None, "remote": None,
         "negotiation": "virgil", "prologue": b"", "psk": None, "echo": False, "count": 1,
         "ready": None, "verbose": False, "corrupt": 0, "truncate": False, "stall": False,
         "no_read": False, "keep_open": False, "offer_confirm": None, "reset": False}
    if len(argv) < 2:
        raise Fail(__doc__.strip().splitlines()[3])
    o["command"], o["address"] = argv[0], argv[1]
    it = iter(argv[2:])
    for a in it:
        if a == "--protocol": o["protocol"] = next(it)
        elif a == "--key": o["key"] = read_key_text(next(it))
        elif a == "--remote-key": o["remote"] = read_key_text(next(it))
        elif a == "--negotiation": o["negotiation"] = next(it)
        elif a == "--prologue": o["prologue"] = next(it).encode()
        elif a == "--psk": o["psk"] = read_key_text(next(it))
        elif a == "--echo": o["echo"] = True
        elif a == "--count": o["count"] = int(next(it))
        elif a == "--ready-file": o["ready"] = next(it)
        elif a == "-v": o["verbose"] = True
        elif a == "--corrupt-frame": o["corrupt"] = int(next(it))
        elif a == "--truncate": o["truncate"] = True
        elif a == "--stall": o["stall"] = True
        elif a == "--no-read": o["no_read"] = True
        elif a == "--keep-open": o["keep_open"] = True
        elif a == "--reset": o["reset"] = True
        elif a == "--offer-confirm":
            o["offer_confirm"] = next(it)
            if o["offer_confirm"] not in ("accept", "refuse", "close", "garbage"):
                raise Fail("--offer-confirm: accept, refuse, close or garbage")
        else: raise Fail("unknown option %s" % a)
    return o


def main():
    try:
        o = parse(sys.argv[1:])
        if o["command"] == "connect":
            host, port = o["address"].rsplit(":", 1)
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p, wire = handshake_initiator(sock, o)
            report(o, p)
            relay(sock, o, p, wire)
        elif o["command"] == "listen":
            host, _, port = o["address"].rpartition(":")
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host or "127.0.0.1", int(port)))
            srv.listen(64)
            if o["ready"]:
                with open(o["ready"], "w") as f:
                    f.write("%d\n" % srv.getsockname()[1])
            for _ in range(o["count"] if o["echo"] else 1):
                sock, _ = srv.accept()
                try:
                    p, wire = handshake_responder(sock, o)
                    report(o, p)
                    if o["echo"]:
                        echo(sock, o, p, wire)
                    else:
                        relay(sock, o, p, wire)
                except (Fail, OSError, Exception) as e:
                    # An echo server outlives a bad connection; a stdio one reports it.
                    if not o["echo"]:
                        raise
                    sys.stderr.write("ns_peer: %s\n" % e)
                sock.close()
        else:
            raise Fail("unknown command %s" % o["command"])
    except Fail as e:
        die(str(e))
    except (OSError, ValueError, StopIteration) as e:
        die("%s: %s" % (type(e).__name__, e))
    except Exception as e:  # noiseprotocol raises its own types, e.g. on a bad MAC
        die("%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
