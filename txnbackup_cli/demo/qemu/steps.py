"""The steps of ``txnbackup demo --qemu``: a running VM's whole backup life."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table

from txnbackup.qemu.naming import bitmap_name
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus
from txnbackup.verify import verify_snapshot
from txnbackup_cli.demo.faults import STOP_WITHIN, copying
from txnbackup_cli.demo.qemu.records import DiskMismatch, check_disk, consistent
from txnbackup_cli.demo.qemu.scenario import QemuScenario
from txnbackup_cli.sizes import format_size


def running_vm(s: QemuScenario) -> None:
    """A VM with two qcow2 disks is running. Its guest writes numbered records: round n
    writes record n to disk A, then the same to disk B, forever. At any instant B's last
    record is A's or one behind; a backup that freezes both disks at one instant restores
    to the same, a backup copying one disk after the other would not."""
    s.narrator.say(f"VM: {s.vm.describe}")
    table = Table("drive", "block node", "size", box=None, padding=(0, 2))
    for name, node in s.vm.drives.items():
        table.add_row(name, node, format_size(s.vm.size))
    s.narrator.show(table)
    with s.vm.harness() as qmp:
        version = qmp.execute("query-version")["qemu"]
    s.narrator.say(
        f"QEMU {version['major']}.{version['minor']}.{version['micro']}, QMP socket "
        f"{s.vm.qmp_path}; repository {s.repo}"
    )
    s.check(len(s.vm.drives) == 2, "two disks, the guest writing to both")
    s.check(not any(s.bitmaps().values()), "QEMU has no dirty bitmap of ours yet")


def full_backup(s: QemuScenario) -> None:
    """The backup names only the QMP socket; its first task, on the VM's node, finds the
    drives, then one QMP transaction freezes both disks at one instant (fleecing) and starts
    a new dirty bitmap on each. Each frozen view is read over NBD while the guest writes on."""
    status = s.committed_backup()
    s.check(all(d.action == "new" for d in status.drives), "bitmap action 'new' on both")
    bitmaps = s.bitmaps()
    s.check(
        all([b.name for b in found] == [bitmap_name(status.uuid)] for found in bitmaps.values()),
        f"QEMU now records each disk's writes in bitmap {bitmap_name(status.uuid)}",
    )


def incremental_backup(s: QemuScenario) -> None:
    """The guest wrote on. The next backup exports each frozen bitmap with the frozen view;
    NBD block status says which chunks are dirty, and only those are read."""
    s.wait_for_writes(2, s.chunk_size)
    status = s.committed_backup()
    s.check(all(d.action == "used" for d in status.drives), "bitmap action 'used' on both")
    s.check(0 < status.dirty < status.total, "read only the dirty chunks")
    share = f"{100 * status.dirty / status.total:.2f} %"
    s.narrator.say(f"read {format_size(status.dirty)} of {format_size(status.total)} ({share})")


class RevokeFirst:
    """Revokes the task copying the first disk once it is copying (plain ``revoke``)."""

    def __init__(self, s: QemuScenario) -> None:
        self.s = s
        self.drive = next(iter(s.vm.drives))
        self.at: float | None = None

    def __call__(self, status: BackupStatus) -> None:
        if self.at is not None or not copying(status, self.drive):
            return
        task_id = self.s.producer.rt.records.task_ids(status.uuid)[0]
        self.s.producer.app.control.revoke(task_id)
        self.at = time.monotonic()
        self.s.narrator.say(f"  [yellow]✋[/] app.control.revoke('{task_id}'): {self.drive}'s task")


def revoked_backup(s: QemuScenario) -> None:
    """A slow backup (one chunk a second); while it copies the first disk, that one task is
    revoked. The whole backup is cancelled and rolled back in QEMU: exports, jobs and
    overlays removed, each frozen bitmap merged back into the one recording since."""
    s.wait_for_writes(6, s.chunk_size)
    before = {name: [b.name for b in found] for name, found in s.bitmaps().items()}
    revoke = RevokeFirst(s)
    status = s.follow(s.submit(speed_limit=s.chunk_size), revoke)
    stopped = time.monotonic() - (revoke.at or 0.0)
    s.narrator.status(status)
    s.check(revoke.at is not None, "one task revoked while its disk was being copied")
    s.check(status.status == "cancelled", f"status cancelled: {status.errmsg}", status.status)
    s.check(stopped < STOP_WITHIN, f"the whole backup ended {stopped:.1f} s after the revoke")
    states = [d.state for d in status.drives]
    s.check(states == ["cancelled", "skipped"], "first disk stopped, second never started", states)
    s.check(s.published() == sorted(s.snapshots), "no snapshot published")
    s.nothing_left()
    after = s.bitmaps()
    s.check(
        {name: [b.name for b in found] for name, found in after.items()} == before
        and all(b.recording for found in after.values() for b in found),
        "QEMU's bitmaps rolled back: the last snapshot's, recording, holding the frozen bits",
    )
    held = {name: sum(b.count for b in found) for name, found in after.items()}
    frozen = {d.name: d.dirty for d in status.drives}
    s.check(all(held[n] >= frozen[n] for n in frozen), "no dirty bit lost", (held, frozen))
    s.cancelled = status


def catch_up_backup(s: QemuScenario) -> None:
    """The next incremental reads everything the cancelled one would have, and what the guest
    wrote since."""
    cancelled = s.cancelled
    status = s.committed_backup()
    s.check(all(d.action == "used" for d in status.drives), "bitmap action 'used' on both")
    covered = cancelled is not None and all(
        d.dirty >= c.dirty for d, c in zip(status.drives, cancelled.drives, strict=True)
    )
    s.check(covered, "it read at least every chunk the cancelled backup had frozen")


def restore_and_check(s: QemuScenario) -> None:
    """Both disks of every snapshot are restored and read back: each must hold exactly the
    records written up to its last one (every block checked), and disk B's last record must
    be disk A's or one behind: one instant across both drives."""
    repo = Repository.open(s.repo)
    table = Table("snapshot", "A: last record", "B: last record", "one instant", box=None)
    target_dir = s.workdir / "restore"
    target_dir.mkdir()
    for snapshot in s.snapshots:
        last = [_restored(s, repo, snapshot, name) for name in s.vm.drives]
        table.add_row(snapshot, *(str(n) for n in last), "yes" if consistent(*last) else "NO")
        s.check(consistent(*last), f"{snapshot}: B's last record {last[1]}, A's {last[0]}")
    s.narrator.show(table)
    report = verify_snapshot(repo, SnapshotId.parse(s.snapshots[-1]))
    s.check(report.ok, f"verify: {report.chunks} chunks of the last snapshot good", report.problems)


def _restored(s: QemuScenario, repo: Repository, snapshot: str, drive: str) -> int:
    target = s.workdir / "restore" / f"{snapshot.replace('/', '_')}-{drive}.raw"
    restore_drive(repo, SnapshotId.parse(snapshot), drive, target)
    try:
        last = check_disk(target)
    except DiskMismatch as exc:
        s.check(False, f"{drive} of {snapshot} holds the records written by then", exc)
        raise
    target.unlink()
    return last


Step = Callable[[QemuScenario], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("A running VM", running_vm),
    ("Full backup", full_backup),
    ("Incremental backup", incremental_backup),
    ("Revoking one task", revoked_backup),
    ("Nothing was lost", catch_up_backup),
    ("Restore and check", restore_and_check),
)
