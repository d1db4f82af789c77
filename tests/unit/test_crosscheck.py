"""A ``used`` bitmap that lost changes is caught before its clean chunks are trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.builders import CS, KEEPERS, Image, make_image, mixed_content, restored, run_backup
from txnbackup.bitmap import RedisBitmaps
from txnbackup.constants import ZERO_DIGEST
from txnbackup.crosscheck import contradiction
from txnbackup.repository import Repository

VM = "100"
PATTERN = "rrtrtrrtrr"  # every chunk holds data
SIZE = len(PATTERN) * CS
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


@pytest.fixture
def disk(tmp_path: Path) -> Image:
    return make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=7, pattern=PATTERN))


def punch_hole(path: Path, offset: int, length: int) -> None:
    """Deallocate a range, as a discard or a shrink-and-grow does: it reads as zeros after."""
    fd = os.open(path, os.O_RDWR)
    try:
        libc_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
    finally:
        os.close(fd)


def libc_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    import ctypes  # noqa: PLC0415 - only this helper needs it

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, mode, offset, length) != 0:
        errno = ctypes.get_errno()
        pytest.skip(f"this filesystem cannot punch holes: {os.strerror(errno)}")


LOST = {
    # what was deallocated without a report: (the drive's chunks, the hole's offset, length)
    "two-whole-chunks": (PATTERN, 3 * CS, 2 * CS),
    # the second half of the last chunk with data, as a shrink into it and a grow back leave
    "inside-the-last-chunk-with-data": ("rrtrtrrzzz", 6 * CS + CS // 2, CS // 2),
}


@KEEPERS
@pytest.mark.parametrize("lost", list(LOST))
def test_a_drive_zeroed_behind_the_bitmap_is_read_in_full(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, lost: str
) -> None:
    # Given a backed-up drive, then a range of it deallocated without a report
    pattern, offset, length = LOST[lost]
    disk = make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=8, pattern=pattern))
    run_backup(repo, bitmaps, VM, [disk.drive])
    punch_hole(disk.path, offset, length)
    assert disk.read()[offset : offset + length] == bytes(length)

    # When the next backup runs with the bitmap that says nothing changed
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # Then it reads the whole drive instead, says why, and restores what the drive holds
    entry = done.entries["scsi0"]
    assert done.plan.drive("scsi0").dirty == 0
    assert entry.action == "invalid"
    assert entry.stats.transferred == SIZE
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == disk.read()


@KEEPERS
def test_a_reported_hole_keeps_the_incremental(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, disk: Image
) -> None:
    # Given a backed-up drive, then a chunk deallocated and reported, as a discard is
    run_backup(repo, bitmaps, VM, [disk.drive])
    punch_hole(disk.path, 6 * CS, CS)
    bitmaps.mark_dirty(VM, "scsi0", 6 * CS, CS)

    # When the next backup runs
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # Then the bitmap is believed: one chunk read, the drive restores with the hole
    entry = done.entries["scsi0"]
    assert entry.action == "used"
    assert entry.stats.transferred == CS
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == disk.read()


class ZeroTail:
    """A drive reading zeros from ``zero_from`` on, counting the questions asked of it."""

    size = 8 * CS

    def __init__(self, zero_from: int = 4 * CS) -> None:
        self.zero_from = zero_from
        self.asked = 0

    def next_data(self, offset: int) -> int:
        self.asked += 1
        return offset if offset < self.zero_from else self.size


def test_a_zero_run_costs_the_drive_one_question() -> None:
    drive = ZeroTail()
    digests = [ZERO_DIGEST] * 6 + [b"\x01" * 32] * 2  # the base holds data in the last two
    bits = [False] * 8

    why = contradiction(drive, bits, digests, CS, no_fetch)

    assert why is not None and why.startswith(f"chunk 6 (offset {6 * CS}) reads as zeros")
    assert drive.asked == 1  # chunk 6's question covers chunk 7 too


def test_dirty_chunks_and_zero_base_chunks_are_not_questioned() -> None:
    drive = ZeroTail()
    digests = [b"\x01" * 32] * 4 + [ZERO_DIGEST] * 4
    bits = [False, True, False, True] + [False] * 4

    fetched: list[bytes] = []

    def fetch(digest: bytes) -> bytes:
        fetched.append(digest)
        return bytes(CS - 1) + b"x"  # its last byte holds data, and reads as data now

    assert contradiction(drive, bits, digests, CS, fetch) is None
    assert drive.asked == 3  # chunks 0 and 2, then chunk 2's last byte
    assert fetched == [digests[2]]  # only the last clean chunk with base data


@pytest.mark.parametrize(("cut", "caught"), [(CS // 2, True), (CS - 1, True), (CS, False)])
def test_a_cut_inside_the_last_clean_chunk_is_caught_by_its_last_byte(
    cut: int, caught: bool
) -> None:
    # Given a base whose data ends at byte CS - 1 of chunk 3, and a drive reading zeros from
    # 3 * CS + cut on (chunks 4 on held zeros in the base too)
    drive = ZeroTail(zero_from=3 * CS + cut)
    digests = [b"\x01" * 32] * 4 + [ZERO_DIGEST] * 4

    why = contradiction(drive, [False] * 8, digests, CS, lambda _: b"y" * CS)

    # Then only a cut that reaches into the base's data is a contradiction
    assert (why is not None) is caught
    if caught:
        assert why is not None and why.startswith(f"offset {4 * CS - 1} reads as zero")


def no_fetch(digest: bytes) -> bytes | None:
    raise AssertionError("the whole-chunk proof needs no base chunk")
