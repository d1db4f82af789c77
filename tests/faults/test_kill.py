"""SIGKILL at every stage of a backup: the system settles with no half snapshot, no lost
dirty bit and nothing stuck (issue 5, invariants I1-I3).

Each scenario: a committed backup of a two-drive VM, guest writes on both drives, then a
backup on a worker armed with a failpoint that SIGKILLs the pool process or the whole worker
(a host loss) at one stage. A replacement worker is started; its reaper must finish the job.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet import SampleVM, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from txnbackup.geometry import chunk_count
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus
from txnbackup.tracker import Tracker
from txnbackup.verify import verify_snapshot

MIB = 1024 * 1024
CHUNK = 64 * 1024
FAST_RECOVERY = {
    "TXNBACKUP_LEASE_TTL": "2",
    "TXNBACKUP_REAPER_INTERVAL": "1",
    "TXNBACKUP_QUEUE_TIMEOUT": "4",
    "TXNBACKUP_ROLLBACK_WAIT": "2",
}
SETTLE_TIMEOUT = 60.0  # the bound I3 is checked against, with the settings above


@dataclass(frozen=True)
class Scenario:
    failpoint: str
    outcome: str
    cancel_mid_drive: bool = False


SCENARIOS = {
    "worker-before-first-drive": Scenario("copy.before@scsi0=kill-worker", "error"),
    "worker-mid-drive-1": Scenario("copy.progress@scsi0=kill-worker", "error"),
    "child-mid-drive-1": Scenario("copy.progress@scsi0=kill-process", "error"),
    "worker-between-drives": Scenario("copy.after@scsi0=kill-worker", "error"),
    "worker-mid-last-drive": Scenario("copy.progress@scsi1=kill-worker", "error"),
    "child-mid-last-drive": Scenario("copy.progress@scsi1=kill-process", "error"),
    "worker-in-commit-before-rename": Scenario("commit.before_rename=kill-worker", "done"),
    "worker-in-commit-after-rename": Scenario("commit.after_rename=kill-worker", "done"),
    "child-in-commit-after-rename": Scenario("commit.after_rename=kill-process", "done"),
    "worker-inside-rollback": Scenario(
        "rollback.after_discard=kill-worker", "cancelled", cancel_mid_drive=True
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sigkill_at_every_stage_settles_cleanly(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path, name: str
) -> None:
    scenario = SCENARIOS[name]
    fleet = make_fleet(FAST_RECOVERY)
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = SampleVM(new_vmid(), tmp_path, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", 2 * MIB, seed=1)
    vm.add_drive("scsi1", 2 * MIB, seed=2)
    producer = fleet.producer

    # Given a committed backup and guest writes on both drives since
    fleet.start()
    base = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert base.status == "done", base.errmsg
    fleet.workers["default"].stop()
    rng = random.Random(name)
    for d in vm.drives:
        vm.write(d.name, rng.randrange(0, 2 * MIB - 5000), rng.randbytes(5000))

    # When a backup runs on a worker that is killed at the scenario's stage
    armed = fleet.start(extra_env={"TXNBACKUP_FAILPOINTS": scenario.failpoint})
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, speed_limit=2 * MIB)
    if scenario.cancel_mid_drive:
        wait_for(lambda: producer.status(backup).drives[0].transferred > 0, 20, "copying")
        producer.cancel(backup)
    wait_for(lambda: _killed(armed, producer.status(backup)), 30, "the failpoint to fire")
    if armed.proc.poll() is not None:
        fleet.start()  # the replacement worker, not armed

    # Then the backup ends within the bound, in the one expected outcome, completely
    status = producer.wait(backup, timeout=SETTLE_TIMEOUT)
    assert status.status == scenario.outcome, f"{status.status}: {status.errmsg}"
    raw = producer.rt.records.raw(backup)
    assert int(raw.get("rollback_runs", 0)) + int(raw.get("commit_runs", 0)) == 1
    assert producer.rt.locks.holder(vm.vmid) is None
    assert_invariants(producer.rt.bitmaps, vm, repo, tmp_path)

    # and the next backup (on a worker without the failpoint) succeeds and restores exactly
    if armed.proc.poll() is None:
        armed.stop()
        fleet.start()
    after = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert after.status == "done", after.errmsg
    assert_restores(repo, after.snapshot, vm, tmp_path)


def _killed(armed: object, status: BackupStatus) -> bool:
    proc = armed.proc  # type: ignore[attr-defined]
    return bool(proc.poll() is not None or not status.active or "WorkerLost" in status.errmsg)


def assert_invariants(bitmaps: object, vm: SampleVM, repo: Repository, tmp: Path) -> None:
    # I1: only complete snapshots, each verifies; no staging area survives
    snapshots = repo.snapshots(vm.vmid)
    assert all(verify_snapshot(repo, s).ok for s in snapshots)
    assert not any((repo.path / "staging").iterdir())
    # I2: every chunk that differs from the newest snapshot is marked dirty
    newest = snapshots[0]
    for d in vm.drives:
        out = tmp / f"i2-{d.name}.raw"
        restore_drive(repo, newest, d.name, out, overwrite=True)
        changed = _changed_chunks(out.read_bytes(), vm.content(d.name))
        dirty = bitmaps.dirty_chunks(vm.vmid, d.name)  # type: ignore[attr-defined]
        assert changed <= dirty, f"{d.name}: changes {changed - dirty} not in the bitmap"


def _changed_chunks(old: bytes, new: bytes) -> set[int]:
    count = chunk_count(len(new), CHUNK)
    return {
        i
        for i in range(count)
        if old[i * CHUNK : (i + 1) * CHUNK] != new[i * CHUNK : (i + 1) * CHUNK]
    }


def assert_restores(repo: Repository, snapshot: str, vm: SampleVM, tmp: Path) -> None:
    for d in vm.drives:
        out = tmp / f"after-{d.name}.raw"
        restore_drive(repo, SnapshotId.parse(snapshot), d.name, out, overwrite=True)
        assert out.read_bytes() == vm.content(d.name)
