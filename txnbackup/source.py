"""The two seams between a backup transaction and where its drives live.

A **drive source** opens one drive of a backup for the copy engine and gives the dirty bits
of a ``used`` drive. A **bitmap keeper** commits or rolls back the bitmaps of a backup (and
says what it knows of their state). The plan says which: a file or block device with bits in
Redis (``mark_dirty`` reports), or a running QEMU VM whose own bitmaps and point-in-time
views are the truth (txnbackup.qemu.keeper).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from txnbackup.bitmap import RedisBitmaps, TxnState
from txnbackup.drive import DriveReader, FileDrive
from txnbackup.geometry import chunk_count
from txnbackup.repository import Repository
from txnbackup.settings import DEFAULT_QEMU_DIRS, QemuDirs

if TYPE_CHECKING:
    from txnbackup.transaction import BackupPlan, DrivePlan


class DirtyBits(Protocol):
    def __call__(self, chunk_size: int) -> Iterable[bool]: ...


@dataclass(frozen=True)
class OpenDrive:
    """A drive opened for one backup: its reader and, for a ``used`` drive, its dirty bits."""

    reader: DriveReader
    dirty_bits: DirtyBits


class DriveSource(Protocol):
    def open(
        self, repo: Repository, plan: BackupPlan, drive: DrivePlan
    ) -> AbstractContextManager[OpenDrive]: ...


class BitmapKeeper(Protocol):
    def state(self, backup: str) -> TxnState | None:
        """What the keeper knows of the backup's bitmaps (None: nothing that forbids)."""
        ...

    def commit(self, plan: BackupPlan, snapshot: str, repository: str) -> bool: ...

    def rollback(self, plan: BackupPlan) -> bool: ...


class FileSource:
    """Raw images and block devices; the frozen bits are in Redis (RedisBitmaps.freeze)."""

    def __init__(self, bitmaps: RedisBitmaps) -> None:
        self.bitmaps = bitmaps

    @contextlib.contextmanager
    def open(self, repo: Repository, plan: BackupPlan, drive: DrivePlan) -> Iterator[OpenDrive]:
        def bits(chunk_size: int) -> Iterable[bool]:
            count = chunk_count(drive.size, chunk_size)
            return self.bitmaps.frozen_bits(plan.backup, drive.name, count)

        with FileDrive(drive.name, Path(drive.path)) as reader:
            yield OpenDrive(reader, bits)


class RedisKeeper:
    """RedisBitmaps as a keeper: the bitmap transaction keyed by the backup uuid."""

    def __init__(self, bitmaps: RedisBitmaps) -> None:
        self.bitmaps = bitmaps

    def state(self, backup: str) -> TxnState | None:
        return self.bitmaps.state(backup)

    def commit(self, plan: BackupPlan, snapshot: str, repository: str) -> bool:
        return self.bitmaps.commit(plan.backup, snapshot, repository)

    def rollback(self, plan: BackupPlan) -> bool:
        return self.bitmaps.rollback(plan.backup)


def source_for(
    plan: BackupPlan, bitmaps: RedisBitmaps, qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS
) -> DriveSource:
    if plan.qemu is not None:
        from txnbackup.qemu.keeper import QemuSource  # noqa: PLC0415 - imports libnbd

        return QemuSource(plan.qemu, qemu_dirs)
    return FileSource(bitmaps)


def keeper_for(
    plan: BackupPlan, bitmaps: RedisBitmaps, qemu_dirs: QemuDirs = DEFAULT_QEMU_DIRS
) -> BitmapKeeper:
    if plan.qemu is not None:
        from txnbackup.qemu.keeper import QemuKeeper  # noqa: PLC0415 - imports libnbd

        return QemuKeeper(plan.qemu, qemu_dirs)
    return RedisKeeper(bitmaps)
