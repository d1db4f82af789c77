#!/usr/bin/env bash
# The guest kit for the KVM tests (tests/guest) and `txnbackup demo --qemu`: Debian's cloud
# kernel and a static busybox, unpacked into a cache directory (docs/qemu.md, "A real guest").
# Nothing is installed into the host: `apt-get download` + `dpkg-deb -x` only (no postinst
# hooks, no /boot changes). The kit directory then holds:
#   vmlinuz, busybox, modules/<name>.ko (the virtio block drivers the cloud kernel builds as
#   modules), VERSION.
# Never fails: when something is missing it says why, and the guest tests skip saying so.
# TXNBACKUP_GUEST_KIT (default ~/.cache/txnbackup-guest) chooses the directory.
set -uo pipefail
KIT=${TXNBACKUP_GUEST_KIT:-${XDG_CACHE_HOME:-$HOME/.cache}/txnbackup-guest}
# The virtio block drivers; modules/ORDER lists the ones not built in, each after those named
# in its `depends=` (no modules.dep without depmod).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

say() { echo "ensure-guest: $*" >&2; }

have_kit() {
    [ -f "$KIT/vmlinuz" ] && [ -x "$KIT/busybox" ] && [ -f "$KIT/VERSION" ]
}

kernel_package() {  # the versioned package the meta package depends on
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -nE 's/^ *Depends: (linux-image-[0-9].*-cloud-amd64)$/\1/p' | head -n 1
}

load_order() {  # the modules of directory $1, each after the ones it depends on
    local dir=$1 placed=" " progress=1 mod deps dep ready
    while [ $progress = 1 ]; do
        progress=0
        for mod in "$dir"/*.ko; do
            mod=$(basename "$mod" .ko)
            case $placed in *" $mod "*) continue ;; esac
            deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "$dir/$mod.ko" | head -n 1)
            ready=1
            for dep in $(tr ',' ' ' <<<"${deps#depends=}"); do
                case $placed in *" $dep "*) ;; *) [ -f "$dir/$dep.ko" ] && ready=0 ;; esac
            done
            if [ $ready = 1 ]; then echo "$mod"; placed="$placed$mod "; progress=1; fi
        done
    done
    for mod in "$dir"/*.ko; do
        case $placed in *" $(basename "$mod" .ko) "*) ;; *) say "cannot order $mod"; return 1 ;; esac
    done
}

unpack() {  # download both packages into a temp dir, copy what the guest needs into the kit
    local tmp pkg kver mod path
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ensure-guest-XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    pkg=$(kernel_package)
    [ -n "$pkg" ] || { say "apt knows no linux-image-cloud-amd64 (not Debian/amd64?)"; return 1; }
    (cd "$tmp" && apt-get download -q "$pkg" busybox-static) >"$tmp/apt.log" 2>&1 ||
        { tail -n 3 "$tmp/apt.log" >&2; say "apt-get download failed"; return 1; }
    mkdir -p "$tmp/x"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x" || return 1; done
    kver=${pkg#linux-image-}
    mkdir -p "$KIT.new/modules"
    cp "$tmp/x/boot/vmlinuz-$kver" "$KIT.new/vmlinuz" || return 1
    cp "$tmp/x/bin/busybox" "$KIT.new/busybox" || return 1
    for mod in "${MODULES[@]}"; do
        if grep -q "/$mod.ko" "$tmp/x/lib/modules/$kver/modules.builtin"; then continue; fi
        path=$(find "$tmp/x/lib/modules/$kver" -name "$mod.ko*" | head -n 1)
        [ -n "$path" ] || { say "$mod is neither built in nor a module of $kver"; return 1; }
        case $path in
            *.ko) cp "$path" "$KIT.new/modules/$mod.ko" ;;
            *.ko.xz) xz -dc "$path" >"$KIT.new/modules/$mod.ko" ;;
            *) say "cannot unpack $path"; return 1 ;;
        esac
    done
    load_order "$KIT.new/modules" >"$KIT.new/modules/ORDER" || return 1
    echo "$kver $(dpkg-deb -f "$tmp"/busybox-static_*.deb Version)" >"$KIT.new/VERSION"
}

if have_kit; then exit 0; fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    say "no apt-get/dpkg-deb here; the guest tests and the KVM demo skip"
    exit 0
fi
mkdir -p "$(dirname "$KIT")" || { say "cannot create $(dirname "$KIT")"; exit 0; }
rm -rf "$KIT.new"
if unpack; then
    rm -rf "$KIT" && mv "$KIT.new" "$KIT"
    say "guest kit in $KIT ($(cat "$KIT/VERSION"))"
else
    rm -rf "$KIT.new"
    say "no guest kit; the guest tests and the KVM demo skip"
fi
exit 0
