"""Redis losing or going back in time under a bitmap (issue 12): never a silent wrong backup.

Each scenario: a VM's drive backed up, the guest writes and reports its writes, then Redis
loses the bits (what ``allkeys-*`` eviction does) or gets older bitmap keys back (Redis
restored from an older dump). The next backup must not trust the bitmap: action ``invalid``
with the reason, a full read, and a restore byte-identical to the drive. Backups run through
the domain functions (prepare, copy, commit), as the canvas runs them; no worker is needed.
"""

from __future__ import annotations

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


@pytest.fixture
def disk(tmp_path: Path) -> Image:
    return make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=12, pattern="rt"))


def guest_write(bitmaps: RedisBitmaps, disk: Image, offset: int, data: bytes) -> None:
    """A write to the drive, reported after it completed (as writers do)."""
    disk.write(offset, data)
    assert bitmaps.mark_dirty(VM, disk.name, offset, len(data)) > 0


def assert_full_and_identical(
    repo: Repository, done: Done, disk: Image, scratch: Path, reason_has: str
) -> None:
    plan = done.plan.drive(disk.name)
    assert plan.action is BitmapAction.INVALID, plan.reason
    assert reason_has in plan.reason
    assert done.entries[disk.name].stats.transferred == SIZE
    assert verify_snapshot(repo, done.snapshot).ok
    assert restored(repo, done.snapshot, disk.name, scratch) == disk.read()


def test_an_evicted_bits_key_makes_the_next_backup_invalid_and_whole(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    keys: Keys,
    redis_client: Redis,
    disk: Image,
) -> None:
    # Given a backed-up drive whose writes since were reported
    run_backup(repo, bitmaps, VM, [disk.drive])
    guest_write(bitmaps, disk, 80 * CS + 1, b"written after the first backup" * 100)

    # When Redis evicts the drive's bits key (allkeys-lru under memory pressure)
    assert redis_client.delete(keys.bitmap_bits(VM, disk.name)) == 1

    # Then the next backup does not trust the bitmap: a full read that restores identical
    done = run_backup(repo, bitmaps, VM, [disk.drive])
    assert_full_and_identical(repo, done, disk, tmp_path / "r", "dirty bits")


def test_older_bitmap_keys_restored_make_the_next_backup_invalid_and_whole(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    keys: Keys,
    redis_client: Redis,
    disk: Image,
) -> None:
    # Given a dump of the bitmap keys taken between two backups
    run_backup(repo, bitmaps, VM, [disk.drive])
    guest_write(bitmaps, disk, 10 * CS, b"a" * 100)
    names = [keys.bitmap_meta(VM, disk.name), keys.bitmap_bits(VM, disk.name)]
    dump = {name: redis_client.dump(name) for name in names}
    second = run_backup(repo, bitmaps, VM, [disk.drive])
    assert second.plan.drive(disk.name).action is BitmapAction.USED
    guest_write(bitmaps, disk, 48 * CS, b"b" * 100)

    # When Redis is put back to that dump (restored from an older RDB file)
    for name, value in dump.items():
        assert isinstance(value, bytes)
        redis_client.restore(name, 0, value, replace=True)

    # Then the bitmap, relative to the older snapshot, is not used
    done = run_backup(repo, bitmaps, VM, [disk.drive])
    assert_full_and_identical(repo, done, disk, tmp_path / "r", str(second.snapshot))


def test_an_older_bits_key_under_a_current_meta_is_invalid(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    keys: Keys,
    redis_client: Redis,
    disk: Image,
) -> None:
    # Given the bits key alone is put back from an older dump (a partial restore)
    run_backup(repo, bitmaps, VM, [disk.drive])
    bits = keys.bitmap_bits(VM, disk.name)
    guest_write(bitmaps, disk, 5 * CS, b"c" * 10)
    old_bits = redis_client.dump(bits)
    run_backup(repo, bitmaps, VM, [disk.drive])
    guest_write(bitmaps, disk, 70 * CS, b"d" * 10)
    assert isinstance(old_bits, bytes)
    redis_client.restore(bits, 0, old_bits, replace=True)

    # Then its bits are not taken for the current bitmap's
    done = run_backup(repo, bitmaps, VM, [disk.drive])
    assert_full_and_identical(repo, done, disk, tmp_path / "r", "dirty bits")


def test_an_evicted_meta_is_invalid_and_whole(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    keys: Keys,
    redis_client: Redis,
    disk: Image,
) -> None:
    # Given the meta hash of a tracked drive is evicted, its bits kept
    run_backup(repo, bitmaps, VM, [disk.drive])
    guest_write(bitmaps, disk, 3 * CS, b"e" * 10)
    redis_client.delete(keys.bitmap_meta(VM, disk.name))

    # Then the next backup says the bitmap went missing, and reads everything
    done = run_backup(repo, bitmaps, VM, [disk.drive])
    assert_full_and_identical(repo, done, disk, tmp_path / "r", "missing")


def test_frozen_bits_evicted_mid_backup_fail_it_and_the_next_one_reads_everything(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    keys: Keys,
    redis_client: Redis,
    disk: Image,
) -> None:
    # Given an incremental backup whose frozen bits Redis evicts before the drive is copied
    run_backup(repo, bitmaps, VM, [disk.drive])
    guest_write(bitmaps, disk, 20 * CS, b"f" * 10)
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    assert plan.drive(disk.name).action is BitmapAction.USED
    redis_client.delete(keys.frozen_bits(plan.backup, disk.name))

    # When it copies the drive, it fails rather than read the drive as clean; it rolls back
    with pytest.raises(IntegrityError, match="vanished"):
        copy(repo, bitmaps, plan, disk.name, no_cancel, no_progress)
    rollback(repo, bitmaps, plan)

    # Then the next backup cannot trust the bitmap, and restores identical
    done = run_backup(repo, bitmaps, VM, [disk.drive])
    assert_full_and_identical(repo, done, disk, tmp_path / "r", "whole")
