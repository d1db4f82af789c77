"""What a backup reports (Proxmox's query-backup), built from its record alone.

Identities (docs/design.md, tested): totals are sums over drives; per drive
``zero_bytes + reused <= transferred <= dirty <= size``; a full read has ``dirty == size``;
``done`` implies every drive done with ``transferred == dirty``; ``finishing`` is true exactly
while the commit is in progress.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from txnbackup.record import BackupRecord, Phase
from txnbackup.transaction import DrivePlan

PUBLIC_STATUS = {
    Phase.RUNNING: "active",
    Phase.COMMITTING: "active",
    Phase.ROLLING_BACK: "active",
    Phase.DONE: "done",
    Phase.ERROR: "error",
    Phase.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class DriveStatus:
    name: str
    node: str
    action: str
    reason: str
    state: str
    size: int
    dirty: int
    transferred: int
    zero_bytes: int
    reused: int
    task_id: str  # the Celery task copying this drive: what `celery control revoke` takes


@dataclass(frozen=True)
class BackupStatus:
    uuid: str
    vmid: str
    status: str
    phase: str
    errmsg: str
    start_time: str
    end_time: str
    finishing: bool
    snapshot: str
    total: int
    dirty: int
    transferred: int
    zero_bytes: int
    reused: int
    drives: tuple[DriveStatus, ...]
    commit_task: str  # the Celery task id of the commit (the chord callback)
    commit_attempts: int  # how many times the commit was tried (TXNBACKUP_COMMIT_ATTEMPTS)
    commit_error: str  # why the last commit attempt failed ("" when none did)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_record(record: BackupRecord) -> BackupStatus:
    drives = tuple(_drive(record, d) for d in record.plan.drives)
    return BackupStatus(
        uuid=record.uuid,
        vmid=record.vmid,
        status=PUBLIC_STATUS[record.phase],
        phase=record.phase,
        errmsg=_errmsg(record),
        start_time=record.start_time,
        end_time=record.end_time,
        finishing=record.phase is Phase.COMMITTING,
        snapshot=record.snapshot,
        total=sum(d.size for d in drives),
        dirty=sum(d.dirty for d in drives),
        transferred=sum(d.transferred for d in drives),
        zero_bytes=sum(d.zero_bytes for d in drives),
        reused=sum(d.reused for d in drives),
        drives=drives,
        commit_task=record.commit_task,
        commit_attempts=record.commit_attempts,
        commit_error=record.commit_error,
    )


def _errmsg(record: BackupRecord) -> str:
    if record.error:
        return record.error
    if record.phase in (Phase.CANCELLED, Phase.ROLLING_BACK):
        return record.cancel_reason or "cancelled"
    return ""


def _drive(record: BackupRecord, plan: DrivePlan) -> DriveStatus:
    live = record.drive(plan.name)
    return DriveStatus(
        name=plan.name,
        node=plan.node,
        action=str(plan.action),
        reason=plan.reason,
        state=str(live.state),
        size=plan.size,
        dirty=live.stats.dirty,
        transferred=live.stats.transferred,
        zero_bytes=live.stats.zero_bytes,
        reused=live.stats.reused,
        task_id=record.task_of(plan.name),
    )
