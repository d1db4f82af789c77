"""What ``verify`` calls good, ``restore`` restores: every check a restore makes of a chunk,
verify makes too, so an operator never learns at restore time what verify could have said.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.faults.test_tampered_repository import canonical_sha256
from tests.unit.builders import (
    CS,
    Done,
    Image,
    make_image,
    mixed_content,
    no_cancel,
    no_progress,
    run_backup,
)
from txnbackup.action import BitmapAction
from txnbackup.bitmap import RedisBitmaps
from txnbackup.drive import FileDrive
from txnbackup.engine import CopyJob, Incremental, copy_drive
from txnbackup.errors import CorruptChunk, IntegrityError
from txnbackup.index import HEADER
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.staging import Staging
from txnbackup.verify import verify_snapshot

VM = "100"
SIZE = 5 * CS + 1000  # six chunks: random, text, zero, random, text, a short zero one


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=41))


@pytest.fixture
def done(repo: Repository, bitmaps: RedisBitmaps, image: Image) -> Done:
    return run_backup(repo, bitmaps, VM, [image.drive])


def put_digest_at(repo: Repository, snapshot: SnapshotId, position: int, source: int) -> None:
    """Make the index name the chunk of ``source`` at ``position`` as well, the index's and
    the manifest's checksums made to match (a consistent edit, or a writer's bug)."""
    index = repo.snapshot_dir(snapshot) / "scsi0.fidx"
    raw = bytearray(index.read_bytes())
    at = HEADER.size + 32 * source
    raw[HEADER.size + 32 * position : HEADER.size + 32 * (position + 1)] = raw[at : at + 32]
    index.write_bytes(bytes(raw))
    path = repo.snapshot_dir(snapshot) / "manifest.json"
    data = json.loads(path.read_text())
    data["drives"][0]["index_sha256"] = hashlib.sha256(raw).hexdigest()
    data["manifest_sha256"] = canonical_sha256(data)
    path.write_text(json.dumps(data))


def test_a_whole_chunk_where_the_short_last_one_belongs_fails_verify_as_it_fails_restore(
    tmp_path: Path, repo: Repository, done: Done
) -> None:
    # Given an index whose short last entry names a whole (intact) chunk of the drive
    put_digest_at(repo, done.snapshot, position=5, source=0)

    # When the snapshot is restored, Then the restore refuses the chunk's length
    with pytest.raises(CorruptChunk, match=f"length {CS}, expected 1000"):
        restore_drive(repo, done.snapshot, "scsi0", tmp_path / "out.raw")

    # And verify does not call it good: it names the drive, the offset and the length
    report = verify_snapshot(repo, done.snapshot)
    assert not report.ok
    assert [(p.drive, p.offset) for p in report.problems] == [("scsi0", 5 * CS)]
    assert f"length {CS}, expected 1000" in report.problems[0].reason
    # And the chunk itself, intact, is not moved aside: the first drive position still reads
    assert repo.chunks.has(index_digest(repo, done.snapshot, 0))


def index_digest(repo: Repository, snapshot: SnapshotId, position: int) -> str:
    raw = (repo.snapshot_dir(snapshot) / "scsi0.fidx").read_bytes()
    return raw[HEADER.size + 32 * position : HEADER.size + 32 * (position + 1)].hex()


def test_an_incremental_refuses_a_base_index_of_another_drive_size(
    tmp_path: Path, repo: Repository, image: Image, done: Done
) -> None:
    # Given the drive 500 bytes shorter than its base snapshot, the chunk count unchanged
    (tmp_path / "now").mkdir()
    shorter = make_image(tmp_path / "now", "scsi0", image.read()[:-500])
    backup = new_backup_id()
    staging = Staging(repo, backup)
    staging.create()
    base_index = repo.snapshot_dir(done.snapshot) / "scsi0.fidx"
    nothing_dirty = Incremental(0, [False] * 6, base_index)
    job = CopyJob(VM, backup, "scsi0", BitmapAction.USED)

    # When it is copied as an incremental on that base, Then the copy is refused: the base's
    # short last chunk (1000 bytes) is not the drive's (500 bytes)
    with (
        FileDrive("scsi0", shorter.path) as reader,
        pytest.raises(IntegrityError, match="another geometry"),
    ):
        copy_drive(job, reader, staging, nothing_dirty, no_cancel, no_progress)
