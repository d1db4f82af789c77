"""The per-drive task: copy one drive of a backup, on the queue of the node that has it.

A thin adapter over txnbackup.drive_step: Celery gives the task id and worker name, and the
watchers (Flower progress events, log lines, metrics) come from tasks.events.
"""

from __future__ import annotations

from celery import Task, shared_task
from celery.exceptions import Ignore

from tasks.events import DriveInfo, DriveReporter, current_task_events
from tasks.finish import send_rollback
from tasks.names import COPY_DRIVE
from tasks.runtime import runtime
from txnbackup.drive_step import DriveWatcher, Duplicate, StepContext, copy_step
from txnbackup.errors import Cancelled
from txnbackup.transaction import BackupPlan


@shared_task(name=COPY_DRIVE, bind=True)
def copy_drive(self: Task, /, backup: str, drive: str, **_display: str) -> dict[str, int]:  # type: ignore[type-arg]
    """``_display`` (vm, part) only makes the task readable in Flower."""
    ctx = StepContext(self.request.id or "", self.request.hostname or "", _watch, send_rollback)
    try:
        return copy_step(runtime(), backup, drive, ctx).to_dict()
    except Duplicate as exc:
        raise Ignore(str(exc)) from None
    except Cancelled as exc:
        # A cancel is not a failure: no ERROR and traceback in the log, no chord error. The
        # rollback is queued here (again, harmlessly) as the chord's errback no longer runs;
        # Flower learns the drive stopped from the revoked event.
        send_rollback(backup)
        self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore(str(exc)) from None


def _watch(plan: BackupPlan, drive: str) -> DriveWatcher:
    return DriveReporter(DriveInfo.of(plan, drive), current_task_events())
