#!/usr/bin/env bash
# ftvm's test command: installs what it needs, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build --release (the binary the end-to-end tests drive)" >&2
cargo build --workspace --release
echo "== cargo test" >&2
cargo test --workspace --release -- --test-threads="${FTVM_TEST_THREADS:-2}"
