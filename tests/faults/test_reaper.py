"""The reaper's decisions and actions, on a real Redis and a real repository (no workers)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import TEST_REDIS_URL
from tests.fleet import sample_content
from txnbackup import transaction
from txnbackup.bitmap import TxnState
from txnbackup.drive import Drive
from txnbackup.keys import Keys
from txnbackup.lease import Heartbeat, LeaseRole
from txnbackup.names import new_backup_id
from txnbackup.record import BackupRecord, DriveMark, DriveState, Phase
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup.status import from_record
from txnbackup.transaction import BackupPlan
from workers.reaper import Reaper, Verdict, judge

NOW = 1_000_000.0


def record_of(fields: dict[str, str] | None) -> BackupRecord | None:
    if fields is None:
        return None
    plan = BackupPlan("u", "100", "T", ())
    base = {"uuid": "u", "vmid": "100", "start_time": "T", "repository": "/r"}
    return BackupRecord.parse({**base, "plan": json.dumps(plan.to_dict()), **fields})


@pytest.mark.parametrize(
    ("fields", "leased", "verdict"),
    [
        (None, False, Verdict.FORGET),
        ({"phase": "done"}, False, Verdict.FORGET),
        ({"phase": "running", "running": "scsi0"}, True, Verdict.ALIVE),
        ({"phase": "running", "running": "scsi0"}, False, Verdict.ABANDON),
        ({"phase": "running", "last_activity": str(NOW - 10)}, False, Verdict.ALIVE),
        ({"phase": "running", "last_activity": str(NOW - 100)}, False, Verdict.ABANDON),
        ({"phase": "committing"}, False, Verdict.RESUME_COMMIT),
        ({"phase": "committing"}, True, Verdict.ALIVE),
        ({"phase": "rolling_back"}, False, Verdict.RESUME_ROLLBACK),
        # a live worker whose drive has not moved for longer than the stall timeout
        ({"phase": "running", "running": "scsi0", "progress_at": str(NOW - 10)}, True, "alive"),
        ({"phase": "running", "running": "scsi0", "progress_at": str(NOW - 100)}, True, "stalled"),
        ({"phase": "committing", "progress_at": str(NOW - 100)}, True, Verdict.ALIVE),
        # the backup's own queue timeout (backup --timeout) rules over the reaper's default
        (
            {"phase": "running", "last_activity": str(NOW - 100), "queue_timeout": "200"},
            False,
            "alive",
        ),
        (
            {"phase": "running", "last_activity": str(NOW - 30), "queue_timeout": "20"},
            False,
            "abandon",
        ),
    ],
)
def test_judge(fields: dict[str, str] | None, leased: bool, verdict: Verdict) -> None:
    judged = judge(record_of(fields), leased, NOW, queue_timeout=60, stall_timeout=60)
    assert judged.verdict == verdict


@pytest.fixture
def rt(keys: Keys, redis_client: Redis) -> Runtime:
    settings = Settings(redis_url=TEST_REDIS_URL, key_prefix=keys.prefix, orphan_grace=1)
    return Runtime.from_settings(settings)


def no_rollback(backup: str) -> None:
    raise AssertionError(f"the reaper queued a rollback of {backup}; it rolls back itself")


def mark_running(rt: Runtime, backup: str, drive: str) -> None:
    """What a drive task records as it starts (its lease is another matter)."""
    stats = rt.records.load(backup).drive(drive).stats
    mark = DriveMark.START
    assert rt.records.report_drive(backup, drive, DriveState.RUNNING, stats, mark=mark)


def started_backup(rt: Runtime, repo: Repository, tmp_path: Path) -> transaction.BackupPlan:
    path = tmp_path / "scsi0.raw"
    path.write_bytes(sample_content(512 * 1024, seed=1))
    plan = transaction.prepare(repo, rt.bitmaps, "100", [Drive("scsi0", str(path))])
    rt.locks.lock("100", plan.backup)
    rt.records.create(plan, str(repo.path), ["t1", "t2"])
    return plan


def test_a_backup_whose_worker_died_mid_drive_is_rolled_back(
    rt: Runtime, repo: Repository, tmp_path: Path
) -> None:
    # Given a running backup whose drive task holds no lease any more (its worker is gone)
    plan = started_backup(rt, repo, tmp_path)
    mark_running(rt, plan.backup, "scsi0")

    # When the reaper runs
    acted = Reaper(rt, no_rollback).run_once()

    # Then it rolled the backup back as an error naming the drive, freeing the VM
    assert acted == {plan.backup: Verdict.ABANDON}
    status = from_record(rt.records.load(plan.backup))
    assert (status.status, status.errmsg) == ("error", "worker lost while copying drive scsi0")
    assert [d.state for d in status.drives] == ["failed"]
    assert rt.locks.holder("100") is None
    assert rt.bitmaps.state(plan.backup) is TxnState.ROLLED_BACK
    assert not (repo.path / "staging" / plan.backup).exists()
    assert Reaper(rt, no_rollback).run_once() == {}


def test_a_live_backup_is_left_alone(rt: Runtime, repo: Repository, tmp_path: Path) -> None:
    plan = started_backup(rt, repo, tmp_path)
    mark_running(rt, plan.backup, "scsi0")
    rt.leases.touch(plan.backup, LeaseRole.COPY, "w", 30)
    assert Reaper(rt, no_rollback).run_once() == {}
    assert rt.records.phase(plan.backup) is Phase.RUNNING


def test_bits_frozen_by_a_producer_that_died_are_returned(
    rt: Runtime, repo: Repository, tmp_path: Path, redis_client: Redis, keys: Keys
) -> None:
    # Given a committed backup, a write, and a producer that froze the bitmap and died
    plan = started_backup(rt, repo, tmp_path)
    transaction.copy(repo, rt.bitmaps, plan, "scsi0", lambda: None, lambda s: None)
    transaction.commit(repo, rt.bitmaps, plan)
    rt.records.finish(rt.records.load(plan.backup), Phase.DONE)
    assert rt.bitmaps.mark_dirty("100", "scsi0", 70_000, 10) == 1
    orphan = new_backup_id()
    drive = Drive("scsi0", str(tmp_path / "scsi0.raw"))
    transaction.prepare(repo, rt.bitmaps, "100", [drive], backup=orphan)
    assert rt.bitmaps.dirty_chunks("100", "scsi0") == set()
    redis_client.zadd(keys.bitmap_txns(), {orphan: time.time() - 10})
    old = time.time() - 10
    os.utime(repo.path / "staging" / orphan, (old, old))

    # When the reaper of a worker of that repository runs
    own = Runtime.from_settings(dataclasses.replace(rt.settings, repository=repo.path))
    Reaper(own, no_rollback).run_once()

    # Then the frozen bit is back in the active bitmap and the staging area is gone
    assert rt.bitmaps.state(orphan) is TxnState.ROLLED_BACK
    assert rt.bitmaps.dirty_chunks("100", "scsi0") == {1}
    assert not (repo.path / "staging" / orphan).exists()


def test_a_drive_stopped_from_outside_keeps_its_lease_until_it_expires(
    rt: Runtime, repo: Repository, tmp_path: Path
) -> None:
    # Given a drive task whose process is being terminated (SystemExit) mid-drive
    plan = started_backup(rt, repo, tmp_path)
    mark_running(rt, plan.backup, "scsi0")
    with (
        pytest.raises(SystemExit),
        Heartbeat(rt.leases, plan.backup, LeaseRole.COPY, "w/t1", ttl=30),
    ):
        raise SystemExit(1)

    # When the reaper runs before whoever terminated it has reported for it
    acted = Reaper(rt, no_rollback).run_once()

    # Then it leaves the backup alone: the lease says someone may still speak for the drive
    assert acted == {}
    assert rt.records.phase(plan.backup) is Phase.RUNNING


def test_a_lost_drive_of_a_cancelled_backup_ends_cancelled_not_in_error(
    rt: Runtime, repo: Repository, tmp_path: Path
) -> None:
    # Given a backup cancelled by a terminate, whose drive's worker then died without a word
    plan = started_backup(rt, repo, tmp_path)
    mark_running(rt, plan.backup, "scsi0")
    rt.cancels.request(plan.backup, "task t1 terminated")

    # When the reaper finds the drive running without a lease
    assert Reaper(rt, no_rollback).run_once() == {plan.backup: Verdict.ABANDON}

    # Then the first cause stays the cause: cancelled, and the drive too
    status = from_record(rt.records.load(plan.backup))
    assert (status.status, status.errmsg) == ("cancelled", "task t1 terminated")
    assert [d.state for d in status.drives] == ["cancelled"]


def test_a_step_handing_over_to_the_next_never_looks_lost(
    rt: Runtime, repo: Repository, tmp_path: Path
) -> None:
    # Given a backup whose steps hand over again and again as a QEMU begin hands over to its
    # first copy: take the lease, mark the record; unmark it, drop the lease
    plan = started_backup(rt, repo, tmp_path)
    stop = threading.Event()

    def hand_over() -> None:
        while not stop.is_set():
            rt.leases.touch(plan.backup, LeaseRole.COPY, "begin", 30)
            assert rt.records.mark_begin(plan.backup, "begin")
            rt.records.end_begin(plan.backup)
            rt.leases.drop(plan.backup, LeaseRole.COPY, "begin")

    steps = threading.Thread(target=hand_over)
    steps.start()
    try:
        # When a reaper makes pass after pass meanwhile
        reaper = Reaper(rt, no_rollback)
        acted = [reaper.run_once() for _ in range(100)]
    finally:
        stop.set()
        steps.join()
    # Then it never found a marked backup without a lease: no pass acted, the backup runs
    assert [a for a in acted if a] == []
    assert rt.records.phase(plan.backup) is Phase.RUNNING
