"""How a backup ends, for every way of stopping it and every drive position (issue 11).

Three drives on two nodes (scsi0 and scsi2 on the default node, scsi1 on node2), each read
slowly; the chosen drive is stopped at a random moment of its copy by a revoke, a terminate
or a SIGKILL of the worker copying it. Whatever the way and the position, the backup must end
within about a second of its cause (a lease expiry for a killed worker), every drive in a
final state, and the error naming the first cause.

Fleets of their own (make_fleet): on a RabbitMQ broker they would share queues with the
session's fleet, so these run in tests/faults, outside the broker matrix.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fleet import SampleVM, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus
from txnbackup.tracker import Tracker

MIB = 1024 * 1024
CHUNK = 64 * 1024
SETTINGS = {
    "TXNBACKUP_LEASE_TTL": "2",
    "TXNBACKUP_REAPER_INTERVAL": "1",
    "TXNBACKUP_ROLLBACK_WAIT": "5",
}
PROMPT = 2.5  # seconds from a revoke to the final status: "about a second", with slack
LOST = 2 + 1 + 2.5  # a killed worker: lease TTL + reaper interval + the same slack
FINAL_DRIVE_STATES = {"done", "failed", "cancelled", "skipped"}
NODES = ("default", "node2", "default")
ROUNDS = 2


@pytest.fixture
def fleet(make_fleet: Callable[[dict[str, str]], Fleet]) -> Iterator[Fleet]:
    fleet = make_fleet(SETTINGS)
    fleet.start("default")
    fleet.start("node2")
    yield fleet


def start_backup(fleet: Fleet, tmp: Path, target: int, rng: random.Random) -> tuple[str, str]:
    """A three-drive backup whose drive ``target`` is being copied; (uuid, its task id)."""
    tmp.mkdir()
    vm = SampleVM(new_vmid(), tmp, Tracker.from_settings(fleet.settings))
    for i, node in enumerate(NODES):
        vm.add_drive(f"scsi{i}", 2 * MIB, seed=i, node=node)
    repo = Repository.init(tmp / f"repo-{vm.vmid}", CHUNK)
    producer = fleet.producer
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, speed_limit=MIB)
    moment = rng.randrange(CHUNK, MIB)
    wait_for(
        lambda: producer.status(backup).drives[target].transferred >= moment,
        30,
        f"drive {target} to be copying",
    )
    return backup, producer.rt.records.task_ids(backup)[target]


def settled(fleet: Fleet, backup: str, since: float, bound: float) -> BackupStatus:
    status = fleet.producer.wait(backup, timeout=30, interval=0.05)
    took = time.monotonic() - since
    assert not status.active, f"still {status.phase} 30 s later"
    assert took < bound, f"ended {took:.2f} s after its cause (bound {bound} s)"
    assert {d.state for d in status.drives} <= FINAL_DRIVE_STATES, status.drives
    assert fleet.producer.rt.locks.holder(status.vmid) is None
    time.sleep(0.3)  # nothing may change once ended: a late drive report included
    again = fleet.producer.status(backup)
    assert [d.state for d in again.drives] == [d.state for d in status.drives]
    return status


def expected_states(target: int, stopped: str) -> list[str]:
    return ["done"] * target + [stopped] + ["skipped"] * (2 - target)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("terminate", [False, True], ids=["revoke", "terminate"])
def test_a_revoke_of_any_drive_ends_the_backup_at_once(
    fleet: Fleet, tmp_path: Path, target: int, terminate: bool
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for round_no in range(ROUNDS):
        # Given a backup copying the target drive at a random moment
        backup, task_id = start_backup(fleet, tmp_path / f"r{round_no}", target, rng)
        # When that drive's task is revoked (or terminated), as Flower or celery control do
        since = time.monotonic()
        fleet.producer.app.control.revoke(task_id, terminate=terminate)
        # Then the whole backup is cancelled within about a second, naming what was done
        status = settled(fleet, backup, since, PROMPT)
        assert status.status == "cancelled", f"seed {seed}: {status.errmsg}"
        # A terminate is a revoke too: the worker's revoke watcher and its task_revoked signal
        # race to record it, and the backup may end before the signal's "terminated" is
        # recorded (workers/revocation.py). Either names the task and what was done to it.
        said = {f"task {task_id} revoked"}
        if terminate:
            said.add(f"task {task_id} terminated")
        assert status.errmsg in said, f"seed {seed}: {status.errmsg}"
        assert [d.state for d in status.drives] == expected_states(target, "cancelled")


@pytest.mark.slow
@pytest.mark.parametrize("target", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_worker_killed_mid_drive_fails_that_drive(
    fleet: Fleet, tmp_path: Path, target: int
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for round_no in range(ROUNDS):
        # Given a backup copying the target drive at a random moment
        backup, _ = start_backup(fleet, tmp_path / f"r{round_no}", target, rng)
        # When the worker copying it dies with its whole pool (a host loss)
        node = NODES[target]
        since = time.monotonic()
        fleet.workers[node].kill_all()
        # Then the other node's reaper ends the backup once the lease expired
        status = settled(fleet, backup, since, LOST)
        assert status.status == "error", f"seed {seed}: {status.errmsg}"
        assert status.errmsg == f"worker lost while copying drive scsi{target}", f"seed {seed}"
        assert [d.state for d in status.drives] == expected_states(target, "failed")
        fleet.start(node)
