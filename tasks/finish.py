"""The chord callback (commit) and the error path (rollback) of a backup: thin adapters over
txnbackup.ending, which claims the phase first so any number of deliveries ends in one outcome.
"""

from __future__ import annotations

from celery import Task

from tasks.celeryapp import app
from tasks.names import COMMIT, ROLLBACK
from tasks.queues import finishing_queue
from tasks.runtime import runtime
from txnbackup import ending


# A published snapshot whose bitmap commit failed is retried, not undone; a repository that
# cannot be opened is left to the reaper, which resumes the commit. ending.commit counts the
# attempts and ends the backup after TXNBACKUP_COMMIT_ATTEMPTS, so neither retries forever.
@app.task(name=COMMIT, bind=True, max_retries=None)
def commit(self: Task, /, backup: str) -> str:  # type: ignore[type-arg]
    resume = bool(self.request.retries)
    try:
        return ending.commit(runtime(), backup, send_rollback, resume=resume)
    except ending.PublishedButNotCommitted as exc:
        raise self.retry(exc=exc, countdown=1) from exc
    except ending.RepositoryUnavailable as exc:
        return f"retried later: {exc}"  # logged as a warning, counted in the record


# One argument only: Celery then sends the errback as a task to the control queue. An errback
# taking more (request, exc, traceback) is called inline wherever the failure is noticed,
# which for a terminated task is the worker's main process, blocked for the rollback's wait.
@app.task(name=ROLLBACK)
def rollback(backup: str) -> str:
    return ending.rollback(runtime(), backup)


def send_rollback(backup: str) -> None:
    """To the control queue, or a QEMU VM's node queue (only that node reaches QEMU)."""
    record = runtime().records.load_or_none(backup)
    rollback.apply_async((backup,), queue=finishing_queue(record.plan if record else None))
