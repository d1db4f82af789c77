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

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from redis import Redis

from txnbackup.errors import BackupRunning, NotFound
from txnbackup.keys import Keys
from txnbackup.seal import seal
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


class Field(StrEnum):
    """The fields of the backup record hash; only this module reads or writes them by name."""

    UUID = "uuid"
    VMID = "vmid"
    PHASE = "phase"
    START_TIME = "start_time"
    END_TIME = "end_time"
    STARTED = "started"
    LAST_ACTIVITY = "last_activity"
    PLAN = "plan"
    REPOSITORY = "repository"
    TASKS = "tasks"
    SPEED_LIMIT = "speed_limit"
    BLOBS = "blobs"
    ERROR = "error"
    CANCEL_REASON = "cancel_reason"
    SNAPSHOT = "snapshot"
    RUNNING = "running"  # the drive being copied now
    RUNNING_TASK = "running_task"
    BEGIN = "begin"  # who runs a QEMU backup's begin now (its lease says whether it lives)
    COMMIT_RUNS = "commit_runs"
    COMMIT_ATTEMPTS = "commit_attempts"  # claimed commit attempts, capped (ending.commit)
    COMMIT_ERROR = "commit_error"  # why the last commit attempt failed
    PROGRESS_AT = "progress_at"  # when the running drive last reported progress
    QUEUE_TIMEOUT = "queue_timeout"  # seconds the next drive may wait for a worker (0: default)
    ROLLBACK_RUNS = "rollback_runs"
    ROLLBACK_RESUMED = "rollback_resumed"
    OBSERVED = "metrics_observed"  # how many worker processes counted the ending
    SEAL = "seal"  # HMAC of SEALED with the fleet secret (txnbackup.seal)


# What the producer decided, sealed at create: workers act on nothing else of the record.
SEALED = (
    Field.UUID,
    Field.VMID,
    Field.PLAN,
    Field.REPOSITORY,
    Field.SPEED_LIMIT,
    Field.BLOBS,
    Field.QUEUE_TIMEOUT,
)


DRIVE_FIELD = "drive:"  # + drive name: that drive's state and counters (JSON)


@dataclass(frozen=True)
class DriveRecord:
    state: DriveState
    worker: str
    stats: DriveStats

    @property
    def final(self) -> bool:
        return self.state not in (DriveState.PENDING, DriveState.RUNNING)


@dataclass(frozen=True)
class BackupRecord:
    """One backup's record, read from Redis in one round trip and parsed once."""

    uuid: str
    vmid: str
    phase: Phase
    plan: BackupPlan
    repository: str
    start_time: str
    end_time: str
    started: float
    last_activity: float
    task_ids: tuple[str, ...]
    speed_limit: int | None
    error: str
    cancel_reason: str
    snapshot: str
    running: str
    running_task: str
    drives: Mapping[str, DriveRecord]
    counters: Mapping[str, int]
    seal: str = ""
    sealed: tuple[str, ...] = ()  # the SEALED fields as stored, for txnbackup.trust
    beginning: str = ""  # the holder of a QEMU begin in progress
    progress_at: float = 0.0
    queue_timeout: int | None = None
    commit_error: str = ""
    commit_attempts: int = 0

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> BackupRecord:
        plan = BackupPlan.from_dict(json.loads(raw[Field.PLAN]))
        return cls(
            uuid=raw[Field.UUID],
            vmid=raw[Field.VMID],
            phase=Phase(raw[Field.PHASE]),
            plan=plan,
            repository=raw[Field.REPOSITORY],
            start_time=raw[Field.START_TIME],
            end_time=raw.get(Field.END_TIME, ""),
            started=float(raw.get(Field.STARTED) or 0),
            last_activity=float(raw.get(Field.LAST_ACTIVITY) or raw.get(Field.STARTED) or 0),
            task_ids=tuple(json.loads(raw.get(Field.TASKS, "[]"))),
            speed_limit=int(raw.get(Field.SPEED_LIMIT) or 0) or None,
            error=raw.get(Field.ERROR, ""),
            cancel_reason=raw.get(Field.CANCEL_REASON, ""),
            snapshot=raw.get(Field.SNAPSHOT, ""),
            running=raw.get(Field.RUNNING, ""),
            running_task=raw.get(Field.RUNNING_TASK, ""),
            drives={d.name: _drive_record(raw, d.name, d.size, d.dirty) for d in plan.drives},
            counters={
                f: int(raw[f])
                for f in (Field.COMMIT_RUNS, Field.ROLLBACK_RUNS, Field.ROLLBACK_RESUMED)
                if f in raw
            },
            seal=raw.get(Field.SEAL, ""),
            sealed=tuple(raw.get(f, "") for f in SEALED),
            beginning=raw.get(Field.BEGIN, ""),
            progress_at=float(raw.get(Field.PROGRESS_AT) or 0),
            queue_timeout=int(raw.get(Field.QUEUE_TIMEOUT) or 0) or None,
            commit_error=raw.get(Field.COMMIT_ERROR, ""),
            commit_attempts=int(raw.get(Field.COMMIT_ATTEMPTS) or 0),
        )

    def drive(self, name: str) -> DriveRecord:
        return self.drives[name]

    def task_of(self, drive: str) -> str:
        """The Celery task id of a drive's copy ('' for records without ids)."""
        names = [d.name for d in self.plan.drives]
        index = names.index(drive)
        return self.task_ids[index] if index < len(self.task_ids) else ""

    @property
    def commit_task(self) -> str:
        return self.task_ids[-1] if len(self.task_ids) > len(self.plan.drives) else ""


def _drive_record(raw: Mapping[str, str], drive: str, size: int, dirty: int) -> DriveRecord:
    live = json.loads(raw.get(DRIVE_FIELD + drive, "{}"))
    stats = DriveStats.from_dict({"size": size, "dirty": dirty, **live})
    state = DriveState(live.get("state", DriveState.PENDING))
    return DriveRecord(state, live.get("worker", ""), stats)


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

# Ending a backup ends its drives with it: pending ones were skipped, a running one stopped
# (failed or cancelled, ARGV[6]); nothing about a drive changes after this (_DRIVE).
# The end is published on the backup's channel (ARGV[7]) in the same step, so a waiter that
# subscribed before it read the phase cannot miss it; with pcall, so that a Redis user not
# allowed to publish (ACL channels) still ends the backup (waiters then notice by polling).
_FINISH = """
local cur = redis.call('HGET', KEYS[1], 'phase')
if not cur then return 0 end
if cur == 'done' or cur == 'error' or cur == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'end_time', ARGV[2])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[5]) end
for i = 8, #ARGV do
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

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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


class DriveMark(StrEnum):
    """How a drive report changes which drive is marked running."""

    KEEP = ""
    START = "start"
    END = "end"


@dataclass(frozen=True)
class Claim:
    won: bool
    previous: Phase | None


class BackupRecords:
    """The records of backups, their VM locks and leases, under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, ttl: int, secret: bytes | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.secret = secret  # seals the records this process creates
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._drive = redis.register_script(_DRIVE)
        self._unlock = redis.register_script(_UNLOCK)
        self._refine = redis.register_script(_REFINE_CANCEL)
        self._replan = redis.register_script(_REPLAN)

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
            fields[DRIVE_FIELD + d.name] = _drive_json(DriveState.PENDING, stats)
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
            fields[DRIVE_FIELD + d.name] = _drive_json(DriveState.PENDING, stats)
        if task_ids is not None:
            fields[Field.TASKS] = json.dumps(list(task_ids))
            for task_id in task_ids:
                self.redis.set(self.keys.task(task_id), plan.backup, ex=self.ttl)
        if self.secret is not None:  # the worker that began it vouches for the new plan
            stored = self.redis.hmget(self.keys.backup(plan.backup), list(SEALED))
            values = {
                f: _text(v) if v is not None else "" for f, v in zip(SEALED, stored, strict=True)
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

    def raw_or_none(self, backup: str) -> dict[str, str] | None:
        data = self.redis.hgetall(self.keys.backup(backup))
        return {_text(k): _text(v) for k, v in data.items()} if data else None

    def raw(self, backup: str) -> dict[str, str]:
        """The record's hash as it is stored (tests and reports of internals)."""
        raw = self.raw_or_none(backup)
        if raw is None:
            raise NotFound(f"backup {backup}")
        return raw

    def blobs(self, backup: str) -> dict[str, bytes]:
        raw = self.redis.hget(self.keys.backup(backup), Field.BLOBS)
        if not raw:
            return {}
        return {name: base64.b64decode(data) for name, data in json.loads(raw).items()}

    def phase(self, backup: str) -> Phase | None:
        raw = self.redis.hget(self.keys.backup(backup), Field.PHASE)
        return Phase(_text(raw)) if raw else None

    def phases(self, backups: Sequence[str]) -> list[Phase | None]:
        """The phase of each backup in one round trip (None where its record is gone):
        for watching many backups at once."""
        pipe = self.redis.pipeline(transaction=False)
        for backup in backups:
            pipe.hget(self.keys.backup(backup), Field.PHASE)
        return [Phase(_text(raw)) if raw else None for raw in pipe.execute()]

    def task_ids(self, backup: str) -> list[str]:
        raw = self.redis.hget(self.keys.backup(backup), Field.TASKS)
        if raw is None:
            raise NotFound(f"backup {backup}")
        return list(json.loads(raw))

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

    def finish(self, record: BackupRecord, final: Phase, cancel_reason: str = "") -> bool:
        """End the backup and every drive of it, release the lock, start the TTL; once only.

        A drive still marked running ends ``failed`` on an error, ``cancelled`` otherwise.
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
        args += drives
        return bool(self._finish(keys=keys, args=args))

    def request_cancel(self, backup: str, reason: str) -> bool:
        """Record why the backup must stop; True for the first request only."""
        return bool(self.redis.set(self.keys.cancel(backup), reason, nx=True, ex=self.ttl))

    def refine_cancel(self, backup: str, was: str, now: str) -> bool:
        """Record ``now`` as the cancel reason unless another than ``was`` came first."""
        keys = [self.keys.cancel(backup)]
        return bool(self._refine(keys=keys, args=[was, now, self.ttl]))

    def cancel_reason(self, backup: str) -> str | None:
        raw = self.redis.get(self.keys.cancel(backup))
        return _text(raw) if raw else None

    def stop_reason(self, backup: str) -> str | None:
        """Why a drive of this backup must stop now, or None to go on."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.cancel(backup))
        pipe.hget(self.keys.backup(backup), Field.PHASE)
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
        return bool(self.redis.hsetnx(self.keys.backup(backup), Field.ERROR, message))

    def note_commit_failure(self, backup: str, message: str) -> None:
        """Why the last commit attempt failed (shown while the commit is retried)."""
        self.redis.hset(self.keys.backup(backup), Field.COMMIT_ERROR, message)

    def set_snapshot(self, backup: str, snapshot: str) -> None:
        self.redis.hset(self.keys.backup(backup), Field.SNAPSHOT, snapshot)

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
        value = _drive_json(state, stats, worker)
        args = [DRIVE_FIELD + drive, value, mark, drive, task_id, str(time.time())]
        return bool(self._drive(keys=[self.keys.backup(backup)], args=args))

    def touch(self, backup: str, role: LeaseRole, holder: str, ttl: float) -> None:
        """Renew a lease: ``holder`` works on the backup in ``role`` for ``ttl`` more seconds."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.lease(backup, role), holder, px=int(ttl * 1000))
        pipe.hset(self.keys.backup(backup), Field.LAST_ACTIVITY, str(time.time()))
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

    def exists(self, backup: str) -> bool:
        return bool(self.redis.exists(self.keys.backup(backup)))

    def recent(self, limit: int) -> list[str]:
        members: list[bytes] = self.redis.zrevrange(self.keys.backups(), 0, limit - 1)  # type: ignore[assignment]
        return [_text(u) for u in members]


def _drive_json(state: DriveState, stats: DriveStats, worker: str = "") -> str:
    # "state" first: the finishing script rewrites it in place (_FINISH).
    return json.dumps({"state": state, "worker": worker, **stats.to_dict()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
