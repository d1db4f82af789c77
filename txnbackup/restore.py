"""Restore drives of a snapshot to files (zero chunks as holes) or block devices.

Each drive is fetched, checked and written on a thread pool (reading a chunk file, zstd,
sha256 and pwrite all release the GIL), RESTORE_INFLIGHT chunks at a time, so reading the
repository, decompressing and writing the target overlap; each chunk is one large write (or
a few, around its all-zero HOLE_BLOCKs), at its chunk-aligned offset.

No byte goes through the page cache where the file systems allow it (txnbackup.direct): a
pool thread reads a chunk file directly into its own buffer, decompresses it into another
(checking its digest there) and writes that directly to the target. Through the cache, the
kernel's copies of what is read and written cost more CPU than sha256 on a 2-core host
(docs/performance.md, "Restore past the page cache").
"""

from __future__ import annotations

import functools
import os
import stat
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from txnbackup import direct
from txnbackup.constants import ZERO_DIGEST
from txnbackup.direct import DirectWriter
from txnbackup.engine import default_workers, is_zero
from txnbackup.errors import CorruptChunk, InvalidInput, NotFound, TargetWriteError
from txnbackup.fsutil import fsync_dir, os_reason, temp_name
from txnbackup.geometry import extent
from txnbackup.index import IndexReader
from txnbackup.manifest import DriveEntry
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId

RESTORE_INFLIGHT = 8  # chunks queued for the pool at once
RESTORE_DRIVES = 2  # drives of a restore --all written at once (each with its own pool)
HOLE_BLOCK = 64 * 1024  # bytes: an aligned all-zero block this large is left a hole in a file
_PLAINTEXT = direct.ThreadBuffers()  # each pool thread's decoded chunk, while it writes it


DRIVE_FILE_SUFFIX = ".raw"  # restore --all writes drive NAME to DIR/NAME.raw


@dataclass(frozen=True)
class RestoreResult:
    size: int
    chunks: int
    zero_chunks: int


@dataclass(frozen=True)
class RestoredDrive:
    name: str
    target: Path
    result: RestoreResult


def drive_entry(repo: Repository, snapshot: SnapshotId, drive: str) -> DriveEntry:
    manifest = repo.manifest(snapshot)
    entry = manifest.drive(drive)
    if entry is None:
        names = ", ".join(d.name for d in manifest.drives)
        raise NotFound(f"drive {drive} in snapshot {snapshot} (it has: {names})")
    return entry


def restore_drive(
    repo: Repository, snapshot: SnapshotId, drive: str, target: Path, *, overwrite: bool = False
) -> RestoreResult:
    """Write the drive's content at backup time to ``target``; a file appears only complete.

    An existing target, file or block device, is replaced only with ``overwrite``.
    """
    entry = drive_entry(repo, snapshot, drive)
    with repo.open_index(snapshot, entry) as index:
        if _is_block_device(target):
            if not overwrite:
                raise InvalidInput(f"{target} is a block device; pass --overwrite to write it")
            return _restore_to_device(repo, entry, index, target)
        return _restore_to_file(repo, entry, index, target, overwrite)


def restore_all(
    repo: Repository, snapshot: SnapshotId, directory: Path, *, overwrite: bool = False
) -> list[RestoredDrive]:
    """Restore every drive of the snapshot to ``directory/<drive>.raw`` (RESTORE_DRIVES at
    once); the result is in manifest order.

    Every target is checked before anything is written: a missing directory, or files that
    exist without ``overwrite`` (all of them are named), refuse the whole restore. All or
    nothing: every drive is written to a temporary file first, and only when all are
    complete do they replace their targets, so a drive that fails (a damaged chunk, a full
    disk) leaves every file in ``directory`` as it was; a drive not yet started then is not
    started, one being written is finished and removed. With ``overwrite`` the old files and
    the new ones take space together until the end.
    """
    if not directory.is_dir():
        raise NotFound(f"directory {directory}")
    manifest = repo.manifest(snapshot)
    targets = [(d, directory / f"{d.name}{DRIVE_FILE_SUFFIX}") for d in manifest.drives]
    _check_targets([t for _, t in targets], overwrite)
    written: list[tuple[Path, RestoredDrive]] = []
    try:
        with ThreadPoolExecutor(RESTORE_DRIVES, thread_name_prefix="restore-drive") as drives:
            futures = [
                drives.submit(_restore_temp, repo, snapshot, manifest.backup, entry, target)
                for entry, target in targets
            ]
            try:
                _wait_all(futures, written)
            except BaseException:
                drives.shutdown(wait=True, cancel_futures=True)
                _collect(futures, written)  # those that finished meanwhile: removed below
                raise
        for tmp, done in written:
            os.rename(tmp, done.target)
        fsync_dir(directory)
    except OSError as exc:
        raise TargetWriteError(str(directory), os_reason(exc)) from exc
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return [done for _, done in written]


def _restore_temp(
    repo: Repository, snapshot: SnapshotId, backup: str, entry: DriveEntry, target: Path
) -> tuple[Path, RestoredDrive]:
    with repo.open_index(snapshot, entry, backup) as index:
        tmp, result = _write_temp(repo, entry, index, target)
    return tmp, RestoredDrive(entry.name, target, result)


Restored = Future[tuple[Path, RestoredDrive]]


def _wait_all(futures: list[Restored], written: list[tuple[Path, RestoredDrive]]) -> None:
    """Wait for every drive and add them to ``written`` in manifest order; raise the first
    failure met (the caller then removes what was written)."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
    written.extend(f.result() for f in futures)


def _collect(futures: list[Restored], written: list[tuple[Path, RestoredDrive]]) -> None:
    """Add every drive that was written whole to ``written`` (once)."""
    have = {tmp for tmp, _ in written}
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is None:
            tmp, drive = future.result()
            if tmp not in have:
                written.append((tmp, drive))


def _check_targets(targets: list[Path], overwrite: bool) -> None:
    there = [str(t) for t in targets if os.path.lexists(t)]
    if there and not overwrite:
        raise InvalidInput(f"{', '.join(there)} exist(s); pass --overwrite to replace")
    for target in targets:
        if os.path.lexists(target) and not (target.is_file() and not target.is_symlink()):
            raise InvalidInput(f"{target} is not a regular file; not replacing it")


def _restore_to_file(
    repo: Repository, entry: DriveEntry, index: IndexReader, target: Path, overwrite: bool
) -> RestoreResult:
    if target.exists() and not target.is_file():
        raise InvalidInput(f"{target} is not a regular file or a block device; not replacing it")
    if target.exists() and not overwrite:
        raise InvalidInput(f"{target} exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise NotFound(f"directory {target.parent}")
    tmp, result = _write_temp(repo, entry, index, target)
    try:
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TargetWriteError(str(target), os_reason(exc)) from exc
    return result


def _write_temp(
    repo: Repository, entry: DriveEntry, index: IndexReader, target: Path
) -> tuple[Path, RestoreResult]:
    """The drive written, fsynced, to a new temporary file beside ``target``; removed again
    on any failure."""
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, entry.size)
            result = _write_chunks(repo, entry, index, DirectWriter(tmp, fd), holes=True)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TargetWriteError(str(target), os_reason(exc)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, result


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except FileNotFoundError:
        return False


def _restore_to_device(
    repo: Repository, entry: DriveEntry, index: IndexReader, target: Path
) -> RestoreResult:
    # O_EXCL on a block device: refused while it is mounted or otherwise held open exclusively.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetWriteError(str(target), os_reason(exc)) from exc
    try:
        capacity = os.lseek(fd, 0, os.SEEK_END)
        if capacity < entry.size:
            raise InvalidInput(f"{target} holds {capacity} bytes, the drive needs {entry.size}")
        result = _write_chunks(repo, entry, index, DirectWriter(target, fd), holes=False)
        os.fsync(fd)
    finally:
        os.close(fd)
    return result


def _write_chunks(
    repo: Repository, entry: DriveEntry, reader: IndexReader, target: DirectWriter, *, holes: bool
) -> RestoreResult:
    """Fetch, check and write every chunk, on a thread pool (reading, decompressing, hashing
    and pwrite release the GIL); at most RESTORE_INFLIGHT chunks are queued at once. The
    writer's direct descriptor is closed here; its buffered one stays the caller's."""
    zero_chunks = 0
    try:
        with ThreadPoolExecutor(default_workers()) as pool:
            pending: deque[Future[None]] = deque()
            try:
                for i, digest in enumerate(reader):
                    offset, length = extent(i, entry.size, entry.chunk_size)
                    if digest == ZERO_DIGEST:
                        zero_chunks += 1
                        if holes:
                            continue
                    args = (repo, entry.name, digest, offset, length, target, holes)
                    pending.append(pool.submit(_write_chunk, *args))
                    while len(pending) > RESTORE_INFLIGHT or (pending and pending[0].done()):
                        pending.popleft().result()
                while pending:
                    pending.popleft().result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # no write after the fd is closed
                raise
    finally:
        target.close()
    return RestoreResult(entry.size, reader.count, zero_chunks)


def _write_chunk(
    repo: Repository,
    drive: str,
    digest: bytes,
    offset: int,
    length: int,
    target: DirectWriter,
    holes: bool,
) -> None:
    out = _PLAINTEXT.get(length)
    if digest == ZERO_DIGEST:
        data = out[:length]
        data[:] = _zeros(length)
    else:
        try:
            data = repo.chunks.get_into(digest.hex(), out)
        except CorruptChunk as exc:
            where = f"(drive {drive}, offset {offset})"
            raise CorruptChunk(exc.args[0], f"{exc.args[1]} {where}") from None
        if len(data) != length:
            raise CorruptChunk(digest.hex(), f"length {len(data)}, expected {length}")
    for start, end in _data_runs(data) if holes else [(0, length)]:
        target.pwrite(data[start:end], offset + start)


def _data_runs(data: memoryview) -> list[tuple[int, int]]:
    """The [start, end) runs of ``data`` to write to a new file: all but its all-zero
    HOLE_BLOCKs, which stay holes (a new file reads zeros there)."""
    runs: list[tuple[int, int]] = []
    for start in range(0, len(data), HOLE_BLOCK):
        end = min(start + HOLE_BLOCK, len(data))
        if end - start == HOLE_BLOCK and is_zero(data[start:end]):
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)
