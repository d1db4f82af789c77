"""A backup through the real pipeline: producer -> Redis -> worker processes -> commit."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, WorkerProcess
from txnbackup.drive import Drive
from txnbackup.errors import BackupRunning, DriveNotFound, InvalidInput
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus

MIB = 1024 * 1024


def assert_identities(status: BackupStatus) -> None:
    assert status.total == sum(d.size for d in status.drives)
    assert status.dirty == sum(d.dirty for d in status.drives)
    assert status.transferred == sum(d.transferred for d in status.drives)
    assert status.zero_bytes == sum(d.zero_bytes for d in status.drives)
    assert status.reused == sum(d.reused for d in status.drives)
    for d in status.drives:
        assert d.zero_bytes + d.reused <= d.transferred <= d.dirty <= d.size
        if d.action != "used":
            assert d.dirty == d.size
    if status.status == "done":
        assert status.snapshot and not status.finishing and status.end_time
        assert all(d.state == "done" and d.transferred == d.dirty for d in status.drives)


def restores_identical(repo: Repository, snapshot: str, vm: SampleVM, tmp: Path) -> bool:
    for d in vm.drives:
        out = tmp / f"restore-{d.name}.raw"
        restore_drive(repo, SnapshotId.parse(snapshot), d.name, out, overwrite=True)
        if out.read_bytes() != vm.content(d.name):
            return False
    return True


def test_full_then_incremental_backup_reads_only_dirty_chunks(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a VM with three drives and a fresh repository
    for i, name in enumerate(["scsi0", "scsi1", "scsi2"]):
        vm.add_drive(name, 2 * MIB + 1000 * i, seed=i)

    # When it is backed up in full
    first = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)

    # Then every drive was read, the snapshot is published and restores byte for byte
    assert first.status == "done", first.errmsg
    assert [d.action for d in first.drives] == ["new"] * 3
    assert first.dirty == first.total
    assert_identities(first)
    assert restores_identical(pipeline_repo, first.snapshot, vm, tmp_path)
    manifest = pipeline_repo.manifest(SnapshotId.parse(first.snapshot))
    assert manifest.backup == first.uuid
    assert [e.stats.transferred for e in manifest.drives] == [d.transferred for d in first.drives]

    # When a guest writes 100 bytes in drive scsi1 and the VM is backed up again
    vm.write("scsi1", 70_000, b"x" * 100)
    second = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)

    # Then only the one dirty chunk was read, and the new snapshot restores byte for byte
    assert second.status == "done", second.errmsg
    assert [d.action for d in second.drives] == ["used"] * 3
    assert [d.dirty for d in second.drives] == [0, 64 * 1024, 0]
    assert_identities(second)
    assert restores_identical(pipeline_repo, second.snapshot, vm, tmp_path)
    assert producer.rt.records.holder(vm.vmid) is None


def test_a_waiter_hears_the_end_whatever_its_polling_interval(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a backup just submitted
    vm.add_drive("scsi0", 2 * MIB, seed=11)
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)

    # When the producer waits for it reading the status only once an hour
    status = producer.wait(backup, timeout=60, interval=3600)

    # Then the end still wakes it (the finishing step publishes it): the final status
    assert status.status == "done", status.errmsg
    assert status.snapshot


def test_drives_run_on_their_nodes_queue(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, fleet: dict[str, WorkerProcess]
) -> None:
    # Given drives on two nodes, each served by its own worker process
    vm.add_drive("scsi0", MIB, seed=1, node="default")
    vm.add_drive("scsi1", MIB, seed=2, node="node2")

    # When the VM is backed up
    status = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)

    # Then each drive was copied by the worker of its node
    assert status.status == "done", status.errmsg
    record = producer.rt.records.load(status.uuid)
    workers = {d.name: record.drive(d.name).worker for d in vm.drives}
    assert workers == {"scsi0": fleet["default"].name, "scsi1": fleet["node2"].name}


def test_second_backup_of_a_running_vm_is_refused(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a slow backup in progress
    vm.add_drive("scsi0", 2 * MIB, seed=3)
    first = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path, speed_limit=MIB)

    # When another backup of the same VM is submitted
    with pytest.raises(BackupRunning) as refused:
        producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)

    # Then it is refused naming the running backup, and the running one is unaffected
    assert str(refused.value) == f"backup already running: {first}"
    producer.cancel(first)
    assert producer.wait(first, 30).status == "cancelled"


def test_two_producers_at_once_exactly_one_runs(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given two producers submitting the same VM at the same moment
    vm.add_drive("scsi0", MIB, seed=4)
    results: list[object] = []
    barrier = threading.Barrier(2)

    def submit() -> None:
        barrier.wait()
        try:
            results.append(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path))
        except BackupRunning as exc:
            results.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then exactly one backup runs (to done) and the other got the clear refusal
    started = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, BackupRunning)]
    assert len(started) == 1 and len(refused) == 1
    assert producer.wait(started[0], 60).status == "done"


def test_bad_input_changes_nothing(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a VM whose second drive path does not exist
    vm.add_drive("scsi0", MIB, seed=5)
    missing = [*vm.drives, Drive("scsi1", str(vm.root / "nope.raw"))]

    # When it is submitted, or submitted with duplicate drive names
    with pytest.raises(DriveNotFound):
        producer.submit(vm.vmid, missing, repository=pipeline_repo.path)
    with pytest.raises(InvalidInput, match="duplicate"):
        producer.submit(vm.vmid, vm.drives * 2, repository=pipeline_repo.path)

    # Then nothing was started: no lock, no bitmap, no backup record, no staging area
    assert producer.rt.records.holder(vm.vmid) is None
    assert producer.rt.bitmaps.meta(vm.vmid, "scsi0") is None
    assert not any((pipeline_repo.path / "staging").iterdir())
    recent = [producer.rt.records.raw(u) for u in producer.rt.records.recent(1000)]
    assert all(r["vmid"] != vm.vmid for r in recent)


def test_repository_created_again_at_the_same_path_is_used_incrementally(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a VM backed up into a repository that is then deleted and created again in place
    vm.add_drive("scsi0", 2 * MIB, seed=7)
    path = pipeline_repo.path
    first = producer.wait(producer.submit(vm.vmid, vm.drives, repository=path), 60)
    assert first.status == "done", first.errmsg
    shutil.rmtree(path)
    fresh = Repository.init(path, pipeline_repo.chunk_size)

    # When it is backed up into the new repository
    second = producer.wait(producer.submit(vm.vmid, vm.drives, repository=path), 60)

    # Then the bitmap is not trusted (its base is in the old repository): a full read
    assert second.status == "done", second.errmsg
    assert [d.action for d in second.drives] == ["invalid"]

    # And after a guest write the next backup reads only that chunk, relative to the new one
    vm.write("scsi0", 70_000, b"y" * 100)
    third = producer.wait(producer.submit(vm.vmid, vm.drives, repository=path), 60)
    assert third.status == "done", third.errmsg
    assert [d.action for d in third.drives] == ["used"]
    assert [d.dirty for d in third.drives] == [64 * 1024]
    assert restores_identical(fresh, third.snapshot, vm, tmp_path)
