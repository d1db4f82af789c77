"""Steps 4 and 5: a backup broken by an I/O fault and one cancelled by revoking one task.

Both are read with a speed limit of one chunk per second, so that the fault or the revoke
lands while a drive is being copied, and both must end the same way: nothing published, no
staging area left, every bitmap holding every change since the last snapshot.
"""

from __future__ import annotations

import random
import time

from txnbackup.status import BackupStatus
from txnbackup_cli.demo.scenario import Scenario
from txnbackup_cli.demo.vm import content
from txnbackup_cli.sizes import format_size

STOP_WITHIN = 10.0  # seconds from the revoke to the end of the whole backup (about 1 s is usual)


def copying(status: BackupStatus, name: str) -> bool:
    return any(d.name == name and d.state == "running" and d.transferred for d in status.drives)


class ShrinkFault:
    """Cuts a drive's image in half once that drive is being read; ``mend`` puts it back."""

    def __init__(self, s: Scenario, drive: str) -> None:
        self.s = s
        self.drive = drive
        self.size = (s.chunks // 2) * s.vm.chunk_size
        self.tail: bytes | None = None

    def __call__(self, status: BackupStatus) -> None:
        if self.tail is None and copying(status, self.drive):
            self.tail = self.s.vm.cut(self.drive, self.size)
            self.s.narrator.say(
                f"  [red]⚡[/] fault: the image of {self.drive} shrinks to "
                f"{format_size(self.size)} while it is being read"
            )

    def mend(self) -> None:
        if self.tail is not None:
            self.s.vm.mend(self.drive, self.size, self.tail)


def failing_backup(s: Scenario) -> None:
    """More guest writes, then a backup read slowly, so that it can be broken: while its second
    drive is being read, that drive's image shrinks. The whole backup must end in error with
    the reason, publish nothing, and keep every dirty bit for the next backup."""
    s.vm.write("scsi0", s.offset(0.3, 7), b"apt: upgraded 3 packages\n" * 300)
    rng = random.Random(42)
    for fraction in (0.1, 0.3, 0.6, 0.8, 0.95):
        s.vm.write("scsi1", s.offset(fraction, 4096), rng.randbytes(4096))
    s.narrator.say("guest: writes 7 KiB to scsi0 and five 4 KiB pages across the database disk")
    fault = ShrinkFault(s, "scsi1")
    try:
        status = s.follow(s.submit(speed_limit=s.vm.chunk_size), fault)
    finally:
        fault.mend()
    s.narrator.status(status)
    s.check(fault.tail is not None, "the fault hit scsi1 while it was being read")
    s.check(status.status == "error", f"status error: {status.errmsg}", status.status)
    s.check("scsi1" in status.errmsg, "the reason names the failed drive")
    states = [d.state for d in status.drives]
    s.check(states == ["done", "failed", "skipped"], "scsi0 done, scsi1 failed, scsi2 skipped")
    s.nothing_published()
    s.bitmaps_kept()
    s.narrator.say(f"scsi1 is put back as it was ({format_size(s.vm.size('scsi1'))})")


class RevokeOne:
    """Revokes the running drive's task, once, with plain ``app.control.revoke``.

    Just before, the guest writes to a drive this backup has frozen: that write is for the
    next backup, whatever happens to this one.
    """

    def __init__(self, s: Scenario, drive: str) -> None:
        self.s = s
        self.drive = drive
        self.at: float | None = None

    def __call__(self, status: BackupStatus) -> None:
        if self.at is not None or not copying(status, self.drive):
            return
        self.s.vm.write("scsi1", self.s.offset(0.45, 100), b"INSERT INTO orders" * 200)
        self.s.narrator.say("  guest: writes 3.5 KiB to scsi1 while the backup runs")
        index = [d.name for d in status.drives].index(self.drive)
        task_id = self.s.producer.rt.records.task_ids(status.uuid)[index]
        self.s.producer.app.control.revoke(task_id)
        self.at = time.monotonic()
        self.s.narrator.say(
            f"  [yellow]✋[/] app.control.revoke('{task_id}'): the task copying {self.drive}, "
            "without terminate (plain Celery would let it run on and commit)"
        )


def revoked_backup(s: Scenario) -> None:
    """The guest upgrades packages (three chunks of scsi0) and writes to scsi2. A slow backup
    starts; while it copies scsi0, its task, just that one, is revoked. The whole backup must
    be cancelled: no later drive starts, everything is rolled back."""
    s.vm.write("scsi0", s.offset(0.5), b"".join(content("text", 3 * s.vm.chunk_size, 51)))
    s.vm.write("scsi2", s.offset(0.6, 4096), b"new file contents\n" * 500)
    revoke = RevokeOne(s, "scsi0")
    status = s.follow(s.submit(speed_limit=s.vm.chunk_size), revoke)
    stopped = time.monotonic() - (revoke.at or 0.0)
    s.narrator.status(status)
    s.check(revoke.at is not None, "one task revoked while its drive was being copied")
    s.check(status.status == "cancelled", f"status cancelled: {status.errmsg}", status.status)
    s.check(stopped < STOP_WITHIN, f"the whole backup ended {stopped:.1f} s after the revoke")
    first, states = status.drives[0], [d.state for d in status.drives]
    s.check(
        states == ["cancelled", "skipped", "skipped"] and 0 < first.transferred < first.dirty,
        "scsi0 stopped part way; scsi1 and scsi2 never started",
        states,
    )
    s.nothing_published()
    s.bitmaps_kept()
