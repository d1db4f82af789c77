"""The faults of a QEMU backup that are not a stop mid-drive, through real workers: a drive
resized between two backups, the base snapshot forgotten, and the worker's QMP connection
dropped while QEMU keeps running. One fleet for the module, one qemu-storage-daemon per test.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import env_for_workers
from tests.fleet_plugin import Fleet
from tests.qemu.qmp_proxy import QmpProxy
from tests.qemu.qsd import CS, DRIVES, MIB, Guest, Qsd, missing_tools
from tests.qemu.test_endings import EXPLICIT, SETTINGS, Rig, assert_next_covers, wait_until
from tests.qemu.test_pipeline import NODE, assert_nothing_left, begun, our_bitmaps, restores
from tests.qemu.test_reap_cli import TXNBACKUP
from txnbackup.prune import Pruner
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.naming import bitmap_name, export_name
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One fleet with a quick reaper (lease 2 s), as test_endings.py has."""
    logdir = tmp_path_factory.mktemp("qemu-faults")
    fleet = Fleet(logdir, SETTINGS)
    try:
        fleet.start(NODE)
        yield Rig(fleet, logdir)
    finally:
        fleet.stop()


def read_drive(qsd: Qsd, drive: str) -> bytes:
    """The drive as QEMU shows it now (a new connection: NBD fixes the size at connect)."""
    import nbd  # noqa: PLC0415

    h = nbd.NBD()
    h.connect_uri(qsd.guest_uri(drive))
    try:
        data: bytes = h.pread(h.get_size(), 0)
        return data
    finally:
        h.shutdown()


def resize(qsd: Qsd, guest: Guest, drive: str, size: int) -> None:
    """``block_resize`` the running drive; the guest's export (which does not share resize,
    as a VM's device does) is detached around it and comes back at the new size."""
    import nbd  # noqa: PLC0415

    export = f"guest-{drive}"
    guest.handles[drive].shutdown()
    with qsd.harness() as qmp:
        qmp.execute("block-export-del", {"id": export})
        qmp.wait_absent("query-block-exports", "id", export)
        qmp.execute("block_resize", {"node-name": drive, "size": size})
        qmp.execute(
            "block-export-add",
            {"type": "nbd", "id": export, "node-name": drive, "name": export, "writable": True},
        )
    guest.handles[drive] = nbd.NBD()
    guest.handles[drive].connect_uri(qsd.guest_uri(drive))


@pytest.fixture
def relay(qsd: Qsd) -> Iterator[QmpProxy]:
    """A relay in front of the test's QEMU monitor that can cut the worker's connection."""
    proxy = QmpProxy(qsd.qmp_path, qsd.dir / "relay.sock")
    try:
        yield proxy
    finally:
        proxy.close()


def first_full(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, qmp: str | None = None
) -> tuple[Repository, BackupStatus]:
    """A new repository holding a full backup of the guest's filled drives."""
    repo = Repository.init(tmp_path / "repo", CS)
    guest.fill()
    return repo, backup(rig, qsd, repo, qmp)


def backup(rig: Rig, qsd: Qsd, repo: Repository, qmp: str | None = None) -> BackupStatus:
    producer = rig.fleet.producer
    vm = QemuVM(qmp or qsd.qmp_path, NODE, qsd.nbd_socket)
    status = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
    assert status.status == "done", status.errmsg
    return status


def test_a_resized_drive_is_read_in_full_and_the_other_stays_incremental(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo", CS)
    guest.fill()
    full = backup(rig, qsd, repo)
    # Given drive0 grown by 4 MiB while the VM runs (QEMU resizes its bitmaps with it) and
    # three blocks of drive1 written
    grown = qsd.size + 4 * MIB
    resize(qsd, guest, "drive0", grown)
    for c in (1, 2, 3):
        guest.write("drive1", c)
    expected = {d: read_drive(qsd, d) for d in DRIVES}
    assert len(expected["drive0"]) == grown

    # When the next backup runs
    after = backup(rig, qsd, repo)

    # Then drive0 is read in full, saying why; drive1 stays incremental (decided per drive)
    assert [d.action for d in after.drives] == ["invalid", "used"]
    assert after.drives[0].reason == f"drive size changed ({qsd.size} -> {grown} bytes)"
    assert [d.size for d in after.drives] == [grown, qsd.size]
    assert [d.dirty for d in after.drives] == [grown, 3 * CS]
    assert restores(repo, after.snapshot, expected, tmp_path)
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(after.uuid)] for d in DRIVES}
    assert full.uuid != after.uuid
    # and the one after is incremental on both, at the new size
    guest.write("drive1", 7)
    last = backup(rig, qsd, repo)
    assert [d.action for d in last.drives] == ["used", "used"]
    assert [d.dirty for d in last.drives] == [0, CS]
    assert restores(repo, last.snapshot, {d: read_drive(qsd, d) for d in DRIVES}, tmp_path)


def test_a_forgotten_base_snapshot_makes_the_next_backup_a_full_read(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo", CS)
    rt = rig.fleet.producer.rt
    guest.fill()
    full = backup(rig, qsd, repo)
    guest.write("drive0", 0)
    incremental = backup(rig, qsd, repo)
    assert [d.action for d in incremental.drives] == ["used", "used"]
    # Given the snapshot QEMU's bitmaps are relative to forgotten (and its chunks collected)
    Pruner(repo, rt.redis, rt.records.keys, rt.locks).forget(
        [SnapshotId.parse(incremental.snapshot)]
    )
    assert repo.snapshots("100") == [SnapshotId.parse(full.snapshot)]
    guest.write("drive0", 5)
    expected = {d: guest.content(d) for d in DRIVES}

    # When the next backup runs
    after = backup(rig, qsd, repo)

    # Then every drive is read in full, naming the missing base, and restores
    assert [d.action for d in after.drives] == ["invalid", "invalid"]
    why = f"base missing: backup {incremental.uuid} has no snapshot in this repository"
    assert [d.reason for d in after.drives] == [why, why]
    assert [d.dirty for d in after.drives] == [qsd.size, qsd.size]
    assert restores(repo, after.snapshot, expected, tmp_path)
    assert_nothing_left(qsd)
    # and the next one is incremental again, relative to it
    guest.write("drive1", 9)
    assert_next_covers(rig, qsd, guest, repo, [0, CS], tmp_path)


DROPS = {
    # where the worker's QMP connection drops: (command, the error the backup ends with)
    "in-begin-transaction": ("transaction", "begin: cannot talk to QEMU's monitor"),
    "in-rollback-teardown": ("block-export-del", "drive drive0: "),  # the rollback is resumed
}


@pytest.mark.parametrize("where", list(DROPS))
def test_a_dropped_qmp_connection_while_qemu_runs_loses_no_bit(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, relay: QmpProxy, where: str
) -> None:
    command, error = DROPS[where]
    producer = rig.fleet.producer
    vm = QemuVM(relay.path, NODE, qsd.nbd_socket)
    repo, full = first_full(rig, qsd, guest, tmp_path, relay.path)
    for c in range(0, 64, 2):
        guest.write("drive0", c)
    guest.write("drive1", 0)
    # Given the worker's monitor connection cut right after QEMU ran `command` (in begin's
    # transaction, or in the rollback after drive0 failed), QEMU still running
    if command == "transaction":
        relay.drop_at(command)
        failing = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm)
    else:
        failing = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm, speed_limit=CS * 4)
        begun(producer, failing)
        wait_until(lambda: producer.status(failing).drives[0].transferred > 0, "copying")
        relay.drop_at(command)
        with qsd.harness() as qmp:  # drive0's disk fails under the reader
            qmp.execute("block-export-del", {"id": export_name(failing, "drive0"), "mode": "hard"})
    guest.write("drive1", 5)  # during the failing backup

    # Then the backup ends in error, saying why
    status = producer.wait(failing, 40)
    assert relay.dropped.is_set()
    assert status.status == "error"
    assert status.errmsg.startswith(error), status.errmsg
    raw = producer.rt.records.raw(failing)
    resumed = "1" if command == "block-export-del" else None  # by the reaper, once
    assert (raw.get("rollback_runs"), raw.get("rollback_resumed")) == ("1", resumed)
    # and once a worker reached QMP again, nothing of ours is left in QEMU, the full
    # backup's bitmap records again holding the frozen bits, nothing was published
    wait_until(lambda: not _leftovers(qsd), "the rollback to reach QEMU")
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(full.uuid)] for d in DRIVES}
    assert repo.snapshots("100") == [SnapshotId.parse(full.snapshot)]
    # and the next incremental reads exactly what was written since the full backup
    assert_next_covers(rig, qsd, guest, repo, [32 * CS, 2 * CS], tmp_path)


def _leftovers(qsd: Qsd) -> bool:
    with qsd.harness() as qmp:
        return bool(find_leftovers(qmp))


@pytest.mark.parametrize(
    "command",
    ["blockdev-del", "transaction"],
    ids=["before-the-bitmaps-are-removed", "reply-of-the-bitmap-removal-lost"],
)
def test_a_dropped_qmp_connection_during_commit_still_commits(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, relay: QmpProxy, command: str
) -> None:
    producer = rig.fleet.producer
    vm = QemuVM(relay.path, NODE, qsd.nbd_socket)
    repo, full = first_full(rig, qsd, guest, tmp_path, relay.path)
    guest.write("drive0", 3)
    # Given a backup past its begin whose commit loses the worker's monitor connection
    # (after QEMU ran `command`: a teardown step, or the removal of the frozen bitmaps)
    second = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm, speed_limit=CS * 8)
    begun(producer, second)
    relay.drop_at(command)

    # Then the commit is tried again and the backup ends done
    status = producer.wait(second, 60)
    assert relay.dropped.is_set()
    assert status.status == "done", status.errmsg
    record = producer.rt.records.load(second)
    assert record.commit_attempts == 2
    # and QEMU holds only the new bitmap, none of our exports, jobs or nodes
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(second)] for d in DRIVES}
    assert [str(s) for s in repo.snapshots("100")] == [status.snapshot, full.snapshot]
    # and the next incremental reads exactly what was written since the second begin
    guest.write("drive1", 7)
    assert_next_covers(rig, qsd, guest, repo, [0, CS], tmp_path)


def a_second_backup_past_begin(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> tuple[Repository, BackupStatus, str]:
    """A full backup, a chunk written, then a second backup past its begin (the copy of the
    one dirty chunk takes about two seconds: what a test does next comes before it)."""
    producer = rig.fleet.producer
    repo, full = first_full(rig, qsd, guest, tmp_path)
    guest.write("drive0", 3)
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    second = producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm, speed_limit=CS // 2)
    begun(producer, second)
    return repo, full, second


@contextlib.contextmanager
def monitor_moved_away(qsd: Qsd) -> Iterator[None]:
    """QEMU's monitor socket file moved away while QEMU keeps running and serving the
    backup's NBD socket (nobody can reach its monitor); put back at the end."""
    hidden = Path(qsd.qmp_path).with_suffix(".hidden")
    Path(qsd.qmp_path).rename(hidden)
    try:
        yield
    finally:
        hidden.rename(qsd.qmp_path)


def test_a_monitor_socket_removed_mid_backup_is_not_taken_for_qemu_gone(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    producer = rig.fleet.producer
    # Given a backup past its begin, then QEMU's monitor socket file moved away
    repo, full, second = a_second_backup_past_begin(rig, qsd, guest, tmp_path)
    with monitor_moved_away(qsd):
        # When the commit has failed for it, and the operator then puts the socket back
        wait_until(lambda: producer.rt.records.load(second).commit_attempts >= 2, "a retry")

    # Then the commit was retried until it reached QEMU, instead of ending as if QEMU were
    # gone and leaving the backup's objects and both bitmaps in it
    status = producer.wait(second, 60)
    assert status.status == "done", status.errmsg
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(second)] for d in DRIVES}
    assert full.snapshot in [str(s) for s in repo.snapshots("100")]
    guest.write("drive1", 7)
    assert_next_covers(rig, qsd, guest, repo, [0, CS], tmp_path)


def qemu_clean(rig: Rig, qsd: Qsd, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [TXNBACKUP, "qemu-clean", "--qmp", f"{qsd.qmp_path}@{NODE}", *args]
    env = env_for_workers(rig.fleet.env)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def commit_gives_up_on_qemu(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, *, unnoted: bool = False
) -> tuple[Repository, BackupStatus, str]:
    """A full backup, then one whose every commit attempt finds QEMU's monitor unreachable
    (its socket file moved away while QEMU keeps running): it ends error with its session
    left in QEMU. ``unnoted``: the reapers are not told (as for a session from before)."""
    producer = rig.fleet.producer
    repo, full, second = a_second_backup_past_begin(rig, qsd, guest, tmp_path)
    with monitor_moved_away(qsd):
        ended = producer.wait(second, 90)
        if unnoted:
            producer.rt.catalog.forget_qemu_unended(second)
            time.sleep(1.5)  # a reaper pass that read the set before has given up
    assert ended.status == "error"
    # (the task's retries and the reaper's resumes are both counted: 5 or a little more)
    assert re.search(r"commit failed after \d+ attempts: cannot talk to QEMU", ended.errmsg)
    return repo, full, second


def assert_committed_in_qemu(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path, repo: Repository, second: str
) -> None:
    """The session was committed, as the snapshot it published is complete: nothing of ours
    in QEMU, only the new bitmap, and the next incremental (relative to that snapshot) holds
    every change since it."""
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(second)] for d in DRIVES}
    assert repo.find_backup("100", second) is not None
    guest.write("drive1", 7)
    assert_next_covers(rig, qsd, guest, repo, [0, CS], tmp_path)


def test_the_reaper_ends_in_qemu_what_a_commit_that_gave_up_on_its_monitor_left(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    # Given a backup whose commit gave up on QEMU's monitor, which then answers again
    repo, _full, second = commit_gives_up_on_qemu(rig, qsd, guest, tmp_path)

    # When the VM's node's reaper has had a few passes (one a second here)
    catalog = rig.fleet.producer.rt.catalog
    wait_until(lambda: not _leftovers(qsd), "the reaper's cleanup in QEMU")

    # Then the session is ended in QEMU and the reaper knows it (it forgets the backup just
    # after QEMU answered: a moment later than what this test sees of QEMU)
    wait_until(lambda: second not in catalog.qemu_unended(), "the reaper to forget it")
    # and it was committed there: the next backup is incremental again
    assert_committed_in_qemu(rig, qsd, guest, tmp_path, repo, second)


def test_qemu_clean_ends_what_a_commit_that_never_reached_qemu_left(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    producer = rig.fleet.producer
    # Given an ended backup's session in QEMU that the reapers do not know of
    repo, _full, second = commit_gives_up_on_qemu(rig, qsd, guest, tmp_path, unnoted=True)
    assert _leftovers(qsd)
    # and the VM's next backup refuses to begin, naming the command that helps
    vm = QemuVM(qsd.qmp_path, NODE, qsd.nbd_socket)
    refused = producer.wait(producer.submit("100", EXPLICIT, repository=repo.path, qmp=vm), 60)
    assert refused.status == "error"
    assert "txnbackup qemu-clean" in refused.errmsg

    # When the operator asks what qemu-clean would do, then runs it
    dry = qemu_clean(rig, qsd, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [(o["backup"], o["verdict"], o["ending"]) for o in json.loads(dry.stdout)] == [
        (second, "would end", "commit")
    ]
    assert _leftovers(qsd)  # a dry run changes nothing
    done = qemu_clean(rig, qsd)

    # Then the session is committed in QEMU and the next backup is incremental again
    assert done.returncode == 0, done.stderr
    assert second in done.stdout and "commit: ended" in done.stdout
    assert_committed_in_qemu(rig, qsd, guest, tmp_path, repo, second)
    # and a second run finds nothing to do
    again = qemu_clean(rig, qsd)
    assert again.returncode == 0, again.stderr
    assert "nothing of txnbackup's left in this QEMU" in again.stdout


def test_qemu_clean_leaves_a_backup_in_progress_alone(
    rig: Rig, qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    producer = rig.fleet.producer
    # Given a backup past its begin, still copying
    _repo, _full, second = a_second_backup_past_begin(rig, qsd, guest, tmp_path)

    # When qemu-clean runs on the VM's node
    busy = qemu_clean(rig, qsd)

    # Then it says the backup is in progress, exits 6 and touches nothing: the backup ends done
    assert busy.returncode == 6, busy.stderr
    assert f"backup {second}: still running" in busy.stderr
    status = producer.wait(second, 60)
    assert status.status == "done", status.errmsg
    assert_nothing_left(qsd)
    assert our_bitmaps(qsd) == {d: [bitmap_name(second)] for d in DRIVES}
