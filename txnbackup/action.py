"""The bitmap action of a drive for one backup, as Proxmox reports it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from txnbackup.bitmap import BitmapMeta
from txnbackup.errors import IntegrityError, InvalidInput, NotFound
from txnbackup.manifest import Manifest
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
    meta: BitmapMeta | None, repo: Repository, vmid: str, drive: str, size: int, *, full: bool
) -> Decision:
    """Use the bitmap only when it proves it is whole and current: its base is the newest
    complete snapshot of the drive here, of the same geometry, and its epoch is the one that
    snapshot recorded. Whether the bits themselves still carry the epoch, the freeze checks."""
    if meta is None or not meta.base:
        lost = None if meta is not None or full else _lost(repo, vmid, drive)
        if lost:
            return Decision(BitmapAction.INVALID, lost)
        return Decision(BitmapAction.NEW, "no bitmap yet")
    if full:
        return Decision(BitmapAction.NOT_USED, "full read requested")
    problem = _base_problem(meta, repo, drive, size) or _currency_problem(meta, repo, vmid, drive)
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


def _currency_problem(meta: BitmapMeta, repo: Repository, vmid: str, drive: str) -> str | None:
    newest = _newest_with(repo, vmid, drive)
    if isinstance(newest, str):
        return newest
    if newest is None or str(newest[0]) != meta.base:
        shown = newest[0] if newest else "none"
        return (
            f"bitmap is relative to {meta.base}, not to the newest snapshot of the drive "
            f"({shown}): Redis was restored from an older state or lost a commit"
        )
    recorded = newest[1].bitmap_epoch(drive)
    if not meta.epoch:
        return "dirty bits cannot prove they are whole (Redis lost some during a backup)"
    if not recorded:
        return f"base snapshot {meta.base} records no bitmap epoch (an older txnbackup made it)"
    if recorded != meta.epoch:
        return (
            f"bitmap epoch {meta.epoch} is not the one {meta.base} recorded ({recorded}): "
            "Redis holds bitmap keys from another time"
        )
    return None


def _lost(repo: Repository, vmid: str, drive: str) -> str | None:
    newest = _newest_with(repo, vmid, drive)
    if isinstance(newest, tuple) and newest[1].bitmap_epoch(drive):
        return (
            f"bitmap missing from Redis although {newest[0]} started one "
            "(evicted, or Redis lost its data)"
        )
    return None


def _newest_with(
    repo: Repository, vmid: str, drive: str
) -> tuple[SnapshotId, Manifest] | str | None:
    """The VM's newest snapshot holding the drive and its manifest, None if there is none, or
    why it cannot be known. A snapshot without the drive (a backup of other drives only)
    leaves the drive's bitmap relative to an older one; an unreadable one stops the search,
    since it may be the snapshot the bitmap should be relative to."""
    for snapshot in repo.snapshots(vmid):
        try:
            manifest = repo.manifest(snapshot)
        except (IntegrityError, NotFound):
            return f"snapshot {snapshot} is unreadable, so the bitmap cannot prove it is current"
        if manifest.drive(drive) is not None:
            return snapshot, manifest
    return None
