"""The backup record in Redis: phase, plan, errors, per-drive progress, the VM lock.

Phases (docs/design.md has the diagram)::

    running -> committing -> done
    running -> rolling_back -> error | cancelled
    committing -> rolling_back            (commit task only, before the snapshot rename)

Every phase change is one Lua script comparing and setting the phase, so exactly one caller
wins each transition. ``running -> committing`` fails while a cancel is recorded, and a cancel
recorded after it is too late: a race between commit and cancel ends in one outcome. The
finishing script sets the final phase, releases the VM lock if this backup holds it and puts
the state TTL on every key of the backup, all in one step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from redis import Redis

from txnbackup.errors import BackupRunning, NotFound
from txnbackup.keys import Keys
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan


class Phase(StrEnum):
    RUNNING = "running"
    COMMITTING = "committing"
    ROLLING_BACK = "rolling_back"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Phase.DONE, Phase.ERROR, Phase.CANCELLED)


class LeaseRole(StrEnum):
    COPY = "copy"  # a drive task copying
    FINISH = "finish"  # a commit or a rollback


class DriveState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # never started: the backup ended before its turn


SUBMIT_LOCK_TTL = 300  # seconds a VM lock lives before its backup is recorded

_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur then return {0, ''} end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return {0, cur} end
for i = 2, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'phase', ARGV[1])
    return {1, cur}
  end
end
return {0, cur}
"""

_FINISH = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur then return 0 end
if cur == 'done' or cur == 'error' or cur == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'end_time', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
for i = 6, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Claim:
    won: bool
    previous: Phase | None


class BackupRecords:
    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._unlock = redis.register_script(_UNLOCK)

    def lock(self, vmid: str, backup: str) -> None:
        """Take the VM lock or raise BackupRunning naming the backup that holds it.

        Until ``create`` records the backup the lock expires by itself, so a producer that
        dies half way through submit does not block the VM for good.
        """
        key = self.keys.lock(vmid)
        if not self.redis.set(key, backup, nx=True, ex=SUBMIT_LOCK_TTL):
            holder = self.redis.get(key)
            raise BackupRunning(_text(holder) if holder else "(just finished; try again)")

    def unlock(self, vmid: str, backup: str) -> None:
        self._unlock(keys=[self.keys.lock(vmid)], args=[backup])

    def holder(self, vmid: str) -> str | None:
        raw = self.redis.get(self.keys.lock(vmid))
        return _text(raw) if raw else None

    def create(
        self,
        plan: BackupPlan,
        repository: str,
        task_ids: Iterable[str],
        extra: Mapping[str, str],
    ) -> None:
        ids = list(task_ids)
        fields: dict[str, str] = {
            "uuid": plan.backup,
            "vmid": plan.vmid,
            "phase": Phase.RUNNING,
            "start_time": plan.start_time,
            "started": str(time.time()),
            "last_activity": str(time.time()),
            "plan": json.dumps(plan.to_dict()),
            "repository": repository,
            "tasks": json.dumps(ids),
            **extra,
        }
        for d in plan.drives:
            stats = DriveStats(size=d.size, dirty=d.dirty)
            fields[f"drive:{d.name}"] = _drive_json(DriveState.PENDING, stats)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.backup(plan.backup), mapping=cast(Any, fields))
        pipe.persist(self.keys.lock(plan.vmid))
        for task_id in ids:
            pipe.set(self.keys.task(task_id), plan.backup, ex=self.ttl)
        now = time.time()
        pipe.sadd(self.keys.active(), plan.backup)
        pipe.sadd(self.keys.repositories(), repository)
        pipe.zadd(self.keys.backups(), {plan.backup: now})
        pipe.zremrangebyscore(self.keys.backups(), "-inf", now - self.ttl)
        pipe.execute()

    def delete(self, backup: str) -> None:
        """Forget a backup that was never dispatched (submit failed half way)."""
        raw = self.redis.hget(self.keys.backup(backup), "tasks")
        ids = json.loads(raw) if raw else []
        keys = [self.keys.backup(backup), self.keys.cancel(backup)]
        keys += [self.keys.lease(backup, role) for role in LeaseRole]
        self.redis.delete(*keys, *(self.keys.task(t) for t in ids))
        self.redis.zrem(self.keys.backups(), backup)
        self.redis.srem(self.keys.active(), backup)

    def raw_or_none(self, backup: str) -> dict[str, str] | None:
        data = self.redis.hgetall(self.keys.backup(backup))
        return {_text(k): _text(v) for k, v in data.items()} if data else None

    def raw(self, backup: str) -> dict[str, str]:
        data = self.redis.hgetall(self.keys.backup(backup))
        if not data:
            raise NotFound(f"backup {backup}")
        return {_text(k): _text(v) for k, v in data.items()}

    def plan(self, backup: str) -> BackupPlan:
        return BackupPlan.from_dict(json.loads(self.field(backup, "plan")))

    def field(self, backup: str, name: str) -> str:
        raw = self.redis.hget(self.keys.backup(backup), name)
        if raw is None:
            raise NotFound(f"backup {backup}")
        return _text(raw)

    def phase(self, backup: str) -> Phase | None:
        raw = self.redis.hget(self.keys.backup(backup), "phase")
        return Phase(_text(raw)) if raw else None

    def phases(self, backups: Sequence[str]) -> list[Phase | None]:
        """The phase of each backup in one round trip (None where its record is gone):
        for watching many backups at once."""
        pipe = self.redis.pipeline(transaction=False)
        for backup in backups:
            pipe.hget(self.keys.backup(backup), "phase")
        return [Phase(_text(raw)) if raw else None for raw in pipe.execute()]

    def task_ids(self, backup: str) -> list[str]:
        return list(json.loads(self.field(backup, "tasks")))

    def backup_of_task(self, task_id: str) -> str | None:
        raw = self.redis.get(self.keys.task(task_id))
        return _text(raw) if raw else None

    def claim(
        self, backup: str, to: Phase, *, frm: Iterable[Phase], unless_cancelled: bool = False
    ) -> Claim:
        keys = [self.keys.backup(backup)]
        if unless_cancelled:
            keys.append(self.keys.cancel(backup))
        won, previous = self._claim(keys=keys, args=[to, *frm])
        prev = _text(previous)
        return Claim(bool(won), Phase(prev) if prev else None)

    def finish(self, backup: str, final: Phase, vmid: str) -> bool:
        """Set the final phase and end time, release the lock, start the TTL; once only."""
        keys = [
            self.keys.backup(backup),
            self.keys.lock(vmid),
            self.keys.active(),
            self.keys.lease(backup, LeaseRole.COPY),
            self.keys.lease(backup, LeaseRole.FINISH),
            self.keys.cancel(backup),
        ]
        keys += [self.keys.task(t) for t in self.task_ids(backup)]
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return bool(self._finish(keys=keys, args=[final, end, backup, self.ttl]))

    def request_cancel(self, backup: str, reason: str) -> bool:
        """Record why the backup must stop; True for the first request only."""
        return bool(self.redis.set(self.keys.cancel(backup), reason, nx=True, ex=self.ttl))

    def cancel_reason(self, backup: str) -> str | None:
        raw = self.redis.get(self.keys.cancel(backup))
        return _text(raw) if raw else None

    def stop_reason(self, backup: str) -> str | None:
        """Why a drive of this backup must stop now, or None to go on."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.cancel(backup))
        pipe.hget(self.keys.backup(backup), "phase")
        reason, phase = pipe.execute()
        if reason:
            return _text(reason)
        if phase is None:
            return "backup record is gone"
        if _text(phase) != Phase.RUNNING:
            return f"backup is {_text(phase)}"
        return None

    def record_error(self, backup: str, message: str) -> bool:
        """Keep the first real error only; True when this one was the first."""
        return bool(self.redis.hsetnx(self.keys.backup(backup), "error", message))

    def set_fields(self, backup: str, fields: Mapping[str, str]) -> None:
        self.redis.hset(self.keys.backup(backup), mapping=cast(Any, dict(fields)))

    def delete_field(self, backup: str, name: str, only_if: str | None = None) -> None:
        key = self.keys.backup(backup)
        if only_if is None or self.redis.hget(key, name) == only_if.encode():
            self.redis.hdel(key, name)

    def count(self, backup: str, name: str) -> int:
        return int(self.redis.hincrby(self.keys.backup(backup), name, 1))

    def update_drive(
        self, backup: str, drive: str, state: DriveState, stats: DriveStats, worker: str = ""
    ) -> None:
        value = _drive_json(state, stats, worker)
        self.redis.hset(self.keys.backup(backup), f"drive:{drive}", value)

    def touch(self, backup: str, role: LeaseRole, holder: str, ttl: float) -> None:
        """Renew a lease: ``holder`` works on the backup in ``role`` for ``ttl`` more seconds."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.lease(backup, role), holder, px=int(ttl * 1000))
        pipe.hset(self.keys.backup(backup), "last_activity", str(time.time()))
        pipe.execute()

    def drop_lease(self, backup: str, role: LeaseRole, holder: str) -> None:
        self._unlock(keys=[self.keys.lease(backup, role)], args=[holder])

    def lease_holder(self, backup: str, role: LeaseRole) -> str | None:
        raw = self.redis.get(self.keys.lease(backup, role))
        return _text(raw) if raw else None

    def leased(self, backup: str) -> bool:
        """Whether any live worker holds a lease on the backup."""
        return bool(self.redis.exists(*(self.keys.lease(backup, role) for role in LeaseRole)))

    def start_reaping(self, backup: str, ttl: float) -> bool:
        """Whether this reaper may act on the backup now (one reaper at a time)."""
        return bool(self.redis.set(self.keys.reaping(backup), "1", nx=True, px=int(ttl * 1000)))

    def active(self) -> list[str]:
        return sorted(_text(u) for u in self.redis.smembers(self.keys.active()))

    def forget_active(self, backup: str) -> None:
        """Stop watching a backup whose record is gone (expired or never written)."""
        self.redis.srem(self.keys.active(), backup)

    def repositories(self) -> list[str]:
        return sorted(_text(p) for p in self.redis.smembers(self.keys.repositories()))

    def exists(self, backup: str) -> bool:
        return bool(self.redis.exists(self.keys.backup(backup)))

    def recent(self, limit: int) -> list[str]:
        members: list[bytes] = self.redis.zrevrange(self.keys.backups(), 0, limit - 1)  # type: ignore[assignment]
        return [_text(u) for u in members]


def _drive_json(state: DriveState, stats: DriveStats, worker: str = "") -> str:
    return json.dumps({"state": state, "worker": worker, **stats.to_dict()})


def drive_fields(raw: Mapping[str, str], drive: str) -> dict[str, Any]:
    return dict(json.loads(raw.get(f"drive:{drive}", "{}")))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
