"""Restoring drives from snapshots, and verifying snapshots."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.unit.builders import (
    CS,
    Done,
    Image,
    make_image,
    mixed_content,
    restored,
    run_backup,
    stray_files,
    text_bytes,
)
from txnbackup import chunk
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import CorruptChunk, IntegrityError, InvalidInput, NotFound
from txnbackup.repository import Repository
from txnbackup.restore import restore_all, restore_drive
from txnbackup.transaction import commit, copy, prepare
from txnbackup.verify import verify_snapshot

VM = "100"


def supports_holes(directory: Path) -> bool:
    probe = directory / "hole-probe"
    probe.touch()
    os.truncate(probe, 4 * CS)
    try:
        return probe.stat().st_blocks == 0
    finally:
        probe.unlink()


def flip_payload_byte(repo: Repository, digest: str) -> None:
    path = repo.chunks.path_for(digest)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    path.write_bytes(bytes(damaged))


@pytest.fixture
def shared() -> bytes:
    """A random chunk that two drives hold at several positions."""
    return random.Random(31).randbytes(CS)


@pytest.fixture
def vm(tmp_path: Path, shared: bytes) -> tuple[Image, Image]:
    # scsi0: ten chunks, the shared one at positions 1, 4 and 9; scsi1: it at position 2
    rng = random.Random(32)
    make = {
        "s": lambda: shared,
        "r": lambda: rng.randbytes(CS),
        "t": lambda: text_bytes(rng, CS),
        "z": lambda: bytes(CS),
    }
    content = b"".join(make[kind]() for kind in "tsrzstrzts")
    scsi0 = make_image(tmp_path, "scsi0", content)
    scsi1 = make_image(tmp_path, "scsi1", text_bytes(rng, 2 * CS) + shared + b"tail")
    return scsi0, scsi1


@pytest.fixture
def backed_up(repo: Repository, bitmaps: RedisBitmaps, vm: tuple[Image, Image]) -> Done:
    return run_backup(repo, bitmaps, VM, [d.drive for d in vm])


def test_every_drive_restores_byte_identical(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    for disk in vm:
        assert restored(repo, backed_up.snapshot, disk.name, tmp_path / "r") == disk.read()


def test_restore_reports_what_it_wrote(tmp_path: Path, repo: Repository, backed_up: Done) -> None:
    result = restore_drive(repo, backed_up.snapshot, "scsi0", tmp_path / "out.raw")

    assert (result.size, result.chunks, result.zero_chunks) == (10 * CS, 10, 2)
    assert stray_files(tmp_path) == []


def test_zero_chunks_are_restored_as_holes(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    if not supports_holes(tmp_path):
        pytest.skip(f"the file system of {tmp_path} does not support holes")
    # Given a 2 MiB drive with data in two chunks only, written densely
    rng = random.Random(33)
    content = bytearray(32 * CS)
    content[3 * CS : 4 * CS] = rng.randbytes(CS)
    content[20 * CS : 21 * CS] = rng.randbytes(CS)
    disk = make_image(tmp_path, "scsi0", bytes(content))
    done = run_backup(repo, bitmaps, VM, [disk.drive])

    # When it is restored
    target = tmp_path / "restored.raw"
    restore_drive(repo, done.snapshot, "scsi0", target)

    # Then the content is the same but the zero chunks take no space
    assert target.read_bytes() == disk.read()
    assert target.stat().st_size == disk.path.stat().st_size
    assert target.stat().st_blocks < disk.path.stat().st_blocks
    assert target.stat().st_blocks * 512 <= 4 * CS


def test_restore_refuses_to_replace_a_file_unless_asked(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    # Given a file where the restore should go
    target = tmp_path / "precious.raw"
    target.write_bytes(b"do not lose me")

    # When a restore to it is asked without overwrite, Then it is refused and the file kept
    with pytest.raises(InvalidInput, match="exists"):
        restore_drive(repo, backed_up.snapshot, "scsi0", target)
    assert target.read_bytes() == b"do not lose me"

    # And with overwrite it is replaced by the drive
    restore_drive(repo, backed_up.snapshot, "scsi0", target, overwrite=True)
    assert target.read_bytes() == vm[0].read()


def test_restore_of_an_unknown_drive_names_the_drives_there(
    tmp_path: Path, repo: Repository, backed_up: Done
) -> None:
    with pytest.raises(NotFound, match="scsi0, scsi1"):
        restore_drive(repo, backed_up.snapshot, "virtio9", tmp_path / "out.raw")

    assert not (tmp_path / "out.raw").exists()


def test_restore_into_a_missing_directory_is_refused(
    tmp_path: Path, repo: Repository, backed_up: Done
) -> None:
    with pytest.raises(NotFound):
        restore_drive(repo, backed_up.snapshot, "scsi0", tmp_path / "nope" / "out.raw")


def test_restore_all_writes_every_drive_byte_identical_with_holes(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    # Given a 2-drive snapshot (scsi0 has two all-zero chunks) and an empty directory
    into = tmp_path / "restored"
    into.mkdir()

    # When every drive is restored at once
    done = restore_all(repo, backed_up.snapshot, into)

    # Then each drive is in DIR/<drive>.raw, byte-identical, in the manifest's order
    assert [(d.name, d.target) for d in done] == [
        ("scsi0", into / "scsi0.raw"),
        ("scsi1", into / "scsi1.raw"),
    ]
    for disk in vm:
        assert (into / f"{disk.name}.raw").read_bytes() == disk.read()
    assert [d.result.zero_chunks for d in done] == [2, 0]
    assert stray_files(into) == []
    # And the zero chunks are holes where the file system has them
    if supports_holes(into):
        assert (into / "scsi0.raw").stat().st_blocks * 512 < 9 * CS  # 8 data chunks, 2 holes


def test_restore_all_refuses_existing_files_and_writes_nothing(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    # Given a directory where one drive's file exists already
    into = tmp_path / "restored"
    into.mkdir()
    (into / "scsi1.raw").write_bytes(b"do not lose me")

    # When every drive is restored without overwrite, Then it is refused naming the file
    with pytest.raises(InvalidInput, match=r"scsi1\.raw.*--overwrite"):
        restore_all(repo, backed_up.snapshot, into)
    # And nothing was written, the file kept
    assert sorted(p.name for p in into.iterdir()) == ["scsi1.raw"]
    assert (into / "scsi1.raw").read_bytes() == b"do not lose me"

    # And with overwrite both drives are restored
    restore_all(repo, backed_up.snapshot, into, overwrite=True)
    assert [(into / f"{d.name}.raw").read_bytes() for d in vm] == [d.read() for d in vm]


def test_restore_all_into_a_missing_directory_is_refused(
    tmp_path: Path, repo: Repository, backed_up: Done
) -> None:
    with pytest.raises(NotFound, match="directory"):
        restore_all(repo, backed_up.snapshot, tmp_path / "nope")

    assert not (tmp_path / "nope").exists()


def test_verify_of_a_good_snapshot_is_ok(repo: Repository, backed_up: Done) -> None:
    report = verify_snapshot(repo, backed_up.snapshot)

    assert report.ok
    assert report.problems == ()
    assert report.chunks == 10 + 4  # scsi1: two text chunks, the shared one, a 4-byte tail


def test_verify_reports_every_position_of_a_corrupt_chunk(
    repo: Repository, shared: bytes, backed_up: Done
) -> None:
    # Given the chunk both drives share is damaged on disk
    digest = chunk.digest_of(shared)
    flip_payload_byte(repo, digest)

    # When the snapshot is verified
    report = verify_snapshot(repo, backed_up.snapshot)

    # Then each drive and byte offset that uses it is reported, and nothing else
    assert not report.ok
    assert {(p.drive, p.offset, p.digest) for p in report.problems} == {
        ("scsi0", 1 * CS, digest),
        ("scsi0", 4 * CS, digest),
        ("scsi0", 9 * CS, digest),
        ("scsi1", 2 * CS, digest),
    }
    assert len(report.problems) == 4
    assert all("CRC" in p.reason for p in report.problems)


def test_verify_reports_a_missing_chunk(repo: Repository, shared: bytes, backed_up: Done) -> None:
    digest = chunk.digest_of(shared)
    repo.chunks.path_for(digest).unlink()

    report = verify_snapshot(repo, backed_up.snapshot)

    assert len(report.problems) == 4
    assert all(p.digest == digest and "missing" in p.reason for p in report.problems)


def test_verify_and_restore_report_a_damaged_index(
    tmp_path: Path, repo: Repository, backed_up: Done
) -> None:
    index = repo.snapshot_dir(backed_up.snapshot) / "scsi1.fidx"
    damaged = bytearray(index.read_bytes())
    damaged[-3] ^= 0x01
    index.write_bytes(bytes(damaged))

    report = verify_snapshot(repo, backed_up.snapshot)
    with pytest.raises(IntegrityError, match="scsi1"):
        restore_drive(repo, backed_up.snapshot, "scsi1", tmp_path / "out.raw")

    assert [(p.drive, p.offset) for p in report.problems] == [("scsi1", -1)]
    assert not (tmp_path / "out.raw").exists()


def test_verify_reports_a_damaged_config_blob(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    disk = make_image(tmp_path, "scsi0", mixed_content(2 * CS, seed=34))
    plan = prepare(repo, bitmaps, VM, [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", lambda: None, lambda stats: None)
    snapshot = commit(repo, bitmaps, plan, {"qemu-server.conf": b"memory: 2048\n"})
    assert verify_snapshot(repo, snapshot).ok

    (repo.snapshot_dir(snapshot) / "qemu-server.conf.blob").write_bytes(b"memory: 4096\n")

    problems = verify_snapshot(repo, snapshot).problems
    assert [(p.drive, p.offset) for p in problems] == [("blob:qemu-server.conf", -1)]


@pytest.mark.parametrize(("drive", "offset"), [("scsi0", CS), ("scsi1", 2 * CS)])
def test_restore_of_a_corrupt_chunk_names_drive_and_offset_and_leaves_no_file(
    tmp_path: Path,
    repo: Repository,
    shared: bytes,
    backed_up: Done,
    drive: str,
    offset: int,
) -> None:
    # Given a snapshot whose shared chunk is damaged
    flip_payload_byte(repo, chunk.digest_of(shared))
    out = tmp_path / "out"
    out.mkdir()

    # When a drive using it is restored
    with pytest.raises(CorruptChunk) as caught:
        restore_drive(repo, backed_up.snapshot, drive, out / f"{drive}.raw")

    # Then the error says where, and no partial file is left
    assert f"drive {drive}, offset {offset}" in str(caught.value)
    assert caught.value.args[0] == chunk.digest_of(shared)
    assert list(out.iterdir()) == []
