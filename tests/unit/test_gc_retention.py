"""gc after prune: what removed snapshots leave is reclaimed; damaged and half-removed
snapshots neither stop gc nor lose chunks they may still need."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from redis import Redis

from tests.unit.builders import restored
from tests.unit.history import DRIVE, make_history
from txnbackup import gc
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import IntegrityError
from txnbackup.keys import Keys
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.prune import Pruner
from txnbackup.removal import REMOVING_NAME
from txnbackup.repository import Repository
from txnbackup.retention import KeepPolicy
from txnbackup.vmlock import VmLocks

VM = "100"
HOUR = 3600


def age_chunks(repo: Repository) -> None:
    then = time.time() - 2 * HOUR
    for path in (repo.path / "chunks").rglob("*"):
        os.utime(path, (then, then))


def chunk_files(repo: Repository) -> set[str]:
    return {p.name for p in (repo.path / "chunks").rglob("*") if p.is_file()}


def test_gc_reclaims_the_chunks_only_pruned_snapshots_referred_to(
    repo: Repository, bitmaps: RedisBitmaps, redis_client: Redis, keys: Keys, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 4)
    age_chunks(repo)
    before = chunk_files(repo)
    Pruner(repo, redis_client, keys, VmLocks(redis_client, keys)).prune(KeepPolicy(last=1))

    report = gc.collect(repo)

    # each older backup changed one random chunk of its own: three chunk files go
    assert report.removed == 3
    assert report.removed_bytes > 3 * 60000
    assert len(chunk_files(repo)) == len(before) - 3
    assert restored(repo, history[3].snapshot, DRIVE, tmp_path / "out") == history[3].content


def test_gc_marks_the_indexes_of_a_snapshot_whose_manifest_is_damaged(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    age_chunks(repo)
    (repo.snapshot_dir(history[0].snapshot) / MANIFEST_NAME).write_bytes(b"{not json")
    before = chunk_files(repo)

    # A damaged manifest is an integrity problem to look at: gc deletes nothing meanwhile
    with pytest.raises(IntegrityError, match="nothing deleted"):
        gc.collect(repo)

    assert chunk_files(repo) == before


def test_gc_finishes_a_half_removed_snapshot_then_reclaims_its_chunks(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    age_chunks(repo)
    directory = repo.snapshot_dir(history[0].snapshot)
    os.rename(directory / MANIFEST_NAME, directory / REMOVING_NAME)

    dry = gc.collect(repo, dry_run=True)
    report = gc.collect(repo)

    assert dry.removed == 0  # its index is still there, and still marks
    assert report.finished == [str(history[0].snapshot)]
    assert not directory.exists()
    assert report.removed == 1
    assert restored(repo, history[1].snapshot, DRIVE, tmp_path / "out") == history[1].content
