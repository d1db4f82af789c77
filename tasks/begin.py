"""The first task of a running QEMU VM's backup, on the VM's node: a thin adapter over
txnbackup.qemu.begin. When the drives were to be discovered, it replaces itself with the
chain of their copies (Celery keeps the chord around it: commit and rollback still follow);
the ids of those copies are recorded before they exist, so a revoke of any maps to the backup.
Celery gives the last copy the id of this task. Whether to discover is in the message
(``discover``), so a redelivered begin replaces itself again, with the copy ids recorded.
"""

from __future__ import annotations

from typing import Any

from celery import Task, chain, shared_task, states, uuid

from tasks.canvas import copies
from tasks.finish import send_rollback
from tasks.names import BEGIN
from tasks.runtime import runtime
from txnbackup.errors import Cancelled
from txnbackup.failpoints import failpoint
from txnbackup.qemu.begin import begin_backup, end_begin, stop_renewing


@shared_task(name=BEGIN, bind=True)
def begin(self: Task, /, backup: str, discover: bool = False, **_display: str) -> str:  # type: ignore[type-arg]
    rt = runtime()
    discover = discover or not rt.records.load(backup).plan.drives
    this = self.request.id or ""
    holder = begin_holder(self.request.hostname or "", this)

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
        raise self.replace(chain(*copies(plan, ids, self.app), app=self.app))
    return f"begun {len(plan.drives)} drive(s)"


def begin_holder(hostname: str, task_id: str) -> str:
    """Begin's name in the copy lease. Never a copy's (``worker/task id``): the last copy has
    this task's id, and begin's late ``end_begin`` would drop that copy's lease."""
    return f"{hostname}/{task_id}/begin"


def hand_over(
    task: Any = None, task_id: str = "", args: Any = (), state: str = "", **_: Any
) -> None:
    """Celery has sent the first copy (after a success, or with a replacement): begin's lease
    and mark go; a worker lost before this point is the reaper's, as begin's. A begin that
    failed after its QEMU work stops renewing its lease and leaves it to expire. A
    ``task_postrun`` handler, connected by workers.hooks.install."""
    if getattr(task, "name", "") != BEGIN or not args:
        return
    holder = begin_holder(getattr(task.request, "hostname", "") or "", task_id)
    if state not in (states.SUCCESS, states.IGNORED):
        stop_renewing(args[0], holder)
        return
    failpoint("begin.hand_over")
    end_begin(runtime(), args[0], holder)
