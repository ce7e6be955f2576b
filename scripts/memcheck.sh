#!/usr/bin/env bash
# Runs the nginx suites (t/*.t) with every nginx process under valgrind memcheck and fails
# on any memory error attributable to the module: invalid read/write, a conditional jump
# or a use of uninitialised values (with their origins), a syscall fed uninitialised bytes,
# an invalid or mismatched free, a crash, and, unless MEMCHECK_LEAKS=warn, a definite leak.
# Each offending valgrind report is printed in full (scripts/memcheck/analyze.py says how a
# report is the module's: a frame in its .so, i.e. our crate, its dependencies or Rust std).
#
#   scripts/memcheck.sh                 # the default suites below, about 6 minutes
#   scripts/memcheck.sh t/20-bad-input.t
#
# Needs a finished scripts/build.sh. nginx and the module are copied first, so a rebuild
# while this runs does not change what is tested. Logs: build/memcheck/ (MEMCHECK_OUT),
# one valgrind log per nginx process in logs/<suite>/, prove's output in <suite>.prove.
#
# How: the harness starts nginx from TEST_NGINX_BINARY, here scripts/memcheck/nginx-valgrind,
# which execs valgrind (--trace-children: workers and a USR2 new master are checked too).
# `nginx -t`, `-s reload` and `-v` run without valgrind (they only parse the config, as the
# checked master does on start and reload), except in t/00-config.t, where every case is an
# `nginx -t` and runs under valgrind. Valgrind makes workers take seconds to start and to
# exit, and the suites take fd baselines and count workers right after a start or reload:
# so the wrapper returns from a start or a reload only once the new workers are ready and
# (reload) the old ones gone. With that, every suite passes under valgrind with
# TEST_NGINX_WORKERS=2 (the harness default; t/50-workers.t sets its own counts).
# Left out: t/05-build-input.t (runs scripts/build.sh with bad inputs, starts no nginx).
#
# Environment: MEMCHECK_OUT (log dir), MEMCHECK_LEAKS=warn (report definite leaks, do not
# fail on them), MEMCHECK_ORIGINS=0 (no --track-origins: faster, but uninitialised-value
# reports lose where the value came from), MEMCHECK_VGOPTS (more valgrind options),
# MEMCHECK_SUITE_TIMEOUT (seconds per suite, default 420), MEMCHECK_IGNORE_FAILS (an ERE:
# failed tests whose names all match it do not fail a suite; default "RSS grew", the
# suites' worker-RSS bounds, which valgrind's shadow memory breaks).
# Exit: 0 clean; 1 the module has a memory error (or leak); 2 no module error found, but a
# suite failed or timed out or a log is incomplete (the check did not see everything).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

default_suites="t/00-config.t t/00-load.t t/10-server.t t/20-bad-input.t t/30-reload.t t/40-upstream.t t/50-workers.t t/60-replay.t t/70-revocation.t t/80-debug-log.t t/85-http-identity.t t/90-key-rotation.t t/95-preread.t t/97-status.t"
suites=${*:-$default_suites}
out=${MEMCHECK_OUT:-$repo/build/memcheck}
command -v valgrind >/dev/null || { echo "memcheck: valgrind not installed (apt-get install valgrind)" >&2; exit 2; }
for f in build/sbin/nginx build/modules/ngx_stream_noise_module.so build/bin/noisesocket; do
    [ -e "$f" ] || { echo "memcheck: $f missing: run scripts/build.sh" >&2; exit 2; }
done
[ -x build/venv/bin/python ] || scripts/python-env.sh

rm -rf "$out"
mkdir -p "$out/bin" "$out/logs"
cp build/sbin/nginx build/modules/ngx_stream_noise_module.so "$out/bin/"
export MEMCHECK_NGINX=$out/bin/nginx
export MEMCHECK_SUPP=$repo/scripts/memcheck/nginx.supp
origins=--track-origins=yes
[ "${MEMCHECK_ORIGINS:-1}" = 0 ] && origins=
export MEMCHECK_VGOPTS="$origins ${MEMCHECK_VGOPTS:-}"
export TEST_NGINX_BINARY=$repo/scripts/memcheck/nginx-valgrind
export TEST_NGINX_MODULE=$out/bin/ngx_stream_noise_module.so
export NOISE_PYTHON=$repo/build/venv/bin/python
export TEST_NGINX_WORKERS=${TEST_NGINX_WORKERS:-2}

# Valgrind processes of this run still alive (exiting: leak check), by the pids in the
# log names, checked against the binary they run.
alive() {
    local log pid
    for log in "$1"/vg.*.log; do
        [ -e "$log" ] || continue
        pid=${log##*/vg.}
        pid=${pid%.log}
        if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q "$MEMCHECK_NGINX"; then
            echo "$pid"
        fi
    done
}

start=$(date +%s)
declare -a results
suite_problem=0
for suite in $suites; do
    name=$(basename "$suite" .t)
    export MEMCHECK_LOGS=$out/logs/$name
    mkdir -p "$MEMCHECK_LOGS"
    if [ "$name" = 00-config ]; then export MEMCHECK_TEST_CONFIG=1; else unset MEMCHECK_TEST_CONFIG; fi
    t0=$(date +%s)
    rc=0
    timeout -k 10 "${MEMCHECK_SUITE_TIMEOUT:-420}" prove -I t/lib "$suite" >"$out/$name.prove" 2>&1 || rc=$?
    # Let the last processes finish their exit (the leak check) before reading the logs.
    # One the suite left running (t/50-workers.t: after its binary upgrade the harness
    # stops the old master, not the new one) gets a QUIT, then a KILL.
    for i in $(seq 1 120); do
        left=$(alive "$MEMCHECK_LOGS")
        [ -z "$left" ] && break
        if [ "$i" = 20 ]; then
            echo "memcheck: $name: nginx processes left running: ${left//$'\n'/ }; sending QUIT"
            # shellcheck disable=SC2086 # a list of pids
            kill -QUIT $left 2>/dev/null || true
        fi
        sleep 0.5
    done
    for pid in $(alive "$MEMCHECK_LOGS"); do
        echo "memcheck: $name: nginx process $pid still running after 60 s, killed"
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Checks that bound a worker's RSS mean nothing under valgrind (its shadow memory
    # grows with every allocation): their failures alone do not fail the suite here.
    failed=$(sed -n "s/^#   Failed test '\(.*\)'\$/\1/p" "$out/$name.prove")
    nfailed=$(sed -n 's/^# Looks like you failed \([0-9]*\) tests\{0,1\} of .*/\1/p' "$out/$name.prove" | head -n1)
    case $rc in
    0) status=ok ;;
    124 | 137) status="TIMED OUT"; suite_problem=1 ;;
    *)
        if [ -n "$failed" ] && [ "$(echo "$failed" | wc -l)" = "${nfailed:-x}" ] &&
            ! echo "$failed" | grep -vqE "${MEMCHECK_IGNORE_FAILS:-RSS grew}"; then
            status="ok ($nfailed RSS checks off)"
        else
            status="FAILED (prove exit $rc)"
            suite_problem=1
        fi
        ;;
    esac
    n=$(find "$MEMCHECK_LOGS" -name 'vg.*.log' | wc -l)
    results+=("$(printf '%-18s %-24s %4ss %4s valgrind logs' "$name" "$status" $(($(date +%s) - t0)) "$n")")
    echo "memcheck: ${results[-1]}"
    [ "$status" = ok ] || grep -E "^(not ok|#)" "$out/$name.prove" | head -20 | sed 's/^/    /'
done

echo "== memcheck: $(($(date +%s) - start))s for $(echo "$suites" | wc -w) suites, logs in $out/logs"
rc=0
python3 scripts/memcheck/analyze.py "$repo" "$out"/logs/* | tee "$out/summary.txt" || rc=$?
if [ $rc -ne 0 ]; then
    exit 1
fi
if [ $suite_problem -ne 0 ] || grep -q "logs without an ERROR SUMMARY" "$out/summary.txt"; then
    echo "memcheck: no module error seen, but not every suite ran to the end (see above)"
    exit 2
fi
exit 0
