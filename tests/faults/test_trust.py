"""Workers do not obey whoever can write to Redis or the broker (docs/security.md, "The fleet").

Each case forges what an attacker with access to Redis or the broker could, against real
worker processes, and checks that nothing outside the worker's own configuration is read,
written or deleted, and that the backup ends ``error`` with a message saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tasks.names import COPY_DRIVE
from tasks.queues import node_queue
from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL
from tests.fleet import SampleVM, control_queue_empty, new_vmid, sample_content, wait_for
from tests.fleet_plugin import Fleet
from txnbackup import ending, transaction
from txnbackup.action import BitmapAction
from txnbackup.bitmap import TxnState
from txnbackup.drive import Drive
from txnbackup.errors import RepositoryIdMismatch
from txnbackup.keys import Keys
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup.status import BackupStatus, from_record
from txnbackup.tracker import Tracker
from txnbackup.transaction import BackupPlan, DrivePlan
from workers.reaper import Reaper

MakeFleet = Callable[[dict[str, str]], Fleet]
TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
SIZE = 4 * SMALL_CHUNK


def secret_file(tmp_path: Path, name: str = "secret.raw") -> Path:
    """A file only its owner may read: what a root worker can read and a forger cannot."""
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(sample_content(SIZE, seed=99))
    path.chmod(0o600)
    return path


def chunk_files(repo: Repository) -> list[Path]:
    return [p for p in (repo.path / "chunks").rglob("*") if p.is_file()]


def ended(fleet: Fleet, backup: str) -> BackupStatus:
    status = fleet.producer.wait(backup, timeout=30)
    assert not status.active, f"backup still {status.phase}"
    return status


def test_a_forged_plan_is_refused_and_no_drive_is_read(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a backup submitted by the producer (its record sealed with the fleet secret)
    fleet = make_fleet({})
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    drive = tmp_path / "vm-disk.raw"
    drive.write_bytes(sample_content(SIZE, seed=1))
    backup = fleet.producer.submit(new_vmid(), [Drive("scsi0", str(drive))], repository=repo.path)
    # When someone with access to Redis points the drive at another file before a worker runs
    key = fleet.producer.rt.records.keys.backup(backup)
    client = Redis.from_url(TEST_REDIS_URL)
    plan = json.loads(client.hget(key, "plan") or b"")
    plan["drives"][0]["path"] = str(secret_file(tmp_path))
    client.hset(key, "plan", json.dumps(plan))
    fleet.start("default")
    # Then the worker refuses the record: nothing read, nothing stored, the backup ends error
    status = ended(fleet, backup)
    assert status.status == "error"
    assert "failed authentication" in status.errmsg
    assert chunk_files(repo) == []
    assert repo.snapshots(status.vmid) == []


def test_an_unsealed_record_is_not_committed_by_a_worker_with_the_secret(
    keys: Keys, tmp_path: Path
) -> None:
    # Given a backup recorded and copied by someone without the fleet secret (no seal)
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    drive = tmp_path / "vm-disk.raw"
    drive.write_bytes(sample_content(SIZE, seed=7))
    forger = reaper_runtime(keys)
    plan = transaction.prepare(repo, forger.bitmaps, "100", [Drive("scsi0", str(drive))])
    forger.records.lock("100", plan.backup)
    forger.records.create(plan, str(repo.path), ["t1", "t2"])
    transaction.copy(repo, forger.bitmaps, plan, "scsi0", lambda: None, lambda s: None)
    # When a worker holding the secret is asked to commit it
    worker = reaper_runtime(keys, secret=b"x" * 32)
    ending.commit(worker, plan.backup, lambda backup: None)
    # Then nothing is published: the backup ends error, saying the record is not sealed
    status = from_record(worker.records.load(plan.backup))
    assert status.status == "error"
    assert "failed authentication (it is not sealed)" in status.errmsg
    assert repo.snapshots("100") == []
    assert worker.bitmaps.state(plan.backup) is TxnState.ROLLED_BACK


def test_a_drive_outside_the_workers_roots_is_refused(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a worker that may read drives under allowed/ only
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    fleet = make_fleet({})
    fleet.start("default", {"TXNBACKUP_DRIVE_ROOTS": f"{allowed}:/dev/vg-none/*"})
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    vm = SampleVM(new_vmid(), allowed, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", SIZE, seed=2)
    # When a drive inside is backed up, it works
    first = ended(fleet, fleet.producer.submit(vm.vmid, vm.drives, repository=repo.path))
    assert first.status == "done", first.errmsg
    stored = chunk_files(repo)
    # And when a drive is a link inside allowed/ to a file elsewhere, it is refused
    link = allowed / "link.raw"
    link.symlink_to(secret_file(tmp_path))
    other = new_vmid()
    status = ended(
        fleet, fleet.producer.submit(other, [Drive("scsi0", str(link))], repository=repo.path)
    )
    assert status.status == "error"
    assert "outside this worker's allowed drives" in status.errmsg
    assert str(allowed) in status.errmsg
    assert chunk_files(repo) == stored
    assert repo.snapshots(other) == []


def test_a_worker_started_with_allow_drives_reads_only_there(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a worker of node2 started with `txnbackup worker --allow-drives DIR --allow-drives
    # /dev/vg-none/*` (the command-line form of TXNBACKUP_DRIVE_ROOTS)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    fleet = make_fleet({})
    fleet.start("node2", args=["--allow-drives", str(allowed), "--allow-drives", "/dev/vg-none/*"])
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    inside = allowed / "vm-disk.raw"
    inside.write_bytes(sample_content(SIZE, seed=6))
    # When a drive inside is backed up, it works
    vmid = new_vmid()
    drive = Drive("scsi0", str(inside), "node2")
    first = ended(fleet, fleet.producer.submit(vmid, [drive], repository=repo.path))
    assert first.status == "done", first.errmsg
    # And a drive outside is refused, naming what the worker allows
    outside = Drive("scsi0", str(secret_file(tmp_path)), "node2")
    other = new_vmid()
    status = ended(fleet, fleet.producer.submit(other, [outside], repository=repo.path))
    assert status.status == "error"
    assert "outside this worker's allowed drives" in status.errmsg
    assert f"{allowed}:/dev/vg-none/*" in status.errmsg
    assert repo.snapshots(other) == []


def test_allow_drives_must_be_absolute(tmp_path: Path) -> None:
    result = subprocess.run(
        [TXNBACKUP, "worker", "--allow-drives", "images"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "drive root 'images' must be an absolute directory or pattern" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_record_naming_another_repository_is_refused(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a worker configured for repository "own"
    own = Repository.init(tmp_path / "own", SMALL_CHUNK)
    other = Repository.init(tmp_path / "other", SMALL_CHUNK)
    fleet = make_fleet({})
    fleet.start("default", {"TXNBACKUP_REPOSITORY": str(own.path)})
    drive = tmp_path / "vm-disk.raw"
    drive.write_bytes(sample_content(SIZE, seed=3))
    # When a backup names another repository
    vmid = new_vmid()
    backup = fleet.producer.submit(vmid, [Drive("scsi0", str(drive))], repository=other.path)
    # Then the worker writes nothing there and the backup ends error naming both
    status = ended(fleet, backup)
    assert status.status == "error"
    assert "is not this worker's repository" in status.errmsg
    assert str(own.path) in status.errmsg
    assert chunk_files(other) == []
    assert other.snapshots(vmid) == []


def test_a_drive_name_cannot_lead_a_worker_out_of_the_repository(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a fleet without a secret, and a record and a task forged in Redis and the broker
    fleet = make_fleet({"TXNBACKUP_SECRET": ""})
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    drive = tmp_path / "vm-disk.raw"
    drive.write_bytes(sample_content(SIZE, seed=4))
    name = "../../../pwned"  # staging/<uuid>/../../../pwned.fidx is beside the repository
    backup = new_backup_id()
    plan = BackupPlan(
        backup,
        new_vmid(),
        "2024-01-01T00:00:00Z",
        (DrivePlan(name, str(drive), "default", SIZE, BitmapAction.NEW, "forged", SIZE),),
    )
    fleet.producer.rt.records.create(plan, str(repo.path), ["t1"])
    fleet.start("default")
    # When the forged task reaches the worker
    fleet.producer.app.send_task(COPY_DRIVE, (backup, name), queue=node_queue("default"))
    # Then the worker refuses the name: nothing is written outside the repository
    status = ended(fleet, backup)
    assert status.status == "error"
    assert "drive name" in status.errmsg
    assert not (tmp_path / "pwned.fidx").exists()
    assert chunk_files(repo) == []
    assert os.listdir(tmp_path / "repo" / "staging") == []


def aged(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "file").write_bytes(b"precious")
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def reaper_runtime(keys: Keys, **settings: Any) -> Runtime:
    return Runtime.from_settings(
        Settings(redis_url=TEST_REDIS_URL, key_prefix=keys.prefix, orphan_grace=1, **settings)
    )


def test_the_reaper_sweeps_only_staging_areas_it_can_prove_are_its_own(
    keys: Keys, tmp_path: Path
) -> None:
    # Given a worker's repository with an orphaned staging area, a directory that is no
    # backup's, and a link planted in the staging area, all older than the grace time
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    rt = reaper_runtime(keys, repository=repo.path)
    orphan = aged(repo.path / "staging" / new_backup_id())
    notes = aged(repo.path / "staging" / "notes")
    outside = aged(tmp_path / "outside" / new_backup_id())
    (repo.path / "staging" / new_backup_id()).symlink_to(outside)
    # And a directory someone named in Redis, where the reaper once looked for repositories
    victim = tmp_path / "victim"
    victims = [aged(victim / "staging" / new_backup_id()), aged(victim / "staging" / "photos")]
    victims.append(aged(victim / new_backup_id()))
    rt.redis.sadd(f"{keys.prefix}repositories", str(victim), str(repo.path))
    # When the reaper runs
    Reaper(rt, lambda backup: None).run_once()
    # Then only the repository's own uuid-named staging area is gone
    assert not orphan.exists()
    assert all((p / "file").exists() for p in [notes, outside, *victims])


def test_a_reaper_without_a_repository_of_its_own_deletes_nothing(
    keys: Keys, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    left = aged(repo.path / "staging" / new_backup_id())
    rt = reaper_runtime(keys)
    rt.redis.sadd(f"{keys.prefix}repositories", str(repo.path))
    Reaper(rt, lambda backup: None).run_once()
    assert (left / "file").exists()


def test_a_reaper_sweeps_no_repository_put_in_place_of_its_own(keys: Keys, tmp_path: Path) -> None:
    # Given a reaper started while its repository was in place (its id is the expected one)
    path = tmp_path / "repo"
    Repository.init(path, SMALL_CHUNK)
    reaper = Reaper(reaper_runtime(keys, repository=path), lambda backup: None)
    # When another repository, with an orphan-looking staging area, takes the path (a wrong
    # disk mounted there, or the directory swapped for a link)
    path.rename(tmp_path / "unmounted")
    other = Repository.init(tmp_path / "other", SMALL_CHUNK)
    left = aged(other.path / "staging" / new_backup_id())
    path.symlink_to(other.path)
    reaper.run_once()
    # Then the reaper deletes nothing there: the id is not its repository's
    assert (left / "file").exists()


def test_a_pinned_repository_id_is_the_only_one_a_worker_opens(keys: Keys, tmp_path: Path) -> None:
    # Given a worker pinned to a repository id (TXNBACKUP_REPOSITORY_ID)
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    left = aged(repo.path / "staging" / new_backup_id())
    rt = reaper_runtime(keys, repository=repo.path, repository_id="another-id")
    # When the path holds a repository of another id, the worker neither sweeps nor writes it
    Reaper(rt, lambda backup: None).run_once()
    assert (left / "file").exists()
    with pytest.raises(RepositoryIdMismatch, match=f"has id {repo.id}, not this worker's"):
        rt.repository(str(repo.path))
    # And with its own id, it does both
    pinned = reaper_runtime(keys, repository=repo.path, repository_id=repo.id)
    assert pinned.repository(str(repo.path)).id == repo.id
    Reaper(pinned, lambda backup: None).run_once()
    assert not left.exists()


def test_a_cancel_is_not_logged_as_an_error(make_fleet: MakeFleet, tmp_path: Path) -> None:
    # Given a backup whose drive is being copied slowly
    fleet = make_fleet({})
    worker = fleet.start("default")
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    drive = tmp_path / "vm-disk.raw"
    drive.write_bytes(sample_content(16 * SMALL_CHUNK, seed=5))
    producer = fleet.producer
    backup = producer.submit(
        new_vmid(), [Drive("scsi0", str(drive))], repository=repo.path, speed_limit=SMALL_CHUNK
    )
    wait_for(lambda: producer.status(backup).drives[0].transferred > 0, 20, "the copy")
    # When the user cancels it
    producer.cancel(backup)
    status = ended(fleet, backup)
    # Then it ends cancelled, rolled back once, and the worker's log reports no error
    assert status.status == "cancelled"
    wait_for(lambda: control_queue_empty(producer.app), 10, "the control queue to drain")
    assert producer.rt.records.raw(backup).get("rollback_runs") == "1"
    time.sleep(0.5)  # the worker logs a task's outcome just after it ends
    log = worker.log_text()
    assert "cancelled" in log
    assert "ERROR" not in log
    assert "Traceback" not in log
