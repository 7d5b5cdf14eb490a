#!/usr/bin/env bash
# Install what ftvm's build, tests and demo need on a fresh Debian 12 machine.
# Idempotent: installs only what is missing. Needs root for apt-get.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v fsck.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v python3 >/dev/null || need_apt+=(python3)
# `ftvm audit --fix` tests apply their patches with patch(1).
command -v patch >/dev/null || need_apt+=(patch)
dpkg -s libc6-dev >/dev/null 2>&1 || need_apt+=(libc6-dev)
# A real etcd for the fencing tests (--fence etcd:...); the tests start their own.
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: cargo not found: install Rust stable (rustup) first" >&2
        exit 1
    fi
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true

if [ ! -e /dev/kvm ]; then
    echo "setup: WARNING: /dev/kvm is missing: KVM tests will be SKIPPED (loudly) and the demo cannot run" >&2
fi
