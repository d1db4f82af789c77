"""Flower, as operators run it against the fleet: what it shows, and what its buttons do.

A real `celery -A tasks flower` with txnbackup's config file and basic authentication; its
Revoke and Terminate buttons call the REST API these tests call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, wait_for
from tests.operators.conftest import OpsFleet
from tests.operators.fleet import FlowerProcess, metric
from tests.pipeline.test_cancel import (
    assert_cancelled_mid_drive,
    assert_rolled_back,
    start_slow_incremental,
)
from txnbackup.repository import Repository

MIB = 1024 * 1024
SECRET = "root-password: hunter2-do-not-show"


def task_when(
    flower: FlowerProcess, task_id: str, ok: Any, what: str, timeout: float = 30
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def seen() -> bool:
        found.update(flower.task(task_id) or {})
        return bool(found) and bool(ok(found))

    wait_for(seen, timeout, what)
    return found


def test_flower_needs_its_password(ops_fleet: OpsFleet) -> None:
    assert ops_fleet.flower.request("/api/workers", auth=False)[0] == 401
    assert ops_fleet.flower.request("/api/workers")[0] == 200


def test_flower_shows_readable_tasks_and_a_running_drive_in_progress(
    ops_fleet: OpsFleet, ops_producer: Producer, ops_vm: SampleVM, ops_repo: Repository
) -> None:
    # Given a VM of three drives and a config file holding a secret
    flower = ops_fleet.flower
    ops_vm.add_drive("scsi0", 4 * MIB, seed=1)
    ops_vm.add_drive("scsi1", MIB, seed=2)
    ops_vm.add_drive("scsi2", MIB, seed=3, node="node2")
    conf = ops_vm.root / "100.conf"
    conf.write_text(SECRET)

    # When it is backed up, scsi0 slowly
    backup = ops_producer.submit(
        ops_vm.vmid,
        ops_vm.drives,
        repository=ops_repo.path,
        speed_limit=2 * MIB,
        config={"qemu-server.conf": conf},
    )
    ids = ops_producer.rt.records.task_ids(backup)

    # Then Flower shows the running drive as PROGRESS with its percentage and bytes
    running = task_when(flower, ids[0], lambda t: t["state"] == "PROGRESS", "PROGRESS")
    assert running["name"] == "txnbackup.copy_drive"
    assert running["args"] == f"vm {ops_vm.vmid}, drive scsi0 (1/3)"
    assert running["kwargs"] == f"backup {backup}, node default"
    assert "% · scsi0 1/3 · " in running["result"]
    assert "of 4.0 MiB dirty (drive 4.0 MiB)" in running["result"]
    # and its page keeps the Terminate button, the progress in the result
    code, page = flower.request(f"/task/{ids[0]}")
    assert code == 200 and 'id="task-terminate"' in page and "PROGRESS " in page

    # When the backup is done
    assert ops_producer.wait(backup, 60).status == "done"

    # Then every task has a readable name and summary, and no secret or path shows anywhere
    done = task_when(flower, ids[-1], lambda t: t["state"] == "SUCCESS", "commit SUCCESS")
    assert done["name"] == "txnbackup.commit"
    assert done["args"] == f"vm {ops_vm.vmid}, commit 3 drive(s)"
    node2 = task_when(flower, ids[2], lambda t: t["state"] == "SUCCESS", "scsi2 SUCCESS")
    assert node2["args"] == f"vm {ops_vm.vmid}, drive scsi2 (3/3)"
    assert node2["kwargs"] == f"backup {backup}, node node2"
    listed = json.dumps(flower.api("/api/tasks"))
    assert all(task_id in listed for task_id in ids)
    assert "hunter2" not in listed and str(ops_vm.root) not in listed


@pytest.mark.parametrize(
    ("target", "terminate", "reason"),
    [
        pytest.param(1, False, "revoked", id="revoke-waiting-drive"),
        pytest.param(0, False, "revoked", id="revoke-running-drive"),
        # the revoke watcher may see it first; the terminate still names it
        pytest.param(0, True, "terminated", id="terminate-running-drive"),
    ],
)
def test_flower_revoke_and_terminate_cancel_the_whole_backup(
    ops_fleet: OpsFleet,
    ops_producer: Producer,
    ops_vm: SampleVM,
    ops_repo: Repository,
    tmp_path: Path,
    target: int,
    terminate: bool,
    reason: str,
) -> None:
    # Given a slow incremental backup copying its first drive, and the counts before
    before = ops_fleet.scrape()
    run = start_slow_incremental(ops_producer, ops_vm, ops_repo)
    ids = ops_producer.rt.records.task_ids(run.backup)

    # When an operator presses Revoke (or Terminate) on one of its tasks in Flower
    ops_fleet.flower.revoke(ids[target], terminate=terminate)

    # Then the whole backup is cancelled and rolled back exactly as `txnbackup cancel` does
    status = assert_rolled_back(ops_producer, ops_vm, ops_repo, run, tmp_path)
    assert_cancelled_mid_drive(status, f"task {ids[target]} {reason}".strip())
    # and the metrics count one cancelled backup and one rollback
    wait_for(
        lambda: _delta(ops_fleet, before, "txnbackup_backups_total", outcome="cancelled") == 1,
        10,
        "the cancelled backup to be counted",
    )
    assert _delta(ops_fleet, before, "txnbackup_rollbacks_total", outcome="cancelled") == 1
    if not terminate:  # a copy killed between writing its record and counting may differ
        backups = [b for b in ops_producer.recent(50) if b.vmid == ops_vm.vmid]
        read = metric(ops_fleet.scrape(), "txnbackup_read_bytes_total", vmid=ops_vm.vmid)
        assert read == sum(b.transferred for b in backups)


def _delta(fleet: OpsFleet, before: list[Any], name: str, **labels: str) -> float:
    return metric(fleet.scrape(), name, **labels) - metric(before, name, **labels)


@pytest.mark.parametrize("target", [0, 1, 2], ids=["first", "middle", "last"])
def test_flower_terminate_of_any_drive_ends_the_backup_at_once(
    ops_fleet: OpsFleet,
    ops_producer: Producer,
    ops_vm: SampleVM,
    ops_repo: Repository,
    target: int,
) -> None:
    # Given three slow drives on two nodes, the target one being copied
    for i, node in enumerate(("default", "node2", "default")):
        ops_vm.add_drive(f"scsi{i}", 2 * MIB, seed=40 + i, node=node)
    backup = ops_producer.submit(
        ops_vm.vmid, ops_vm.drives, repository=ops_repo.path, speed_limit=MIB
    )
    wait_for(lambda: ops_producer.status(backup).drives[target].transferred > 0, 30, "the drive")
    task_id = ops_producer.status(backup).drives[target].task_id

    # When an operator presses Terminate on it in Flower
    since = time.monotonic()
    ops_fleet.flower.revoke(task_id, terminate=True)

    # Then within about a second the backup and every drive of it have ended, saying so
    status = ops_producer.wait(backup, timeout=30, interval=0.05)
    assert time.monotonic() - since < 2.5, "the worker that terminated it was blocked"
    assert (status.status, status.errmsg) == ("cancelled", f"task {task_id} terminated")
    states = [d.state for d in status.drives]
    assert states == ["done"] * target + ["cancelled"] + ["skipped"] * (2 - target)
