"""The first task of a running QEMU VM's backup, on the VM's node: a thin adapter over
txnbackup.qemu.begin. When the drives were to be discovered, it replaces itself with the
chain of their copies (Celery keeps the chord around it: commit and rollback still follow);
the ids of those copies are recorded before they exist, so a revoke of any maps to the backup.
Celery gives the last copy the id of this task. Whether to discover is in the message
(``discover``), so a redelivered begin replaces itself again, with the copy ids recorded.
"""

from __future__ import annotations

from typing import Any

from celery import Task, chain, states, uuid
from celery.signals import task_postrun

from tasks.canvas import copies
from tasks.celeryapp import app
from tasks.finish import send_rollback
from tasks.names import BEGIN
from tasks.runtime import runtime
from txnbackup.errors import Cancelled
from txnbackup.failpoints import failpoint
from txnbackup.qemu.begin import begin_backup, end_begin


@app.task(name=BEGIN, bind=True)
def begin(self: Task, /, backup: str, discover: bool = False, **_display: str) -> str:  # type: ignore[type-arg]
    rt = runtime()
    discover = discover or not rt.records.load(backup).plan.drives
    this = self.request.id or ""
    holder = f"{self.request.hostname}/{this}"

    def copy_ids(n: int) -> list[str]:
        return [*(uuid() for _ in range(n - 1)), this][-n:] if n else []

    try:
        plan = begin_backup(rt, backup, copy_ids if discover else None, holder)
    except Cancelled:
        send_rollback(backup)
        raise
    except Exception as exc:
        rt.records.record_error(backup, f"begin: {exc}")
        send_rollback(backup)
        raise
    failpoint("begin.done")
    if discover:
        ids = rt.records.load(backup).task_ids[: len(plan.drives)]
        raise self.replace(chain(*copies(plan, ids, app), app=app))
    return f"begun {len(plan.drives)} drive(s)"


@task_postrun.connect
def hand_over(
    task: Any = None, task_id: str = "", args: Any = (), state: str = "", **_: Any
) -> None:
    """Celery has sent the first copy (after a success, or with a replacement): begin's lease
    and mark go; a worker lost before this point is the reaper's, as begin's."""
    if getattr(task, "name", "") == BEGIN and state in (states.SUCCESS, states.IGNORED) and args:
        hostname = getattr(task.request, "hostname", "") or ""
        end_begin(runtime(), args[0], f"{hostname}/{task_id}")
