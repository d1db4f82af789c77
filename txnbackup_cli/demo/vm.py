"""The demo's sample VM: drive files of realistic content, and guest writes reported as a
writer reports them.

The VM also remembers which chunks it changed since its last committed backup (``pending``):
that is exactly what every dirty bitmap must hold, so the demo can check the bitmaps against it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from txnbackup.drive import Drive
from txnbackup.tracker import Tracker

BLOCK = 1 << 20  # bytes written or compared at a time
MESSAGES = (
    b"systemd[1]: Started Session of user root.",
    b"kernel: EXT4-fs (sda1): mounted filesystem with ordered data mode.",
    b"sshd[812]: Accepted publickey for admin from 192.0.2.10 port 51022",
    b"CRON[2231]: (root) CMD (test -x /usr/sbin/anacron || run-parts /etc/cron.daily)",
    b"postgres[1207]: LOG:  checkpoint complete: wrote 412 buffers (2.5%)",
    b'nginx[990]: 198.51.100.7 - - "GET /status HTTP/1.1" 200 612',
    b"kernel: e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex",
)


@dataclass(frozen=True)
class DriveSpec:
    name: str
    kind: str  # "text", "random" or "zeros"
    node: str
    about: str


@dataclass
class SampleVM:
    vmid: str
    root: Path
    chunk_size: int
    tracker: Tracker
    drives: dict[str, Drive] = field(default_factory=dict)
    pending: dict[str, set[int]] = field(default_factory=dict)

    def create(self, spec: DriveSpec, size: int, seed: int) -> Drive:
        path = self.root / f"vm-{self.vmid}-{spec.name}.raw"
        with open(path, "wb") as out:
            for block in content(spec.kind, size, seed):
                out.write(block)
            out.truncate(size)  # an all-zero drive stays sparse, as a fresh thin disk is
        drive = Drive(spec.name, str(path), spec.node)
        self.drives[spec.name] = drive
        self.pending[spec.name] = set()
        return drive

    def path(self, drive: str) -> Path:
        return Path(self.drives[drive].path)

    def size(self, drive: str) -> int:
        return self.path(drive).stat().st_size

    def write(self, drive: str, offset: int, data: bytes) -> None:
        """A guest write: the bytes land first, then the writer reports them (mark_dirty)."""
        fd = os.open(self.path(drive), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.tracker.mark_dirty(self.vmid, drive, offset, len(data))
        first, last = offset // self.chunk_size, (offset + len(data) - 1) // self.chunk_size
        self.pending[drive].update(range(first, last + 1))

    def read(self, drive: str, offset: int, length: int) -> bytes:
        with open(self.path(drive), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def frozen(self) -> dict[str, set[int]]:
        """What a backup submitted now copies (for ``committed`` once it is done)."""
        return {name: set(chunks) for name, chunks in self.pending.items()}

    def committed(self, frozen: dict[str, set[int]]) -> None:
        for name, chunks in frozen.items():
            self.pending[name] -= chunks

    def dirty_bytes(self, drive: str, chunks: set[int]) -> int:
        size = self.size(drive)
        return sum(min(self.chunk_size, size - i * self.chunk_size) for i in chunks)

    def cut(self, drive: str, size: int) -> bytes:
        """Shrink the image to ``size`` bytes (a fault); return what was cut off."""
        tail = self.read(drive, size, self.size(drive) - size)
        os.truncate(self.path(drive), size)
        return tail

    def mend(self, drive: str, size: int, tail: bytes) -> None:
        """Put back what ``cut`` took: the image is as it was, so nothing is marked dirty."""
        with open(self.path(drive), "r+b") as fh:
            fh.seek(size)
            fh.write(tail)


def vm_config(vmid: str, drives: dict[str, Drive], size: int) -> str:
    """A Proxmox-style VM config, kept with every snapshot as a blob."""
    lines = [f"name: demo-{vmid}", "cores: 2", "memory: 4096", "boot: order=scsi0"]
    lines += [f"{name}: {d.node}:{Path(d.path).name},size={size}" for name, d in drives.items()]
    return "\n".join(lines) + "\n"


def content(kind: str, size: int, seed: int) -> Iterator[bytes]:
    """The bytes of a drive of ``kind``, in blocks; ``zeros`` yields nothing (a sparse file)."""
    if kind == "zeros":
        return iter(())
    if kind == "random":
        rng = random.Random(seed)
        return (rng.randbytes(min(BLOCK, size - at)) for at in range(0, size, BLOCK))
    if kind == "text":
        return _text(size, seed)
    raise ValueError(f"unknown drive content {kind!r}")


def _text(size: int, seed: int) -> Iterator[bytes]:
    """Log-like lines, every one different (a line number and a time), so chunks never repeat."""
    written, line = 0, 0
    while written < size:
        lines = []
        for n in range(line, line + BLOCK // 64):
            message = MESSAGES[(n * 3 + n // 7 + seed) % len(MESSAGES)]
            lines.append(b"Nov 27 %02d:%02d:%02d pve%d %s #%d\n" % _stamp(n, seed, message))
        line += BLOCK // 64
        block = b"".join(lines)[: size - written]
        written += len(block)
        yield block


def _stamp(n: int, seed: int, message: bytes) -> tuple[int, int, int, int, bytes, int]:
    seconds = n // 50
    return (seconds // 3600 % 24, seconds // 60 % 60, seconds % 60, seed, message, n)


def same_content(a: Path, b: Path) -> bool:
    """Byte-for-byte equality of two files, read a block at a time."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while block := fa.read(BLOCK):
            if block != fb.read(BLOCK):
                return False
    return True
