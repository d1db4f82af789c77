"""The backup record: its phases, its fields and one backup's record parsed once per step.

Phases (docs/design.md has the diagram)::

    running -> committing -> done
    running -> rolling_back -> error | cancelled
    committing -> rolling_back            (commit task only, before the snapshot rename)

The Redis side (the scripts that change a phase, a drive's reports) is
``txnbackup.record_store``, the same rules in memory ``txnbackup.memory_records``: both are
the ``Records`` the domain (``ending``, ``drive_step``) works with. The VM lock, the leases,
the cancel flag and the lists of backups live beside it in ``vmlock``, ``lease``, ``cancel``
and ``catalog``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

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
    blobs_json: str = ""  # the config blobs as stored (JSON of base64), decoded by ``blobs``

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
            blobs_json=raw.get(Field.BLOBS, ""),
        )

    @property
    def blobs(self) -> dict[str, bytes]:
        """The VM's config files the snapshot keeps (name -> content)."""
        if not self.blobs_json:
            return {}
        return {n: base64.b64decode(d) for n, d in json.loads(self.blobs_json).items()}

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


class DriveMark(StrEnum):
    """How a drive report changes which drive is marked running."""

    KEEP = ""
    START = "start"
    END = "end"


def drive_json(state: DriveState, stats: DriveStats, worker: str = "") -> str:
    # "state" first: the finishing script rewrites it in place (txnbackup.record_store).
    return json.dumps({"state": state, "worker": worker, **stats.to_dict()})


@dataclass(frozen=True)
class Claim:
    won: bool
    previous: Phase | None
    record: BackupRecord | None = None  # as the claim left it, when won (no second read)


class Records(Protocol):
    """What the domain does with backup records; each method is one atomic step.

    The rules every implementation keeps: a claim moves the phase only from one of ``frm``
    (and, ``unless_cancelled``, only while no cancel is recorded), so one of commit,
    rollback and abandon wins; ``finish`` ends the backup once and every drive with it
    (pending -> skipped, running -> failed on an error, cancelled otherwise); a drive report
    after the end changes nothing; the first error recorded is kept.
    """

    def load(self, backup: str) -> BackupRecord: ...

    def phase(self, backup: str) -> Phase | None: ...

    def claim(
        self,
        backup: str,
        to: Phase,
        *,
        frm: Iterable[Phase],
        unless_cancelled: bool = False,
        count: Field | None = None,
    ) -> Claim: ...

    def finish(
        self,
        record: BackupRecord,
        final: Phase,
        cancel_reason: str = "",
        *,
        snapshot: str = "",
        count: Field | None = None,
    ) -> bool: ...

    def record_error(self, backup: str, message: str) -> bool: ...

    def note_commit_failure(self, backup: str, message: str) -> None: ...

    def count(self, backup: str, name: Field) -> int: ...

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
    ) -> bool: ...
