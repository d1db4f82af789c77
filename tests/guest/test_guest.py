"""A running guest backed up through a real fleet: full, incremental, and every way a backup
can be stopped, each followed by the next incremental (issue 14).

The guest writes record n to disk A then to disk B, round after round (txnbackup_cli/demo/qemu). A
restore of both drives taken at one instant holds, on each, exactly the records written by
then (``check_disk``: every block, so a restore missing changed chunks fails), and B's last
record is A's or one behind: the cross-drive consistency a per-drive copy would not have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fleet import wait_for
from tests.fleet_plugin import Fleet
from tests.guest.conftest import NODE
from txnbackup.qemu.bitmaps import node_bitmaps
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.naming import bitmap_name, export_name
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus
from txnbackup_cli.demo.qemu.guest import DISKS, GuestVM
from txnbackup_cli.demo.qemu.records import check_disk, consistent

CS = 64 * 1024
VMID = "201"
WAITING = "waiting for QEMU's begin"
DRIVES = list(DISKS)  # virtio0 (disk A), virtio1 (disk B), in copy order


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return Repository.init(tmp_path_factory.mktemp("guest-repo") / "repo", CS)


def submit(fleet: Fleet, guest: GuestVM, repo: Repository, speed_limit: int | None = None) -> str:
    vm = QemuVM(guest.qmp_path, NODE)
    return fleet.producer.submit(VMID, [], repository=repo.path, qmp=vm, speed_limit=speed_limit)


def run_backup(fleet: Fleet, guest: GuestVM, repo: Repository) -> BackupStatus:
    status = fleet.producer.wait(submit(fleet, guest, repo), 120)
    assert status.status == "done", status.errmsg
    assert [d.name for d in status.drives] == DRIVES
    return status


def restored_records(repo: Repository, status: BackupStatus, tmp: Path) -> tuple[int, int]:
    """Restore both drives of the snapshot; each checked block by block; (A's, B's) last."""
    last = []
    for drive in DRIVES:
        target = tmp / f"{status.uuid}-{drive}.raw"
        restore_drive(repo, SnapshotId.parse(status.snapshot), drive, target)
        last.append(check_disk(target))
        target.unlink()
    a, b = last
    assert consistent(a, b), f"disk A's last record {a}, disk B's {b}: not one instant"
    return a, b


def assert_nothing_left(guest: GuestVM) -> None:
    with guest.harness() as qmp:
        left = find_leftovers(qmp)
    assert not left, left


def our_bitmaps(guest: GuestVM) -> dict[str, list[str]]:
    with guest.harness() as qmp:
        per_node = node_bitmaps(qmp)
    return {node: [b.name for b in per_node.get(node, [])] for node in DISKS.values()}


def dirty_on_a(guest: GuestVM) -> int:
    """What disk A's recording bitmap of ours holds (bytes)."""
    with guest.harness() as qmp:
        bitmaps = node_bitmaps(qmp).get(DISKS["virtio0"], [])
    return sum(b.count for b in bitmaps if b.recording)


def test_full_then_incremental_of_the_running_guest(
    gfleet: Fleet, guest: GuestVM, repo: Repository, tmp_path: Path
) -> None:
    full = run_backup(gfleet, guest, repo)
    assert [d.action for d in full.drives] == ["new", "new"]
    a1, _ = restored_records(repo, full, tmp_path)
    assert a1 >= 1
    assert_nothing_left(guest)
    assert our_bitmaps(guest) == {node: [bitmap_name(full.uuid)] for node in DISKS.values()}

    wait_for(lambda: dirty_on_a(guest) >= 2 * CS, 60, "the guest to write on")
    incremental = run_backup(gfleet, guest, repo)
    assert [d.action for d in incremental.drives] == ["used", "used"]
    assert all(0 < d.dirty < guest.size for d in incremental.drives)
    a2, _ = restored_records(repo, incremental, tmp_path)
    assert a2 > a1
    assert_nothing_left(guest)
    assert our_bitmaps(guest) == {n: [bitmap_name(incremental.uuid)] for n in DISKS.values()}


def _cancel(fleet: Fleet, guest: GuestVM, backup: str) -> None:
    fleet.producer.cancel(backup)


def _revoke(index: int, terminate: bool = False) -> Stop:
    def revoke(fleet: Fleet, guest: GuestVM, backup: str) -> None:
        task_id = fleet.producer.rt.records.task_ids(backup)[index]
        fleet.producer.app.control.revoke(task_id, terminate=terminate)

    return revoke


def _cut_export(fleet: Fleet, guest: GuestVM, backup: str) -> None:
    """Disk A's NBD export vanishes under the reader, as when the connection fails."""
    with guest.harness() as qmp:
        qmp.execute("block-export-del", {"id": export_name(backup, DRIVES[0]), "mode": "hard"})


Stop = Callable[[Fleet, GuestVM, str], None]
WAYS: dict[str, tuple[Stop, str, str]] = {  # how; then the status and disk A's state
    "cancel-verb": (_cancel, "cancelled", "cancelled"),
    "revoke-pending": (_revoke(1), "cancelled", "cancelled"),  # disk B's copy, queued
    "revoke-running": (_revoke(0), "cancelled", "cancelled"),
    "terminate": (_revoke(0, terminate=True), "cancelled", "cancelled"),
    "failing-drive": (_cut_export, "error", "failed"),
}


def start_slow_incremental(fleet: Fleet, guest: GuestVM, repo: Repository) -> str:
    """An incremental reading disk A at one chunk a second, copying disk A now."""
    wait_for(lambda: dirty_on_a(guest) >= 6 * CS, 60, "the guest to dirty six chunks of A")
    backup = submit(fleet, guest, repo, speed_limit=CS)
    producer = fleet.producer

    def copying() -> bool:
        status = producer.status(backup)
        assert status.active, f"ended before it was stopped: {status.errmsg}"
        return (
            bool(status.drives)
            and status.drives[0].reason != WAITING
            and (status.drives[0].transferred > 0)
        )

    wait_for(copying, 60, "disk A to be copying")
    return backup


@pytest.mark.slow
@pytest.mark.parametrize("way", list(WAYS))
def test_a_stopped_backup_rolls_back_and_the_next_incremental_is_one_instant(
    gfleet: Fleet, guest: GuestVM, repo: Repository, tmp_path: Path, way: str
) -> None:
    stop, final, state_a = WAYS[way]
    if not repo.snapshots(VMID):
        run_backup(gfleet, guest, repo)
    base = repo.snapshots(VMID)
    before = our_bitmaps(guest)
    # Given an incremental of the running guest, copying disk A
    backup = start_slow_incremental(gfleet, guest, repo)
    # When it is stopped this way
    stop(gfleet, guest, backup)
    # Then it ends, publishes nothing and leaves nothing of ours in QEMU; the bitmaps are the
    # ones before it (the frozen bits merged back into them)
    status = gfleet.producer.wait(backup, 60)
    assert status.status == final, status.errmsg
    assert [d.state for d in status.drives] == [state_a, "skipped"]
    assert repo.snapshots(VMID) == base
    assert_nothing_left(guest)
    assert our_bitmaps(guest) == before
    # And the next incremental covers what the stopped one would have, restoring to one instant
    time.sleep(0.2)
    after = run_backup(gfleet, guest, repo)
    assert [d.action for d in after.drives] == ["used", "used"]
    for stopped, then in zip(status.drives, after.drives, strict=True):
        assert then.dirty >= stopped.dirty, f"{then.name}: frozen bits lost"
    restored_records(repo, after, tmp_path)
    assert_nothing_left(guest)
