"""Revoking any one task cancels the whole backup; a failing drive rolls everything back.

Each case: a committed full backup, then guest writes to every chunk of drive scsi0, then a
slow incremental backup (scsi0 read at 1 MiB/s, so it takes about 4 s) that is stopped while
scsi0 is being copied. Plain Celery fails three of the five cases; all must pass here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from tasks.producer import Producer
from tests.fleet import SampleVM, control_queue_empty, drive_state, wait_for
from tests.pipeline.test_backup import restores_identical
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus

MIB = 1024 * 1024
CHUNK = 64 * 1024
SLOW = MIB  # bytes per second


@dataclass
class Running:
    backup: str
    base: str
    dirty: dict[str, set[int]]


def start_slow_incremental(producer: Producer, vm: SampleVM, repo: Repository) -> Running:
    vm.add_drive("scsi0", 4 * MIB, seed=10)
    vm.add_drive("scsi1", MIB, seed=11)
    vm.add_drive("scsi2", MIB, seed=12, node="node2")
    first = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert first.status == "done", first.errmsg
    vm.write("scsi0", 0, random.Random(1).randbytes(4 * MIB))
    vm.write("scsi2", 3 * CHUNK + 5, b"changed")
    dirty = {d.name: producer.rt.bitmaps.dirty_chunks(vm.vmid, d.name) for d in vm.drives}
    assert len(dirty["scsi0"]) == 64 and dirty["scsi2"] == {3}
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, speed_limit=SLOW)
    wait_for(lambda: _copied(producer.status(backup), "scsi0") > 0, 20, "scsi0 to be copying")
    return Running(backup, first.snapshot, dirty)


def _copied(status: BackupStatus, drive: str) -> int:
    return next(d.transferred for d in status.drives if d.name == drive)


def settle(producer: Producer, backup: str) -> BackupStatus:
    status = producer.wait(backup, timeout=30)
    assert not status.active, f"backup still {status.phase} after 30 s"
    # Every rollback sent (chord errback, the drive's failure path, the revoke watcher) has been
    # delivered before "exactly once" is judged.
    wait_for(lambda: control_queue_empty(producer.app), 10, "the control queue to drain")
    return producer.status(backup)


def assert_rolled_back(
    producer: Producer, vm: SampleVM, repo: Repository, run: Running, tmp: Path
) -> BackupStatus:
    status = settle(producer, run.backup)
    raw = producer.rt.records.raw(run.backup)
    # rollback ran exactly once, commit never
    assert raw.get("rollback_runs") == "1"
    assert "commit_runs" not in raw
    # nothing published, no staging area left, the VM lock is free
    assert [str(s) for s in repo.snapshots(vm.vmid)] == [run.base]
    assert not any((repo.path / "staging").iterdir())
    assert producer.rt.locks.holder(vm.vmid) is None
    # every bitmap kept every change, relative to the old base
    for d in vm.drives:
        assert producer.rt.bitmaps.dirty_chunks(vm.vmid, d.name) >= run.dirty[d.name]
        meta = producer.rt.bitmaps.meta(vm.vmid, d.name)
        assert meta is not None and meta.base == run.base
    # and the next backup covers them all and restores byte for byte
    after = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert after.status == "done", after.errmsg
    assert [d.action for d in after.drives] == ["used"] * 3
    assert [d.dirty for d in after.drives] == [4 * MIB, 0, CHUNK]
    assert restores_identical(repo, after.snapshot, vm, tmp)
    return status


def assert_cancelled_mid_drive(status: BackupStatus, reason: str) -> None:
    assert status.status == "cancelled"
    assert reason in status.errmsg
    scsi0 = status.drives[0]
    assert scsi0.state == "cancelled"
    assert 0 < scsi0.transferred < scsi0.dirty, "scsi0 should have stopped part way"
    assert [drive_state(status, n) for n in ("scsi1", "scsi2")] == ["skipped", "skipped"]


def test_cancel_command_cancels_the_whole_backup(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    run = start_slow_incremental(producer, vm, pipeline_repo)
    producer.cancel(run.backup)
    status = assert_rolled_back(producer, vm, pipeline_repo, run, tmp_path)
    assert_cancelled_mid_drive(status, "cancelled by user")


RevokeAction = Callable[[Celery, list[str]], None]


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        pytest.param(lambda app, ids: app.control.revoke(ids[1]), "revoked", id="queued-drive"),
        pytest.param(lambda app, ids: app.control.revoke(ids[0]), "revoked", id="running-drive"),
        pytest.param(
            lambda app, ids: app.control.revoke(ids[0], terminate=True),
            "",
            id="running-drive-terminate",
        ),
    ],
)
def test_revoking_any_one_task_cancels_the_whole_backup(
    producer: Producer,
    vm: SampleVM,
    pipeline_repo: Repository,
    tmp_path: Path,
    action: RevokeAction,
    reason: str,
) -> None:
    run = start_slow_incremental(producer, vm, pipeline_repo)
    ids = producer.rt.records.task_ids(run.backup)
    action(producer.app, ids)
    status = assert_rolled_back(producer, vm, pipeline_repo, run, tmp_path)
    assert_cancelled_mid_drive(status, reason)
    assert "task " in status.errmsg


@pytest.mark.parametrize("failing", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_failing_drive_rolls_back_every_drive(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path, failing: int
) -> None:
    # Given a committed backup and changes on every drive
    for i, name in enumerate(["scsi0", "scsi1", "scsi2"]):
        vm.add_drive(name, MIB, seed=20 + i)
    first = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)
    assert first.status == "done"
    for d in vm.drives:
        vm.write(d.name, CHUNK, b"new data")
    # When drive k shrinks under the backup
    name = vm.drives[failing].name
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path, speed_limit=4 * MIB)
    with open(vm.path(name), "r+b") as fh:
        fh.truncate(CHUNK)
    status = settle(producer, backup)
    # Then the backup ends in error naming the drive; drives before it finished, later never started
    assert status.status == "error"
    assert f"drive {name}" in status.errmsg
    states = [d.state for d in status.drives]
    assert states == ["done"] * failing + ["failed"] + ["skipped"] * (2 - failing)
    raw = producer.rt.records.raw(backup)
    assert raw.get("rollback_runs") == "1" and "commit_runs" not in raw
    assert [str(s) for s in pipeline_repo.snapshots(vm.vmid)] == [first.snapshot]
    assert producer.rt.locks.holder(vm.vmid) is None
    for d in vm.drives:
        assert 1 in producer.rt.bitmaps.dirty_chunks(vm.vmid, d.name)
