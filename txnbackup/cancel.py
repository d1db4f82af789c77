"""A backup's cancel flag: the first reason to stop it wins (``SET NX``).

Every way a backup is stopped (the cancel verb, a revoke, a terminate) sets this flag; a
running drive reads it between chunks (``stop_reason``), and the commit claim fails while
it is set (``RecordStore.claim(..., unless_cancelled=True)``).
"""

from __future__ import annotations

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.record import Field, Phase
from txnbackup.redisconn import text

# A terminate is a revoke too: whichever of the two reports lands first, the cancel names
# the terminate, which is the more precise account of the same cause.
_REFINE_CANCEL = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
if cur == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
return 0
"""


class Cancels:
    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self._refine = redis.register_script(_REFINE_CANCEL)

    def request(self, backup: str, reason: str) -> bool:
        """Record why the backup must stop; True for the first request only."""
        return bool(self.redis.set(self.keys.cancel(backup), reason, nx=True, ex=self.ttl))

    def refine(self, backup: str, was: str, now: str) -> bool:
        """Record ``now`` as the cancel reason unless another than ``was`` came first."""
        keys = [self.keys.cancel(backup)]
        return bool(self._refine(keys=keys, args=[was, now, self.ttl]))

    def reason(self, backup: str) -> str | None:
        raw = self.redis.get(self.keys.cancel(backup))
        return text(raw) if raw else None

    def stop_reason(self, backup: str) -> str | None:
        """Why a drive of this backup must stop now (cancelled, or no longer running), or
        None to go on; one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.cancel(backup))
        pipe.hget(self.keys.backup(backup), Field.PHASE)
        reason, phase = pipe.execute()
        if reason:
            return text(reason)
        if phase is None:
            return "backup record is gone"
        if text(phase) != Phase.RUNNING:
            return f"backup is {text(phase)}"
        return None
