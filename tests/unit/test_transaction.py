"""One backup as a transaction: prepare, copy each drive, commit or roll back."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.unit.builders import (
    CS,
    KEEPERS,
    Image,
    cancel_after,
    changed_chunks,
    chunk_bytes,
    make_image,
    mixed_content,
    no_cancel,
    no_progress,
    restored,
    run_backup,
    stray_files,
)
from txnbackup.action import BitmapAction
from txnbackup.bitmap import RedisBitmaps, TxnState
from txnbackup.constants import ZERO_DIGEST
from txnbackup.drive import Drive
from txnbackup.errors import (
    Cancelled,
    DriveNotFound,
    DriveSizeChanged,
    IntegrityError,
    InvalidInput,
    RepositoryWriteError,
    TransactionStateError,
)
from txnbackup.index import IndexReader
from txnbackup.repository import Repository
from txnbackup.staging import Staging, publish
from txnbackup.stats import DriveStats
from txnbackup.transaction import commit, copy, prepare, rollback

VM = "100"
PATTERN = "rtzrtzrtzrz"  # random, text, zero chunks; the short last chunk is zero
SIZE = 10 * CS + 777
ZERO_BYTES = 3 * CS + 777


@pytest.fixture
def disk(tmp_path: Path) -> Image:
    return make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=21, pattern=PATTERN))


def chunk_files(repo: Repository) -> set[str]:
    return {p.name for p in (repo.path / "chunks").rglob("*") if p.is_file()}


def assert_identities(stats: DriveStats) -> None:
    assert stats.zero_bytes + stats.reused + stats.written_raw == stats.transferred
    assert stats.transferred == stats.dirty <= stats.size


def test_a_full_backup_accounts_for_every_byte(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a drive of random, text and zero chunks, its last (short) chunk zero
    reports: list[DriveStats] = []

    # When it is backed up for the first time
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    entry = copy(repo, bitmaps, plan, "scsi0", no_cancel, reports.append)
    snapshot = commit(repo, bitmaps, plan)

    # Then every byte was read, zero bytes were counted, the rest written (compressed)
    stats = entry.stats
    assert_identities(stats)
    assert stats.size == stats.dirty == stats.transferred == SIZE
    assert stats.zero_bytes == ZERO_BYTES
    assert stats.reused == 0
    assert stats.written_raw == SIZE - ZERO_BYTES
    assert 0 < stats.stored < stats.written_raw
    assert all(r.transferred <= stats.transferred for r in reports)  # never more than the end
    assert repo.manifest(snapshot).drive("scsi0") == entry


def test_all_zero_chunks_are_not_stored(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # Then only the 7 non-zero chunks are chunk files, and the index marks the others zero
    zero_positions = {i for i, kind in enumerate(PATTERN) if kind == "z"}
    assert len(chunk_files(repo)) == len(PATTERN) - len(zero_positions)
    assert hashlib.sha256(bytes(CS)).hexdigest() not in chunk_files(repo)
    with IndexReader(repo.snapshot_dir(done.snapshot) / "scsi0.fidx") as index:
        zero_in_index = {i for i, d in enumerate(index) if d == ZERO_DIGEST}
    assert zero_in_index == zero_positions


def test_a_second_full_backup_of_unchanged_data_reuses_every_chunk(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a drive already backed up
    run_backup(repo, bitmaps, VM, [disk.drive])
    before = chunk_files(repo)

    # When it is backed up again, reading everything
    done = run_backup(repo, bitmaps, VM, [disk.drive], full=True)

    # Then every non-zero chunk was found in the repository and nothing new was stored
    stats = done.entries["scsi0"].stats
    assert done.entries["scsi0"].action == BitmapAction.NOT_USED
    assert_identities(stats)
    assert stats.reused == stats.transferred - stats.zero_bytes == SIZE - ZERO_BYTES
    assert stats.written_raw == stats.stored == 0
    assert chunk_files(repo) == before
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == disk.read()


def test_duplicate_chunks_within_a_drive_are_stored_once(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    block = random.Random(22).randbytes(CS)
    disk = make_image(tmp_path, "scsi0", block * 4)

    done = run_backup(repo, bitmaps, VM, [disk.drive])

    stats = done.entries["scsi0"].stats
    assert_identities(stats)
    assert stats.written_raw == CS
    assert stats.reused == 3 * CS
    assert chunk_files(repo) == {hashlib.sha256(block).hexdigest()}


@KEEPERS
@pytest.mark.parametrize(
    ("writes", "expected_dirty"),
    [
        ([(CS + 5, 10), (6 * CS, CS), (SIZE - 1, 1)], 2 * CS + 777),
        ([(3 * CS - 1, 2), (9 * CS, 1)], 3 * CS),
        ([(9 * CS + 100, CS)], CS + 777),
    ],
    ids=["with-short-last-chunk", "across-a-border", "into-short-last-chunk"],
)
def test_an_incremental_backup_reads_exactly_the_frozen_chunks(
    tmp_path: Path,
    repo: Repository,
    bitmaps: RedisBitmaps,
    disk: Image,
    writes: list[tuple[int, int]],
    expected_dirty: int,
) -> None:
    # Given a backed-up drive, then writes reported to the tracker
    run_backup(repo, bitmaps, VM, [disk.drive])
    rng = random.Random(23)
    for offset, length in writes:
        disk.write(offset, rng.randbytes(length))
        bitmaps.mark_dirty(VM, "scsi0", offset, length)

    # When the next backup runs
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # Then it read the marked chunks only (the short last one at its real length)
    plan = done.plan.drive("scsi0")
    stats = done.entries["scsi0"].stats
    assert plan.action is BitmapAction.USED
    assert plan.dirty == stats.dirty == stats.transferred == expected_dirty
    assert_identities(stats)
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == disk.read()


@KEEPERS
def test_a_write_during_a_backup_goes_into_the_next_one(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a backup that has frozen its bitmap, and a write reported after the freeze
    run_backup(repo, bitmaps, VM, [disk.drive])
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)
    disk.write(4 * CS, b"late write")
    bitmaps.mark_dirty(VM, "scsi0", 4 * CS, 10)
    commit(repo, bitmaps, plan)

    # When the next backup runs
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # Then it reads that chunk and the drive restores with the late write
    assert done.plan.drive("scsi0").dirty == CS
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == disk.read()


def test_a_cancelled_copy_raises_and_leaves_no_index(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a backup whose cancel check asks to stop after three chunks
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    staging = repo.path / "staging" / plan.backup

    # When the drive is copied
    with pytest.raises(Cancelled, match="operator pressed stop") as caught:
        copy(repo, bitmaps, plan, "scsi0", cancel_after(3, "operator pressed stop"), no_progress)

    # Then the staging area holds no index, no drive entry, no temporary file
    assert caught.value.args == ("operator pressed stop",)
    assert list(staging.iterdir()) == []
    assert stray_files(repo.path) == []
    assert rollback(repo, bitmaps, plan) is True
    assert not staging.exists()
    assert repo.snapshots() == []


def test_cancel_is_noticed_while_waiting_for_the_speed_limit(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a copy so slow it would take SIZE / (64 KiB/s), about 11 s
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    started = time.monotonic()

    def cancel() -> str | None:
        return "stop" if time.monotonic() - started > 0.3 else None

    # When cancel is asked for after 0.3 s, Then the copy stops long before it would finish
    with pytest.raises(Cancelled):
        copy(repo, bitmaps, plan, "scsi0", cancel, no_progress, speed_limit=CS)
    assert time.monotonic() - started < 3


def test_a_speed_limit_slows_reading(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    # Given a 2 MiB drive (zeros: reading it costs almost nothing) and a limit of 4 MiB/s
    size, limit = 2 * 1024 * 1024, 4 * 1024 * 1024
    path = tmp_path / "scsi0.raw"
    path.touch()
    os.truncate(path, size)
    drive = Drive("scsi0", str(path))

    # When it is copied with and without the limit
    def rate(speed_limit: int | None, vmid: str) -> float:
        plan = prepare(repo, bitmaps, vmid, [drive])
        started = time.monotonic()
        copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress, speed_limit=speed_limit)
        return size / (time.monotonic() - started)

    limited, unlimited = rate(limit, "100"), rate(None, "101")

    # Then the limited copy's average rate stays at the limit, well below the free one
    assert limited <= limit * 1.2
    assert unlimited > limit * 1.2


@pytest.mark.parametrize("change", [CS, -CS], ids=["grown", "shrunk"])
def test_a_drive_resized_between_prepare_and_copy_is_refused(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image, change: int
) -> None:
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    os.truncate(disk.path, SIZE + change)

    with pytest.raises(DriveSizeChanged) as caught:
        copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)

    assert caught.value.args == ("scsi0", SIZE, SIZE + change)
    assert list((repo.path / "staging" / plan.backup).iterdir()) == []


@KEEPERS
def test_commit_is_repeatable(repo: Repository, bitmaps: RedisBitmaps, disk: Image) -> None:
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)

    first = commit(repo, bitmaps, plan)
    second = commit(repo, bitmaps, plan)

    assert second == first
    assert repo.snapshots(VM) == [first]
    assert bitmaps.state(plan.backup) is TxnState.COMMITTED


@KEEPERS
def test_a_commit_interrupted_after_publishing_completes_on_repeat(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a commit that published the snapshot and then died before the bitmaps
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)
    published = publish(Staging(repo, plan.backup), VM, plan.snapshot_time, ["scsi0"], {})
    assert bitmaps.state(plan.backup) is TxnState.FROZEN

    # When the commit is delivered again
    snapshot = commit(repo, bitmaps, plan)

    # Then it finds the same snapshot and moves the bitmap's base to it
    assert snapshot == published
    assert repo.snapshots(VM) == [published]
    meta = bitmaps.meta(VM, "scsi0")
    assert meta is not None
    assert meta.base == str(published)


@KEEPERS
def test_commit_is_refused_after_a_rollback(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)
    assert rollback(repo, bitmaps, plan) is True

    with pytest.raises(TransactionStateError, match="rolled back"):
        commit(repo, bitmaps, plan)

    assert repo.snapshots() == []
    assert rollback(repo, bitmaps, plan) is False


@KEEPERS
def test_rollback_is_refused_after_a_commit(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    with pytest.raises(TransactionStateError, match="committed"):
        rollback(repo, bitmaps, done.plan)

    assert repo.snapshots(VM) == [done.snapshot]


def test_a_backup_missing_a_drive_cannot_commit(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    other = make_image(tmp_path, "scsi1", mixed_content(2 * CS, seed=24))
    plan = prepare(repo, bitmaps, VM, [disk.drive, other.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)

    with pytest.raises(IntegrityError, match="scsi1 was not copied"):
        commit(repo, bitmaps, plan)

    assert repo.snapshots() == []
    assert rollback(repo, bitmaps, plan) is True


@pytest.mark.parametrize(
    ("vmid", "names", "error"),
    [
        ("100", ["scsi0", "scsi0"], InvalidInput),
        ("../100", ["scsi0"], InvalidInput),
        ("100", [], InvalidInput),
        ("100", ["scsi0", "missing"], DriveNotFound),
    ],
    ids=["duplicate-names", "vmid-escapes", "no-drives", "missing-drive"],
)
def test_prepare_refuses_bad_input_and_changes_nothing(
    repo: Repository,
    bitmaps: RedisBitmaps,
    disk: Image,
    vmid: str,
    names: list[str],
    error: type[Exception],
) -> None:
    drives = [disk.drive if n == "scsi0" else Drive(n, str(disk.path) + ".nope") for n in names]

    with pytest.raises(error):
        prepare(repo, bitmaps, vmid, drives)

    assert bitmaps.meta(vmid, "scsi0") is None
    assert list((repo.path / "staging").iterdir()) == []


@KEEPERS
def test_prepare_that_cannot_stage_gives_every_bit_back(
    repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a backed-up drive with dirty chunks, and a repository that cannot stage
    run_backup(repo, bitmaps, VM, [disk.drive])
    bitmaps.mark_dirty(VM, "scsi0", 2 * CS, CS + 1)
    shutil.rmtree(repo.path / "staging")
    (repo.path / "staging").write_text("not a directory")
    backup = str(uuid.uuid4())

    # When a backup is prepared
    with pytest.raises(RepositoryWriteError):
        prepare(repo, bitmaps, VM, [disk.drive], backup=backup)

    # Then its freeze was undone: the dirty chunks wait for the next backup
    assert bitmaps.state(backup) is TxnState.ROLLED_BACK
    assert bitmaps.dirty_chunks(VM, "scsi0") == {2, 3}


@KEEPERS
def test_rollback_after_a_partial_copy_keeps_every_change_for_the_next_backup(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    # Given a VM with two drives and a committed backup of both
    a = make_image(tmp_path, "scsi0", mixed_content(8 * CS + 100, seed=25))
    b = make_image(tmp_path, "scsi1", mixed_content(5 * CS + 3, seed=26))
    last = run_backup(repo, bitmaps, VM, [a.drive, b.drive]).snapshot
    rng = random.Random(27)

    def write(disk: Image, offset: int, length: int) -> None:
        disk.write(offset, rng.randbytes(length))
        bitmaps.mark_dirty(VM, disk.name, offset, length)

    write(a, CS + 1, 100)
    write(a, 8 * CS, 100)
    write(b, 0, 2 * CS + 1)

    # When the next backup copies scsi0, the VM writes to both, and scsi1's copy is cancelled
    plan = prepare(repo, bitmaps, VM, [a.drive, b.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)
    write(a, 4 * CS + 7, 10)
    write(b, 3 * CS, 5)
    with pytest.raises(Cancelled):
        copy(repo, bitmaps, plan, "scsi1", cancel_after(1), no_progress)
    assert rollback(repo, bitmaps, plan) is True

    # Then nothing was published and each active bitmap covers every chunk that differs
    # from the last snapshot
    assert repo.snapshots() == [last]
    assert not (repo.path / "staging" / plan.backup).exists()
    for disk in (a, b):
        base = restored(repo, last, disk.name, tmp_path / "r")
        assert changed_chunks(base, disk.read()) <= bitmaps.dirty_chunks(VM, disk.name)
    assert bitmaps.dirty_chunks(VM, "scsi0") == {1, 4, 8}
    assert bitmaps.dirty_chunks(VM, "scsi1") == {0, 1, 2, 3}

    # And the next backup builds on the last snapshot and restores byte-identical
    done = run_backup(repo, bitmaps, VM, [a.drive, b.drive])
    assert done.plan.drive("scsi0").action is BitmapAction.USED
    assert done.plan.drive("scsi0").base == str(last)
    assert done.plan.drive("scsi0").dirty == chunk_bytes(8 * CS + 100, {1, 4, 8})
    assert done.plan.drive("scsi1").dirty == 4 * CS
    for disk in (a, b):
        assert restored(repo, done.snapshot, disk.name, tmp_path / "r") == disk.read()
