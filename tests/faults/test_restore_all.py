"""``restore SNAPSHOT --all DIR`` where it can go wrong for an operator: over old files, with
a damaged chunk in a later drive, from a hand-edited manifest.

A restore that fails must leave DIR as it found it: a VM whose first drive is the snapshot's
and whose second is still the old one is worse than no restore, and the operator would not
know which drive was replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.test_tampered_repository import canonical_sha256
from tests.unit.builders import Done, Image, make_image, run_backup
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import CorruptChunk, IntegrityError
from txnbackup.index import HEADER
from txnbackup.repository import Repository
from txnbackup.restore import HOLE_BLOCK, restore_all
from txnbackup.snapshot import SnapshotId
from txnbackup.verify import verify_snapshot

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
VM = "100"
CS = 4 * HOLE_BLOCK  # chunks that hold whole hole blocks of a restored file


def block(seed: int) -> bytes:
    return bytes([seed]) * 7 + os.urandom(HOLE_BLOCK - 7)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", CS)


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Image, Image]:
    zero = bytes(HOLE_BLOCK)
    # scsi0: a chunk with an all-zero hole block inside, an all-zero chunk, and a short last
    # chunk ending in zeros; its size is no multiple of the chunk size or of a hole block
    scsi0 = b"".join([block(1), zero, block(2), block(3)] + [zero] * 4 + [block(4), zero, b"tail"])
    # scsi1: two chunks of data, then a short one
    scsi1 = b"".join([block(5)] * 8) + b"x" * 1000
    return make_image(tmp_path, "scsi0", scsi0), make_image(tmp_path, "scsi1", scsi1)


@pytest.fixture
def done(repo: Repository, bitmaps: RedisBitmaps, vm: tuple[Image, Image]) -> Done:
    return run_backup(repo, bitmaps, VM, [d.drive for d in vm])


def old_files(into: Path, vm: tuple[Image, Image]) -> dict[str, bytes]:
    """Each drive's file in ``into`` as an earlier restore or the VM left it: other bytes
    everywhere, and longer than the drive."""
    old = {}
    for disk in vm:
        old[disk.name] = b"\xff" * (disk.path.stat().st_size + 3 * CS)
        (into / f"{disk.name}.raw").write_bytes(old[disk.name])
    return old


def index_digests(repo: Repository, snapshot: SnapshotId, drive: str) -> list[str]:
    raw = (repo.snapshot_dir(snapshot) / f"{drive}.fidx").read_bytes()[HEADER.size :]
    return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]


def test_restore_all_over_old_files_leaves_zeros_where_the_drive_has_zeros(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], done: Done
) -> None:
    # Given DIR holding older, longer files of every drive, other bytes throughout
    into = tmp_path / "restored"
    into.mkdir()
    old_files(into, vm)

    # When every drive is restored over them
    restore_all(repo, done.snapshot, into, overwrite=True)

    # Then each file is the drive exactly: zeros in holes, zero chunks and the short tail,
    # and no byte of the old file past the drive's end
    for disk in vm:
        assert (into / f"{disk.name}.raw").read_bytes() == disk.read()


def damage_chunk_of_scsi1(repo: Repository, snapshot: SnapshotId) -> None:
    damage_chunk_only_of(repo, snapshot, "scsi1", "scsi0")


def damage_chunk_only_of(repo: Repository, snapshot: SnapshotId, drive: str, other: str) -> None:
    """Flip a byte of the last chunk ``drive`` uses and ``other`` does not."""
    theirs = set(index_digests(repo, snapshot, other))
    ours = [d for d in index_digests(repo, snapshot, drive) if d not in theirs]
    path = repo.chunks.path_for(ours[-1])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("damaged", "other"), [("scsi1", "scsi0"), ("scsi0", "scsi1")])
def test_a_failed_restore_all_leaves_every_old_file_as_it_was(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], done: Done, damaged: str, other: str
) -> None:
    # Given DIR with every drive's old file, and a chunk only one drive uses damaged (the
    # drives are restored at once: the other may be finished, or still being written)
    into = tmp_path / "restored"
    into.mkdir()
    old = old_files(into, vm)
    damage_chunk_only_of(repo, done.snapshot, damaged, other)

    # When every drive is restored over them, Then the restore fails naming drive and offset
    with pytest.raises(CorruptChunk, match=rf"drive {damaged}, offset"):
        restore_all(repo, done.snapshot, into, overwrite=True)

    # And no file was replaced, the first drive's included, and nothing else was left
    assert {p.name: p.read_bytes() for p in into.iterdir()} == {
        f"{name}.raw": data for name, data in old.items()
    }


def test_a_failed_restore_all_into_an_empty_directory_leaves_it_empty(
    tmp_path: Path, repo: Repository, done: Done
) -> None:
    into = tmp_path / "restored"
    into.mkdir()
    damage_chunk_of_scsi1(repo, done.snapshot)

    run = subprocess.run(
        [TXNBACKUP, "restore", f"--repo={repo.path}", str(done.snapshot), "--all", str(into)],
        env={k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == CorruptChunk.exit_code, run.stderr
    assert "Traceback" not in run.stderr
    assert "drive scsi1, offset" in run.stderr
    assert "restored drive" not in run.stdout
    assert list(into.iterdir()) == []
    assert not verify_snapshot(repo, done.snapshot).ok


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "scsi0/../../x", "Scsi0"])
def test_restore_all_refuses_a_drive_name_that_would_leave_dir(
    tmp_path: Path, repo: Repository, done: Done, name: str
) -> None:
    # Given a manifest whose drive name was edited (its checksum recomputed) to leave DIR
    path = repo.snapshot_dir(done.snapshot) / "manifest.json"
    data = json.loads(path.read_text())
    data["drives"][0]["name"] = name
    data["manifest_sha256"] = canonical_sha256(data)
    path.write_text(json.dumps(data))
    into = tmp_path / "deep" / "er" / "restored"
    into.mkdir(parents=True)

    # When every drive is restored, Then it is refused and nothing is written anywhere
    with pytest.raises(IntegrityError, match="drive name"):
        restore_all(repo, done.snapshot, into)
    assert list(into.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "deep").rglob("*")) == ["er", "restored"]
