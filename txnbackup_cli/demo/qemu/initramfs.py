"""The guest's initramfs, built at run time (cpio ``newc``, gzip) from the guest kit.

Its ``/init`` (busybox sh) loads the virtio block drivers, then writes records forever:
round ``n`` writes record ``n`` to /dev/vda (disk A), then to /dev/vdb (disk B), each with
``O_DIRECT``, so it has reached QEMU before the next one starts (``records``). It reports on
the serial console (``txnbackup-guest: first record written``).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path

from txnbackup_cli.demo.qemu.kit import Kit
from txnbackup_cli.demo.qemu.records import DIGITS, MAGIC, RECORD

FIRST_RECORD = "txnbackup-guest: first record written"
NO_DISKS = "txnbackup-guest: no disks"

INIT = f"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
while read m; do insmod /lib/modules/$m.ko || echo "txnbackup-guest: insmod $m failed"; done \\
    </lib/modules/ORDER
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
    i=$((i + 1))
    if [ $i -gt 1000 ]; then echo "{NO_DISKS}"; poweroff -f; fi
    usleep 10000
done
slots=$(($(blockdev --getsize64 /dev/vda) / {RECORD}))
echo "txnbackup-guest: writing records to vda then vdb, $slots slots"
put() {{
    printf '{MAGIC.decode()}%0{DIGITS}d\\n' $1 |
        dd of=$2 bs={RECORD} seek=$3 conv=sync,notrunc oflag=direct status=none ||
        {{ echo "txnbackup-guest: write $1 to $2 failed"; sleep 1; }}
}}
n=0
while :; do
    n=$((n + 1))
    s=$((n % slots))
    put $n /dev/vda $s
    put $n /dev/vdb $s
    if [ $n = 1 ]; then echo "{FIRST_RECORD}"; fi
    if [ $((n % 1000)) = 0 ]; then echo "txnbackup-guest: record $n"; fi
done
"""


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, entry: _Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def cpio_newc(entries: list[_Entry]) -> bytes:
    out = bytearray()
    for ino, entry in enumerate([*entries, _Entry("TRAILER!!!", 0)], start=1):
        out += _header(ino, entry) + entry.data + b"\0" * (-len(entry.data) % 4)
    return bytes(out)


def _entries(kit: Kit) -> list[_Entry]:
    dirs = ("bin", "dev", "proc", "sys", "lib", "lib/modules")
    entries = [_Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, kit.busybox.read_bytes()))
    entries.append(_Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    for module in kit.modules:
        data = (kit.path / "modules" / f"{module}.ko").read_bytes()
        entries.append(_Entry(f"lib/modules/{module}.ko", stat.S_IFREG | 0o644, data))
    order = "".join(f"{m}\n" for m in kit.modules).encode()
    entries.append(_Entry("lib/modules/ORDER", stat.S_IFREG | 0o644, order))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, INIT.encode()))
    return entries


def build_initramfs(kit: Kit, target: Path) -> Path:
    """Write the initramfs to ``target`` (gzip level 1: it is built at every start)."""
    target.write_bytes(gzip.compress(cpio_newc(_entries(kit)), compresslevel=1))
    return target
