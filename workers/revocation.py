"""Turning a revoke of any one task of a backup into the cancel of the whole backup.

Plain Celery tells neither the chain nor the chord about a revoke, and ignores a revoke of a
running task without terminate. Every worker therefore watches its own revoked-id set (filled
by the revoke control command, from `celery control`, `app.control.revoke` or Flower) and the
`task_revoked` signal, maps the task id to its backup and records a cancel; the first to record
it sends the rollback. The running drive task sees the cancel between chunks and stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from txnbackup.record import BackupRecord, DriveMark, DriveState, Phase
from txnbackup.record_store import RecordStore
from txnbackup.runtime import Runtime

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.2  # seconds between looks at the worker's revoked-id set


def handle_revoked(
    rt: Runtime,
    task_id: str,
    send_rollback: Callable[[str], None],
    *,
    terminated: bool = False,
) -> str | None:
    """Cancel the backup ``task_id`` belongs to; return its uuid when it was active.

    The revoke watcher and, for a terminate, the ``task_revoked`` signal both report the same
    revoke; the terminate names it whichever comes first (txnbackup.cancel.Cancels.refine).
    """
    backup = rt.catalog.backup_of_task(task_id)
    if backup is None:
        return None
    record = rt.records.load_or_none(backup)
    if record is None or record.phase.final:
        return None
    revoked = f"task {task_id} revoked"
    if terminated:
        first = rt.cancels.refine(backup, revoked, f"task {task_id} terminated")
        _forget_running(rt.records, record, task_id)
    else:
        first = rt.cancels.request(backup, revoked)
    if record.phase is Phase.RUNNING and (first or terminated):
        how = "terminated" if terminated else "revoked"
        log.info("backup %s: task %s %s, cancelling the whole backup", backup, task_id, how)
        send_rollback(backup)
    return backup


def _forget_running(records: RecordStore, record: BackupRecord, task_id: str) -> None:
    """A terminated drive task never reports that it stopped; report it on its behalf."""
    drive = record.running
    if drive and record.running_task == task_id:
        stats = record.drive(drive).stats
        records.report_drive(record.uuid, drive, DriveState.CANCELLED, stats, mark=DriveMark.END)


class RevokeWatcher(threading.Thread):
    """Polls the worker's revoked-id set and hands every new id to ``on_revoked``."""

    def __init__(
        self, revoked: Callable[[], Iterable[str]], on_revoked: Callable[[str], object]
    ) -> None:
        super().__init__(name="txnbackup-revoke-watcher", daemon=True)
        self._revoked = revoked
        self._on_revoked = on_revoked
        self._seen: set[str] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(POLL_INTERVAL):
            try:
                self.poll()
            except Exception:
                log.exception("revoke watcher: poll failed; retrying")

    def poll(self) -> None:
        current = self._snapshot()
        for task_id in current - self._seen:
            self._on_revoked(task_id)
        self._seen = current

    def _snapshot(self) -> set[str]:
        for _ in range(5):
            try:
                return set(self._revoked())
            except RuntimeError:  # the set changed while being copied; try again
                continue
        return self._seen
