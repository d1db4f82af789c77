#!/usr/bin/env bash
# What backing up running QEMU VMs needs (docs/qemu.md), installed when missing:
#   qemu-storage-daemon (qemu-system-common), qemu-img (qemu-utils), nbdinfo (libnbd-bin),
#   libnbd's Python module `nbd` (python3-libnbd), and qemu-system-x86_64 for one test.
# Then lets the venv import Debian's `nbd` without exposing the rest of dist-packages.
# Never fails: when something cannot be installed it says why, and the QEMU tests skip.
# VENV (default .venv) may be set; QEMU_INSTALL=0 only links, never installs.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PACKAGES=(qemu-system-common qemu-utils libnbd-bin python3-libnbd)
OPTIONAL=(qemu-system-x86)

say() { echo "ensure-qemu: $*" >&2; }

missing() {
    local tool
    for tool in qemu-storage-daemon qemu-img nbdinfo; do
        command -v "$tool" >/dev/null || return 0
    done
    dpkg -L python3-libnbd >/dev/null 2>&1 || return 0
    return 1
}

apt_install() {  # the packages named; false when apt cannot
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "$@" >>"$LOG" 2>&1
}

install_packages() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "not root with apt-get; install ${PACKAGES[*]} yourself (QEMU tests skip until then)"
        return
    fi
    LOG=$(mktemp "${TMPDIR:-/tmp}/ensure-qemu-XXXXXX.log")
    say "installing ${PACKAGES[*]} (log: $LOG)"
    if ! { apt-get update -q >>"$LOG" 2>&1 && apt_install "${PACKAGES[@]}"; }; then
        tail -n 5 "$LOG" >&2
        say "installing failed; QEMU tests skip"
        return
    fi
    apt_install "${OPTIONAL[@]}" || say "optional ${OPTIONAL[*]} not installed (its test skips)"
}

link_nbd_module() {  # a directory of symlinks to Debian's nbd module, named by a .pth
    local venv_py=$VENV/bin/python files ext want have site dir
    [ -x "$venv_py" ] || { say "no venv at $VENV; run scripts/ensure-venv.sh first"; return; }
    files=$(dpkg -L python3-libnbd 2>/dev/null) || { say "python3-libnbd missing"; return; }
    ext=$(grep -E '/libnbdmod\.cpython-[0-9]+-.*\.so$' <<<"$files" | head -n 1)
    [ -n "$ext" ] || { say "python3-libnbd has no C extension?"; return; }
    want=$(sed -E 's/.*cpython-([0-9]+)-.*/\1/' <<<"$ext")
    have=$("$venv_py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
    if [ "$want" != "$have" ]; then
        say "Debian's nbd module is built for CPython $want, the venv runs $have;"
        say "create the venv with that Python (PYTHON=/usr/bin/python3); QEMU tests skip"
        return
    fi
    site=$("$venv_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    dir=$(cd "$VENV" && pwd)/debian-nbd
    mkdir -p "$dir"
    ln -sf "$ext" "$dir/"
    ln -sf "$(grep -E '/nbd\.py$' <<<"$files" | head -n 1)" "$dir/nbd.py"
    echo "$dir" >"$site/txnbackup-debian-nbd.pth"
    "$venv_py" -c 'import nbd' 2>/dev/null || say "the venv still cannot import nbd"
}

if missing; then
    if [ "${QEMU_INSTALL:-1}" = 0 ]; then say "QEMU tools missing; QEMU tests skip"
    else install_packages
    fi
fi
link_nbd_module
exit 0
