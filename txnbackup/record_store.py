"""The records of backups in Redis: create, read, the phase claims, the finish, drive reports.

Every phase change is one Lua script comparing and setting the phase, so exactly one caller
wins each transition. ``running -> committing`` fails while a cancel is recorded, and a cancel
recorded after it is too late: a race between commit and cancel ends in one outcome. The
finishing script sets the final phase, releases the VM lock if this backup holds it and puts
the state TTL on every key of the backup, all in one step.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from redis import Redis

from txnbackup.errors import NotFound
from txnbackup.keys import Keys
from txnbackup.lease import LeaseRole
from txnbackup.record import (
    DRIVE_FIELD,
    SEALED,
    BackupRecord,
    Claim,
    DriveMark,
    DriveState,
    Field,
    Phase,
    drive_json,
)
from txnbackup.redisconn import text
from txnbackup.seal import seal
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan

_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur then return {0, ''} end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return {0, cur} end
for i = 3, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'phase', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
    return {1, cur, redis.call('HGETALL', KEYS[1])}
  end
end
return {0, cur}
"""

# Ending a backup ends its drives with it: pending ones were skipped, a running one stopped
# (failed or cancelled, ARGV[6]); nothing about a drive changes after this (_DRIVE).
# The end is published on the backup's channel (ARGV[7]) in the same step, so a waiter that
# subscribed before it read the phase cannot miss it; with pcall, so that a Redis user not
# allowed to publish (ACL channels) still ends the backup (waiters then notice by polling).
# In the same step too: the snapshot published (ARGV[8]) and a counter to add one to (ARGV[9]).
_FINISH = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur then return 0 end
if cur == 'done' or cur == 'error' or cur == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'end_time', ARGV[2])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[5]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'snapshot', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[9], 1) end
for i = 10, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    raw = string.gsub(raw, '^{"state": "pending"', '{"state": "skipped"')
    raw = string.gsub(raw, '^{"state": "running"', '{"state": "' .. ARGV[6] .. '"')
    redis.call('HSET', KEYS[1], ARGV[i], raw)
  end
end
redis.call('HDEL', KEYS[1], 'running', 'running_task')
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
for i = 6, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
redis.pcall('PUBLISH', ARGV[7], ARGV[1])
return 1
"""

# A drive's report, only while its backup has not ended. ARGV: field, value, how
# ('start' marks it the running drive, 'end' unmarks it if it still is), drive, task id,
# the time (the running drive's progress stamp, for the reaper's stall judgement).
_DRIVE = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur or cur == 'done' or cur == 'error' or cur == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'progress_at', ARGV[6])
if ARGV[3] == 'start' then
  redis.call('HSET', KEYS[1], 'running', ARGV[4], 'running_task', ARGV[5])
elseif ARGV[3] == 'end' and redis.call('HGET', KEYS[1], 'running') == ARGV[4] then
  redis.call('HDEL', KEYS[1], 'running', 'running_task')
end
return 1
"""

# A QEMU backup's plan as its begin found it, only while the backup runs. ARGV: field, value...
_REPLAN = """
if redis.call('HGET', KEYS[1], 'phase') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


class RecordStore:
    """The records of backups (``backup:<uuid>``) under one key prefix; a ``Records``."""

    def __init__(self, redis: Redis, keys: Keys, ttl: int, secret: bytes | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.secret = secret  # seals the records this process creates
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._drive = redis.register_script(_DRIVE)
        self._replan = redis.register_script(_REPLAN)

    def create(
        self,
        plan: BackupPlan,
        repository: str,
        task_ids: Iterable[str],
        speed_limit: int | None = None,
        blobs: Mapping[str, bytes] | None = None,
        queue_timeout: int | None = None,
    ) -> None:
        """Record a new backup; ``queue_timeout`` (seconds, None: the reaper's default) is how
        long its next drive may wait for a worker of its node."""
        ids = list(task_ids)
        now = time.time()
        fields: dict[str, str] = {
            Field.UUID: plan.backup,
            Field.VMID: plan.vmid,
            Field.PHASE: Phase.RUNNING,
            Field.START_TIME: plan.start_time,
            Field.STARTED: str(now),
            Field.LAST_ACTIVITY: str(now),
            Field.PLAN: json.dumps(plan.to_dict()),
            Field.REPOSITORY: repository,
            Field.TASKS: json.dumps(ids),
            Field.SPEED_LIMIT: str(speed_limit or 0),
            Field.BLOBS: json.dumps(
                {k: base64.b64encode(v).decode() for k, v in (blobs or {}).items()}
            ),
            Field.QUEUE_TIMEOUT: str(queue_timeout or 0),
        }
        for d in plan.drives:
            stats = DriveStats(size=d.size, dirty=d.dirty)
            fields[DRIVE_FIELD + d.name] = drive_json(DriveState.PENDING, stats)
        if self.secret is not None:
            fields[Field.SEAL] = seal(self.secret, [fields[f] for f in SEALED])
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.backup(plan.backup), mapping=cast(Any, fields))
        pipe.persist(self.keys.lock(plan.vmid))
        for task_id in ids:
            pipe.set(self.keys.task(task_id), plan.backup, ex=self.ttl)
        pipe.sadd(self.keys.active(), plan.backup)
        pipe.zadd(self.keys.backups(), {plan.backup: now})
        pipe.zremrangebyscore(self.keys.backups(), "-inf", now - self.ttl)
        pipe.execute()

    def replan(self, plan: BackupPlan, task_ids: Sequence[str] | None = None) -> bool:
        """Record the plan a QEMU backup's begin made (drives found, sizes, actions) and,
        when it added the copy tasks, their ids; False (nothing written) once it ended."""
        fields: dict[str, str] = {Field.PLAN: json.dumps(plan.to_dict())}
        for d in plan.drives:
            stats = DriveStats(size=d.size, dirty=d.dirty)
            fields[DRIVE_FIELD + d.name] = drive_json(DriveState.PENDING, stats)
        if task_ids is not None:
            fields[Field.TASKS] = json.dumps(list(task_ids))
            for task_id in task_ids:
                self.redis.set(self.keys.task(task_id), plan.backup, ex=self.ttl)
        if self.secret is not None:  # the worker that began it vouches for the new plan
            stored = self.redis.hmget(self.keys.backup(plan.backup), list(SEALED))
            values = {
                f: text(v) if v is not None else "" for f, v in zip(SEALED, stored, strict=True)
            }
            values[Field.PLAN] = fields[Field.PLAN]
            fields[Field.SEAL] = seal(self.secret, [values[f] for f in SEALED])
        args = [x for pair in fields.items() for x in pair]
        return bool(self._replan(keys=[self.keys.backup(plan.backup)], args=args))

    def mark_begin(self, backup: str, holder: str) -> bool:
        """A QEMU begin starts (its holder takes the copy lease first); False once ended."""
        return bool(self._replan(keys=[self.keys.backup(backup)], args=[Field.BEGIN, holder]))

    def end_begin(self, backup: str) -> None:
        self.redis.hdel(self.keys.backup(backup), Field.BEGIN)

    def delete(self, backup: str) -> None:
        """Forget a backup that was never dispatched (submit failed half way)."""
        raw = self.redis.hget(self.keys.backup(backup), Field.TASKS)
        ids = json.loads(raw) if raw else []
        keys = [self.keys.backup(backup), self.keys.cancel(backup)]
        keys += [self.keys.lease(backup, role) for role in LeaseRole]
        self.redis.delete(*keys, *(self.keys.task(t) for t in ids))
        self.redis.zrem(self.keys.backups(), backup)
        self.redis.srem(self.keys.active(), backup)

    def load_or_none(self, backup: str) -> BackupRecord | None:
        raw = self.raw_or_none(backup)
        return BackupRecord.parse(raw) if raw else None

    def load(self, backup: str) -> BackupRecord:
        return BackupRecord.parse(self.raw(backup))

    def load_leased(self, backup: str) -> tuple[BackupRecord | None, bool]:
        """The record, and whether any lease on the backup is held, read at one instant (one
        MULTI). A step takes its lease before it marks the record and unmarks it before it
        lets go, so "marked without a lease" means its worker is gone, but only if both were
        read at once: read one after the other, a begin handing over to its first copy
        (mark cleared, lease dropped, in between) looks lost."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.backup(backup))
        pipe.exists(*(self.keys.lease(backup, role) for role in LeaseRole))
        data, leased = pipe.execute()
        raw = {text(k): text(v) for k, v in data.items()}
        return (BackupRecord.parse(raw) if raw else None), bool(leased)

    def raw_or_none(self, backup: str) -> dict[str, str] | None:
        data = self.redis.hgetall(self.keys.backup(backup))
        return {text(k): text(v) for k, v in data.items()} if data else None

    def raw(self, backup: str) -> dict[str, str]:
        """The record's hash as it is stored (tests and reports of internals)."""
        raw = self.raw_or_none(backup)
        if raw is None:
            raise NotFound(f"backup {backup}")
        return raw

    def phase(self, backup: str) -> Phase | None:
        raw = self.redis.hget(self.keys.backup(backup), Field.PHASE)
        return Phase(text(raw)) if raw else None

    def phases(self, backups: Sequence[str]) -> list[Phase | None]:
        """The phase of each backup in one round trip (None where its record is gone):
        for watching many backups at once."""
        pipe = self.redis.pipeline(transaction=False)
        for backup in backups:
            pipe.hget(self.keys.backup(backup), Field.PHASE)
        return [Phase(text(raw)) if raw else None for raw in pipe.execute()]

    def task_ids(self, backup: str) -> list[str]:
        raw = self.redis.hget(self.keys.backup(backup), Field.TASKS)
        if raw is None:
            raise NotFound(f"backup {backup}")
        return list(json.loads(raw))

    def claim(
        self,
        backup: str,
        to: Phase,
        *,
        frm: Iterable[Phase],
        unless_cancelled: bool = False,
        count: Field | None = None,
    ) -> Claim:
        """Move the phase to ``to`` if it is one of ``frm`` (and, ``unless_cancelled``, no
        cancel is recorded); the winner also adds one to ``count`` and gets the record."""
        keys = [self.keys.backup(backup)]
        if unless_cancelled:
            keys.append(self.keys.cancel(backup))
        won, previous, *fields = self._claim(keys=keys, args=[to, count or "", *frm])
        prev = text(previous)
        record = None
        if won:
            flat = [text(x) for x in fields[0]]
            record = BackupRecord.parse(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(bool(won), Phase(prev) if prev else None, record)

    def finish(
        self,
        record: BackupRecord,
        final: Phase,
        cancel_reason: str = "",
        *,
        snapshot: str = "",
        count: Field | None = None,
    ) -> bool:
        """End the backup and every drive of it, release the lock, start the TTL; once only.

        A drive still marked running ends ``failed`` on an error, ``cancelled`` otherwise.
        In the same step: record the ``snapshot`` published and add one to ``count``.
        """
        backup = record.uuid
        keys = [
            self.keys.backup(backup),
            self.keys.lock(record.vmid),
            self.keys.active(),
            self.keys.lease(backup, LeaseRole.COPY),
            self.keys.lease(backup, LeaseRole.FINISH),
            self.keys.cancel(backup),
            *(self.keys.task(t) for t in record.task_ids),
        ]
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stopped = DriveState.FAILED if final is Phase.ERROR else DriveState.CANCELLED
        drives = [DRIVE_FIELD + d.name for d in record.plan.drives]
        channel = self.keys.ended(backup)
        args: list[str | int] = [final, end, backup, self.ttl, cancel_reason, stopped, channel]
        args += [snapshot, count or "", *drives]
        return bool(self._finish(keys=keys, args=args))

    def record_error(self, backup: str, message: str) -> bool:
        """Keep the first real error only; True when this one was the first."""
        return bool(self.redis.hsetnx(self.keys.backup(backup), Field.ERROR, message))

    def note_commit_failure(self, backup: str, message: str) -> None:
        """Why the last commit attempt failed (shown while the commit is retried)."""
        self.redis.hset(self.keys.backup(backup), Field.COMMIT_ERROR, message)

    def count(self, backup: str, name: Field) -> int:
        return int(self.redis.hincrby(self.keys.backup(backup), name, 1))

    def report_drive(
        self,
        backup: str,
        drive: str,
        state: DriveState,
        stats: DriveStats,
        worker: str = "",
        *,
        mark: DriveMark = DriveMark.KEEP,
        task_id: str = "",
    ) -> bool:
        """A drive's state and counters; ignored (False) once the backup has ended."""
        value = drive_json(state, stats, worker)
        args = [DRIVE_FIELD + drive, value, mark, drive, task_id, str(time.time())]
        return bool(self._drive(keys=[self.keys.backup(backup)], args=args))

    def exists(self, backup: str) -> bool:
        return bool(self.redis.exists(self.keys.backup(backup)))
