"""What a backup reports (Proxmox's query-backup), built from its record alone.

Identities (docs/design.md, tested): totals are sums over drives; per drive
``zero_bytes + reused <= transferred <= dirty <= size``; a full read has ``dirty == size``;
``done`` implies every drive done with ``transferred == dirty``; ``finishing`` is true exactly
while the commit is in progress.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from txnbackup.record import Phase, drive_fields

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

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_record(raw: Mapping[str, str]) -> BackupStatus:
    phase = Phase(raw["phase"])
    plan = json.loads(raw["plan"])
    drives = tuple(_drive(raw, d) for d in plan["drives"])
    return BackupStatus(
        uuid=raw["uuid"],
        vmid=raw["vmid"],
        status=PUBLIC_STATUS[phase],
        phase=phase,
        errmsg=_errmsg(raw, phase),
        start_time=raw["start_time"],
        end_time=raw.get("end_time", ""),
        finishing=phase is Phase.COMMITTING,
        snapshot=raw.get("snapshot", ""),
        total=sum(d.size for d in drives),
        dirty=sum(d.dirty for d in drives),
        transferred=sum(d.transferred for d in drives),
        zero_bytes=sum(d.zero_bytes for d in drives),
        reused=sum(d.reused for d in drives),
        drives=drives,
    )


def _errmsg(raw: Mapping[str, str], phase: Phase) -> str:
    if "error" in raw:
        return raw["error"]
    if phase in (Phase.CANCELLED, Phase.ROLLING_BACK):
        return raw.get("cancel_reason", "cancelled")
    return ""


def _drive(raw: Mapping[str, str], plan: Mapping[str, Any]) -> DriveStatus:
    live = drive_fields(raw, plan["name"])
    return DriveStatus(
        name=plan["name"],
        node=plan["node"],
        action=plan["action"],
        reason=plan["reason"],
        state=live.get("state", "pending"),
        size=int(plan["size"]),
        dirty=int(live.get("dirty", plan["dirty"])),
        transferred=int(live.get("transferred", 0)),
        zero_bytes=int(live.get("zero_bytes", 0)),
        reused=int(live.get("reused", 0)),
    )
