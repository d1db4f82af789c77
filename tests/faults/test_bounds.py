"""Nothing waits forever (issue 12, "things that hang"): a commit that cannot reach its
repository is retried a bounded number of times, a drive that stops making progress ends its
backup, and a drive nobody takes fails after the backup's own ``--timeout``.

Each case runs a fleet of its own with short bounds, and checks what a user waiting on the
backup sees: it ends ``error`` with the cause, nothing is published, the bits are back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fleet import SampleVM, env_for_workers, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from txnbackup.bitmap import TxnState
from txnbackup.repository import Repository
from txnbackup.tracker import Tracker

MakeFleet = Callable[[dict[str, str]], Fleet]
TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
MIB = 1024 * 1024
CHUNK = 64 * 1024
FAST = {
    "TXNBACKUP_LEASE_TTL": "2",
    "TXNBACKUP_REAPER_INTERVAL": "1",
    "TXNBACKUP_ROLLBACK_WAIT": "2",
    "TXNBACKUP_ORPHAN_GRACE": "1",
}


def committed_vm(fleet: Fleet, repo: Repository, tmp_path: Path) -> SampleVM:
    """A VM with one committed backup and a guest write since (chunk 3 is dirty)."""
    vm = SampleVM(new_vmid(), tmp_path, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", MIB, seed=1)
    worker = fleet.start(extra_env={"TXNBACKUP_REPOSITORY": str(repo.path)})
    producer = fleet.producer
    base = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert base.status == "done", base.errmsg
    worker.stop()
    vm.write("scsi0", 3 * CHUNK + 10, b"written after the first backup")
    return vm


def test_a_commit_that_cannot_open_the_repository_fails_after_its_attempts(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a committed VM, a guest write, and a fleet allowing 3 commit attempts
    fleet = make_fleet({**FAST, "TXNBACKUP_COMMIT_ATTEMPTS": "3"})
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = committed_vm(fleet, repo, tmp_path)
    producer = fleet.producer
    before = repo.snapshots(vm.vmid)
    # When the repository disappears (an unmounted disk) after the drive is copied
    armed = {"TXNBACKUP_FAILPOINTS": "copy.after@scsi0=sleep:4"}
    fleet.start(extra_env={**armed, "TXNBACKUP_REPOSITORY": str(repo.path)})
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path)
    wait_for(lambda: producer.status(backup).drives[0].state == "done", 30, "the copy")
    moved = repo.path.rename(tmp_path / "unmounted")
    # Then each attempt is reported while it is retried
    wait_for(lambda: producer.status(backup).commit_error, 30, "a failed commit attempt")
    assert "commit attempt 1 of 3 failed: cannot open repository" in (
        producer.status(backup).commit_error
    )
    # and the backup ends error after the third, naming the cause, instead of hanging
    status = producer.wait(backup, timeout=60)
    assert status.status == "error", f"{status.phase}: {status.commit_error}"
    assert status.errmsg.startswith("commit failed after 3 attempts: cannot open repository")
    assert status.commit_attempts == 3
    assert producer.rt.records.holder(vm.vmid) is None
    assert producer.rt.bitmaps.state(backup) is TxnState.ROLLED_BACK
    # And once the repository is back, nothing of the backup is published, its staging area
    # is swept, and the guest's write is still dirty: the next backup copies it
    moved.rename(repo.path)
    assert repo.snapshots(vm.vmid) == before
    assert 3 in producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0")
    wait_for(lambda: not any((repo.path / "staging").iterdir()), 30, "the staging sweep")


def test_a_drive_that_makes_no_progress_ends_its_backup(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a committed VM, a guest write, and a fleet whose drives may stall for 3 s
    fleet = make_fleet({**FAST, "TXNBACKUP_STALL_TIMEOUT": "3"})
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = committed_vm(fleet, repo, tmp_path)
    producer = fleet.producer
    before = repo.snapshots(vm.vmid)
    # When a read hangs mid-drive (the worker lives and renews its lease all along)
    armed = {"TXNBACKUP_FAILPOINTS": "copy.progress@scsi0=sleep:600"}
    worker = fleet.start(extra_env={**armed, "TXNBACKUP_REPOSITORY": str(repo.path)})
    pool = set(worker.pool_pids())
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, speed_limit=256 * 1024)
    # Then the backup ends error naming the drive, instead of staying active for good
    status = producer.wait(backup, timeout=60)
    assert status.status == "error", f"{status.phase}: {status.errmsg}"
    assert status.errmsg.startswith("drive scsi0 stalled: no progress for ")
    assert [d.state for d in status.drives] == ["failed"]
    # and nothing is published, the guest's write is still dirty, the VM is free
    assert repo.snapshots(vm.vmid) == before
    assert 3 in producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0")
    assert producer.rt.records.holder(vm.vmid) is None
    # and the stuck task was stopped: its pool process was replaced
    wait_for(lambda: not pool <= set(worker.pool_pids()), 30, "the stuck task to be stopped")


def test_a_drive_nobody_takes_fails_after_the_backups_own_timeout(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a fleet whose reapers wait an hour for a worker, and a drive on a node none serves
    fleet = make_fleet({**FAST, "TXNBACKUP_QUEUE_TIMEOUT": "3600"})
    fleet.start()
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = SampleVM(new_vmid(), tmp_path, Tracker.from_settings(fleet.settings))
    drive = vm.add_drive("scsi0", MIB, seed=3, node="ghost")
    # When the user backs it up with a 3 s timeout and waits
    args = ["backup", vm.vmid, f"--drive=scsi0={drive.path}@ghost", f"--repo={repo.path}"]
    result = subprocess.run(
        [TXNBACKUP, *args, "--timeout=3", "--wait", "--json"],
        check=False,
        capture_output=True,
        text=True,
        env=env_for_workers(fleet.env),
        timeout=120,
    )
    # Then they are told at once that no worker serves the node, and for how long it waits
    lines = result.stderr.splitlines()
    assert lines[0].startswith("backup "), result.stderr
    assert "no worker consumes the queue of node ghost; drive scsi0 waits" in lines[1]
    assert "fails after 3 s without one (backup --timeout)" in lines[1]
    # and the backup fails after its own timeout, not the fleet's hour: --wait exits 1
    status = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert status["status"] == "error"
    assert status["errmsg"].startswith("no worker took the next drive for ")
    assert status["drives"][0]["state"] == "skipped"
    assert fleet.producer.rt.bitmaps.state(status["uuid"]) is TxnState.ROLLED_BACK


def test_a_timeout_must_be_positive(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet({})
    drive = tmp_path / "d.raw"
    drive.write_bytes(bytes(CHUNK))
    args = ["backup", "100", f"--drive=scsi0={drive}", f"--repo={tmp_path}", "--timeout=0"]
    result = subprocess.run(
        [TXNBACKUP, *args],
        check=False,
        capture_output=True,
        text=True,
        env=env_for_workers(fleet.env),
    )
    assert result.returncode == 2
    assert "--timeout" in result.stderr and "0 is not in the range" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_drive_path_relative_to_the_shell_is_read_from_there(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a worker whose directory is not the user's, and a drive named relative to the shell
    fleet = make_fleet({})
    fleet.start()
    repo = Repository.init(tmp_path / "repo", CHUNK)
    shell = tmp_path / "images"
    shell.mkdir()
    (shell / "disk.raw").write_bytes(bytes(range(256)) * 1024)
    # When the user backs it up from that directory
    result = subprocess.run(
        [TXNBACKUP, "backup", new_vmid(), "--drive=scsi0=disk.raw", f"--repo={repo.path}"],
        check=False,
        capture_output=True,
        text=True,
        env=env_for_workers(fleet.env),
        cwd=shell,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # Then the worker reads the file the user meant, and the backup is done
    status = fleet.producer.wait(result.stdout.strip(), timeout=60)
    assert status.status == "done", status.errmsg
    plan = fleet.producer.rt.records.load(status.uuid).plan
    assert plan.drive("scsi0").path == str(shell / "disk.raw")
