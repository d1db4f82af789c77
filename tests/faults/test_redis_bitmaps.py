"""Redis losing or going back in time under a bitmap (issue 12): never a silent wrong backup.

Each scenario: a VM's drive backed up, the guest writes and reports its writes, then Redis
loses the bits (what ``allkeys-*`` eviction does) or gets older bitmap keys back (Redis
restored from an older dump). The next backup must not trust the bitmap: action ``invalid``
with the reason, a full read, and a restore byte-identical to the drive. Backups run through
the domain functions (prepare, copy, commit), as the canvas runs them; no worker is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from tests.unit.builders import (
    CS,
    Done,
    Image,
    make_image,
    mixed_content,
    no_cancel,
    no_progress,
    restored,
    run_backup,
)
from txnbackup.action import BitmapAction
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import IntegrityError
from txnbackup.keys import Keys
from txnbackup.repository import Repository
from txnbackup.transaction import copy, prepare, rollback
from txnbackup.verify import verify_snapshot

VM = "100"
SIZE = 96 * CS + 1  # a short last chunk


@dataclass
class Tracked:
    """A drive of VM ``VM`` with its bitmap in a real Redis, and what the tests do to them."""

    repo: Repository
    bitmaps: RedisBitmaps
    keys: Keys
    redis: Redis
    disk: Image
    scratch: Path  # where restores go

    @property
    def bits(self) -> str:
        return self.keys.bitmap_bits(VM, self.disk.name)

    @property
    def meta(self) -> str:
        return self.keys.bitmap_meta(VM, self.disk.name)

    def backup(self) -> Done:
        return run_backup(self.repo, self.bitmaps, VM, [self.disk.drive])

    def write(self, offset: int, data: bytes) -> None:
        """A write to the drive, reported after it completed (as writers do)."""
        self.disk.write(offset, data)
        assert self.bitmaps.mark_dirty(VM, self.disk.name, offset, len(data)) > 0

    def dump(self, *names: str) -> dict[str, bytes]:
        """What an RDB file taken now holds of these keys."""
        dumped = {}
        for name in names:
            value = self.redis.dump(name)
            assert isinstance(value, bytes), f"{name} is not in Redis"
            dumped[name] = value
        return dumped

    def put_back(self, dumped: dict[str, bytes]) -> None:
        """Redis restored from that older RDB file, for these keys."""
        for name, value in dumped.items():
            self.redis.restore(name, 0, value, replace=True)

    def assert_next_backup_full_and_identical(self, reason_has: str) -> None:
        """The next backup does not trust the bitmap: a full read that restores identical."""
        done = self.backup()
        plan = done.plan.drive(self.disk.name)
        assert plan.action is BitmapAction.INVALID, plan.reason
        assert reason_has in plan.reason
        assert done.entries[self.disk.name].stats.transferred == SIZE
        assert verify_snapshot(self.repo, done.snapshot).ok
        assert restored(self.repo, done.snapshot, self.disk.name, self.scratch) == self.disk.read()


@pytest.fixture
def backed_up(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, keys: Keys, redis_client: Redis
) -> Tracked:
    """A drive backed up once: its bitmap is tracking, relative to that snapshot."""
    disk = make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=12, pattern="rt"))
    drive = Tracked(repo, bitmaps, keys, redis_client, disk, tmp_path / "r")
    drive.backup()
    return drive


def test_an_evicted_bits_key_makes_the_next_backup_invalid_and_whole(backed_up: Tracked) -> None:
    # Given a backed-up drive whose writes since were reported
    backed_up.write(80 * CS + 1, b"written after the first backup" * 100)

    # When Redis evicts the drive's bits key (allkeys-lru under memory pressure)
    assert backed_up.redis.delete(backed_up.bits) == 1

    # Then the next backup does not trust the bitmap: a full read that restores identical
    backed_up.assert_next_backup_full_and_identical("dirty bits")


def test_older_bitmap_keys_restored_make_the_next_backup_invalid_and_whole(
    backed_up: Tracked,
) -> None:
    # Given a dump of the bitmap keys taken between two backups
    backed_up.write(10 * CS, b"a" * 100)
    dump = backed_up.dump(backed_up.meta, backed_up.bits)
    second = backed_up.backup()
    assert second.plan.drive(backed_up.disk.name).action is BitmapAction.USED
    backed_up.write(48 * CS, b"b" * 100)

    # When Redis is put back to that dump (restored from an older RDB file)
    backed_up.put_back(dump)

    # Then the bitmap, relative to the older snapshot, is not used
    backed_up.assert_next_backup_full_and_identical(str(second.snapshot))


def test_an_older_bits_key_under_a_current_meta_is_invalid(backed_up: Tracked) -> None:
    # Given the bits key alone is put back from an older dump (a partial restore)
    backed_up.write(5 * CS, b"c" * 10)
    old_bits = backed_up.dump(backed_up.bits)
    backed_up.backup()
    backed_up.write(70 * CS, b"d" * 10)
    backed_up.put_back(old_bits)

    # Then its bits are not taken for the current bitmap's
    backed_up.assert_next_backup_full_and_identical("dirty bits")


def test_an_evicted_meta_is_invalid_and_whole(backed_up: Tracked) -> None:
    # Given the meta hash of a tracked drive is evicted, its bits kept
    backed_up.write(3 * CS, b"e" * 10)
    backed_up.redis.delete(backed_up.meta)

    # Then the next backup says the bitmap went missing, and reads everything
    backed_up.assert_next_backup_full_and_identical("missing")


def test_frozen_bits_evicted_mid_backup_fail_it_and_the_next_one_reads_everything(
    backed_up: Tracked,
) -> None:
    # Given an incremental backup whose frozen bits Redis evicts before the drive is copied
    repo, bitmaps, disk = backed_up.repo, backed_up.bitmaps, backed_up.disk
    backed_up.write(20 * CS, b"f" * 10)
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    assert plan.drive(disk.name).action is BitmapAction.USED
    backed_up.redis.delete(backed_up.keys.frozen_bits(plan.backup, disk.name))

    # When it copies the drive, it fails rather than read the drive as clean; it rolls back
    with pytest.raises(IntegrityError, match="vanished"):
        copy(repo, bitmaps, plan, disk.name, no_cancel, no_progress)
    rollback(repo, bitmaps, plan)

    # Then the next backup cannot trust the bitmap, and restores identical
    backed_up.assert_next_backup_full_and_identical("whole")
