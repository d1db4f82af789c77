"""The per-drive task: copy one drive of a backup, on the queue of the node that has it."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tasks.celeryapp import app
from tasks.events import DriveInfo, DriveReporter, current_task_events
from tasks.finish import send_rollback
from tasks.runtime import Runtime, runtime
from txnbackup import transaction
from txnbackup.constants import STOP_CHECK_INTERVAL
from txnbackup.errors import Cancelled
from txnbackup.failpoints import failpoint
from txnbackup.lease import Heartbeat
from txnbackup.manifest import DriveEntry
from txnbackup.record import BackupRecords, DriveState, LeaseRole, drive_fields
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan

log = logging.getLogger(__name__)


@app.task(name="txnbackup.copy_drive", bind=True)
def copy_drive(self: Task, /, backup: str, drive: str, **_display: str) -> dict[str, int]:  # type: ignore[type-arg]
    """``_display`` (vm, part) only makes the task readable in Flower."""
    return run_copy(runtime(), backup, drive, self.request.id or "", self.request.hostname or "")


class StopCheck:
    """Asks Redis at most every STOP_CHECK_INTERVAL whether the backup must stop."""

    def __init__(self, records: BackupRecords, backup: str) -> None:
        self.records = records
        self.backup = backup
        self._last = 0.0

    def __call__(self) -> str | None:
        now = time.monotonic()
        if now - self._last < STOP_CHECK_INTERVAL:
            return None
        self._last = now
        return self.records.stop_reason(self.backup)


class Progress:
    """Publishes a drive's counters (the engine throttles the calls): to its record, and via
    tasks.events as Flower progress events, vzdump-style log lines and, at the end, metrics.
    """

    def __init__(self, records: BackupRecords, plan: BackupPlan, drive: str, worker: str) -> None:
        d = plan.drive(drive)
        self.records = records
        self.backup = plan.backup
        self.drive = drive
        self.worker = worker
        self.last = DriveStats(size=d.size, dirty=d.dirty)
        self._info = DriveInfo.of(plan, drive)
        self._reporter: DriveReporter | None = None

    def __call__(self, stats: DriveStats) -> None:
        failpoint("copy.progress", self.drive)
        self.last = stats
        self.report(DriveState.RUNNING)

    def report(self, state: DriveState) -> None:
        self.records.update_drive(self.backup, self.drive, state, self.last, self.worker)
        try:
            self._watchers().update(state, self.last)
        except Exception:  # telling watchers must never fail the copy
            log.exception("backup %s drive %s: progress report failed", self.backup, self.drive)

    def _watchers(self) -> DriveReporter:
        if self._reporter is None:
            self._reporter = DriveReporter(self._info, current_task_events())
        return self._reporter


def run_copy(rt: Runtime, backup: str, drive: str, task_id: str, worker: str) -> dict[str, int]:
    records = rt.records
    raw = records.raw(backup)  # read once: the plan, the repository, the speed limit
    plan = BackupPlan.from_dict(json.loads(raw["plan"]))
    failpoint("copy.before", drive)
    _check_may_start(records, raw, drive)
    progress = Progress(records, plan, drive, worker)
    # The lease is taken before the drive is marked running and dropped after it is not:
    # the reaper reads "running without a lease" as "its worker died".
    holder = f"{worker}/{task_id}"
    with Heartbeat(records, backup, LeaseRole.COPY, holder, rt.settings.lease_ttl):
        records.set_fields(backup, {"running": drive, "running_task": task_id})
        progress.report(DriveState.RUNNING)
        entry = _copy(rt, raw, plan, drive, progress)
        progress.last = entry.stats
        progress.report(DriveState.DONE)
        records.delete_field(backup, "running", only_if=drive)
    log.debug("vm %s backup %s drive %s: done %s", plan.vmid, backup, drive, entry.stats)
    failpoint("copy.after", drive)
    return entry.stats.to_dict()


def _check_may_start(records: BackupRecords, raw: dict[str, str], drive: str) -> None:
    backup = raw["uuid"]
    reason = records.stop_reason(backup)
    if reason is not None:
        raise Cancelled(reason)
    if raw.get("running") == drive and records.lease_holder(backup, LeaseRole.COPY):
        # A redelivered copy while the first delivery still runs: it must not go on the chain.
        log.warning("backup %s drive %s: duplicate delivery ignored", backup, drive)
        raise Ignore()
    if drive_fields(raw, drive).get("state") == DriveState.DONE:
        # Redelivered after the first delivery copied it (and went on along the chain).
        log.warning(
            "backup %s drive %s: delivered again after it was copied; ignored", backup, drive
        )
        raise Ignore()


def _copy(
    rt: Runtime, raw: dict[str, str], plan: BackupPlan, drive: str, progress: Progress
) -> DriveEntry:
    records, backup = rt.records, plan.backup
    try:
        repo = rt.repository(raw["repository"])
        speed = _speed_limit(raw)
        check = StopCheck(records, backup)
        return transaction.copy(repo, rt.bitmaps, plan, drive, check, progress, speed)
    except Cancelled:
        _stopped(rt, backup, drive, progress, DriveState.CANCELLED)
        raise
    except Exception as exc:
        message = str(exc)
        if not message.startswith(f"drive {drive}:"):
            message = f"drive {drive}: {message}"
        records.record_error(backup, message)
        _stopped(rt, backup, drive, progress, DriveState.FAILED)
        raise


def _stopped(rt: Runtime, backup: str, drive: str, progress: Progress, state: DriveState) -> None:
    progress.report(state)
    rt.records.delete_field(backup, "running", only_if=drive)
    send_rollback(backup)


def _speed_limit(raw: dict[str, Any]) -> int | None:
    value = int(raw.get("speed_limit", 0) or 0)
    return value or None
