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

from txnbackup.record import BackupRecords, DriveState, Phase, drive_fields
from txnbackup.stats import DriveStats

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.2  # seconds between looks at the worker's revoked-id set


def handle_revoked(
    records: BackupRecords,
    task_id: str,
    send_rollback: Callable[[str], None],
    *,
    terminated: bool = False,
) -> str | None:
    """Cancel the backup ``task_id`` belongs to; return its uuid when it was active."""
    backup = records.backup_of_task(task_id)
    if backup is None:
        return None
    phase = records.phase(backup)
    if phase is None or phase.final:
        return None
    how = "terminated" if terminated else "revoked"
    first = records.request_cancel(backup, f"task {task_id} {how}")
    if terminated:
        _forget_running(records, backup)
    if phase is Phase.RUNNING and (first or terminated):
        log.info("backup %s: task %s %s, cancelling the whole backup", backup, task_id, how)
        send_rollback(backup)
    return backup


def _forget_running(records: BackupRecords, backup: str) -> None:
    """A terminated drive task never reports that it stopped; report it on its behalf."""
    raw = records.raw(backup)
    drive = raw.get("running")
    if drive:
        records.update_drive(backup, drive, DriveState.CANCELLED, _stats(raw, drive))
        records.delete_field(backup, "running", only_if=drive)


def _stats(raw: dict[str, str], drive: str) -> DriveStats:
    return DriveStats.from_dict(drive_fields(raw, drive))


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
