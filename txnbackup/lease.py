"""A backup's lease: proof that a live worker is working on it.

Whoever works on a backup (a drive copy, a commit, a rollback) holds the lease and renews it
from a background thread every third of its TTL. A lease that expires means its worker is
gone (SIGKILL, OOM, host loss); the reaper then rolls the backup back, or forward when the
snapshot was already published. A slow but live worker keeps its lease however long its
step takes. A holder stopped from outside (SystemExit, KeyboardInterrupt) stops renewing but
leaves its lease to expire: whoever stopped it reports for it, and the reaper acts only if
nobody does by then.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from txnbackup.record import BackupRecords, LeaseRole

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self, records: BackupRecords, backup: str, role: LeaseRole, holder: str, ttl: float
    ) -> None:
        self.records = records
        self.backup = backup
        self.role = role
        self.holder = holder
        self.ttl = ttl
        self.kept = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{backup[:8]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.records.touch(self.backup, self.role, self.holder, self.ttl)
            except Exception:
                log.warning("backup %s: lease renewal failed; retrying", self.backup)

    def keep(self) -> None:
        """Stop renewing at the end but leave the lease: whoever takes over drops it (or it
        expires, and the reaper judges)."""
        self.kept = True

    def __enter__(self) -> Heartbeat:
        self.records.touch(self.backup, self.role, self.holder, self.ttl)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        if not self.kept and (exc_type is None or issubclass(exc_type, Exception)):
            self.records.drop_lease(self.backup, self.role, self.holder)
