"""The per-VM lock: at most one active backup (or prune) per VM.

Submit takes it with ``SET NX`` and a TTL, so a producer that dies half way through submit
does not block the VM for good; recording the backup makes it persist
(``RecordStore.create``), and only the finishing script releases it then.
"""

from __future__ import annotations

from redis import Redis

from txnbackup.errors import BackupRunning
from txnbackup.keys import Keys
from txnbackup.redisconn import COMPARE_AND_DELETE, text

SUBMIT_LOCK_TTL = 300  # seconds a VM lock lives before its backup is recorded


class VmLocks:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._unlock = redis.register_script(COMPARE_AND_DELETE)

    def lock(self, vmid: str, backup: str) -> None:
        """Take the VM lock or raise BackupRunning naming the backup that holds it."""
        key = self.keys.lock(vmid)
        if not self.redis.set(key, backup, nx=True, ex=SUBMIT_LOCK_TTL):
            holder = self.redis.get(key)
            raise BackupRunning(text(holder) if holder else "(just finished; try again)")

    def unlock(self, vmid: str, backup: str) -> None:
        self._unlock(keys=[self.keys.lock(vmid)], args=[backup])

    def holder(self, vmid: str) -> str | None:
        raw = self.redis.get(self.keys.lock(vmid))
        return text(raw) if raw else None
