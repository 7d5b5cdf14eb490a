#!/usr/bin/env bash
# Build ftvm's microVM Linux guest (run through `scripts/linux-guest.sh --microvm`):
#
#   kernel       an uncompressed ELF vmlinux (Linux 6.1 from Debian's linux-source-6.1,
#                configured by scripts/linux/microvm-6.1.config on top of allnoconfig);
#                loading it needs no decompressor, which is slow in an emulated ring 0
#   config       the kernel's full .config
#   build-seconds  how long the kernel build took (wall clock)
#   rootfs.ext4  a 64 MiB ext4 root (mke2fs -d): /etc/ftvm-rootfs (marker file),
#                /sbin/ftvm-idle (static, spins forever, never makes a system call) and
#                /sbin/ftvm-poweroff (static, prints a line and powers off through two
#                32-bit system calls, `int $0x80`)
#   ftvm-idle, ftvm-poweroff  the same two programs, for an initramfs (tests)
#   cmdline      command-line words this host needs (console, workarounds); callers append
#                e.g. `root=/dev/vda rw init=/sbin/ftvm-idle ip=...`
#
# The output directory is ~/.cache/ftvm/linux-microvm/<key> (or
# $FTVM_LINUX_MICROVM_CACHE/<key>), where <key> hashes the config fragment and the
# linux-source-6.1 package version: editing the fragment builds a new kernel, anything else
# reuses the cached one. The root image is rebuilt when this script's recipe for it changes.
# Callers must copy rootfs.ext4 before booting it read-write.
#
# Needs root the first time (apt-get install of linux-source-6.1 and the build tools when
# missing). On success the last line of stdout is the output directory.
#
# Environment: FTVM_LINUX_MICROVM_CACHE (cache root), FTVM_LINUX_JOBS (make -j, default
# nproc), FTVM_LINUX_KEEP_BUILD=1 (keep the object tree after a successful build).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
frag="$here/microvm-6.1.config"
cache="${FTVM_LINUX_MICROVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftvm/linux-microvm}"

log() { echo "linux-guest --microvm: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -s "$frag" ]] || die "config fragment $frag missing"

# --- tools ------------------------------------------------------------------------------
missing=()
for t in make gcc flex bison bc xz perl mke2fs; do
    command -v "$t" >/dev/null || missing+=("$t")
done
[[ -e /usr/include/gelf.h ]] || missing+=(libelf-dev)
command -v dpkg-query >/dev/null || die "dpkg-query not found (this script needs a Debian-like host)"
dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q 'install ok installed' \
    || missing+=(linux-source-6.1)
if ((${#missing[@]})); then
    pkgs=()
    for m in "${missing[@]}"; do
        case "$m" in
        mke2fs) pkgs+=(e2fsprogs) ;;
        xz) pkgs+=(xz-utils) ;;
        gcc) pkgs+=(gcc libc6-dev) ;;
        *) pkgs+=("$m") ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "missing ${pkgs[*]}: install them (apt-get install ${pkgs[*]}) or run as root"
    log "apt-get install ${pkgs[*]}"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 \
        || die "apt-get install ${pkgs[*]} failed"
fi
srcver="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
tarball=/usr/src/linux-source-6.1.tar.xz
[[ -s "$tarball" ]] || die "$tarball missing (reinstall linux-source-6.1)"

key="$({ cat "$frag"; echo "linux-source-6.1 $srcver"; } | sha256sum | cut -c1-16)"
out="$cache/$key"
src="$cache/src/$srcver/linux-source-6.1"
mkdir -p "$out"

# --- kernel -----------------------------------------------------------------------------
if [[ ! -s "$out/kernel" ]]; then
    if [[ ! -s "$src/Makefile" ]]; then
        log "unpacking $tarball ($srcver)"
        rm -rf "$src.tmp"
        mkdir -p "$src.tmp"
        tar -xJf "$tarball" -C "$src.tmp"
        mv "$src.tmp/linux-source-6.1" "$src"
        rmdir "$src.tmp"
    fi
    build="$out/build"
    mkdir -p "$build"
    if [[ ! -e "$build/.ftvm-config-checked" ]]; then
        make -s -C "$src" O="$build" KCONFIG_ALLCONFIG="$frag" allnoconfig >&2 \
            || die "make allnoconfig with $frag failed"
        # Every line of the fragment must survive: a dependency Kconfig did not satisfy
        # would otherwise drop an option silently.
        bad=0
        while IFS= read -r line; do
            case "$line" in
            CONFIG_*=*) grep -qxF -- "$line" "$build/.config" || { log "not in .config: $line"; bad=1; } ;;
            "# CONFIG_"*" is not set")
                sym="${line#\# }"; sym="${sym%% *}"
                if grep -q "^$sym=" "$build/.config"; then log "still set: $sym"; bad=1; fi ;;
            esac
        done <"$frag"
        ((bad == 0)) || die "$frag: options above did not take (missing dependencies?)"
        touch "$build/.ftvm-config-checked"
    fi
    jobs="${FTVM_LINUX_JOBS:-$(nproc)}"
    log "building the kernel in $build (nice -n 19 make -j$jobs vmlinux; log in $out/build.log)"
    t0=$(date +%s)
    if ! nice -n 19 make -s -C "$src" O="$build" -j"$jobs" vmlinux >"$out/build.log" 2>&1; then
        tail -n 40 "$out/build.log" >&2
        die "kernel build failed (full log: $out/build.log)"
    fi
    secs=$(($(date +%s) - t0))
    # A build interrupted and resumed reports only the last part; keep the longest seen.
    echo "$secs" >>"$out/build-seconds"
    cp "$build/.config" "$out/config"
    cp "$build/vmlinux" "$out/kernel.tmp"
    mv "$out/kernel.tmp" "$out/kernel"
    log "kernel: $out/kernel ($(stat -c %s "$out/kernel") bytes, built in ${secs}s)"
    [[ "${FTVM_LINUX_KEEP_BUILD:-0}" == 1 ]] || rm -rf "$build"
fi

# --- root file system -------------------------------------------------------------------
read -r -d '' IDLE_S <<'EOF' || true
# /sbin/ftvm-idle: spins forever and never makes a system call, so that a kernel whose
# userspace cannot enter ring 0 (ring-3 `syscall` defect) keeps running after init starts.
    .globl _start
    .text
_start:
1:  pause
    jmp 1b
EOF
read -r -d '' POWEROFF_S <<'EOF' || true
# /sbin/ftvm-poweroff: write(1, msg, len), then reboot(LINUX_REBOOT_CMD_POWER_OFF), both as
# 32-bit system calls (`int $0x80`, CONFIG_IA32_EMULATION): exceptions and interrupts from
# ring 3 reach the kernel on hosts where `syscall` does not.
    .globl _start
    .text
_start:
    mov $4, %eax                # __NR_write (i386)
    mov $1, %ebx
    lea msg(%rip), %rcx
    mov $(msg_end - msg), %edx
    int $0x80
    mov $88, %eax               # __NR_reboot (i386)
    mov $0xfee1dead, %ebx       # LINUX_REBOOT_MAGIC1
    mov $672274793, %ecx        # LINUX_REBOOT_MAGIC2
    mov $0x4321fedc, %edx       # LINUX_REBOOT_CMD_POWER_OFF
    int $0x80
1:  pause
    jmp 1b
    .section .rodata
msg:
    .ascii "ftvm-poweroff: user space made a system call, powering off\n"
msg_end:
EOF
ROOTFS_RECIPE="v1 64M ext4 /etc/ftvm-rootfs /sbin/ftvm-idle /sbin/ftvm-poweroff"
rootfs_sum="$(printf '%s\n%s\n%s\n' "$ROOTFS_RECIPE" "$IDLE_S" "$POWEROFF_S" | sha256sum | cut -c1-16)"

if [[ ! -s "$out/rootfs.ext4" || ! -x "$out/ftvm-poweroff" \
    || "$(cat "$out/rootfs.sha256" 2>/dev/null)" != "$rootfs_sum" ]]; then
    work="$(mktemp -d "$out/rootfs.work.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    root="$work/root"
    mkdir -p "$root"/{sbin,etc,dev,proc,sys,tmp,root}
    printf '%s\n' "$IDLE_S" >"$work/idle.S"
    printf '%s\n' "$POWEROFF_S" >"$work/poweroff.S"
    for p in idle poweroff; do
        gcc -nostdlib -static -no-pie -Wl,--build-id=none -o "$root/sbin/ftvm-$p" "$work/$p.S" \
            || die "assembling /sbin/ftvm-$p failed"
    done
    # The idle program must not contain a system call instruction of any kind.
    if objdump -d "$root/sbin/ftvm-idle" | grep -qE '\s(syscall|sysenter|int)\b'; then
        die "/sbin/ftvm-idle contains a system call instruction"
    fi
    echo "ftvm microvm rootfs $rootfs_sum" >"$root/etc/ftvm-rootfs"
    rm -f "$out/rootfs.ext4.tmp"
    mke2fs -q -t ext4 -L ftvm-root -E root_owner=0:0 -d "$root" "$out/rootfs.ext4.tmp" 64M >&2 \
        || die "mke2fs -d failed"
    mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
    cp "$root/sbin/ftvm-idle" "$root/sbin/ftvm-poweroff" "$out/"
    echo "$rootfs_sum" >"$out/rootfs.sha256"
    log "root file system: $out/rootfs.ext4"
fi

# --- command line -----------------------------------------------------------------------
# reboot=acpi: a panic (panic=-1) resets through the FADT's reset register.
words="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 reboot=acpi"
if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    # Without hardware virtualization the host's KVM emulates guest ring 0 and lacks
    # XSAVE and SSSE3 there (docs/linux-guests.md).
    words="$words noxsave clearcpuid=ssse3"
fi
printf '%s\n' "$words" >"$out/cmdline"

echo "$out"
