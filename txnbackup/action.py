"""The bitmap action of a drive for one backup, as Proxmox reports it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from txnbackup.bitmap import BitmapMeta
from txnbackup.errors import InvalidInput
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.verify import failed_verification


class BitmapAction(StrEnum):
    NEW = "new"  # no bitmap yet: read everything, tracking starts
    USED = "used"  # bitmap valid against its base: read dirty chunks only
    INVALID = "invalid"  # bitmap present but unusable: read everything
    NOT_USED = "not-used"  # full read asked for: read everything

    @property
    def full_read(self) -> bool:
        return self is not BitmapAction.USED


@dataclass(frozen=True)
class Decision:
    action: BitmapAction
    reason: str


def decide(
    meta: BitmapMeta | None, repo: Repository, drive: str, size: int, *, full: bool
) -> Decision:
    """Use the bitmap only when its base is a complete snapshot here of the same geometry."""
    if meta is None or not meta.base:
        return Decision(BitmapAction.NEW, "no bitmap yet")
    if full:
        return Decision(BitmapAction.NOT_USED, "full read requested")
    problem = _base_problem(meta, repo, drive, size)
    if problem:
        return Decision(BitmapAction.INVALID, problem)
    return Decision(BitmapAction.USED, f"relative to {meta.base}")


def _base_problem(meta: BitmapMeta, repo: Repository, drive: str, size: int) -> str | None:
    if meta.repository != repo.id:
        return "base snapshot is in another repository"
    if meta.chunk_size != repo.chunk_size:
        return "chunk size changed"
    if meta.size != size:
        return f"drive size changed ({meta.size} -> {size} bytes)"
    try:
        base = SnapshotId.parse(meta.base)
    except InvalidInput:
        return f"base {meta.base!r} is not a snapshot id"
    entry = repo.complete_drive(base, drive)
    if entry is None:
        return f"base snapshot {base} missing or incomplete"
    if entry.size != size:
        return f"drive size changed ({entry.size} -> {size} bytes)"
    if failed_verification(repo, base):
        return f"base snapshot {base} failed verification"
    return None
