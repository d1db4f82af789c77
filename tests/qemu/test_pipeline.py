"""Backups of a running QEMU (qemu-storage-daemon) VM through real worker processes.

Every task of such a backup runs on the VM's node ("qnode"); the guest writes through its own
NBD exports while the backup runs. The test knows the content at the begin instant by holding
the writer off (``guest.paused``) until the worker's begin has recorded its decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet_plugin import Fleet
from tests.qemu.qsd import CS, DRIVES, Guest, Qsd, missing_tools
from txnbackup.drive import Drive
from txnbackup.qemu.bitmaps import node_bitmaps
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.naming import bitmap_name
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

NODE = "qnode"
WAITING = "waiting for QEMU's begin"


@pytest.fixture
def qfleet(make_fleet: Callable[[dict[str, str]], Fleet]) -> Fleet:
    fleet = make_fleet({})
    fleet.start(NODE)
    return fleet


def begun(producer: Producer, backup: str, timeout: float = 20) -> BackupStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = producer.status(backup)
        if status.drives and all(d.reason != WAITING for d in status.drives):
            return status
        if not status.active or time.monotonic() > deadline:
            raise AssertionError(f"begin did not happen: {status}")
        time.sleep(0.02)


def backup_at_begin(
    producer: Producer, qsd: Qsd, guest: Guest, repo: Repository
) -> tuple[str, dict[str, bytes], int]:
    """Submit with the writer held off; return the backup, the drives at begin, the log mark."""
    with guest.paused:
        vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
        backup = producer.submit("100", [], repository=repo.path, qmp=vm)
        begun(producer, backup)
        return backup, {d: guest.content(d) for d in DRIVES}, len(guest.log)


def assert_nothing_left(qsd: Qsd) -> None:
    with qsd.harness() as qmp:
        assert not find_leftovers(qmp), find_leftovers(qmp)


def our_bitmaps(qsd: Qsd) -> dict[str, list[str]]:
    with qsd.harness() as qmp:
        per_node = node_bitmaps(qmp)
    return {d: [b.name for b in per_node.get(d, [])] for d in DRIVES}


def restores(repo: Repository, snapshot: str, expected: dict[str, bytes], tmp: Path) -> bool:
    for d, data in expected.items():
        target = tmp / f"{snapshot.replace('/', '_')}-{d}.raw"
        restore_drive(repo, SnapshotId.parse(snapshot), d, target)
        if target.read_bytes() != data:
            return False
    return True


def written(guest: Guest, start: int, end: int) -> dict[str, int]:
    """Dirty bytes per drive: the distinct chunks written in guest.log[start:end]."""
    chunks = set(guest.log[start:end])
    return {d: CS * sum(1 for dd, _ in chunks if dd == d) for d in DRIVES}


def test_full_then_incremental_of_a_running_vm_while_the_guest_writes(
    qfleet: Fleet, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    producer = qfleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    guest.fill()
    guest.start()
    first, at_first, mark1 = backup_at_begin(producer, qsd, guest, repo)
    full = producer.wait(first, 60)
    assert full.status == "done", full.errmsg
    assert [(d.name, d.action) for d in full.drives] == [(d, "new") for d in DRIVES]
    assert all(d.size == qsd.size and d.dirty == qsd.size for d in full.drives)
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(first)] for d in DRIVES}
    time.sleep(0.3)  # the guest goes on writing between the backups

    second, at_second, mark2 = backup_at_begin(producer, qsd, guest, repo)
    incremental = producer.wait(second, 60)
    guest.stop()
    assert incremental.status == "done", incremental.errmsg
    assert [d.action for d in incremental.drives] == ["used", "used"]
    expected = written(guest, mark1, mark2)
    assert {d.name: d.dirty for d in incremental.drives} == expected
    assert all(0 < n < qsd.size for n in expected.values())
    assert {d.name: d.transferred for d in incremental.drives} == expected
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(second)] for d in DRIVES}
    # the guest wrote during both copies, yet each snapshot is the drives at its begin
    assert len(guest.log) > mark2
    assert restores(repo, full.snapshot, at_first, tmp_path)
    assert restores(repo, incremental.snapshot, at_second, tmp_path)


def test_cancel_merges_the_frozen_bits_back(
    qfleet: Fleet, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    producer = qfleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    guest.fill()
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    explicit = [_drive(d) for d in DRIVES]
    full = producer.wait(producer.submit("100", explicit, repository=repo.path, qmp=vm), 60)
    assert full.status == "done", full.errmsg
    for c in range(0, 64, 2):  # 32 chunks of drive0, the first 2 of drive1
        guest.write("drive0", c)
    guest.write("drive1", 0)
    guest.write("drive1", 1)
    slow = producer.submit("100", explicit, repository=repo.path, qmp=vm, speed_limit=CS * 4)
    begun(producer, slow)
    _wait(lambda: producer.status(slow).drives[0].transferred > 0, "drive0 copying")
    guest.write("drive1", 5)  # after the freeze: belongs to the next backup anyway
    producer.cancel(slow)
    status = producer.wait(slow, 30)
    assert status.status == "cancelled"
    assert [d.state for d in status.drives] == ["cancelled", "skipped"]
    assert_nothing_left(qsd)
    # the bitmap named after the base backup records again, with the frozen bits
    assert our_bitmaps(qsd) == {d: [bitmap_name(full.uuid)] for d in DRIVES}
    assert repo.snapshots("100") == [SnapshotId.parse(full.snapshot)]

    expected = {d: guest.content(d) for d in DRIVES}
    after = producer.wait(producer.submit("100", explicit, repository=repo.path, qmp=vm), 60)
    assert after.status == "done", after.errmsg
    assert [d.action for d in after.drives] == ["used", "used"]
    assert [d.dirty for d in after.drives] == [32 * CS, 3 * CS]
    assert restores(repo, after.snapshot, expected, tmp_path)
    assert_nothing_left(qsd)


def _drive(name: str) -> Drive:
    return Drive(name, f"qemu:{name}", NODE)


def _wait(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
