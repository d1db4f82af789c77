"""Small builders for domain tests: drive images on disk, whole backups, restores."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from txnbackup.bitmap import FreezeItem, RedisBitmaps
from txnbackup.drive import Drive
from txnbackup.manifest import DriveEntry
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan, commit, copy, prepare

CS = 64 * 1024  # the chunk size of the ``repo`` fixture
# Runs a test once per bitmap keeper; the ``bitmaps`` fixture makes each (tests/conftest.py).
KEEPERS = pytest.mark.parametrize("bitmaps", ["memory", "redis"], indirect=True)
WORDS = b"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def no_cancel() -> str | None:
    return None


def no_progress(stats: DriveStats) -> None:
    pass


def cancel_after(checks: int, reason: str = "cancelled by test") -> CancelAfter:
    return CancelAfter(checks, reason)


class CancelAfter:
    """A cancel check that asks to stop once it has been consulted ``checks`` times."""

    def __init__(self, checks: int, reason: str) -> None:
        self.left = checks
        self.reason = reason

    def __call__(self) -> str | None:
        if self.left <= 0:
            return self.reason
        self.left -= 1
        return None


def random_bytes(rng: random.Random, length: int) -> bytes:
    return rng.randbytes(length)


def text_bytes(rng: random.Random, length: int) -> bytes:
    """Compressible, and (with a fresh rng state) distinct from any other text chunk."""
    out = bytearray()
    while len(out) < length:
        out += rng.choice(WORDS) + b" " + str(rng.randrange(10**9)).encode() + b"\n"
    return bytes(out[:length])


def mixed_content(size: int, seed: int, pattern: str = "rtz") -> bytes:
    """A drive's bytes, chunk by chunk cycling through random (r), text (t) and zero (z)."""
    rng = random.Random(seed)
    out = bytearray()
    for i, offset in enumerate(range(0, size, CS)):
        length = min(CS, size - offset)
        kind = pattern[i % len(pattern)]
        if kind == "r":
            out += random_bytes(rng, length)
        elif kind == "t":
            out += text_bytes(rng, length)
        else:
            out += bytes(length)
    return bytes(out)


@dataclass(frozen=True)
class Image:
    """A raw drive image file of a VM."""

    name: str
    path: Path

    @property
    def drive(self) -> Drive:
        return Drive(self.name, str(self.path))

    def read(self) -> bytes:
        return self.path.read_bytes()

    def write(self, offset: int, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)


def make_image(directory: Path, name: str, content: bytes) -> Image:
    path = directory / f"{name}.raw"
    path.write_bytes(content)
    return Image(name, path)


@dataclass(frozen=True)
class Done:
    """A committed backup: its plan, the snapshot it published, each drive's entry."""

    plan: BackupPlan
    snapshot: SnapshotId
    entries: dict[str, DriveEntry]


def run_backup(
    repo: Repository,
    bitmaps: RedisBitmaps,
    vmid: str,
    drives: Sequence[Drive],
    *,
    full: bool = False,
) -> Done:
    """prepare, copy every drive in order, commit: what the Celery canvas does on success."""
    plan = prepare(repo, bitmaps, vmid, drives, full=full)
    entries = {d.name: copy(repo, bitmaps, plan, d.name, no_cancel, no_progress) for d in drives}
    return Done(plan, commit(repo, bitmaps, plan), entries)


def restored(repo: Repository, snapshot: SnapshotId, drive: str, scratch: Path) -> bytes:
    """The drive's bytes as restored from ``snapshot``."""
    scratch.mkdir(exist_ok=True)
    target = scratch / f"restore-{uuid.uuid4().hex[:8]}.raw"
    restore_drive(repo, snapshot, drive, target)
    try:
        return target.read_bytes()
    finally:
        target.unlink()


def chunk_of(offset: int) -> int:
    return offset // CS


def touched_chunks(offset: int, length: int) -> set[int]:
    if length == 0:
        return set()
    return set(range(offset // CS, (offset + length - 1) // CS + 1))


def changed_chunks(old: bytes, new: bytes) -> set[int]:
    """Chunks whose bytes differ between two same-sized drive contents."""
    assert len(old) == len(new)
    count = -(-len(old) // CS)
    return {i for i in range(count) if old[i * CS : (i + 1) * CS] != new[i * CS : (i + 1) * CS]}


def chunk_bytes(size: int, chunks: Iterable[int]) -> int:
    """Bytes of the given chunks of a drive of ``size`` bytes (the last one may be short)."""
    return sum(min(CS, size - i * CS) for i in set(chunks))


def track(bitmaps: RedisBitmaps, vmid: str, drive: str, size: int, chunk_size: int = CS) -> None:
    """Give a drive a committed, empty bitmap (as after its first backup)."""
    backup = str(uuid.uuid4())
    bitmaps.freeze(backup, vmid, [FreezeItem(drive, size, chunk_size)])
    bitmaps.commit(backup, f"vm/{vmid}/2026-01-01T00:00:00Z", "test-repository")


def stray_files(directory: Path) -> list[Path]:
    """Temporary files an interrupted atomic write would leave behind."""
    return [p for p in directory.rglob("*") if p.name.startswith(".tmp-")]
