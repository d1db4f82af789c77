"""Prune and forget on a real repository, with bitmaps and VM locks in a real Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from redis import Redis

from tests.unit.builders import Image, restored, run_backup
from tests.unit.history import DRIVE, make_history
from txnbackup.action import BitmapAction
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import (
    NoCompleteSnapshot,
    PruneBlocked,
    SnapshotNotFound,
    SnapshotProtected,
)
from txnbackup.keys import Keys
from txnbackup.latest import resolve
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.names import new_backup_id
from txnbackup.protection import protect, unprotect
from txnbackup.prune import Pruner
from txnbackup.removal import REMOVING_NAME, finish_removals
from txnbackup.repository import Repository
from txnbackup.retention import KeepPolicy
from txnbackup.snapshot import SnapshotId
from txnbackup.vmlock import VmLocks

VM = "100"


@pytest.fixture
def pruner(repo: Repository, redis_client: Redis, keys: Keys) -> Pruner:
    return Pruner(repo, redis_client, keys, VmLocks(redis_client, keys))


def test_prune_removes_what_no_rule_keeps_and_the_rest_restores(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 4)

    report = pruner.prune(KeepPolicy(last=2))

    assert [o.snapshot for o in report.removed] == [history[1].snapshot, history[0].snapshot]
    assert repo.snapshots(VM) == [history[3].snapshot, history[2].snapshot]
    assert not repo.snapshot_dir(history[0].snapshot).exists()
    for past in history[2:]:
        assert restored(repo, past.snapshot, DRIVE, tmp_path / "out") == past.content


def test_dry_run_removes_nothing_and_names_the_keeping_rules(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 3)

    report = pruner.prune(KeepPolicy(last=1, daily=1), dry_run=True)

    assert [(o.snapshot, o.reasons) for o in report.outcomes] == [
        (history[2].snapshot, ("last", "daily")),
        (history[1].snapshot, ()),
        (history[0].snapshot, ()),
    ]
    assert len(repo.snapshots(VM)) == 3


def test_protected_snapshots_are_never_removed(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 3)
    assert protect(repo, history[0].snapshot)

    report = pruner.prune(KeepPolicy(last=1))
    with pytest.raises(SnapshotProtected):
        pruner.forget([history[2].snapshot, history[0].snapshot])

    assert [o.snapshot for o in report.removed] == [history[1].snapshot]
    assert repo.snapshots(VM) == [history[2].snapshot, history[0].snapshot]
    assert unprotect(repo, history[0].snapshot)
    pruner.forget([history[0].snapshot])
    assert repo.snapshots(VM) == [history[2].snapshot]


def test_removing_a_bitmap_base_says_so_and_the_next_backup_reads_everything(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    image_dir = tmp_path / "drives"
    assert bitmaps.meta(VM, DRIVE).base == str(history[1].snapshot)  # type: ignore[union-attr]

    report = pruner.forget([history[1].snapshot])

    assert report.outcomes[0].bitmaps == (f"{VM}/{DRIVE}",)
    image = Image(DRIVE, image_dir / VM / f"{DRIVE}.raw")
    done = run_backup(repo, bitmaps, VM, [image.drive])
    assert done.entries[DRIVE].action == BitmapAction.INVALID
    assert done.entries[DRIVE].stats.transferred == len(history[1].content)
    assert restored(repo, done.snapshot, DRIVE, tmp_path / "out") == history[1].content


def test_a_vm_whose_backup_runs_is_not_pruned(
    repo: Repository,
    bitmaps: RedisBitmaps,
    pruner: Pruner,
    redis_client: Redis,
    keys: Keys,
    tmp_path: Path,
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 3)
    running = new_backup_id()
    VmLocks(redis_client, keys).lock(VM, running)

    report = pruner.prune(KeepPolicy(last=1))
    with pytest.raises(PruneBlocked, match=f"backup running: {running}"):
        pruner.forget([history[0].snapshot])

    assert [(e.args[0], e.args[1]) for e in report.blocked] == [(running, VM)]
    assert len(repo.snapshots(VM)) == 3


def test_prune_releases_the_vm_lock(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    pruner.prune(KeepPolicy(last=1))
    assert pruner.locks.holder(VM) is None


def test_forget_of_a_missing_snapshot_removes_nothing(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    missing = SnapshotId(VM, "2020-01-01T00:00:00Z")
    with pytest.raises(SnapshotNotFound):
        pruner.forget([history[0].snapshot, missing])
    assert len(repo.snapshots(VM)) == 2


def test_an_interrupted_removal_is_invisible_and_finished_later(
    repo: Repository, bitmaps: RedisBitmaps, pruner: Pruner, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    directory = repo.snapshot_dir(history[0].snapshot)
    os.rename(directory / MANIFEST_NAME, directory / REMOVING_NAME)  # a crash after step 1
    (directory / f"{DRIVE}.fidx").unlink()

    assert repo.snapshots(VM) == [history[1].snapshot]
    with pytest.raises(SnapshotNotFound):
        repo.manifest(history[0].snapshot)
    report = pruner.prune(KeepPolicy(last=5))

    assert report.finished == [str(history[0].snapshot)]
    assert not directory.exists()


def test_a_snapshot_protected_before_an_interrupted_removal_is_put_back(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 2)
    protect(repo, history[0].snapshot)
    directory = repo.snapshot_dir(history[0].snapshot)
    os.rename(directory / MANIFEST_NAME, directory / REMOVING_NAME)

    assert finish_removals(repo) == []

    assert restored(repo, history[0].snapshot, DRIVE, tmp_path / "out") == history[0].content


def test_latest_is_the_newest_complete_snapshot(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 3)
    damaged = repo.snapshot_dir(history[2].snapshot) / f"{DRIVE}.fidx"
    damaged.write_bytes(damaged.read_bytes()[:-1])

    assert resolve(repo, f"vm/{VM}/latest") == history[1].snapshot
    with pytest.raises(NoCompleteSnapshot, match="VM 200 has no complete snapshot"):
        resolve(repo, "vm/200/latest")
