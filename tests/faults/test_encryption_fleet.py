"""Encrypted repositories through the real pipeline: the producer and worker processes get the
passphrase from a file named in their environment, unlock the key once, and write only sealed
objects. A process with the wrong passphrase writes nothing.

Fleets of their own (make_fleet, with the passphrase in their environment): tests/faults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, new_vmid
from tests.fleet_plugin import Fleet
from tests.unit.test_downgrade import downgrade
from tests.unit.test_encryption import FAST_KDF, PASSPHRASE
from txnbackup.check import ALL, check_repository
from txnbackup.errors import WrongPassphrase
from txnbackup.keyfile import KeyAccess, KeyMode, NewKey
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.tracker import Tracker
from txnbackup.verify import verify_snapshot

KIB = 1024
CS = 64 * KIB


def secret_file(path: Path, passphrase: bytes) -> str:
    path.write_bytes(passphrase + b"\n")
    path.chmod(0o600)
    return str(path)


def encrypted_repo(path: Path) -> Repository:
    return Repository.init(path, CS, NewKey(KeyMode.REPOKEY, PASSPHRASE, KeyAccess(), FAST_KDF))


def two_drive_vm(fleet: Fleet, root: Path) -> SampleVM:
    vm = SampleVM(new_vmid(), root, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", 640 * KIB + 100, seed=11)
    vm.add_drive("scsi1", 384 * KIB, seed=12, node="node2")
    return vm


def test_an_encrypted_repository_round_trips_through_the_fleet(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given an encrypted repository and a fleet whose processes read the passphrase from a file
    repo = encrypted_repo(tmp_path / "repo")
    fleet = make_fleet({"TXNBACKUP_PASSPHRASE_FILE": secret_file(tmp_path / "pw", PASSPHRASE)})
    fleet.start("default")
    fleet.start("node2")
    vm = two_drive_vm(fleet, tmp_path)
    config = tmp_path / "qemu-server.conf"
    config.write_bytes(b"memory: 4096\nname: secret-guest\n")

    # When the VM is backed up in full, written to, and backed up again (incremental)
    producer = fleet.producer
    first = producer.wait(
        producer.submit(vm.vmid, vm.drives, repository=repo.path, config={"vm.conf": config}), 90
    )
    assert first.status == "done", first.errmsg
    full_content = {d.name: vm.content(d.name) for d in vm.drives}
    vm.write("scsi1", 70_000, b"changed by the guest" * 5)
    second = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 90)
    assert second.status == "done", second.errmsg
    assert [d.action for d in second.drives] == ["used", "used"]
    assert [d.dirty for d in second.drives] == [0, CS]

    # Then, opened by the passphrase alone, both snapshots restore byte for byte
    again = Repository.open(repo.path, KeyAccess(PASSPHRASE))
    for status, contents in ((first, full_content), (second, None)):
        snapshot = SnapshotId.parse(status.snapshot)
        for d in vm.drives:
            out = tmp_path / f"{snapshot.time}-{d.name}.raw"
            restore_drive(again, snapshot, d.name, out)
            expected = contents[d.name] if contents else vm.content(d.name)
            assert out.read_bytes() == expected
        assert verify_snapshot(again, snapshot).ok
    report = check_repository(again, ALL)
    assert report.ok, report.problems
    # And nothing the workers wrote holds a known block or the config in the clear
    known = full_content["scsi0"][:CS]
    for path in (repo.path / "chunks").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert known[:256] not in data and known[-256:] not in data
    snapshot_files = (repo.path / "vm").rglob("*")
    assert all(b"secret-guest" not in p.read_bytes() for p in snapshot_files if p.is_file())


def test_workers_with_the_wrong_passphrase_fail_the_backup_and_publish_nothing(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a producer with the passphrase and workers with a wrong one
    repo = encrypted_repo(tmp_path / "repo")
    fleet = make_fleet({"TXNBACKUP_PASSPHRASE_FILE": secret_file(tmp_path / "pw", PASSPHRASE)})
    wrong = {"TXNBACKUP_PASSPHRASE_FILE": secret_file(tmp_path / "wrong", b"not it")}
    fleet.start("default", extra_env=wrong)
    fleet.start("node2", extra_env=wrong)
    vm = two_drive_vm(fleet, tmp_path)

    # When the VM is backed up
    status = fleet.producer.wait(
        fleet.producer.submit(vm.vmid, vm.drives, repository=repo.path), 90
    )

    # Then the backup fails saying why, nothing is published, no chunk is written
    assert status.status == "error"
    assert "wrong passphrase" in status.errmsg
    assert Repository.open(repo.path, KeyAccess(PASSPHRASE)).snapshots() == []
    assert not any(p.is_file() for p in (repo.path / "chunks").rglob("*"))
    assert list((repo.path / "staging").iterdir()) == []
    assert fleet.producer.rt.locks.holder(vm.vmid) is None


def test_a_wrong_passphrase_at_submit_starts_nothing(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a producer whose passphrase is wrong (no worker needed: nothing is sent)
    repo = encrypted_repo(tmp_path / "repo")
    fleet = make_fleet({"TXNBACKUP_PASSPHRASE_FILE": secret_file(tmp_path / "pw", b"wrong")})
    vm = two_drive_vm(fleet, tmp_path)

    # When it submits a backup, Then it is refused before the VM is locked
    with pytest.raises(WrongPassphrase):
        fleet.producer.submit(vm.vmid, vm.drives, repository=repo.path)
    assert fleet.producer.rt.locks.holder(vm.vmid) is None
    assert list((repo.path / "staging").iterdir()) == []


def test_workers_with_the_passphrase_refuse_a_downgraded_repository(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given workers configured with the passphrase, and an encrypted repository whose
    # config.json someone set back to plain text
    repo = encrypted_repo(tmp_path / "repo")
    fleet = make_fleet({"TXNBACKUP_PASSPHRASE_FILE": secret_file(tmp_path / "pw", PASSPHRASE)})
    fleet.start("default")
    fleet.start("node2")
    vm = two_drive_vm(fleet, tmp_path)
    downgrade(repo)
    # and a producer configured with no key (it cannot know better, so it submits)
    keyless = Producer.from_settings(dataclasses.replace(fleet.settings, passphrase=None))

    # When the VM is backed up
    status = keyless.wait(keyless.submit(vm.vmid, vm.drives, repository=repo.path), 90)

    # Then the workers refuse, saying why; nothing is published, no chunk is written in clear
    assert status.status == "error"
    assert "says it is not encrypted but a passphrase is configured" in status.errmsg
    assert Repository.open(repo.path).snapshots() == []
    # (the keyless producer made the empty staging directory; no worker wrote into it)
    assert not any(p.is_file() for p in (repo.path / "chunks").rglob("*"))
    assert not any(p.is_file() for p in (repo.path / "staging").rglob("*"))
    assert keyless.rt.locks.holder(vm.vmid) is None
    # and the guest's data is still to be copied by the next backup
    assert [d.dirty for d in status.drives] == [d.size for d in status.drives]
