"""Every way a running QEMU VM's backup can be stopped mid-drive, through real workers.

One fleet for the module (its reaper quick: lease 2 s), one qemu-storage-daemon per test.
Each test takes a full backup, lets the guest write, starts a slow incremental and stops it
while drive0 is copying; then QEMU must hold nothing of ours, the bitmap named after the full
backup must record again with the frozen bits merged back, and the next incremental must read
exactly the blocks written before the stopped one (plus one written during it) and restore
byte for byte. (`Producer.cancel` is tested in test_pipeline.py.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet_plugin import Fleet
from tests.operators.fleet import FlowerProcess, env_with, start_flower, stop_process
from tests.qemu.qsd import CS, DRIVES, Guest, Qsd, missing_tools
from tests.qemu.test_pipeline import NODE, assert_nothing_left, begun, our_bitmaps, restores
from txnbackup.drive import Drive
from txnbackup.qemu.bitmaps import node_bitmaps
from txnbackup.qemu.naming import bitmap_name, export_name
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

SETTINGS = {"TXNBACKUP_LEASE_TTL": "2", "TXNBACKUP_REAPER_INTERVAL": "1"}
EXPLICIT = [Drive(d, f"qemu:{d}", NODE) for d in DRIVES]


@dataclass
class Rig:
    fleet: Fleet
    logdir: Path
    flower: FlowerProcess | None = None

    def flower_process(self) -> FlowerProcess:
        if self.flower is None:
            self.flower = start_flower(env_with(self.fleet.env), self.logdir)
        return self.flower


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    logdir = tmp_path_factory.mktemp("qemu-endings")
    fleet = Fleet(logdir, SETTINGS)
    rig = Rig(fleet, logdir)
    try:
        fleet.start(NODE)
        yield rig
    finally:
        if rig.flower is not None:
            stop_process(rig.flower.proc)
        fleet.stop()


@dataclass
class Stopping:
    """A slow incremental copying drive0, over a full backup ``base``."""

    rig: Rig
    qsd: Qsd
    backup: str
    ids: list[str]  # copy drive0, copy drive1, begin, commit


def cut_the_export(s: Stopping) -> None:
    """drive0's disk fails under the reader: its export disappears (ENOTCONN)."""
    with s.qsd.harness() as qmp:
        qmp.execute("block-export-del", {"id": export_name(s.backup, "drive0"), "mode": "hard"})


def kill_the_worker(s: Stopping) -> None:
    """SIGKILL the node's worker and pool; a new worker of the node (its reaper) takes over."""
    s.rig.fleet.workers[NODE].kill_all()
    s.rig.fleet.start(NODE)


STOPS: dict[str, tuple[Callable[[Stopping], object], str, str, list[str]]] = {
    # way: (how, final status, the error or cancel reason (ids[n] as {n}), drive states)
    "revoke-pending": (
        lambda s: s.rig.fleet.producer.app.control.revoke(s.ids[1]),
        "cancelled",
        "task {1} revoked",
        ["cancelled", "skipped"],
    ),
    "revoke-running": (
        lambda s: s.rig.fleet.producer.app.control.revoke(s.ids[0]),
        "cancelled",
        "task {0} revoked",
        ["cancelled", "skipped"],
    ),
    "terminate-running": (
        lambda s: s.rig.fleet.producer.app.control.revoke(s.ids[0], terminate=True),
        "cancelled",
        "task {0} terminated",
        ["cancelled", "skipped"],
    ),
    "flower-terminate": (
        lambda s: s.rig.flower_process().revoke(s.ids[0], terminate=True),
        "cancelled",
        "task {0} terminated",
        ["cancelled", "skipped"],
    ),
    "failing-drive": (cut_the_export, "error", "drive drive0: ", ["failed", "skipped"]),
    "worker-sigkill": (
        kill_the_worker,
        "error",
        "worker lost while copying drive drive0",
        ["failed", "skipped"],
    ),
}


@pytest.mark.parametrize("way", list(STOPS))
def test_a_stopped_qemu_backup_leaves_nothing_and_loses_no_bit(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, way: str
) -> None:
    how, final, reason, states = STOPS[way]
    if way == "flower-terminate":
        rig.flower_process()  # started before the clock of the slow backup runs
    producer = rig.fleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    guest.fill()
    # Given a full backup, then writes to 32 blocks of drive0 and 2 of drive1
    full = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
    assert full.status == "done", full.errmsg
    for c in range(0, 64, 2):
        guest.write("drive0", c)
    guest.write("drive1", 0)
    guest.write("drive1", 1)
    # and a slow incremental copying drive0
    slow = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm, speed_limit=CS * 4)
    begun(producer, slow)
    wait_until(lambda: producer.status(slow).drives[0].transferred > 0, "drive0 copying")
    guest.write("drive1", 5)  # after the freeze: belongs to the next backup anyway
    ids = producer.rt.records.task_ids(slow)

    # When it is stopped that way
    how(Stopping(rig, qsd, slow, ids))

    # Then it ends as such a stop ends a file backup
    status = producer.wait(slow, 40)
    assert status.status == final, status.errmsg
    assert reason.format(*ids) in status.errmsg
    assert [d.state for d in status.drives] == states
    assert producer.rt.records.raw(slow).get("rollback_runs") == "1"  # exactly once
    # and QEMU holds nothing of ours; the full backup's bitmap records again, nothing published
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(full.uuid)] for d in DRIVES}
    assert repo.snapshots("100") == [SnapshotId.parse(full.snapshot)]
    # and the next incremental reads exactly what was written since the full backup
    assert_next_covers(rig, qsd, guest, repo, [32 * CS, 3 * CS], tmp_path)


def assert_next_covers(
    rig: Rig, qsd: Qsd, guest: Guest, repo: Repository, dirty: list[int], tmp: Path
) -> BackupStatus:
    producer = rig.fleet.producer
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    expected = {d: guest.content(d) for d in DRIVES}
    after = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
    assert after.status == "done", after.errmsg
    assert [d.action for d in after.drives] == ["used", "used"]
    assert [d.dirty for d in after.drives] == dirty
    assert restores(repo, after.snapshot, expected, tmp)
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(after.uuid)] for d in DRIVES}
    return after


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("restarted_before", [True, False], ids=["inconsistent", "gone"])
def test_qemu_killed_mid_backup_makes_the_next_backup_a_full_read(
    rig: Rig, qsd: Qsd, tmp_path: Path, restarted_before: bool
) -> None:
    producer = rig.fleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    guests: list[Guest] = []
    try:
        guest = new_guest(qsd, guests)
        guest.fill()
        # Given a full backup (its bitmap stored in the images by a clean restart, or not)
        full = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
        assert full.status == "done", full.errmsg
        if restarted_before:
            qsd.quit()
            qsd.start()
            guest = new_guest(qsd, guests)
        for c in range(0, 64, 2):
            guest.write("drive0", c)
        guest.flush()  # a killed QEMU loses what was not flushed
        slow = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm, speed_limit=CS * 4)
        begun(producer, slow)
        # (generous: in one CI run on a loaded machine the first progress took over 30 s)
        copying = lambda: producer.status(slow).drives[0].transferred > 0  # noqa: E731
        wait_until(copying, "drive0 copying", timeout=90)

        # When QEMU is killed mid-backup
        qsd.kill()

        # Then the backup fails and is rolled back as far as QEMU's absence allows
        status = producer.wait(slow, 40)
        assert status.status == "error"
        assert status.errmsg.startswith("drive drive0: "), status.errmsg
        assert [d.state for d in status.drives] == ["failed", "skipped"]
        assert repo.snapshots("100") == [SnapshotId.parse(full.snapshot)]
        assert not (Path("/tmp") / f"txnbackup-qemu-{slow}").exists()  # the run directory
        # and once QEMU is back, its bitmap is inconsistent (stored, then killed) or gone
        qsd.start()
        guest = new_guest(qsd, guests)
        assert_nothing_left(qsd)
        with qsd.harness() as qmp:
            left = {
                d: [(b.name, b.inconsistent) for b in bs] for d, bs in node_bitmaps(qmp).items()
            }
        stored = [(bitmap_name(full.uuid), True)] if restarted_before else []
        assert {d: left.get(d, []) for d in DRIVES} == {d: stored for d in DRIVES}

        # and the next backup reads every drive in full, saying why, and restores
        expected = {d: guest.content(d) for d in DRIVES}
        after = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
        assert after.status == "done", after.errmsg
        assert [d.action for d in after.drives] == ["invalid", "invalid"]
        why = "is inconsistent" if restarted_before else "no bitmap in QEMU since snapshot"
        assert all(why in d.reason for d in after.drives), [d.reason for d in after.drives]
        assert [d.dirty for d in after.drives] == [qsd.size, qsd.size]
        assert restores(repo, after.snapshot, expected, tmp_path)
        assert_nothing_left(qsd)
        assert our_bitmaps(qsd) == {d: [bitmap_name(after.uuid)] for d in DRIVES}
    finally:
        for g in guests:
            with contextlib.suppress(Exception):
                g.close()


def new_guest(qsd: Qsd, guests: list[Guest]) -> Guest:
    guests.append(Guest(qsd, seed=len(guests) + 1))
    return guests[-1]


LOST_IN_BEGIN = "worker lost during begin in QEMU"
BEGIN_DEATHS = {
    # way: (where the worker dies, fleet settings, the backup's final status, its error)
    "reaped": ("begin.after_transaction", {"TXNBACKUP_LEASE_TTL": "2"}, "error", LOST_IN_BEGIN),
    "redelivered": ("begin.after_transaction", {"TXNBACKUP_VISIBILITY_TIMEOUT": "2"}, "done", ""),
    "reaped-after-begin": ("begin.done", {"TXNBACKUP_LEASE_TTL": "2"}, "error", LOST_IN_BEGIN),
    "redelivered-after-begin": ("begin.done", {"TXNBACKUP_VISIBILITY_TIMEOUT": "2"}, "done", ""),
}


@pytest.mark.parametrize("way", list(BEGIN_DEATHS))
def test_a_worker_killed_right_after_qemu_s_transaction(
    make_fleet: Callable[[dict[str, str]], Fleet],
    qsd: Qsd,
    guest: Guest,
    tmp_path: Path,
    way: str,
) -> None:
    where, settings, final, error = BEGIN_DEATHS[way]
    fleet = make_fleet({"TXNBACKUP_REAPER_INTERVAL": "1", **settings})
    fleet.start(NODE)
    rig = Rig(fleet, tmp_path)
    producer = fleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    guest.fill()
    full = producer.wait(producer.submit("100", [], repository=repo.path, qmp=vm), 60)
    assert full.status == "done", full.errmsg
    for c in range(0, 64, 2):
        guest.write("drive0", c)
    guest.write("drive1", 0)
    expected = {d: guest.content(d) for d in DRIVES}
    # Given a worker of the VM's node that dies (with its pool) after QEMU's transaction, or
    # after begin recorded its plan, before the first copy was sent
    fleet.workers[NODE].stop()
    dying = fleet.start(NODE, {"TXNBACKUP_FAILPOINTS": f"{where}=kill-worker"})
    backup = producer.submit("100", [], repository=repo.path, qmp=vm)
    dying.proc.wait(30)
    # (its lease expires, its unacked message becomes visible again: both after 2 s)
    time.sleep(3)
    with qsd.harness() as qmp:
        assert bitmap_name(backup) in {b.name for bs in node_bitmaps(qmp).values() for b in bs}
    # When another worker of the node comes up
    fleet.start(NODE)

    # Then its reaper rolls the backup back once begin's lease expired (not after the queue
    # timeout), or the redelivered begin recognises its backup and the backup completes
    status = producer.wait(backup, 60)
    assert status.status == final, status.errmsg
    assert status.errmsg == error
    assert_nothing_left(qsd)
    if final == "done":
        assert [d.dirty for d in status.drives] == [32 * CS, CS]
        assert [d.transferred for d in status.drives] == [32 * CS, CS]  # each copied once
        assert restores(repo, status.snapshot, expected, tmp_path)
        assert our_bitmaps(qsd) == {d: [bitmap_name(backup)] for d in DRIVES}
    else:
        assert our_bitmaps(qsd) == {d: [bitmap_name(full.uuid)] for d in DRIVES}
        assert_next_covers(rig, qsd, guest, repo, [32 * CS, CS], tmp_path)


SLOW_HAND_OVERS = {
    # the last drive's copy, which Celery gives begin's task id, is running when begin lets
    # go of its lease (its post-run step sleeps 5 s; lease 30 s, renewed every 10 s)
    "after-the-copy-started": ("begin.hand_over=sleep:5", {}),
    # begin's work is done but sending the first copy takes longer than the lease (2 s)
    "before-the-copy-is-sent": ("begin.done=sleep:5", {"TXNBACKUP_LEASE_TTL": "2"}),
}


@pytest.mark.parametrize("when", list(SLOW_HAND_OVERS))
def test_begin_handing_over_late_leaves_the_backup_alive(
    make_fleet: Callable[[dict[str, str]], Fleet],
    qsd: Qsd,
    guest: Guest,
    tmp_path: Path,
    when: str,
) -> None:
    failpoints, settings = SLOW_HAND_OVERS[when]
    # Given a worker whose begin hands over late while the drives are copied at 4 MiB/s
    fleet = make_fleet({"TXNBACKUP_REAPER_INTERVAL": "1", **settings})
    fleet.start(NODE, {"TXNBACKUP_FAILPOINTS": failpoints})
    repo = Repository.init(tmp_path / "repo", CS)
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    guest.fill()
    expected = {d: guest.content(d) for d in DRIVES}

    # When the drives are discovered and backed up
    producer = fleet.producer
    limit = 4 * 1024 * 1024
    backup = producer.submit("100", [], repository=repo.path, qmp=vm, speed_limit=limit)
    status = producer.wait(backup, 60)

    # Then no reaper called begin's or the copy's live worker lost (begin renewed its lease
    # until it handed over, and left the running copy's lease alone): the backup completed
    assert status.status == "done", status.errmsg
    assert restores(repo, status.snapshot, expected, tmp_path)
    assert_nothing_left(qsd)
