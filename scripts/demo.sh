#!/usr/bin/env bash
# The ftvm demo: a protected VM (the built-in test guest) on a primary, replicated every
# 10 ms to a backup; the primary is killed with SIGKILL; the backup takes over; the two
# consoles together are checked against the uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building (release)"
cargo build --release -q -p ftvm -p ftvm-testguest --examples --bins
F=target/release/ftvm
D=$(mktemp -d /tmp/ftvm-demo.XXXXXX)
PORT=${FTVM_DEMO_PORT:-7700}
CMDLINE="pages=256 wss=32"
cleanup() { kill -9 "${BPID:-}" "${PPID_:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting the backup on 127.0.0.1:$PORT"
# Fencing: both sides take the same lock file (on one host; across hosts use
# --fence etcd:http://HOST:2379 --vm-id NAME, see docs/operations.md).
FENCE="--fence lock:$D/vm.fence"
$F backup --listen 127.0.0.1:$PORT --memory 256M --serial file:$D/backup.log --api-socket $D/backup.sock $FENCE 2>$D/backup.err &
BPID=$!
sleep 0.5
echo "== starting the protected primary (test guest: $CMDLINE, 10 ms epochs)"
$F run --kernel @testguest --memory 256M --cmdline "$CMDLINE" --protect 127.0.0.1:$PORT \
    --serial file:$D/primary.log --api-socket $D/primary.sock $FENCE 2>$D/primary.err &
PPID_=$!
for _ in $(seq 100); do grep -q "protected" $D/primary.err && break; sleep 0.1; done
sleep 2
echo "== primary status"
$F ctl --api-socket $D/primary.sock status
echo "== backup status"
$F ctl --api-socket $D/backup.sock status
echo "== last lines the primary released:"
tail -n 3 $D/primary.log
echo "== SIGKILL the primary"
kill -9 $PPID_
sleep 2
grep -E "TAKEOVER" $D/backup.err || { cat $D/backup.err; exit 1; }
echo "== first lines the backup released after taking over:"
head -n 3 $D/backup.log
echo "== checking both consoles against the uninterrupted run"
target/release/examples/failover_check "$CMDLINE" 1 $D/primary.log $D/backup.log
echo "== backup (now running the VM) status"
$F ctl --api-socket $D/backup.sock status
echo "logs in $D"
