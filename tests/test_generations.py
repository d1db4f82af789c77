"""Property: every snapshot of a VM restores to its drives as they were at backup time.

A seeded random walk over generations of a three-drive VM: random writes (random, text and
zero data at random offsets and lengths; drive sizes fixed), each reported to the tracker
for exactly the bytes written, then a backup. Some backups fail or are cancelled part way and
roll back, with writes landing while they run. The walk checks after every step, and for
every snapshot at the end, that no change is ever lost and incremental backups read only
the chunks written since the last committed snapshot.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.builders import (
    CS,
    Image,
    cancel_after,
    chunk_bytes,
    make_image,
    mixed_content,
    no_cancel,
    no_progress,
    restored,
    text_bytes,
    touched_chunks,
)
from txnbackup.action import BitmapAction
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import Cancelled, DriveNotFound
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.transaction import BackupPlan, commit, copy, prepare, rollback
from txnbackup.verify import verify_snapshot

VM = "4711"
SIZES = {"scsi0": 24 * CS + 1000, "scsi1": 8 * CS, "efidisk0": 3 * CS + 17}
GENERATIONS = 9
FAILURES = ("cancel", "missing-drive", "never-committed")
SEEDS = [1, 2, 3]


@dataclass
class Vm:
    """The drives on disk, what they hold now, and what changed since the last snapshot."""

    images: dict[str, Image]
    now: dict[str, bytearray]
    since_snapshot: dict[str, set[int]] = field(default_factory=dict)

    def write(self, bitmaps: RedisBitmaps, drive: str, offset: int, data: bytes) -> None:
        """A guest write: to the image, to our copy, then reported to the tracker."""
        self.images[drive].write(offset, data)
        self.now[drive][offset : offset + len(data)] = data
        bitmaps.mark_dirty(VM, drive, offset, len(data))
        self.since_snapshot.setdefault(drive, set()).update(touched_chunks(offset, len(data)))

    def contents(self) -> dict[str, bytes]:
        return {name: bytes(data) for name, data in self.now.items()}


def random_writes(rng: random.Random, vm: Vm, bitmaps: RedisBitmaps, count: int) -> None:
    for _ in range(count):
        drive = rng.choice(sorted(SIZES))
        size = SIZES[drive]
        offset = rng.randrange(size)
        if rng.random() < 0.2:  # long writes from here set whole bitmap bytes at once
            offset = rng.choice([o for o in (0, CS, 7 * CS) if o < size])
        length = rng.randint(1, min(size - offset, rng.choice([100, CS, 3 * CS, 17 * CS])))
        kind = rng.choice(["random", "text", "zero"])
        if kind == "random":
            data = rng.randbytes(length)
        elif kind == "text":
            data = text_bytes(rng, length)
        else:
            data = bytes(length)
        vm.write(bitmaps, drive, offset, data)


def expected_dirty(vm: Vm, drive: str) -> int:
    return chunk_bytes(SIZES[drive], vm.since_snapshot.get(drive, set()))


def check_plan(plan: BackupPlan, vm: Vm, last: SnapshotId | None) -> None:
    """The first backup reads everything; every later one only what changed since ``last``."""
    for d in plan.drives:
        if last is None:
            assert (d.action, d.dirty) == (BitmapAction.NEW, d.size)
        else:
            assert d.action is BitmapAction.USED, d.reason
            assert d.base == str(last)
            assert d.dirty == expected_dirty(vm, d.name)


def commit_backup(
    repo: Repository, bitmaps: RedisBitmaps, vm: Vm, last: SnapshotId | None
) -> SnapshotId:
    plan = prepare(repo, bitmaps, VM, [vm.images[n].drive for n in SIZES])
    check_plan(plan, vm, last)
    for d in plan.drives:
        stats = copy(repo, bitmaps, plan, d.name, no_cancel, no_progress).stats
        assert stats.transferred == stats.dirty == d.dirty
        assert stats.zero_bytes + stats.reused + stats.written_raw == stats.transferred
    snapshot = commit(repo, bitmaps, plan)
    vm.since_snapshot.clear()
    return snapshot


def failed_backup(
    rng: random.Random,
    repo: Repository,
    bitmaps: RedisBitmaps,
    vm: Vm,
    last: SnapshotId,
    failure: str,
) -> None:
    """A backup that copies some drives, meets ``failure`` on one, and rolls back."""
    plan = prepare(repo, bitmaps, VM, [vm.images[n].drive for n in SIZES])
    check_plan(plan, vm, last)
    # a drive with nothing to read never checks for cancel: then a missing drive fails instead
    reading = [d.name for d in plan.drives if d.dirty > 0]
    victim = rng.choice(reading) if failure == "cancel" and reading else rng.choice(list(SIZES))
    for d in plan.drives:
        random_writes(rng, vm, bitmaps, rng.randint(0, 2))  # the VM keeps running
        if d.name != victim or failure == "never-committed":
            copy(repo, bitmaps, plan, d.name, no_cancel, no_progress)
        elif failure == "cancel" and d.dirty > 0:
            chunks_to_read = -(-d.dirty // CS)
            checks = rng.randrange(chunks_to_read)  # stop after reading 0 to n-1 of them
            with pytest.raises(Cancelled):
                copy(repo, bitmaps, plan, d.name, cancel_after(checks), no_progress)
            break
        else:
            image = vm.images[d.name]
            os.rename(image.path, image.path.with_suffix(".away"))
            try:
                with pytest.raises(DriveNotFound):
                    copy(repo, bitmaps, plan, d.name, no_cancel, no_progress)
            finally:
                os.rename(image.path.with_suffix(".away"), image.path)
            break
    assert rollback(repo, bitmaps, plan) is True
    assert repo.snapshots(VM)[0] == last
    for name in SIZES:
        assert bitmaps.dirty_chunks(VM, name) >= vm.since_snapshot.get(name, set())


def assert_restores(
    repo: Repository, snapshot: SnapshotId, drives: dict[str, bytes], scratch: Path
) -> None:
    for name, content in drives.items():
        assert restored(repo, snapshot, name, scratch) == content, f"{snapshot} {name}"


@pytest.mark.parametrize("seed", SEEDS)
def test_every_snapshot_restores_the_drives_as_they_were(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, seed: int
) -> None:
    rng = random.Random(seed)
    images = {
        name: make_image(tmp_path, name, mixed_content(size, seed * 100 + i, "rtzz"))
        for i, (name, size) in enumerate(SIZES.items())
    }
    vm = Vm(images, {name: bytearray(image.read()) for name, image in images.items()})
    failing = dict(zip(rng.sample(range(2, GENERATIONS), len(FAILURES)), FAILURES, strict=True))
    expected: dict[SnapshotId, dict[str, bytes]] = {}
    last: SnapshotId | None = None

    for generation in range(GENERATIONS):
        if generation:
            random_writes(rng, vm, bitmaps, rng.randint(1, 6))
        if generation in failing and last is not None:
            failed_backup(rng, repo, bitmaps, vm, last, failing[generation])
            continue
        at_backup_time = vm.contents()
        last = commit_backup(repo, bitmaps, vm, last)
        expected[last] = at_backup_time
        assert_restores(repo, last, at_backup_time, tmp_path / "r")

    assert repo.snapshots(VM) == sorted(expected, key=lambda s: s.time, reverse=True)
    assert len(expected) == GENERATIONS - len(FAILURES)
    for snapshot, drives in expected.items():
        assert verify_snapshot(repo, snapshot).ok
        assert_restores(repo, snapshot, drives, tmp_path / "r")
    assert {n: bytes(b) for n, b in vm.now.items()} == {n: i.read() for n, i in images.items()}
