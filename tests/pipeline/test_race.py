"""A cancel racing the commit: every backup ends wholly done or wholly rolled back.

The commit claims its phase in one script that fails while a cancel is recorded; a cancel
recorded after the claim is too late. Each test pins the cancel on one side of that claim (a
worker pausing there, TXNBACKUP_FAILPOINTS) and asserts the one outcome that side must give;
the sweep at random moments (tests/faults/test_races.py) checks that every run ends in one of
the two, completely.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from txnbackup.bitmap import TxnState
from txnbackup.record import Phase
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus
from txnbackup.tracker import Tracker

KIB = 1024
PAUSE = "sleep:1.5"


def one_outcome(producer: Producer, vm: SampleVM, repo: Repository, backup: str) -> BackupStatus:
    """The backup ended in exactly one outcome, completely: never both, never neither."""
    status = producer.wait(backup, timeout=30)
    assert not status.active, f"backup still {status.phase} after 30 s"
    record = producer.rt.records.load(backup)
    snapshots = [str(s) for s in repo.snapshots(vm.vmid)]
    metas = [producer.rt.bitmaps.meta(vm.vmid, d.name) for d in vm.drives]
    assert not any((repo.path / "staging").iterdir())
    assert producer.rt.records.holder(vm.vmid) is None
    if status.status == "done":
        assert snapshots == [status.snapshot]
        assert record.counters == {"commit_runs": 1}
        assert producer.rt.bitmaps.state(backup) is TxnState.COMMITTED
        assert all(m is not None and m.base == status.snapshot for m in metas)
    else:
        assert status.status == "cancelled", status.errmsg
        assert snapshots == []
        assert record.counters == {"rollback_runs": 1}
        assert producer.rt.bitmaps.state(backup) is TxnState.ROLLED_BACK
        assert all(m is not None and m.base == "" for m in metas)
    return status


def paused_fleet(make_fleet: Callable[[dict[str, str]], Fleet], where: str) -> Fleet:
    fleet = make_fleet({"TXNBACKUP_FAILPOINTS": f"{where}={PAUSE}"})
    fleet.start("default")
    fleet.start("node2")
    return fleet


def quick_vm(fleet: Fleet, root: Path) -> SampleVM:
    vm = SampleVM(new_vmid(), root, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", 256 * KIB, seed=1)
    vm.add_drive("scsi1", 256 * KIB, seed=2, node="node2")
    return vm


def test_a_cancel_just_before_the_commit_claims_wins(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a backup whose drives are copied and whose commit is about to claim
    fleet = paused_fleet(make_fleet, "commit.before_claim")
    vm = quick_vm(fleet, tmp_path)
    repo = Repository.init(tmp_path / "repo", 64 * KIB)
    backup = fleet.producer.submit(vm.vmid, vm.drives, repository=repo.path)
    done = ("done", "done")
    wait_for(lambda: tuple(d.state for d in fleet.producer.status(backup).drives) == done)
    # When it is cancelled then
    assert fleet.producer.rt.records.phase(backup) is Phase.RUNNING
    fleet.producer.cancel(backup)
    # Then the cancel wins: nothing is published and every bit is back
    assert one_outcome(fleet.producer, vm, repo, backup).status == "cancelled"


def test_a_cancel_once_the_commit_has_claimed_is_too_late(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a backup whose commit has claimed its phase (and pauses there)
    fleet = paused_fleet(make_fleet, "commit.claimed")
    vm = quick_vm(fleet, tmp_path)
    repo = Repository.init(tmp_path / "repo", 64 * KIB)
    backup = fleet.producer.submit(vm.vmid, vm.drives, repository=repo.path)
    committing = Phase.COMMITTING
    wait_for(lambda: fleet.producer.rt.records.phase(backup) is committing, 30, "the claim")
    # When it is cancelled then
    fleet.producer.cancel(backup)
    # Then the commit completes: one snapshot, bitmaps committed
    assert one_outcome(fleet.producer, vm, repo, backup).status == "done"


@pytest.mark.parametrize("delay_ms", [0, 30, 60, 100])
def test_cancel_racing_the_commit_ends_in_exactly_one_outcome(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, delay_ms: int
) -> None:
    # Given a quick two-drive backup, cancelled at some moment around its end
    vm.add_drive("scsi0", 256 * KIB, seed=1)
    vm.add_drive("scsi1", 256 * KIB, seed=2, node="node2")
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    time.sleep(delay_ms / 1000)
    producer.cancel(backup)
    # Then it ends in one outcome, completely
    one_outcome(producer, vm, pipeline_repo, backup)
