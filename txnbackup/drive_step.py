"""One step of a backup's chain: copy one drive into the backup's staging area.

The step takes the ``copy`` lease before it marks its drive running and gives it back only
after the drive is no longer marked, so "a drive marked running without a lease" means
exactly "its worker died" (the reaper's rule). A step stopped from outside (SystemExit from
a terminate, KeyboardInterrupt) keeps the lease until it expires: whoever stopped it reports
the drive, and the reaper only steps in if nobody does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from txnbackup import transaction, trust
from txnbackup.cancel import Cancels
from txnbackup.constants import STOP_CHECK_INTERVAL
from txnbackup.ending import SendRollback
from txnbackup.errors import Cancelled
from txnbackup.failpoints import failpoint
from txnbackup.lease import Heartbeat, LeaseRole
from txnbackup.manifest import DriveEntry
from txnbackup.record import BackupRecord, DriveMark, DriveState, Records
from txnbackup.runtime import Runtime
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan

log = logging.getLogger(__name__)


class DriveWatcher(Protocol):
    """Whoever else hears of a drive's progress (Flower events, log lines, metrics)."""

    def update(self, state: DriveState, stats: DriveStats) -> None: ...


WatcherFactory = Callable[[BackupPlan, str], DriveWatcher]


class Duplicate(Exception):
    """This delivery of the step must do nothing: the drive is being or was copied."""


@dataclass(frozen=True)
class StepContext:
    """Who runs the step, and how it reaches the rest of the fleet."""

    task_id: str
    worker: str
    watchers: WatcherFactory
    send_rollback: SendRollback


class StopCheck:
    """Asks Redis at most every STOP_CHECK_INTERVAL whether the backup must stop."""

    def __init__(self, cancels: Cancels, backup: str) -> None:
        self.cancels = cancels
        self.backup = backup
        self._last = 0.0

    def __call__(self) -> str | None:
        now = time.monotonic()
        if now - self._last < STOP_CHECK_INTERVAL:
            return None
        self._last = now
        return self.cancels.stop_reason(self.backup)


class Progress:
    """Publishes a drive's counters (the engine throttles the calls) to its record and to
    its watchers; a report after the backup ended changes nothing."""

    def __init__(self, records: Records, plan: BackupPlan, drive: str, ctx: StepContext):
        d = plan.drive(drive)
        self.records = records
        self.plan = plan
        self.drive = drive
        self.ctx = ctx
        self.last = DriveStats(size=d.size, dirty=d.dirty)
        self._watcher: DriveWatcher | None = None

    def __call__(self, stats: DriveStats) -> None:
        failpoint("copy.progress", self.drive)
        self.last = stats
        self.report(DriveState.RUNNING)

    def report(self, state: DriveState, mark: DriveMark = DriveMark.KEEP) -> None:
        self.records.report_drive(
            self.plan.backup,
            self.drive,
            state,
            self.last,
            self.ctx.worker,
            mark=mark,
            task_id=self.ctx.task_id,
        )
        try:
            self._watchers().update(state, self.last)
        except Exception:  # telling watchers must never fail the copy
            log.exception("backup %s drive %s: report failed", self.plan.backup, self.drive)

    def _watchers(self) -> DriveWatcher:
        if self._watcher is None:
            self._watcher = self.ctx.watchers(self.plan, self.drive)
        return self._watcher


def copy_step(rt: Runtime, backup: str, drive: str, ctx: StepContext) -> DriveStats:
    """Copy ``drive`` of ``backup``; raise Cancelled, Duplicate or the drive's error."""
    record = rt.records.load(backup)  # read once: the plan, the repository, the speed limit
    failpoint("copy.before", drive)
    _check_may_start(rt, record, drive)
    progress = Progress(rt.records, record.plan, drive, ctx)
    holder = f"{ctx.worker}/{ctx.task_id}"
    with Heartbeat(rt.leases, backup, LeaseRole.COPY, holder, rt.settings.lease_ttl):
        progress.report(DriveState.RUNNING, DriveMark.START)
        entry = _copy(rt, record, drive, progress, ctx.send_rollback)
        progress.last = entry.stats
        progress.report(DriveState.DONE, DriveMark.END)
    log.debug("vm %s backup %s drive %s: done %s", record.vmid, backup, drive, entry.stats)
    failpoint("copy.after", drive)
    return entry.stats


def _check_may_start(rt: Runtime, record: BackupRecord, drive: str) -> None:
    reason = rt.cancels.stop_reason(record.uuid)
    if reason is not None:
        raise Cancelled(reason)
    if record.running == drive and rt.leases.holder(record.uuid, LeaseRole.COPY):
        # A redelivered copy while the first delivery still runs: it must not go on the chain.
        raise Duplicate(f"backup {record.uuid} drive {drive}: duplicate delivery ignored")
    if record.drive(drive).state is DriveState.DONE:
        # Redelivered after the first delivery copied it (and went on along the chain).
        raise Duplicate(f"backup {record.uuid} drive {drive}: delivered again after its copy")


def _copy(
    rt: Runtime,
    record: BackupRecord,
    drive: str,
    progress: Progress,
    send_rollback: SendRollback,
) -> DriveEntry:
    records, backup = rt.records, record.uuid
    try:
        trust.check_step(rt.settings, record, drive)  # before anything is read or written
        repo = rt.repository(record.repository)
        check = StopCheck(rt.cancels, backup)
        return transaction.copy(
            repo,
            rt.bitmaps,
            record.plan,
            drive,
            check,
            progress,
            record.speed_limit,
            rt.settings.qemu,
        )
    except Cancelled:
        progress.report(DriveState.CANCELLED, DriveMark.END)
        send_rollback(backup)
        raise
    except Exception as exc:
        message = str(exc)
        if not message.startswith(f"drive {drive}:"):
            message = f"drive {drive}: {message}"
        records.record_error(backup, message)
        progress.report(DriveState.FAILED, DriveMark.END)
        send_rollback(backup)
        raise
