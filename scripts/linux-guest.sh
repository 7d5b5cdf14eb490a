#!/usr/bin/env bash
# Fetch a stock Linux guest for ftvm: Debian's cloud kernel (a bzImage) and a tiny
# busybox-static initramfs whose /init prints a marker line and powers the VM off.
#
# Usage: scripts/linux-guest.sh            (as root; needs the Debian apt repositories)
#        scripts/linux-guest.sh --microvm  (a small kernel built from source, and an ext4
#                                          root: see scripts/linux/microvm.sh)
# Output (in $FTVM_LINUX_DIR, default target/linux-guest/ under the repository):
#   vmlinuz         the kernel (bzImage)
#   initramfs.cpio  newc archive: /init, /bin/busybox and its applet links
#   kernel-version  the kernel's package version, e.g. 6.1.0-56-cloud-amd64
#   config          the kernel's build configuration
# With FTVM_LINUX_DBG=1 also (from linux-image-<version>-dbg, a 283 MB download):
#   System.map      the real symbol map (the image package only ships a placeholder),
#   vmlinux         the uncompressed kernel with symbols, for objdump/gdb on a crash RIP
#                   (boot with `nokaslr` so that addresses match).
# On success the last line of stdout is the output directory.
#
# Idempotent: what is already in the cache is not fetched or built again. Delete the
# directory (or one file in it) to refresh. Runs `apt-get update` once per cache
# directory (marker file .apt-updated), or always with FTVM_LINUX_APT_UPDATE=1.
set -euo pipefail

# scripts/linux-guest.sh --microvm: build ftvm's own small kernel and an ext4 root instead
# (scripts/linux/microvm.sh; docs/linux-guests.md).
if [[ "${1:-}" == "--microvm" ]]; then
    shift
    exec bash "$(dirname "${BASH_SOURCE[0]}")/linux/microvm.sh" "$@"
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${FTVM_LINUX_DIR:-$repo/target/linux-guest}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$out/work"
mkdir -p "$work/debs"

log() { echo "linux-guest: $*" >&2; }
# apt-get download as root into a directory the _apt user cannot read warns about the
# sandbox; downloading unsandboxed is what it falls back to anyway.
apt_opts=()
[[ $(id -u) == 0 ]] && apt_opts=(-o APT::Sandbox::User=root)
die() { log "error: $*"; exit 1; }

# The marker /init prints; the opt-in test looks for it.
MARKER="ftvm-linux: init reached"

need_apt() {
    command -v apt-get >/dev/null || die "apt-get not found (this script needs a Debian-like host)"
    command -v dpkg >/dev/null || die "dpkg not found"
    if [[ ! -e "$out/.apt-updated" || "${FTVM_LINUX_APT_UPDATE:-0}" == 1 ]]; then
        [[ $(id -u) == 0 ]] || die "run as root (apt-get update needs it)"
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        touch "$out/.apt-updated"
    fi
}

# Download package $1 into $work/debs (once) and print the .deb's path.
download() {
    local pkg="$1" deb
    deb="$(find "$work/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    if [[ -z "$deb" ]]; then
        log "apt-get download $pkg"
        (cd "$work/debs" && apt-get download -q "${apt_opts[@]}" "$pkg" >&2) || die "apt-get download $pkg failed"
        deb="$(find "$work/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
        [[ -n "$deb" ]] || die "apt-get download $pkg produced no .deb"
    fi
    echo "$deb"
}

# --- kernel -----------------------------------------------------------------------------
if [[ ! -s "$out/vmlinuz" || ! -s "$out/config" || ! -s "$out/kernel-version" ]]; then
    need_apt
    # The metapackage depends on the versioned image package (linux-image-X.Y.Z-N-cloud-amd64).
    download linux-image-cloud-amd64 >/dev/null
    image_pkg="$(apt-cache depends linux-image-cloud-amd64 \
        | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)"
    [[ -n "$image_pkg" ]] || die "cannot resolve the versioned image package of linux-image-cloud-amd64"
    log "kernel image package: $image_pkg"
    image_deb="$(download "$image_pkg")"
    rm -rf "$work/kernel"
    dpkg -x "$image_deb" "$work/kernel"
    vmlinuz="$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)"
    config="$(find "$work/kernel/boot" -maxdepth 1 -name 'config-*' | head -n1)"
    [[ -n "$vmlinuz" ]] || die "no /boot/vmlinuz-* in $image_deb"
    cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    if [[ -n "$config" ]]; then cp "$config" "$out/config"; else : >"$out/config"; fi
    basename "$vmlinuz" | sed 's/^vmlinuz-//' >"$out/kernel-version"
    rm -rf "$work/kernel"
    log "kernel: $out/vmlinuz ($(cat "$out/kernel-version"))"
fi

# --- symbols (opt-in) -------------------------------------------------------------------
if [[ "${FTVM_LINUX_DBG:-0}" == 1 && ( ! -s "$out/System.map" || ! -s "$out/vmlinux" ) ]]; then
    need_apt
    dbg_deb="$(download "linux-image-$(cat "$out/kernel-version")-dbg")"
    log "extracting System.map and vmlinux from $(basename "$dbg_deb")"
    dpkg-deb --fsys-tarfile "$dbg_deb" \
        | tar -x -C "$work" --wildcards './usr/lib/debug/boot/System.map-*' './usr/lib/debug/boot/vmlinux-*'
    mv "$work"/usr/lib/debug/boot/System.map-* "$out/System.map"
    mv "$work"/usr/lib/debug/boot/vmlinux-* "$out/vmlinux"
    rm -rf "$work/usr" "$dbg_deb"
fi

# --- initramfs --------------------------------------------------------------------------
# /init is rebuilt when this script's copy of it changes (content hash in init.sha256).
read -r -d '' INIT <<EOF || true
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys 2>/dev/null
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "$MARKER"
echo "ftvm-linux: kernel \$(/bin/busybox uname -r)"
/bin/busybox grep -m1 'model name' /proc/cpuinfo | /bin/busybox sed 's/^/ftvm-linux: /'
echo "ftvm-linux: uptime \$(/bin/busybox cat /proc/uptime)"
echo "ftvm-linux: powering off"
# ftvm has no ACPI: reboot -f resets through the i8042, which ends the VM (exit code 0).
/bin/busybox reboot -f
/bin/busybox poweroff -f
EOF
init_sum="$(printf '%s' "$INIT" | sha256sum | cut -d' ' -f1)"

if [[ ! -s "$out/initramfs.cpio" || "$(cat "$out/init.sha256" 2>/dev/null)" != "$init_sum" ]]; then
    # cpio: the host's, or Debian's cpio package unpacked into the cache (no install).
    cpio_bin="$(command -v cpio || true)"
    if [[ -z "$cpio_bin" ]]; then
        if [[ ! -x "$work/cpio/bin/cpio" ]]; then
            need_apt
            cpio_deb="$(download cpio)"
            rm -rf "$work/cpio"
            dpkg -x "$cpio_deb" "$work/cpio"
        fi
        cpio_bin="$work/cpio/bin/cpio"
        [[ -x "$cpio_bin" ]] || die "no bin/cpio in Debian's cpio package"
    fi
    if [[ ! -x "$work/busybox/bin/busybox" ]]; then
        need_apt
        bb_deb="$(download busybox-static)"
        rm -rf "$work/busybox"
        dpkg -x "$bb_deb" "$work/busybox"
        [[ -x "$work/busybox/bin/busybox" ]] || die "no bin/busybox in $bb_deb"
    fi
    root="$work/root"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc}
    cp "$work/busybox/bin/busybox" "$root/bin/busybox"
    for applet in sh mount umount echo cat grep sed uname mkdir ls poweroff reboot halt; do
        ln -s busybox "$root/bin/$applet"
    done
    printf '%s\n' "$INIT" >"$root/init"
    chmod 755 "$root/init"
    # The kernel's default rdinit is /init; console output goes to /dev/console, which the
    # kernel opens before running /init (device node created here: the archive is unpacked
    # into a rootfs that has no /dev/console otherwise).
    (
        cd "$root"
        { find . -mindepth 1 | LC_ALL=C sort; } >"$work/files"
        # A /dev/console node, written as root so that cpio records it.
        if [[ $(id -u) == 0 ]]; then
            mknod -m 600 dev/console c 5 1 2>/dev/null || true
            echo ./dev/console >>"$work/files"
        fi
        "$cpio_bin" --quiet -o -H newc -R 0:0 <"$work/files" >"$out/initramfs.cpio.tmp"
    )
    mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
    echo "$init_sum" >"$out/init.sha256"
    log "initramfs: $out/initramfs.cpio ($(stat -c %s "$out/initramfs.cpio") bytes)"
fi

echo "$out"
