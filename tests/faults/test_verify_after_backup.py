"""`txnbackup backup --wait --verify`: the new snapshot is read back and checked once the
backup is done; a chunk that was damaged and reused by the incremental fails it (exit 5),
named by drive, offset and digest. The real command against a fleet of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fleet import SampleVM, env_for_workers, new_vmid
from tests.fleet_plugin import Fleet
from tests.unit.test_encryption import flip
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.tracker import Tracker

KIB = 1024
CS = 64 * KIB
TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
INTEGRITY = 5

MakeFleet = Callable[[dict[str, str]], Fleet]


def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TXNBACKUP, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_for_workers(fleet.env),
        check=False,
    )


def two_drive_vm(fleet: Fleet, root: Path) -> SampleVM:
    vm = SampleVM(new_vmid(), root, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", 5 * CS + 100, seed=21)
    vm.add_drive("scsi1", 3 * CS, seed=22, node="node2")
    return vm


def backup_args(vm: SampleVM, repo: Repository) -> list[str]:
    drives = [f"--drive={d.name}={d.path}@{d.node}" for d in vm.drives]
    return ["backup", vm.vmid, *drives, "--repo", str(repo.path), "--wait", "--verify"]


def started_fleet(make_fleet: MakeFleet) -> Fleet:
    fleet = make_fleet({})
    fleet.start("default")
    fleet.start("node2")
    return fleet


def digests(repo: Repository, snapshot: SnapshotId, drive: str) -> list[str]:
    manifest = repo.manifest(snapshot)
    (entry,) = [e for e in manifest.drives if e.name == drive]
    with repo.open_index(snapshot, entry, manifest.backup) as reader:
        return [raw.hex() for raw in reader]


def test_backup_wait_verify_prints_the_verification_and_exits_0(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a fleet serving both nodes of a 2-drive VM
    fleet = started_fleet(make_fleet)
    repo = Repository.init(tmp_path / "repo", CS)
    vm = two_drive_vm(fleet, tmp_path)

    # When it is backed up with --wait --verify, then again with --json
    done = cli(fleet, *backup_args(vm, repo))
    again = cli(fleet, *backup_args(vm, repo), "--json")

    # Then both exit 0; the first says every chunk of its new snapshot was verified
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = sorted(repo.snapshots(vm.vmid))
    assert f"verifying {first}" in done.stdout
    assert f"{first}: 9 chunks verified, all good" in done.stdout
    # and the JSON status carries the verification of the incremental's snapshot
    assert again.returncode == 0, again.stdout + again.stderr
    status = json.loads(again.stdout)
    assert status["status"] == "done"
    assert status["verify"] == {"snapshot": str(second), "ok": True, "chunks": 9, "problems": []}


def test_a_damaged_chunk_reused_by_the_incremental_fails_its_verify(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a VM backed up once, then a guest write to scsi0 and bit rot in a chunk file of
    # scsi1 that keeps its length (the incremental's cheap header and length check passes)
    fleet = started_fleet(make_fleet)
    repo = Repository.init(tmp_path / "repo", CS)
    vm = two_drive_vm(fleet, tmp_path)
    assert cli(fleet, *backup_args(vm, repo)).returncode == 0
    (base,) = repo.snapshots(vm.vmid)
    vm.write("scsi0", 10, b"written by the guest")
    damaged = digests(repo, base, "scsi1")[1]
    flip(repo.chunks.path_for(damaged))

    # When the incremental runs with --wait --verify (it reuses the damaged chunk)
    done = cli(fleet, *backup_args(vm, repo), "--json")

    # Then the backup is done but the command exits with the integrity code, naming the chunk
    assert done.returncode == INTEGRITY, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["status"] == "done"
    assert [d["action"] for d in status["drives"]] == ["used", "used"]
    snapshot = SnapshotId.parse(status["snapshot"])
    assert damaged in digests(repo, snapshot, "scsi1")
    report = status["verify"]
    assert report["ok"] is False
    assert [(p["drive"], p["offset"], p["digest"]) for p in report["problems"]] == [
        ("scsi1", CS, damaged)
    ]
    # and the snapshot is marked, so the next backup reads that chunk again
    assert (repo.path / "vm" / vm.vmid / f"{snapshot.time}.verify-failed").exists()


def test_verify_without_wait_is_refused_and_starts_nothing(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # Given a VM (no worker needed: nothing may be sent)
    fleet = make_fleet({})
    repo = Repository.init(tmp_path / "repo", CS)
    vm = two_drive_vm(fleet, tmp_path)
    args = [a for a in backup_args(vm, repo) if a != "--wait"]

    # When --verify is given without --wait, Then it is bad input (exit 2), nothing started
    refused = cli(fleet, *args)
    assert refused.returncode == 2, refused.stderr
    assert "--verify needs --wait" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert fleet.producer.rt.locks.holder(vm.vmid) is None
    assert repo.snapshots(vm.vmid) == []
