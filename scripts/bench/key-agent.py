#!/usr/bin/env python3
"""What `noise_key_agent` costs per XX handshake: the worker's CPU, and the whole system's
(worker + key agent), next to the same handshake with `noise_private_key`.

    build/venv/bin/python scripts/bench/key-agent.py [--count N] [--rounds R]

(scripts/python-env.sh makes the venv: the XX client runs on PyPI `noiseprotocol`, so the
client's work is not ours and is not counted.)

One nginx (build/sbin/nginx and our module; NOISE_BENCH_NGINX, NOISE_BENCH_MODULE and
NOISE_BENCH_CLI override the paths), one worker, two noise_listen servers answering
`return "ok"` after Noise_XX_25519_ChaChaPoly_BLAKE2s: `keys` (noise_private_key) and
`agent` (noise_key_agent, with `noisesocket agent` holding the same key). Two layouts:

    one-core     the worker and the agent pinned to CPU 0 (the client to CPU 1)
    two-process  the worker on CPU 0, the agent on CPU 1 (the client unpinned)

With --clients N, N client processes run at once (count/N handshakes each), so questions
to the agent overlap as under load. Figures: utime + stime (/proc/PID/stat) of the worker, and of the agent, over --count
handshakes, divided by --count, in microseconds; `keys` and `agent` alternate for --rounds
rounds after 20 uncounted handshakes each, and the medians are printed. Clock-tick
resolution (10 ms) over a few thousand handshakes: about 1 %.

The `floor` line per layout is the in-process figure plus the CPU of one bare question round
trip between two processes (`cargo bench --bench agent_floor`: no DH, a blocking answerer):
what any agent that is asked once per handshake costs at least, since the DH itself only
moves from the worker to the agent.
"""

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import CLI, MODULE, REPO, XX, cpu, free_port, keygen, start_nginx, stop_nginx
from benchlib import worst_log_lines, xx


def config(d, ports, cpu_mask):
    return (
        "load_module %s;\nworker_processes 1;\nworker_cpu_affinity %s;\npid %s/nginx.pid;\n"
        "error_log %s/error.log;\nevents { worker_connections 1024; }\nstream {\n"
        "    noise_protocol %s;\n"
        "    server { noise_listen 127.0.0.1:%d; noise_private_key %s/server.key; return \"ok\\n\"; }\n"
        "    server { noise_listen 127.0.0.1:%d; noise_key_agent unix:%s/agent.sock; return \"ok\\n\"; }\n"
        "}\n" % (MODULE, cpu_mask, d, d, XX, ports["keys"], d, ports["agent"], d))


def handshakes(args):
    port, client, n = args
    for _ in range(n):
        xx(port, client)
    return n


def run_layout(layout, count, rounds, clients):
    d = tempfile.mkdtemp(prefix="key-agent-bench.")
    master = agent = None
    try:
        keygen(d, "server")
        client, _ = keygen(d, "client")
        agent_cpu = "0" if layout == "one-core" else "1"
        # As root, nginx's worker runs as nobody: the agent's socket is given to it.
        user = ["--user", "nobody"] if os.geteuid() == 0 else []
        os.chmod(d, 0o711)
        agent = subprocess.Popen(["taskset", "-c", agent_cpu, CLI, "agent", "--key",
                                  d + "/server.key", "--listen", "unix:%s/agent.sock" % d]
                                 + user, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(d + "/agent.sock"):
                break
            time.sleep(0.05)
        if layout == "one-core":
            os.sched_setaffinity(0, {1})
        ports = {"keys": free_port(), "agent": free_port()}
        master, worker = start_nginx(d, config(d, ports, "0001"))
        figures = {v: {"worker": [], "agent": []} for v in ports}
        for r in range(rounds):
            for v in ("keys", "agent"):
                for _ in range(20):
                    xx(ports[v], client)
                time.sleep(0.1)
                w0, a0 = cpu(worker), cpu(agent.pid)
                if clients == 1:
                    handshakes((ports[v], client, count))
                else:
                    with multiprocessing.Pool(clients) as pool:
                        pool.map(handshakes, [(ports[v], client, count // clients)] * clients)
                time.sleep(0.2)
                done = count // clients * clients
                figures[v]["worker"].append((cpu(worker) - w0) / done * 1e6)
                figures[v]["agent"].append((cpu(agent.pid) - a0) / done * 1e6)
            sys.stderr.write("%s round %d done\n" % (layout, r + 1))
        worst = worst_log_lines(d)
        if worst:
            raise RuntimeError("error log has alert/crit lines: %s" % worst[:3])
        return {v: {k: statistics.median(x) for k, x in f.items()} for v, f in figures.items()}
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_nginx(master)
        if agent:
            agent.terminate()
            agent.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="handshakes per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layouts", default="one-core,two-process")
    ap.add_argument("--clients", type=int, default=1,
                    help="client processes at once (1: one handshake at a time, the worst case"
                    " for the agent's round trip; more: questions overlap)")
    a = ap.parse_args()
    print("CPU per XX handshake (utime+stime, median of %d rounds of %d, %d client(s) at once), us:"
          % (a.rounds, a.count, a.clients))
    print("  %-12s %-8s %8s %8s %8s %14s" % ("layout", "keys in", "worker", "agent", "system",
                                             "vs in-process"))
    floor = agent_floor()
    for layout in a.layouts.split(","):
        m = run_layout(layout, a.count, a.rounds, a.clients)
        base = m["keys"]["worker"] + m["keys"]["agent"]
        for v, label in (("keys", "worker"), ("agent", "agent")):
            system = m[v]["worker"] + m[v]["agent"]
            print("  %-12s %-8s %8.0f %8.0f %8.0f %13.2fx" % (
                layout, label, m[v]["worker"], m[v]["agent"], system, system / base))
        if layout in floor:
            # The DH moves from the worker to the agent; the round trip is what is added.
            print("  %-12s %-8s %8s %8s %8.0f %13.2fx  (in-process + one round trip's floor,"
                  " %.1f us)" % (layout, "floor", "", "", base + floor[layout],
                                 (base + floor[layout]) / base, floor[layout]))
    return 0


def agent_floor():
    """`cargo bench --bench agent_floor`: the CPU of one bare question round trip between two
    processes, per layout (empty if cargo cannot run it)."""
    try:
        out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "agent_floor"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write("agent floor not measured: %s\n" % e)
        return {}
    m = re.search(r"agent floor: one_cpu_us=([\d.]+) two_cpu_us=([\d.]+)", out)
    return {"one-core": float(m.group(1)), "two-process": float(m.group(2))} if m else {}


if __name__ == "__main__":
    sys.exit(main())
