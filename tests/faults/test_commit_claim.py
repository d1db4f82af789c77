"""A cancel on either side of the commit's claim: before it the cancel wins, after it the
commit does (a worker pausing there, TXNBACKUP_FAILPOINTS, pins the moment).

Fleets of their own (make_fleet): on a RabbitMQ broker they would share queues with the
session's fleet, so these run in tests/faults, outside the broker matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.fleet import SampleVM, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from tests.pipeline.test_race import one_outcome
from txnbackup.record import Phase
from txnbackup.repository import Repository
from txnbackup.tracker import Tracker

KIB = 1024
PAUSE = "sleep:5"  # long enough for the test to act under load (CI on 2 busy cores)


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
