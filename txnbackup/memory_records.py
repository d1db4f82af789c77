"""Backup records in memory: the ``Records`` of txnbackup.record without Redis.

A first-class backend for one process (domain tests, a single-host tool), beside
``txnbackup.memory_bitmaps``: each record is kept as the fields of its Redis hash and read
back with ``BackupRecord.parse``, and each step below is atomic under one lock where
``RecordStore`` runs one Lua script, keeping the same rules (txnbackup.record_store): a
claim moves the phase only from ``frm`` and, ``unless_cancelled``, only while no cancel is
recorded; ``finish`` ends a backup once and every drive with it; a drive report after the
end changes nothing; the first error and the first cancel reason are kept. The VM lock, the
leases and the state TTL are not this store's: ended records are kept for its life.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from txnbackup.errors import NotFound
from txnbackup.record import (
    DRIVE_FIELD,
    BackupRecord,
    Claim,
    DriveMark,
    DriveState,
    Field,
    Phase,
    drive_json,
)
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan


class InMemoryCancels:
    """The cancel flags of ``InMemoryRecords`` (txnbackup.cancel): the first reason wins."""

    def __init__(self, records: InMemoryRecords) -> None:
        self._records = records
        self._reasons: dict[str, str] = {}

    def request(self, backup: str, reason: str) -> bool:
        """Record why the backup must stop; True for the first request only."""
        with self._records.lock:
            if backup in self._reasons:
                return False
            self._reasons[backup] = reason
            return True

    def reason(self, backup: str) -> str | None:
        return self._reasons.get(backup)

    def stop_reason(self, backup: str) -> str | None:
        """Why a drive of this backup must stop now, or None to go on."""
        with self._records.lock:
            if backup in self._reasons:
                return self._reasons[backup]
            phase = self._records.phase(backup)
        if phase is None:
            return "backup record is gone"
        return None if phase is Phase.RUNNING else f"backup is {phase}"


class InMemoryRecords:
    """The records of backups in this process; a ``Records`` (txnbackup.record)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._hashes: dict[str, dict[str, str]] = {}
        self.cancels = InMemoryCancels(self)

    def create(
        self,
        plan: BackupPlan,
        repository: str,
        task_ids: Iterable[str],
        speed_limit: int | None = None,
        blobs: Mapping[str, bytes] | None = None,
        queue_timeout: int | None = None,
    ) -> None:
        now = str(time.time())
        fields: dict[str, str] = {
            Field.UUID: plan.backup,
            Field.VMID: plan.vmid,
            Field.PHASE: Phase.RUNNING,
            Field.START_TIME: plan.start_time,
            Field.STARTED: now,
            Field.LAST_ACTIVITY: now,
            Field.PLAN: json.dumps(plan.to_dict()),
            Field.REPOSITORY: repository,
            Field.TASKS: json.dumps(list(task_ids)),
            Field.SPEED_LIMIT: str(speed_limit or 0),
            Field.BLOBS: json.dumps(
                {k: base64.b64encode(v).decode() for k, v in (blobs or {}).items()}
            ),
            Field.QUEUE_TIMEOUT: str(queue_timeout or 0),
        }
        for d in plan.drives:
            stats = DriveStats(size=d.size, dirty=d.dirty)
            fields[DRIVE_FIELD + d.name] = drive_json(DriveState.PENDING, stats)
        with self.lock:
            self._hashes[plan.backup] = fields

    def load_or_none(self, backup: str) -> BackupRecord | None:
        with self.lock:
            raw = self._hashes.get(backup)
            return BackupRecord.parse(raw) if raw is not None else None

    def load(self, backup: str) -> BackupRecord:
        record = self.load_or_none(backup)
        if record is None:
            raise NotFound(f"backup {backup}")
        return record

    def exists(self, backup: str) -> bool:
        return backup in self._hashes

    def phase(self, backup: str) -> Phase | None:
        with self.lock:
            return _phase(self._hashes.get(backup))

    def phases(self, backups: Sequence[str]) -> list[Phase | None]:
        return [self.phase(b) for b in backups]

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
        with self.lock:
            raw = self._hashes.get(backup)
            current = _phase(raw)
            if raw is None or current is None:
                return Claim(False, None)
            if unless_cancelled and self.cancels.reason(backup) is not None:
                return Claim(False, current)
            if current not in set(frm):
                return Claim(False, current)
            raw[Field.PHASE] = to
            if count is not None:
                raw[count] = str(int(raw.get(count, "0")) + 1)
            return Claim(True, current, BackupRecord.parse(raw))

    def finish(
        self,
        record: BackupRecord,
        final: Phase,
        cancel_reason: str = "",
        *,
        snapshot: str = "",
        count: Field | None = None,
    ) -> bool:
        """End the backup and every drive of it, once only; True for the one that ended it."""
        stopped = DriveState.FAILED if final is Phase.ERROR else DriveState.CANCELLED
        with self.lock:
            raw = self._hashes.get(record.uuid)
            if raw is None or (phase := _phase(raw)) is None or phase.final:
                return False
            raw[Field.PHASE] = final
            raw[Field.END_TIME] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if cancel_reason:
                raw[Field.CANCEL_REASON] = cancel_reason
            if snapshot:
                raw[Field.SNAPSHOT] = snapshot
            if count is not None:
                raw[count] = str(int(raw.get(count, "0")) + 1)
            for d in record.plan.drives:
                _end_drive(raw, DRIVE_FIELD + d.name, stopped)
            raw.pop(Field.RUNNING, None)
            raw.pop(Field.RUNNING_TASK, None)
            return True

    def record_error(self, backup: str, message: str) -> bool:
        """Keep the first real error only; True when this one was the first."""
        with self.lock:
            raw = self._hashes.setdefault(backup, {})
            if Field.ERROR in raw:
                return False
            raw[Field.ERROR] = message
            return True

    def note_commit_failure(self, backup: str, message: str) -> None:
        with self.lock:
            self._hashes.setdefault(backup, {})[Field.COMMIT_ERROR] = message

    def count(self, backup: str, name: Field) -> int:
        with self.lock:
            raw = self._hashes.setdefault(backup, {})
            raw[name] = str(int(raw.get(name, "0")) + 1)
            return int(raw[name])

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
        with self.lock:
            raw = self._hashes.get(backup)
            if raw is None or (phase := _phase(raw)) is None or phase.final:
                return False
            raw[DRIVE_FIELD + drive] = drive_json(state, stats, worker)
            raw[Field.PROGRESS_AT] = str(time.time())
            if mark is DriveMark.START:
                raw[Field.RUNNING], raw[Field.RUNNING_TASK] = drive, task_id
            elif mark is DriveMark.END and raw.get(Field.RUNNING) == drive:
                raw.pop(Field.RUNNING, None)
                raw.pop(Field.RUNNING_TASK, None)
            return True


def _phase(raw: Mapping[str, str] | None) -> Phase | None:
    """The phase of a record's fields; None for no record (or fields without a phase)."""
    value = (raw or {}).get(Field.PHASE)
    return Phase(value) if value else None


def _end_drive(raw: dict[str, str], field: str, stopped: DriveState) -> None:
    """Pending -> skipped, running -> ``stopped``; a drive that ended keeps its state."""
    if field not in raw:
        return
    value = json.loads(raw[field])
    if value.get("state") == DriveState.PENDING:
        value["state"] = DriveState.SKIPPED
    elif value.get("state") == DriveState.RUNNING:
        value["state"] = stopped
    raw[field] = json.dumps(value)
