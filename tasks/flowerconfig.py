"""Flower configuration for a txnbackup fleet: ``celery -A tasks flower --conf=<this file>``.

Flower reads this file as its config (it executes it and keeps the names of its options):

- ``tasks_columns``: the task list also shows args, kwargs and result, which carry each task's
  readable summary (vm, drive, "2/3", backup uuid) and a running drive's progress.
- ``format_task``: how a task is shown. A running drive sends ``task-progress`` events, so its
  Flower state is PROGRESS (the REST API and ``state:PROGRESS`` searches see that state) with
  the progress line as its result. Flower's task page offers its Terminate button only for the
  state STARTED, though, and no button at all for PROGRESS; the pages therefore show a running
  drive as STARTED with "PROGRESS 42% · ..." as its result, and Terminate stays at hand.
  Celery's event state also ranks the unknown PROGRESS above REVOKED, so a drive terminated
  while running would stay PROGRESS; the revoke time it does record shows it as REVOKED. A
  drive that stopped early keeps its last progress line, marked as where it stopped.
- ``address``: 127.0.0.1 unless ``FLOWER_ADDRESS`` or ``--address`` says otherwise (Flower reads
  this file after the environment and before the command line, which wins).
- Flower's buttons cancel backups: this config refuses to start without authentication
  (``FLOWER_BASIC_AUTH`` or ``--basic-auth``; or Flower's OAuth ``--auth``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tasks.names import COPY_DRIVE

PROGRESS = "PROGRESS"
STOPPED_EARLY = frozenset({"FAILURE", "REVOKED", "REJECTED"})
ENDED = (("succeeded", "SUCCESS"), ("failed", "FAILURE"), ("revoked", "REVOKED"))

tasks_columns = "name,uuid,state,args,kwargs,result,received,started,runtime,worker"
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
NO_AUTH = (
    "txnbackup's Flower config refuses to start without authentication: Flower's buttons"
    " cancel backups. Set FLOWER_BASIC_AUTH=user:password (not on the command line)."
)


def _require_auth() -> None:
    """Flower has parsed the environment and the command line when it executes this file."""
    from tornado.options import options  # noqa: PLC0415 - only Flower reads this file as config

    if "basic_auth" not in options:  # imported by something other than Flower
        return
    if not (options.basic_auth or options.auth or options.auth_provider):
        print(NO_AUTH, file=sys.stderr)
        raise SystemExit(2)


def format_task(task: Any) -> Any:
    """Flower's hook: ``task`` is a copy of Flower's record (Celery's task fields only, the
    event's own fields are not copied), changed for display only."""
    if task.name != COPY_DRIVE or not task.result:
        return task
    if task.state == PROGRESS:
        ended = [state for attr, state in ENDED if getattr(task, attr, None)]
        if not ended:
            task.state = "STARTED"
            task.result = f"{PROGRESS} {task.result}"
            return task
        task.state = ended[0]
    if task.state in STOPPED_EARLY:  # Celery sets no result for these: it is our last line
        task.result = f"stopped at {task.result}"
    return task


_require_auth()
