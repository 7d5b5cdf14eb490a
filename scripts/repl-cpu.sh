#!/bin/bash
# CPU per epoch of a protected pair on this host (load-independent evidence for the
# replication data path; docs/benchmarks.md "Replication CPU per epoch").
#
# usage: scripts/repl-cpu.sh FTVM_BINARY [SECONDS] [GUEST_CMDLINE]
#
# Starts `ftvm backup` and a protected `ftvm run` of the test guest (default
# "wss=4 pages=256 every=30", 256 MiB, 10 ms epochs) on loopback, waits for the replica
# to be in sync, then samples for SECONDS (default 10): the backup process's CPU time,
# every primary thread's CPU time (from /proc/PID/task/*/stat) and the primary's status.
# Prints microseconds of CPU per epoch and per MB replicated, and the pause p50.
set -euo pipefail
BIN=$1; SECS=${2:-10}; CMDLINE=${3:-"wss=4 pages=256 every=30"}
D=$(mktemp -d /tmp/ftvm-repl-cpu.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
cleanup() { kill "${PP:-}" "${BP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$BIN" backup --listen 127.0.0.1:$PORT --memory 256M --cpus 1 --serial file:$D/b.serial \
  --epoch 10ms --heartbeat-timeout 500ms --fence lock:$D/fence --api-socket $D/b.api \
  >$D/b.out 2>$D/b.err &
BP=$!
sleep 1
"$BIN" run --kernel @testguest --memory 256M --serial file:$D/p.serial --cpus 1 \
  --cmdline "$CMDLINE" --protect 127.0.0.1:$PORT --epoch 10ms --heartbeat-timeout 500ms \
  --fence lock:$D/fence --api-socket $D/p.api >$D/p.out 2>$D/p.err &
PP=$!
for _ in $(seq 1 120); do grep -q "in sync" $D/b.err 2>/dev/null && break; sleep 0.5; done
sleep 2
ticks() { awk '{print $14+$15}' "$1/stat" 2>/dev/null || echo 0; }
threads() {
  for t in /proc/$PP/task/*; do echo "$(cat $t/comm 2>/dev/null | tr ' ' _)_$(basename $t) $(ticks $t)"; done
}
"$BIN" ctl --api-socket $D/p.api status --json >$D/s0
threads >$D/t0; b0=$(ticks /proc/$BP); l0=$(cut -d' ' -f1 /proc/loadavg)
sleep "$SECS"
"$BIN" ctl --api-socket $D/p.api status --json >$D/s1
threads >$D/t1; b1=$(ticks /proc/$BP); l1=$(cut -d' ' -f1 /proc/loadavg)
HZ=$(getconf CLK_TCK)
python3 - "$D" $((b1 - b0)) "$HZ" "$l0" "$l1" <<'PY'
import json, sys
d, backup, hz, l0, l1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s0 = json.load(open(d + "/s0"))["replication"]; s1 = json.load(open(d + "/s1"))["replication"]
epochs = s1["epoch"] - s0["epoch"]; mb = (s1["bytes"] - s0["bytes"]) / 1e6
t0 = dict(l.split() for l in open(d + "/t0")); t1 = dict(l.split() for l in open(d + "/t1"))
us = lambda ticks: ticks * 1e6 / hz
repl = 0
for name in sorted(t1):
    dt = int(t1[name]) - int(t0.get(name, 0))
    if dt and not name.startswith("vcpu"):
        repl += dt
        print(f"  primary {name}: {us(dt) / epochs:.0f} us/epoch")
print(f"load {l0} -> {l1}; epochs {epochs}; {mb / epochs:.2f} MB/epoch; pause p50 {s1['pause_us_p50']} us")
print(f"backup: {us(backup) / epochs:.0f} us/epoch, {us(backup) / mb:.0f} us/MB")
print(f"primary outside the vCPUs: {us(repl) / epochs:.0f} us/epoch, {us(repl) / mb:.0f} us/MB")
PY
