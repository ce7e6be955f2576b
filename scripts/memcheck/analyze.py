#!/usr/bin/env python3
"""Reads the valgrind memcheck logs (vg.<pid>.log, text, one per process) that
scripts/memcheck/nginx-valgrind wrote, and says which errors are the module's.

An error is the module's when any frame of any of its stacks (where it happened, where the
block was allocated or freed, where an uninitialised value came from) is in the module's
.so: a path under the repository's src/, nginx-module/ or target/, a crate from the cargo
registry or Rust's std (/rustc/...), all linked into ngx_stream_noise_module.so, an
`nginx_noise::` function, or a frame without debug info "(in .../ngx_stream_noise_module.so)".
nginx itself is C from build/nginx-src; glibc and OpenSSL are system libraries.

Usage: analyze.py REPO LOGDIR [LOGDIR...]; exit 1 when the module has a memory error (or,
unless MEMCHECK_LEAKS=warn, a definite leak), else 0. Prints a summary and every offending
report in full (one per distinct stack, with how many processes had it).
"""
import os
import re
import sys
from collections import OrderedDict, defaultdict

KINDS = [
    ("InvalidRead", r"Invalid read of size"),
    ("InvalidWrite", r"Invalid write of size"),
    ("UninitCondition", r"Conditional jump or move depends on uninitialised value"),
    ("UninitValue", r"Use of uninitialised value of size"),
    ("SyscallParam", r"Syscall param .* (uninitialised|unaddressable) byte"),
    ("InvalidFree", r"Invalid (free|delete|realloc)"),
    ("MismatchedFree", r"Mismatched free"),
    ("Overlap", r"Source and destination overlap"),
    ("InvalidJump", r"Jump to the invalid address"),
    ("FishyValue", r"has a fishy value"),
    ("Crash", r"Process terminating with default action of signal"),
    ("Leak", r"are definitely lost in loss record"),
]
FRAME = re.compile(r"^\s+(?:at|by) 0x[0-9A-Fa-f]+: (.*?) \((.*)\)\s*$")


def module_frame(repo, fn, loc):
    if "ngx_stream_noise_module.so" in loc or "nginx_noise::" in fn:
        return True
    if loc.startswith("in "):
        return False
    path = loc.rsplit(":", 1)[0]
    if "/.cargo/registry/" in path or path.startswith("/rustc/"):
        return True
    return any(path.startswith(f"{repo}/{d}/") for d in ("src", "nginx-module", "target"))


def parse(path):
    """(command, complete, [block lines])."""
    pid = os.path.basename(path).split(".")[1]
    prefix = f"=={pid}=="
    blocks, cur, command, complete = [], [], "", False
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.startswith(prefix):
                continue  # e.g. a Rust panic message printed by valgrind's client
            body = line[len(prefix):]
            body = body[1:] if body.startswith(" ") else body
            if body.startswith("Command: "):
                command = body[len("Command: "):]
            if body.startswith("ERROR SUMMARY:"):
                complete = True
            if body.strip() == "":
                if cur:
                    blocks.append(cur)
                cur = []
            else:
                cur.append(body)
    if cur:
        blocks.append(cur)
    return command, complete, blocks


def classify(block):
    for kind, rx in KINDS:
        if re.search(rx, block[0]):
            return kind
    return None


def main():
    repo = os.path.abspath(sys.argv[1])
    dirs = sys.argv[2:]
    leaks_fail = os.environ.get("MEMCHECK_LEAKS", "fail") != "warn"
    logs = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if re.match(r"vg\.\d+\.log$", name):
                logs.append(os.path.join(d, name))
    ours = OrderedDict()  # signature -> {kind, example, files}
    other = defaultdict(lambda: defaultdict(int))  # kind -> "top frames" -> count
    incomplete, warnings, total_errors = [], defaultdict(int), 0
    for path in logs:
        command, complete, blocks = parse(path)
        if not complete:
            incomplete.append(path)
        for b in blocks:
            if b[0].startswith("ERROR SUMMARY:"):
                m = re.match(r"ERROR SUMMARY: (\d+) errors", b[0])
                total_errors += int(m.group(1)) if m else 0
            if b[0].startswith("Warning:"):
                for line in b:
                    if line.startswith("Warning:"):
                        warnings[re.sub(r"0x[0-9a-fA-F]+|\d+", "N", line)] += 1
            kind = classify(b)
            if kind is None:
                continue
            frames = [FRAME.match(line) for line in b]
            frames = [(m.group(1), m.group(2)) for m in frames if m]
            # A loss record's number and size differ between processes: key on the stack.
            sig = kind + "|" + "|".join(fn for fn, _ in frames[:12])
            if any(module_frame(repo, fn, loc) for fn, loc in frames):
                e = ours.setdefault(sig, {"kind": kind, "example": b, "files": []})
                e["files"].append(f"{path} ({command})")
            else:
                top = " < ".join(fn for fn, _ in frames[:4] if fn not in ("malloc", "calloc", "realloc"))
                other[kind][top] += 1
    errors = {s: e for s, e in ours.items() if e["kind"] != "Leak"}
    leaks = {s: e for s, e in ours.items() if e["kind"] == "Leak"}

    print(f"memcheck: {len(logs)} valgrind logs (one per nginx process), "
          f"{total_errors} errors in all (ERROR SUMMARY lines, suppressed ones excluded)")
    if incomplete:
        print(f"memcheck: {len(incomplete)} logs without an ERROR SUMMARY (process killed or still running):")
        for p in incomplete:
            print(f"    {p}")
    for w, n in sorted(warnings.items()):
        print(f"memcheck: valgrind warning x{n}: {w}")
    if other:
        print("memcheck: not the module's (nginx core, glibc, system libraries):")
        for kind, tops in other.items():
            for top, n in sorted(tops.items(), key=lambda x: -x[1]):
                print(f"    {kind} x{n}: {top}")
    for title, group in (("memory errors", errors), ("definite leaks", leaks)):
        n = sum(len(e["files"]) for e in group.values())
        print(f"memcheck: the module's {title}: {len(group)} distinct, {n} in all")
        for e in group.values():
            print(f"\n---- {e['kind']} in {len(e['files'])} process(es), first: {e['files'][0]}")
            for line in e["example"]:
                print(f"  {line}")
        if group:
            print()
    bad = bool(errors) or (leaks_fail and bool(leaks))
    print("memcheck: FAIL" if bad else "memcheck: no memory error attributable to the module")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
