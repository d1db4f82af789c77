"""Dirty bitmaps in Redis: marking, and the freeze / commit / rollback transaction."""

from __future__ import annotations

import json
import uuid

import pytest
from redis import Redis

from tests.unit.builders import CS, track
from txnbackup.bitmap import BitmapMeta, FreezeItem, Frozen, RedisBitmaps, TxnState
from txnbackup.constants import BITMAP_READ_BLOCK
from txnbackup.errors import IntegrityError, InvalidInput, NotFound, TransactionStateError
from txnbackup.keys import Keys
from txnbackup.tracker import Tracker

VM = "100"
DRIVE = "scsi0"
CHUNKS = 41  # 40 full chunks and a short last one: the bitmap spans six bytes
SIZE = 40 * CS + 1000


@pytest.fixture
def tracked(bitmaps: RedisBitmaps) -> RedisBitmaps:
    """A drive with a committed, empty bitmap."""
    track(bitmaps, VM, DRIVE, SIZE)
    return bitmaps


def new_backup() -> str:
    return str(uuid.uuid4())


def freeze(bitmaps: RedisBitmaps, backup: str, *drives: str) -> dict[str, Frozen]:
    return bitmaps.freeze(backup, VM, [FreezeItem(d, SIZE, CS) for d in drives or (DRIVE,)])


def counts(frozen: dict[str, Frozen]) -> dict[str, tuple[int, bool]]:
    """Per drive: chunks marked in the frozen bits, and whether the last chunk is one."""
    return {drive: (f.chunks, f.last_dirty) for drive, f in frozen.items()}


def frozen_set(bitmaps: RedisBitmaps, backup: str, drive: str = DRIVE) -> set[int]:
    return {i for i, bit in enumerate(bitmaps.frozen_bits(backup, drive, CHUNKS)) if bit}


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (100, 10, {0}),
        (CS, CS, {1}),
        (CS - 1, 2, {0, 1}),
        (7 * CS + 5, CS, {7, 8}),
        (8 * CS, 1, {8}),
        (5 * CS + 1, 4 * CS, {5, 6, 7, 8, 9}),
        (3 * CS + 1, 20 * CS, set(range(3, 24))),
        (8 * CS, 16 * CS, set(range(8, 24))),
        (0, SIZE, set(range(CHUNKS))),
        (SIZE - 1, 1, {40}),
        (40 * CS, 1000, {40}),
        (39 * CS + 10, CS, {39, 40}),
        (5 * CS, 0, set()),
        (SIZE, 0, set()),
    ],
    ids=[
        "within-one-chunk",
        "exactly-one-chunk",
        "across-a-chunk-border",
        "across-a-bitmap-byte",
        "first-bit-of-a-byte",
        "five-chunks-two-bytes",
        "more-than-16-chunks",
        "two-whole-bitmap-bytes",
        "whole-drive",
        "last-byte-of-short-last-chunk",
        "all-of-short-last-chunk",
        "into-short-last-chunk",
        "zero-length",
        "zero-length-at-the-end",
    ],
)
def test_mark_dirty_sets_exactly_the_chunks_the_range_touches(
    tracked: RedisBitmaps, offset: int, length: int, expected: set[int]
) -> None:
    # When a writer reports a completed write of the range
    touched = tracked.mark_dirty(VM, DRIVE, offset, length)

    # Then exactly the chunks the range overlaps are dirty, no neighbour more
    assert tracked.dirty_chunks(VM, DRIVE) == expected
    assert touched == len(expected)


def test_marks_accumulate_without_clearing_neighbours(tracked: RedisBitmaps) -> None:
    # Given single chunks marked next to and inside a later wide range
    tracked.mark_dirty(VM, DRIVE, 2 * CS, 1)
    tracked.mark_dirty(VM, DRIVE, 33 * CS, 1)

    # When a wide range (which sets whole bitmap bytes at once) is marked
    tracked.mark_dirty(VM, DRIVE, 9 * CS, 20 * CS)

    # Then the earlier bits are still set
    assert tracked.dirty_chunks(VM, DRIVE) == {2, 33} | set(range(9, 29))


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, 10), (0, -1), (SIZE - 10, 11), (SIZE, 1), (SIZE + 1, 0), (0, SIZE + 1)],
    ids=["negative-offset", "negative-length", "one-past-end", "at-end", "beyond-end", "too-long"],
)
def test_bad_ranges_are_refused_and_mark_nothing(
    tracked: RedisBitmaps, offset: int, length: int
) -> None:
    with pytest.raises(InvalidInput):
        tracked.mark_dirty(VM, DRIVE, offset, length)

    assert tracked.dirty_chunks(VM, DRIVE) == set()


def test_a_range_past_the_end_names_the_drive_size(tracked: RedisBitmaps) -> None:
    with pytest.raises(InvalidInput, match=f"{SIZE} bytes"):
        tracked.mark_dirty(VM, DRIVE, SIZE - 1, 2)


def test_an_untracked_drive_is_not_marked(
    bitmaps: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    assert bitmaps.mark_dirty(VM, "never-backed-up", 0, CS) == -1

    assert bitmaps.meta(VM, "never-backed-up") is None
    assert redis_client.exists(keys.bitmap_bits(VM, "never-backed-up")) == 0


def test_freeze_moves_the_bits_and_later_writes_go_to_a_fresh_bitmap(
    tracked: RedisBitmaps,
) -> None:
    # Given dirty chunks 3, 4 and the short last one
    tracked.mark_dirty(VM, DRIVE, 3 * CS, 2 * CS)
    tracked.mark_dirty(VM, DRIVE, SIZE - 1, 1)
    backup = new_backup()

    # When a backup freezes the bitmap and a write lands afterwards
    frozen = freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, 10 * CS, 1)

    # Then the backup copies what was dirty before, and the new write waits for the next one
    assert counts(frozen) == {DRIVE: (3, True)}
    assert frozen[DRIVE].whole
    assert frozen_set(tracked, backup) == {3, 4, 40}
    assert tracked.dirty_chunks(VM, DRIVE) == {10}
    assert tracked.state(backup) is TxnState.FROZEN


def test_freeze_reports_a_clean_last_chunk(tracked: RedisBitmaps) -> None:
    tracked.mark_dirty(VM, DRIVE, 0, 17 * CS)

    assert counts(freeze(tracked, new_backup())) == {DRIVE: (17, False)}


def test_freeze_of_an_untracked_drive_starts_tracking(bitmaps: RedisBitmaps) -> None:
    # Given a drive no backup has seen (writes to it are not tracked yet)
    assert bitmaps.mark_dirty(VM, DRIVE, 0, 1) == -1

    # When its first backup freezes
    frozen = freeze(bitmaps, new_backup())

    # Then there is nothing frozen, but writes from now on are tracked
    assert counts(frozen) == {DRIVE: (0, False)}
    assert not frozen[DRIVE].whole  # there was no bitmap to prove anything
    assert bitmaps.mark_dirty(VM, DRIVE, CS, 1) == 1
    assert bitmaps.dirty_chunks(VM, DRIVE) == {1}
    meta = bitmaps.meta(VM, DRIVE)
    assert meta is not None
    assert (meta.size, meta.chunk_size, meta.base) == (SIZE, CS, "")


def test_freezing_the_same_backup_twice_is_refused(tracked: RedisBitmaps) -> None:
    # Given a frozen backup, and a write that landed after its freeze
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    backup = new_backup()
    freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, 5 * CS, 1)

    # When the same backup tries to freeze again
    with pytest.raises(TransactionStateError):
        freeze(tracked, backup)

    # Then neither the frozen bits nor the new write moved
    assert frozen_set(tracked, backup) == {0}
    assert tracked.dirty_chunks(VM, DRIVE) == {5}


def test_freeze_covers_all_drives_at_once(bitmaps: RedisBitmaps) -> None:
    for drive in ("scsi0", "scsi1"):
        track(bitmaps, VM, drive, SIZE)
    bitmaps.mark_dirty(VM, "scsi0", 0, 1)
    bitmaps.mark_dirty(VM, "scsi1", 20 * CS, 3 * CS)
    backup = new_backup()

    frozen = freeze(bitmaps, backup, "scsi0", "scsi1")

    assert counts(frozen) == {"scsi0": (1, False), "scsi1": (3, False)}
    assert frozen_set(bitmaps, backup, "scsi1") == {20, 21, 22}
    assert bitmaps.dirty_chunks(VM, "scsi0") == bitmaps.dirty_chunks(VM, "scsi1") == set()


def test_commit_drops_the_frozen_bits_and_moves_the_base(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    # Given a frozen backup and a write during it
    tracked.mark_dirty(VM, DRIVE, 0, 3 * CS)
    backup = new_backup()
    freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, 30 * CS, 1)

    # When it commits
    assert tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo-2") is True

    # Then only the write made during the backup is left for the next one, relative to it
    assert tracked.dirty_chunks(VM, DRIVE) == {30}
    assert redis_client.exists(keys.frozen_bits(backup, DRIVE)) == 0
    meta = tracked.meta(VM, DRIVE)
    assert meta is not None
    assert (meta.base, meta.repository) == ("vm/100/2026-02-01T00:00:00Z", "repo-2")
    assert tracked.state(backup) is TxnState.COMMITTED


def test_rollback_returns_the_frozen_bits_and_keeps_the_base(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    # Given a frozen backup and writes during it, one on an already frozen chunk
    before = tracked.meta(VM, DRIVE)
    tracked.mark_dirty(VM, DRIVE, 0, 3 * CS)
    tracked.mark_dirty(VM, DRIVE, SIZE - 1, 1)
    backup = new_backup()
    freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, 2 * CS, 1)
    tracked.mark_dirty(VM, DRIVE, 17 * CS, 1)

    # When it rolls back
    assert tracked.rollback(backup) is True

    # Then the active bitmap holds the old bits and the new writes, relative to the old base
    assert tracked.dirty_chunks(VM, DRIVE) == {0, 1, 2, 40, 17}
    assert redis_client.exists(keys.frozen_bits(backup, DRIVE)) == 0
    assert tracked.meta(VM, DRIVE) == before
    assert tracked.state(backup) is TxnState.ROLLED_BACK


def test_rollback_of_a_first_backup_keeps_it_a_first_backup(bitmaps: RedisBitmaps) -> None:
    backup = new_backup()
    freeze(bitmaps, backup)
    bitmaps.mark_dirty(VM, DRIVE, 0, 1)

    bitmaps.rollback(backup)

    meta = bitmaps.meta(VM, DRIVE)
    assert meta is not None
    assert meta.base == ""
    assert bitmaps.dirty_chunks(VM, DRIVE) == {0}


def test_commit_is_idempotent(tracked: RedisBitmaps) -> None:
    backup = new_backup()
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    freeze(tracked, backup)
    tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo")
    tracked.mark_dirty(VM, DRIVE, CS, 1)

    assert tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo") is False
    assert tracked.dirty_chunks(VM, DRIVE) == {1}
    assert tracked.state(backup) is TxnState.COMMITTED


def test_rollback_is_idempotent(tracked: RedisBitmaps) -> None:
    backup = new_backup()
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    freeze(tracked, backup)
    tracked.rollback(backup)

    assert tracked.rollback(backup) is False
    assert tracked.dirty_chunks(VM, DRIVE) == {0}
    assert tracked.state(backup) is TxnState.ROLLED_BACK


def test_a_committed_backup_cannot_roll_back(tracked: RedisBitmaps) -> None:
    backup = new_backup()
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    freeze(tracked, backup)
    tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo")

    with pytest.raises(TransactionStateError, match="committed"):
        tracked.rollback(backup)

    assert tracked.dirty_chunks(VM, DRIVE) == set()
    assert tracked.state(backup) is TxnState.COMMITTED


def test_a_rolled_back_backup_cannot_commit(tracked: RedisBitmaps) -> None:
    backup = new_backup()
    before = tracked.meta(VM, DRIVE)
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    freeze(tracked, backup)
    tracked.rollback(backup)

    with pytest.raises(TransactionStateError, match="rolledback"):
        tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo")

    assert tracked.meta(VM, DRIVE) == before
    assert tracked.dirty_chunks(VM, DRIVE) == {0}


def test_commit_or_rollback_of_an_unknown_backup_is_not_found(bitmaps: RedisBitmaps) -> None:
    backup = new_backup()
    with pytest.raises(NotFound):
        bitmaps.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo")
    with pytest.raises(NotFound):
        bitmaps.rollback(backup)
    assert bitmaps.state(backup) is None


def test_frozen_bits_of_a_bitmap_longer_than_one_read_block(bitmaps: RedisBitmaps) -> None:
    # Given a drive whose bitmap is read from Redis in two blocks (a 37 GiB drive)
    count = BITMAP_READ_BLOCK * 8 + 70_000
    track(bitmaps, VM, DRIVE, count * CS)
    marked = {0, BITMAP_READ_BLOCK * 8 - 1, BITMAP_READ_BLOCK * 8, count - 1}
    for chunk_no in marked:
        bitmaps.mark_dirty(VM, DRIVE, chunk_no * CS, 1)
    backup = new_backup()

    # When a backup freezes it and walks its bits
    frozen = bitmaps.freeze(backup, VM, [FreezeItem(DRIVE, count * CS, CS)])
    bits = list(bitmaps.frozen_bits(backup, DRIVE, count))

    # Then every chunk is visited once and exactly the marked ones are dirty
    assert counts(frozen) == {DRIVE: (4, True)}
    assert len(bits) == count
    assert {i for i, bit in enumerate(bits) if bit} == marked


@pytest.mark.parametrize(("vmid", "drive"), [("../100", DRIVE), (VM, "../scsi0"), (VM, "SCSI0")])
def test_the_tracker_refuses_names_that_are_no_vmid_or_drive(
    tracked: RedisBitmaps, vmid: str, drive: str
) -> None:
    with pytest.raises(InvalidInput):
        Tracker(tracked).mark_dirty(vmid, drive, 0, 1)

    assert tracked.dirty_chunks(VM, DRIVE) == set()


def test_the_tracker_marks_a_reported_write(tracked: RedisBitmaps) -> None:
    assert Tracker(tracked).mark_dirty(VM, DRIVE, CS - 1, 2) == 2

    assert tracked.dirty_chunks(VM, DRIVE) == {0, 1}


def test_a_committed_bitmap_proves_itself_at_the_next_freeze(tracked: RedisBitmaps) -> None:
    # Given a committed bitmap with writes since
    before = tracked.meta(VM, DRIVE)
    tracked.mark_dirty(VM, DRIVE, 0, 1)

    # When the next backup freezes it
    frozen = freeze(tracked, new_backup())[DRIVE]

    # Then its bits carry the epoch its meta named, and the fresh bitmap has a new one
    assert before is not None and before.epoch
    assert (frozen.whole, frozen.prior) == (True, before.epoch)
    assert frozen.epoch not in ("", before.epoch)


def test_a_rolled_back_bitmap_still_proves_itself(tracked: RedisBitmaps) -> None:
    backup = new_backup()
    freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, CS, 1)
    tracked.rollback(backup)

    frozen = freeze(tracked, new_backup())[DRIVE]

    assert frozen.whole
    assert counts({DRIVE: frozen}) == {DRIVE: (1, False)}


def test_an_evicted_bits_key_cannot_prove_itself_even_after_a_mark(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    # Given the bits key was evicted, then a write was marked (recreating the key)
    redis_client.delete(keys.bitmap_bits(VM, DRIVE))
    tracked.mark_dirty(VM, DRIVE, 7 * CS, 1)

    # Then the freeze says the bits are not whole, yet keeps the marked chunk
    frozen = freeze(tracked, new_backup())[DRIVE]
    assert not frozen.whole
    assert counts({DRIVE: frozen}) == {DRIVE: (1, False)}


@pytest.mark.parametrize("lost", ["active", "frozen"])
def test_bits_lost_during_a_backup_leave_a_bitmap_that_cannot_prove_itself(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys, lost: str
) -> None:
    # Given a frozen backup whose active or frozen bits Redis evicts before it rolls back
    tracked.mark_dirty(VM, DRIVE, 0, 1)
    backup = new_backup()
    freeze(tracked, backup)
    tracked.mark_dirty(VM, DRIVE, 9 * CS, 1)
    key = keys.bitmap_bits(VM, DRIVE) if lost == "active" else keys.frozen_bits(backup, DRIVE)
    redis_client.delete(key)

    # When it rolls back
    tracked.rollback(backup)

    # Then what is left says it is not whole: the next backup reads everything
    meta = tracked.meta(VM, DRIVE)
    assert meta is not None and meta.epoch == ""
    assert not freeze(tracked, new_backup())[DRIVE].whole


def test_frozen_bits_evicted_while_read_raise_instead_of_reading_clean(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    tracked.mark_dirty(VM, DRIVE, 0, SIZE)
    backup = new_backup()
    freeze(tracked, backup)
    redis_client.delete(keys.frozen_bits(backup, DRIVE))

    with pytest.raises(IntegrityError, match="vanished"):
        list(tracked.frozen_bits(backup, DRIVE, CHUNKS))


def test_commit_after_the_meta_was_evicted_leaves_a_whole_meta(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    backup = new_backup()
    frozen = freeze(tracked, backup)[DRIVE]
    redis_client.delete(keys.bitmap_meta(VM, DRIVE))

    tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo-2")

    meta = tracked.meta(VM, DRIVE)
    assert meta == BitmapMeta(SIZE, CS, "vm/100/2026-02-01T00:00:00Z", "repo-2", frozen.epoch)


def test_a_backup_frozen_before_epochs_existed_commits_to_a_full_read(
    tracked: RedisBitmaps, redis_client: Redis, keys: Keys
) -> None:
    # Given a transaction frozen by an older txnbackup: its drives carry no epoch
    backup = new_backup()
    freeze(tracked, backup)
    txn = keys.bitmap_txn(backup)
    old_style = [{"drive": DRIVE, "size": str(SIZE), "chunk_size": str(CS)}]
    redis_client.hset(txn, "drives", json.dumps(old_style))

    # When this txnbackup commits it, the commit completes, and the bitmap proves nothing
    assert tracked.commit(backup, "vm/100/2026-02-01T00:00:00Z", "repo-2") is True
    meta = tracked.meta(VM, DRIVE)
    assert meta is not None and (meta.base, meta.epoch) == ("vm/100/2026-02-01T00:00:00Z", "")
    assert not freeze(tracked, new_backup())[DRIVE].whole
