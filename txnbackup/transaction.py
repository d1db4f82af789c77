"""One backup of all drives of a VM as a transaction: prepare, copy each drive, commit or roll back.

These are the domain steps; the Celery layer (``tasks``) decides where and when each runs.
Prepare validates everything and changes nothing until the single atomic bitmap freeze.
Commit publishes the snapshot first and commits the bitmaps second: a crash between the two
leaves a published snapshot and frozen bitmaps, which a repeated commit completes (publish
finds the snapshot by the backup uuid). Rollback discards the staging area and returns the
frozen bits, so the next backup still reads every chunk changed since the last snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from txnbackup.action import BitmapAction, decide
from txnbackup.bitmap import FreezeItem, Frozen, RedisBitmaps, TxnState
from txnbackup.crypto import index_identity
from txnbackup.drive import Drive, drive_size
from txnbackup.engine import CancelCheck, CopyJob, Incremental, ProgressSink, copy_drive
from txnbackup.errors import DriveSizeChanged, InvalidInput, NotFound, TransactionStateError
from txnbackup.failpoints import failpoint
from txnbackup.geometry import dirty_bytes
from txnbackup.manifest import DriveEntry
from txnbackup.names import check_backup_id, check_drive_name, check_vmid, new_backup_id
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.settings import DEFAULT_QEMU_DIRS, QemuDirs
from txnbackup.snapshot import SnapshotId, format_time
from txnbackup.source import keeper_for, source_for
from txnbackup.staging import Staging, publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrivePlan:
    name: str
    path: str
    node: str
    size: int
    action: BitmapAction
    reason: str
    dirty: int  # bytes this backup reads
    base: str = ""  # snapshot id the frozen bits are relative to (``used`` only)
    epoch: str = ""  # the epoch of the drive's fresh bitmap, recorded in the new snapshot


@dataclass(frozen=True)
class BackupPlan:
    backup: str
    vmid: str
    start_time: str
    drives: tuple[DrivePlan, ...]
    qemu: QemuVM | None = None  # set for a running QEMU VM: its drives are read there
    full: bool = False

    def drive(self, name: str) -> DrivePlan:
        for d in self.drives:
            if d.name == name:
                return d
        raise NotFound(f"drive {name} in backup {self.backup}")

    @property
    def snapshot_time(self) -> SnapshotId:
        return SnapshotId(self.vmid, self.start_time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupPlan:
        drives = tuple(
            DrivePlan(**{**d, "action": BitmapAction(d["action"])}) for d in data["drives"]
        )
        qemu = QemuVM(**data["qemu"]) if data.get("qemu") else None
        full = bool(data.get("full", False))
        return cls(data["backup"], data["vmid"], data["start_time"], drives, qemu, full)


def check_drives(drives: Sequence[Drive]) -> None:
    if not drives:
        raise InvalidInput("a backup needs at least one drive")
    # Drive.parse checks names too, but API callers may build a Drive directly; a name
    # becomes a file name in the staging area and the snapshot.
    names = [check_drive_name(d.name) for d in drives]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"duplicate drive name(s): {', '.join(duplicates)}")


@dataclass(frozen=True)
class Decided:
    """A drive's action as decided before the freeze, and the epoch that decision trusted."""

    drive: Drive
    size: int
    action: BitmapAction
    reason: str
    base: str = ""  # ``used`` only
    epoch: str = ""  # ``used`` only: the epoch the frozen bits must carry


def plan_backup(
    repo: Repository,
    bitmaps: RedisBitmaps,
    vmid: str,
    drives: Sequence[Drive],
    *,
    full: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> list[Decided]:
    """Validate every input and decide actions; changes nothing anywhere."""
    check_vmid(vmid)
    check_drives(drives)
    decided = []
    for d in drives:
        size = sizes[d.name] if sizes and d.name in sizes else drive_size(d.name, d.path)
        meta = bitmaps.meta(vmid, d.name)
        decision = decide(meta, repo, vmid, d.name, size, full=full)
        if meta and decision.action is BitmapAction.USED:
            decided.append(
                Decided(d, size, decision.action, decision.reason, meta.base, meta.epoch)
            )
        else:
            decided.append(Decided(d, size, decision.action, decision.reason))
    return decided


def prepare(
    repo: Repository,
    bitmaps: RedisBitmaps,
    vmid: str,
    drives: Sequence[Drive],
    *,
    full: bool = False,
    sizes: Mapping[str, int] | None = None,
    backup: str | None = None,
) -> BackupPlan:
    """Validate, decide each drive's bitmap action, freeze all bitmaps at once, stage."""
    backup = check_backup_id(backup) if backup else new_backup_id()
    decided = plan_backup(repo, bitmaps, vmid, drives, full=full, sizes=sizes)
    start = format_time(datetime.now(UTC))
    frozen = bitmaps.freeze(
        backup, vmid, [FreezeItem(d.drive.name, d.size, repo.chunk_size) for d in decided]
    )
    plans = tuple(_drive_plan(d, frozen[d.drive.name], repo.chunk_size) for d in decided)
    plan = BackupPlan(backup, vmid, start, plans)
    try:
        Staging(repo, backup).create()
    except Exception:
        bitmaps.rollback(backup)
        raise
    for p in plans:
        log.info(
            "vm %s backup %s drive %s: bitmap %s (%s)", vmid, backup, p.name, p.action, p.reason
        )
    return plan


def _drive_plan(decided: Decided, frozen: Frozen, chunk_size: int) -> DrivePlan:
    """The drive's plan once frozen: a ``used`` bitmap whose frozen bits cannot prove they are
    the ones the decision trusted (whole, of its epoch) is read in full instead."""
    d, size, action, reason, base = (
        decided.drive,
        decided.size,
        decided.action,
        decided.reason,
        decided.base,
    )
    if action is BitmapAction.USED and not (frozen.whole and frozen.prior == decided.epoch):
        action, reason, base = BitmapAction.INVALID, _not_whole(frozen), ""
    dirty = (
        size
        if action.full_read
        else dirty_bytes(size, chunk_size, frozen.chunks, frozen.last_dirty)
    )
    return DrivePlan(d.name, d.path, d.node, size, action, reason, dirty, base, frozen.epoch)


def _not_whole(frozen: Frozen) -> str:
    if not frozen.prior:
        return "dirty bits cannot prove they are whole (Redis lost some during a backup)"
    return (
        "dirty bits missing from Redis or from another time than the bitmap "
        "(evicted, or restored from an older dump)"
    )


def copy(
    repo: Repository,
    bitmaps: RedisBitmaps,
    plan: BackupPlan,
    drive: str,
    cancel: CancelCheck,
    progress: ProgressSink,
    speed_limit: int | None = None,
    qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS,
) -> DriveEntry:
    """Copy one drive of the backup into its staging area."""
    d = plan.drive(drive)
    staging = Staging(repo, plan.backup)
    job = CopyJob(plan.vmid, plan.backup, d.name, d.action, speed_limit)
    repo.unlock()  # a wrong or missing key fails the drive before it reads or writes
    with source_for(plan, bitmaps, qemu_dirs).open(repo, plan, d) as opened:
        reader = opened.reader
        if reader.size != d.size:
            raise DriveSizeChanged(d.name, d.size, reader.size)
        incremental = None
        if d.action is BitmapAction.USED:
            bits = opened.dirty_bits(repo.chunk_size)
            base = SnapshotId.parse(d.base)
            base_index = repo.snapshot_dir(base) / staging.index_path(d.name).name
            identity = None
            if repo.encrypted:
                identity = index_identity(repo.manifest(base).backup, d.name)
            incremental = Incremental(d.dirty, bits, base_index, identity)
        return copy_drive(job, reader, staging, incremental, cancel, progress)


def commit(
    repo: Repository,
    bitmaps: RedisBitmaps,
    plan: BackupPlan,
    blobs: Mapping[str, bytes] | None = None,
    qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS,
) -> SnapshotId:
    """Publish the snapshot, then commit every bitmap to it. Safe to repeat."""
    keeper = keeper_for(plan, bitmaps, qemu_dirs)
    if keeper.state(plan.backup) is TxnState.ROLLED_BACK:
        raise TransactionStateError(plan.backup, "rolled back", "commit")
    repo.unlock()
    names = [d.name for d in plan.drives]
    epochs = {d.name: d.epoch for d in plan.drives}
    snapshot = publish(
        Staging(repo, plan.backup), plan.vmid, plan.snapshot_time, names, blobs or {}, epochs
    )
    keeper.commit(plan, str(snapshot), repo.id)
    return snapshot


def rollback(
    repo: Repository,
    bitmaps: RedisBitmaps,
    plan: BackupPlan,
    qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS,
) -> bool:
    """Discard the staging area and return the frozen bits. Safe to repeat."""
    keeper = keeper_for(plan, bitmaps, qemu_dirs)
    if keeper.state(plan.backup) is TxnState.COMMITTED:
        raise TransactionStateError(plan.backup, "committed", "roll back")
    Staging(repo, plan.backup).discard()
    failpoint("rollback.after_discard")
    return keeper.rollback(plan)


def return_bits(
    bitmaps: RedisBitmaps, plan: BackupPlan, qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS
) -> bool:
    """Return the frozen bits without touching the repository (it cannot be opened, or the
    snapshot is already published and only its bitmaps failed). Safe to repeat."""
    keeper = keeper_for(plan, bitmaps, qemu_dirs)
    if keeper.state(plan.backup) is TxnState.COMMITTED:
        raise TransactionStateError(plan.backup, "committed", "roll back")
    return keeper.rollback(plan)
