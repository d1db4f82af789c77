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
import math
import threading
import time
from enum import StrEnum
from types import TracebackType

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.record import Field
from txnbackup.redisconn import COMPARE_AND_DELETE, COMPARE_AND_EXPIRE, text

log = logging.getLogger(__name__)


class LeaseRole(StrEnum):
    COPY = "copy"  # a drive task copying
    FINISH = "finish"  # a commit or a rollback


class Leases:
    """The leases of backups (``lease:<uuid>:<role>``) and the reapers' claims on them."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._drop = redis.register_script(COMPARE_AND_DELETE)
        self._extend = redis.register_script(COMPARE_AND_EXPIRE)

    def touch(self, backup: str, role: LeaseRole, holder: str, ttl: float) -> None:
        """Renew a lease: ``holder`` works on the backup in ``role`` for ``ttl`` more seconds."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.lease(backup, role), holder, px=int(ttl * 1000))
        pipe.hset(self.keys.backup(backup), Field.LAST_ACTIVITY, str(time.time()))
        pipe.execute()

    def extend(self, backup: str, role: LeaseRole, holder: str, ttl: float) -> bool:
        """Renew a lease only while ``holder`` still holds it (a taker may have it now)."""
        return bool(
            self._extend(keys=[self.keys.lease(backup, role)], args=[holder, int(ttl * 1000)])
        )

    def drop(self, backup: str, role: LeaseRole, holder: str) -> None:
        self._drop(keys=[self.keys.lease(backup, role)], args=[holder])

    def holder(self, backup: str, role: LeaseRole) -> str | None:
        raw = self.redis.get(self.keys.lease(backup, role))
        return text(raw) if raw else None

    def leased(self, backup: str) -> bool:
        """Whether any live worker holds a lease on the backup."""
        return bool(self.redis.exists(*(self.keys.lease(backup, role) for role in LeaseRole)))

    def start_reaping(self, backup: str, ttl: float) -> bool:
        """Whether this reaper may act on the backup now (one reaper at a time)."""
        return bool(self.redis.set(self.keys.reaping(backup), "1", nx=True, px=int(ttl * 1000)))


class Heartbeat:
    def __init__(
        self, leases: Leases, backup: str, role: LeaseRole, holder: str, ttl: float
    ) -> None:
        self.leases = leases
        self.backup = backup
        self.role = role
        self.holder = holder
        self.ttl = ttl
        self.kept = False
        self._until = math.inf  # monotonic time renewal stops at, once handed over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{backup[:8]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3) and time.monotonic() < self._until:
            try:
                self._renew()
            except Exception:
                log.warning("backup %s: lease renewal failed; retrying", self.backup)

    def _renew(self) -> None:
        if self.kept:  # handing over: the taker may hold the lease already, and keeps it
            self.leases.extend(self.backup, self.role, self.holder, self.ttl)
        else:
            self.leases.touch(self.backup, self.role, self.holder, self.ttl)

    def keep(self, limit: float) -> None:
        """Leave the with-block still renewing, for at most ``limit`` more seconds: the work
        is done but not yet handed to whoever takes over. ``release`` stops the renewal and
        leaves the lease to the taker (who drops it) or to expire (and the reaper judges).
        The lease must not lapse in between while this worker lives: under load, handing
        over (a broker publish) can take longer than a short TTL. From now on a renewal
        only extends the lease while it is still this holder's."""
        self.kept = True
        self._until = time.monotonic() + limit

    def release(self) -> None:
        """Stop renewing; the lease stays until it is dropped or expires."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        self.leases.touch(self.backup, self.role, self.holder, self.ttl)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.kept and exc_type is None:
            return  # renewing until release (or the limit)
        self.release()
        if not self.kept and (exc_type is None or issubclass(exc_type, Exception)):
            self.leases.drop(self.backup, self.role, self.holder)
