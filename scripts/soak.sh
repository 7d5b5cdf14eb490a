#!/usr/bin/env bash
# Kill the primary at random moments many times (default 200) and tally the outcome:
# kills, takeovers, lost lines, wrong lines. Any lost or wrong line fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export FTVM_SOAK_KILLS="${1:-200}"
cargo test --release -p ftvm --test failover soak -- --ignored --nocapture 2>&1 | grep -E "^kill |kills,|test result|panicked|SKIPPED"
