#!/usr/bin/env python3
"""The soak test behind scripts/soak.sh (standard library only).

  soak.py run --nginx NGINX --module SO --cli NOISESOCKET --dir TMPDIR [options]
  soak.py echo --port PORT --stats FILE        (the plain echo back end, run by `run`)

`run` starts nginx (2 workers, its own 127.0.0.1 ports) with a noise_listen server that
proxies to the echo back end, then for --seconds keeps --clients NoiseSocket clients
(`noisesocket connect`, trusting both server keys, pinning none) streaming deterministic
pseudo-random data (a few MB each) and checking the echo byte for byte, while nginx is
reloaded every --reload-every seconds alternating between two server keys, with stalled
clients (silent, half a handshake, half a frame) and garbage clients mixed in. Then it
waits for the load to drain and the old workers to exit, and reports. Exit 1 on any lost
or corrupted byte, failed genuine connection, stalled/garbage connection nginx did not
close, plaintext from a non-genuine client reaching the back end, failed reload or
crashed worker; 0 otherwise.
"""
import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time

CH = 65536  # the data is made of 64 KiB chunks, each a slice of POOL at its own offset
POOL = random.Random(20261201).randbytes(4 << 20)
PMV = memoryview(POOL)


def chunk(seed, k):
    h = hashlib.blake2b(b"%d:%d" % (seed, k), digest_size=8).digest()
    o = int.from_bytes(h, "little") % (len(POOL) - CH)
    return PMV[o:o + CH]


def size_of(seed, mb):
    # A few MB, not a multiple of the chunk size or of a NoiseSocket frame.
    return int(mb * (1 << 20)) + (seed * 7919) % CH


class Verifier:
    """Compares the echo with the stream sent, as it arrives."""

    def __init__(self, seed, size):
        self.seed, self.size, self.pos, self.bad = seed, size, 0, 0
        self.digest = hashlib.blake2b()

    def feed(self, b):
        self.digest.update(b)
        mv, i = memoryview(b), 0
        while i < len(b):
            if self.pos >= self.size:  # more bytes than were sent: all corrupt
                self.bad += len(b) - i
                self.pos += len(b) - i
                return
            k, w = divmod(self.pos, CH)
            n = min(len(b) - i, CH - w, self.size - self.pos)
            exp, got = chunk(self.seed, k)[w:w + n], mv[i:i + n]
            if got != exp:
                self.bad += sum(1 for x, y in zip(got, exp) if x != y)
            i += n
            self.pos += n


def sent_digest(seed, size):
    d = hashlib.blake2b()
    for k in range((size + CH - 1) // CH):
        d.update(chunk(seed, k)[:min(CH, size - k * CH)])
    return d.hexdigest()


# ---------------------------------------------------------------- the echo back end

def echo_main(args):
    stats = {"conns": 0, "bytes_in": 0, "bytes_out": 0, "open": 0}

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            stats["conns"] += 1
            stats["open"] += 1
            tr.set_write_buffer_limits(high=1 << 20, low=256 << 10)

        def data_received(self, data):
            stats["bytes_in"] += len(data)
            stats["bytes_out"] += len(data)
            self.tr.write(data)

        def pause_writing(self):
            self.tr.pause_reading()

        def resume_writing(self):
            self.tr.resume_reading()

        def eof_received(self):
            # The client's FIN (nginx passes it on: proxy_half_close): echo what is still
            # buffered, then FIN back and close.
            self.tr.write_eof()
            return False

        def connection_lost(self, exc):
            stats["open"] -= 1

    def dump():
        tmp = args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, args.stats)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", args.port, backlog=1024, reuse_address=True)
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        dump()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except asyncio.TimeoutError:
                pass
            dump()
        server.close()
        dump()

    asyncio.run(main())


# ---------------------------------------------------------------- nginx

CONF = """load_module {module};
daemon on;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
stream {{
    noise_handshake_timeout {hs_timeout}s;
    server {{
        noise_listen 127.0.0.1:{port};
        noise_private_key {dir}/{key}.key;
        proxy_pass 127.0.0.1:{echo};
        proxy_half_close on;
    }}
}}
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def has_epoll(pid):
    try:
        return any("eventpoll" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def snapshot(master):
    ws = children(master)
    return {"master": master, "workers": ws, "rss_kb": sum(rss_kb(w) for w in ws),
            "fds": sum(fd_count(w) for w in ws), "master_rss_kb": rss_kb(master), "master_fds": fd_count(master)}


def wait_workers(master, want, timeout, exclude=()):
    """Until `want` workers (not in exclude) are up with their epoll fd, fds steady."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        ws = [w for w in children(master) if w not in exclude]
        if len(ws) == want and all(has_epoll(w) for w in ws):
            fds = sum(fd_count(w) for w in ws)
            if fds == last:
                return True
            last = fds
        time.sleep(0.3)
    return False


# ---------------------------------------------------------------- the load

class Soak:
    def __init__(self, a):
        self.a = a
        self.stats = collections.Counter()
        self.failures = collections.Counter()
        self.keys_seen = collections.Counter()
        self.seed = 0
        self.deadline = 0.0

    def next_seed(self):
        self.seed += 1
        return self.seed

    async def genuine(self):
        a, seed = self.a, self.next_seed()
        size = size_of(seed, a.mb)
        self.stats["conn_attempted"] += 1
        proc = await asyncio.create_subprocess_exec(
            a.cli, "connect", f"127.0.0.1:{a.port}", "-N", "--key", f"{a.dir}/client.key",
            "--trusted-keys", f"{a.dir}/servers.pub", "-v",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        v = Verifier(seed, size)
        sent = 0

        async def writer():
            nonlocal sent
            try:
                for k in range((size + CH - 1) // CH):
                    c = chunk(seed, k)[:min(CH, size - k * CH)]
                    proc.stdin.write(bytes(c))
                    await proc.stdin.drain()
                    sent += len(c)
                proc.stdin.close()
                await proc.stdin.wait_closed()
            except (BrokenPipeError, ConnectionResetError):
                pass

        async def reader():
            while True:
                b = await proc.stdout.read(1 << 18)
                if not b:
                    return
                v.feed(b)

        err = b""
        try:
            _, _, err = await asyncio.wait_for(asyncio.gather(writer(), reader(), proc.stderr.read()), a.conn_timeout)
            rc = await proc.wait()
        except asyncio.TimeoutError:
            proc.kill()
            rc = await proc.wait()
            err += b"soak: connection timed out\n"
        err = err.decode(errors="replace")
        m = re.search(r"^remote_key=(\S+)$", err, re.M)
        self.keys_seen[a.key_names.get(m.group(1), "unknown") if m else "none"] += 1
        lost = size - min(v.pos, size)
        ok = rc == 0 and v.pos == size and v.bad == 0
        if ok and v.digest.hexdigest() != sent_digest(seed, size):  # belt and braces
            ok, v.bad = False, max(v.bad, 1)
        self.stats["bytes_expected"] += size
        self.stats["bytes_written"] += sent
        self.stats["bytes_echoed"] += min(v.pos, size)
        self.stats["bytes_lost"] += lost
        self.stats["bytes_corrupted"] += v.bad
        if ok:
            self.stats["conn_ok"] += 1
        else:
            self.stats["conn_failed"] += 1
            lines = [l for l in err.splitlines() if not re.match(r"^(protocol|remote_key|handshake_hash)=", l)]
            why = lines[-1] if lines else f"exit {rc}, {v.pos}/{size} bytes back, {v.bad} corrupt"
            self.failures[re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", why)] += 1

    async def genuine_slot(self, i):
        await asyncio.sleep(i * 0.005)  # 200 handshakes within a second, not one instant
        while time.time() < self.deadline:
            await self.genuine()

    async def read_until_closed(self, reader, timeout):
        """Seconds until the server closed the connection, or None if it did not."""
        t0 = time.time()
        try:
            while True:
                b = await asyncio.wait_for(reader.read(65536), max(0.1, timeout - (time.time() - t0)))
                if not b:
                    return time.time() - t0
        except (ConnectionResetError, BrokenPipeError):
            return time.time() - t0
        except asyncio.TimeoutError:
            return None

    async def stalled_slot(self, i):
        rnd = random.Random(1000 + i)
        modes = ["silent", "half-handshake", "half-frame"]
        while time.time() < self.deadline:
            mode = modes[rnd.randrange(3)]
            self.stats[f"stalled_{mode}"] += 1
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.a.port)
            except OSError:
                self.stats["stalled_connect_failed"] += 1
                continue
            if mode == "half-handshake":  # empty negotiation data (XX), message 1 (e), then silence
                w.write(b"\x00\x00\x00\x20" + rnd.randbytes(32))
            elif mode == "half-frame":
                w.write(b"\x00\x00\x00\x20" + rnd.randbytes(10))
            try:
                await w.drain()
            except OSError:
                pass
            closed = await self.read_until_closed(r, self.a.hs_timeout + 20)
            w.close()
            if closed is None:
                self.stats["stalled_not_closed"] += 1
            else:
                self.stats["stalled_closed"] += 1
                self.stats["stalled_close_ms_max"] = max(self.stats["stalled_close_ms_max"], int(closed * 1000))

    async def garbage_slot(self, i):
        rnd = random.Random(2000 + i)
        while time.time() < self.deadline:
            self.stats["garbage_attempted"] += 1
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.a.port)
                w.write(rnd.randbytes(rnd.randrange(1, 32768)))
                await w.drain()
                if rnd.random() < 0.5:
                    w.write_eof()
            except OSError:
                self.stats["garbage_closed"] += 1  # reset while sending: closed
                continue
            closed = await self.read_until_closed(r, self.a.hs_timeout + 20)
            w.close()
            self.stats["garbage_closed" if closed is not None else "garbage_not_closed"] += 1
            await asyncio.sleep(rnd.random() * 0.2)

    async def reloader(self):
        a, key = self.a, "a"
        while True:
            await asyncio.sleep(a.reload_every)
            if time.time() >= self.deadline - a.reload_every / 2:
                return
            key = "b" if key == "a" else "a"
            write_conf(a, key)
            p = await asyncio.create_subprocess_exec(
                a.nginx, "-p", f"{a.dir}/", "-c", f"{a.dir}/nginx.conf", "-s", "reload",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await p.communicate()
            self.stats["reloads" if p.returncode == 0 else "reloads_failed"] += 1
            if p.returncode:
                print(f"soak: reload failed: {err.decode().strip()}", flush=True)

    async def progress(self):
        t0 = time.time()
        while time.time() < self.deadline:
            await asyncio.sleep(15)
            s = self.stats
            print(f"soak: {time.time() - t0:5.0f}s  conns {s['conn_attempted']} ({s['conn_ok']} ok, "
                  f"{s['conn_failed']} failed), {s['bytes_echoed'] / 2**20:.0f} MiB echoed and checked, "
                  f"{s['reloads']} reloads, {s['stalled_closed']} stalled and {s['garbage_closed']} garbage closed",
                  flush=True)

    async def run(self):
        a = self.a
        self.deadline = time.time() + a.seconds
        tasks = [self.genuine_slot(i) for i in range(a.clients)]
        tasks += [self.stalled_slot(i) for i in range(a.stalled)]
        tasks += [self.garbage_slot(i) for i in range(a.garbage)]
        tasks += [self.reloader(), self.progress()]
        await asyncio.gather(*tasks)


def write_conf(a, key):
    conf = CONF.format(module=a.module, workers=a.workers, dir=a.dir, hs_timeout=a.hs_timeout,
                       port=a.port, key=key, echo=a.echo_port)
    with open(f"{a.dir}/nginx.conf.tmp", "w") as f:
        f.write(conf)
    os.replace(f"{a.dir}/nginx.conf.tmp", f"{a.dir}/nginx.conf")


def run_main(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    a.port, a.echo_port = free_ports(2)
    pubs = {}
    for name in ("a", "b", "client"):
        key = subprocess.run([a.cli, "keygen"], capture_output=True, check=True).stdout
        with open(f"{a.dir}/{name}.key", "wb") as f:
            f.write(key)
        os.chmod(f"{a.dir}/{name}.key", 0o600)
        pubs[name] = subprocess.run([a.cli, "pubkey"], input=key, capture_output=True, check=True).stdout.decode().strip()
    with open(f"{a.dir}/servers.pub", "w") as f:
        f.write(f"# the soak's two server keys\n{pubs['a']}\n{pubs['b']}\n")
    a.key_names = {pubs["a"]: "key A", pubs["b"]: "key B"}

    echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "echo", "--port", str(a.echo_port),
                             "--stats", f"{a.dir}/echo.json"])
    master = None
    failed = []
    try:
        for _ in range(100):
            if os.path.exists(f"{a.dir}/echo.json"):
                break
            time.sleep(0.05)
        write_conf(a, "a")
        r = subprocess.run([a.nginx, "-p", f"{a.dir}/", "-c", f"{a.dir}/nginx.conf"], capture_output=True, text=True)
        if r.returncode:
            print(f"soak: nginx did not start: {r.stderr.strip()}")
            return 2
        for _ in range(100):
            if os.path.exists(f"{a.dir}/nginx.pid"):
                break
            time.sleep(0.05)
        master = int(open(f"{a.dir}/nginx.pid").read())
        wait_workers(master, a.workers, 10)
        before = snapshot(master)
        print(f"soak: nginx {master}, {a.workers} workers, noise_listen 127.0.0.1:{a.port} -> echo 127.0.0.1:{a.echo_port}; "
              f"{a.clients} clients x ~{a.mb} MiB for {a.seconds}s, reload every {a.reload_every}s (keys A/B), "
              f"{a.stalled} stalled + {a.garbage} garbage client loops", flush=True)
        t0 = time.time()
        soak = Soak(a)
        asyncio.run(soak.run())
        load_s = time.time() - t0
        # The load is gone: wait for the old workers to exit (and the stalled ones closed).
        t1 = time.time()
        settled = False
        for _ in range(int(a.settle_timeout / 0.3)):
            if len(children(master)) == a.workers:
                settled = wait_workers(master, a.workers, 10)
                break
            time.sleep(0.3)
        time.sleep(1)
        after = snapshot(master)
        settle_s = time.time() - t1
        with open(f"{a.dir}/echo.json") as f:
            echo_stats = json.load(f)
    finally:
        if master:
            try:
                os.kill(master, signal.SIGQUIT)
                for _ in range(100):
                    os.kill(master, 0)
                    time.sleep(0.05)
                os.kill(master, signal.SIGTERM)
            except ProcessLookupError:
                pass
        echo.terminate()
        echo.wait()

    s = soak.stats
    log = open(f"{a.dir}/error.log", errors="replace").read()
    levels = collections.Counter(re.findall(r"^\S+ \S+ \[(\w+)\]", log, re.M))
    noise = collections.Counter(re.sub(r"\d+", "N", m) for m in re.findall(r"\] \d+#\d+: (?:\*\d+ )?noise: ([^,]*)", log))
    crashes = re.findall(r"^.*exited on signal.*$", log, re.M)

    def kib(n):
        return f"{n / 1024:.1f} MiB"

    print(f"\n== soak results ({load_s:.0f}s of load, then {settle_s:.0f}s until the old workers had exited)")
    print(f"genuine connections: {s['conn_attempted']} attempted, {s['conn_ok']} succeeded, {s['conn_failed']} failed"
          f" (server key seen: " + ", ".join(f"{k} {n}" for k, n in sorted(soak.keys_seen.items())) + ")")
    for why, n in soak.failures.most_common(10):
        print(f"    x{n}: {why}")
    print(f"data: {s['bytes_expected'] / 2**20:.1f} MiB sent, {s['bytes_echoed'] / 2**20:.1f} MiB echoed back and checked"
          f" byte for byte; lost bytes {s['bytes_lost']}, corrupted bytes {s['bytes_corrupted']}")
    print(f"echo back end: {echo_stats['conns']} connections, {echo_stats['bytes_in']} bytes in "
          f"(genuine clients wrote {s['bytes_written']}), {echo_stats['open']} still open")
    print(f"reloads: {s['reloads']} ok, {s['reloads_failed']} failed (every {a.reload_every}s, alternating keys A and B)")
    print(f"stalled clients: {s['stalled_silent']} silent, {s['stalled_half-handshake']} half a handshake, "
          f"{s['stalled_half-frame']} half a frame; {s['stalled_closed']} closed by nginx "
          f"(slowest after {s['stalled_close_ms_max'] / 1000:.1f}s, handshake timeout {a.hs_timeout}s), "
          f"{s['stalled_not_closed']} not closed")
    print(f"garbage clients: {s['garbage_attempted']} attempted, {s['garbage_closed']} closed by nginx, "
          f"{s['garbage_not_closed']} not closed")
    print(f"workers before: pids {before['workers']}, RSS {kib(before['rss_kb'])}, {before['fds']} fds "
          f"(master: RSS {kib(before['master_rss_kb'])}, {before['master_fds']} fds)")
    print(f"workers after:  pids {after['workers']}, RSS {kib(after['rss_kb'])}, {after['fds']} fds "
          f"(master: RSS {kib(after['master_rss_kb'])}, {after['master_fds']} fds)"
          + ("" if settled else "  [old workers had not all exited]"))
    print("error log: " + ", ".join(f"{k} {n}" for k, n in sorted(levels.items())))
    for what, n in noise.most_common(8):
        print(f"    noise: {what} x{n}")

    if s["bytes_lost"] or s["bytes_corrupted"]:
        failed.append(f"{s['bytes_lost']} bytes lost, {s['bytes_corrupted']} corrupted")
    if s["conn_failed"]:
        failed.append(f"{s['conn_failed']} genuine connections failed")
    if echo_stats["bytes_in"] > s["bytes_written"]:
        failed.append(f"the back end received {echo_stats['bytes_in'] - s['bytes_written']} bytes more than genuine clients wrote")
    if s["stalled_not_closed"] or s["garbage_not_closed"]:
        failed.append("stalled or garbage connections left open by nginx")
    if s["reloads_failed"]:
        failed.append(f"{s['reloads_failed']} reloads failed")
    if crashes or levels.get("alert") or levels.get("crit") or levels.get("emerg"):
        failed.append(f"{len(crashes)} workers exited on a signal; alert/crit/emerg lines: "
                      f"{levels.get('alert', 0)}/{levels.get('crit', 0)}/{levels.get('emerg', 0)}")
        for line in crashes[:5]:
            print(f"    {line}")
    if not settled:
        failed.append("the old workers did not all exit")
    print("soak: FAIL: " + "; ".join(failed) if failed else "soak: PASS")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--stats", required=True)
    r = sub.add_parser("run")
    r.add_argument("--nginx", required=True)
    r.add_argument("--module", required=True)
    r.add_argument("--cli", required=True)
    r.add_argument("--dir", required=True)
    r.add_argument("--seconds", type=float, default=120)
    r.add_argument("--clients", type=int, default=200)
    r.add_argument("--mb", type=float, default=3)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--reload-every", type=float, default=4)
    r.add_argument("--stalled", type=int, default=20)
    r.add_argument("--garbage", type=int, default=10)
    r.add_argument("--hs-timeout", type=int, default=10)
    r.add_argument("--conn-timeout", type=float, default=120)
    r.add_argument("--settle-timeout", type=float, default=60)
    a = p.parse_args()
    if a.cmd == "echo":
        return echo_main(a)
    return run_main(a)


if __name__ == "__main__":
    sys.exit(main())
