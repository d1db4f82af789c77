"""The copy engine: one drive of one backup into the staging area.

The calling thread reads chunks in order and keeps the index in order; hashing, compressing
and storing (which release the GIL) run on a small thread pool. At most ``2 * workers`` chunks
are in flight, so memory stays flat whatever the drive size.

Garbage collection (txnbackup.gc) relies on one ordering here: a drive's index file is
created in the staging directory before the drive's first chunk is stored or reused, and the
directory is not changed again until the index is complete. The staging directory's mtime is
therefore never later than any chunk the running drive counts on but has not indexed yet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from txnbackup import chunk
from txnbackup.action import BitmapAction
from txnbackup.chunkstore import ChunkBackend
from txnbackup.constants import ZERO_DIGEST
from txnbackup.drive import DriveReader
from txnbackup.errors import Cancelled, IntegrityError
from txnbackup.index import IndexReader, IndexWriter, chunk_count
from txnbackup.manifest import DriveEntry
from txnbackup.staging import Staging
from txnbackup.stats import DriveStats

log = logging.getLogger(__name__)

CancelCheck = Callable[[], str | None]
ProgressSink = Callable[[DriveStats], None]
PROGRESS_INTERVAL = 0.5  # seconds between progress reports


class Outcome(Enum):
    ZERO = "zero"
    REUSED = "reused"
    STORED = "stored"


@dataclass(frozen=True)
class ChunkResult:
    digest: bytes
    length: int
    outcome: Outcome
    stored: int = 0


@dataclass(frozen=True)
class CopyJob:
    vmid: str
    backup: str
    drive: str
    action: BitmapAction
    speed_limit: int | None = None  # bytes per second read from the drive
    workers: int = max(1, min(4, os.cpu_count() or 1))


def process_chunk(store: ChunkBackend, data: bytes) -> ChunkResult:
    """Zero check, hash, dedup check, compress and store one chunk."""
    if data.count(0) == len(data):
        return ChunkResult(ZERO_DIGEST, len(data), Outcome.ZERO)
    digest = hashlib.sha256(data).digest()
    if store.reuse(digest.hex()):
        return ChunkResult(digest, len(data), Outcome.REUSED)
    encoded = chunk.encode(data)
    if not store.put(digest.hex(), encoded):
        return ChunkResult(digest, len(data), Outcome.REUSED)
    return ChunkResult(digest, len(data), Outcome.STORED, len(encoded))


class _Tally:
    def __init__(self, size: int, dirty: int, progress: ProgressSink) -> None:
        self.stats = DriveStats(size=size, dirty=dirty)
        self._progress = progress
        self._last = 0.0
        self.reread = 0  # clean chunks read because the base's chunk file is gone

    def must_read(self, length: int) -> None:
        """A clean chunk has to be read after all: it is dirty for this backup."""
        self.stats = replace(self.stats, dirty=self.stats.dirty + length)
        self.reread += 1

    def add(self, result: ChunkResult) -> None:
        s = self.stats
        self.stats = replace(
            s,
            transferred=s.transferred + result.length,
            zero_bytes=s.zero_bytes + (result.length if result.outcome is Outcome.ZERO else 0),
            reused=s.reused + (result.length if result.outcome is Outcome.REUSED else 0),
            stored=s.stored + result.stored,
        )
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._progress(self.stats)


class _Throttle:
    """Keeps the average read rate at or below the speed limit, checking for cancel."""

    def __init__(self, limit: int | None, cancel: Callable[[], None]) -> None:
        self.limit = limit
        self.cancel = cancel
        self.start = time.monotonic()
        self.done = 0

    def consume(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.limit:
            return
        while (wait := self.start + self.done / self.limit - time.monotonic()) > 0:
            self.cancel()
            time.sleep(min(wait, 0.1))


@dataclass(frozen=True)
class Incremental:
    """What a ``used`` bitmap gives the engine: the frozen bits and the base index."""

    dirty_bytes: int
    bits: Iterable[bool]
    base_index: Path


def copy_drive(
    job: CopyJob,
    reader: DriveReader,
    staging: Staging,
    incremental: Incremental | None,
    cancel: CancelCheck,
    progress: ProgressSink,
) -> DriveEntry:
    """Copy one drive: every chunk, or only the dirty ones when ``incremental`` is given.

    Raises Cancelled when ``cancel`` returns a reason; the staging index is then absent.
    """
    repo = staging.repo
    size, cs = reader.size, repo.chunk_size
    tally = _Tally(size, incremental.dirty_bytes if incremental else size, progress)

    def check() -> None:
        reason = cancel()
        if reason is not None:
            raise Cancelled(reason)

    plan = _plan(size, cs, incremental)
    throttle = _Throttle(job.speed_limit, check)
    with (
        IndexWriter(staging.index_path(job.drive), size, cs) as index,
        ThreadPoolExecutor(job.workers, thread_name_prefix=f"copy-{job.drive}") as pool,
    ):
        try:
            _pipeline(
                plan, reader, repo.chunks, pool, job.workers * 2, index, tally, check, throttle
            )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        repo.chunks.flush()
        info = index.finish()
    if tally.reread:
        log.warning(
            "vm %s backup %s drive %s: %d clean chunk(s) of the base were missing or found "
            "corrupt by verify; read them again",
            job.vmid,
            job.backup,
            job.drive,
            tally.reread,
        )
    progress(tally.stats)
    entry = DriveEntry(
        job.drive, size, cs, info.count, index.path.name, info.sha256, job.action, tally.stats
    )
    staging.record_drive(entry)
    return entry


def _plan(
    size: int, cs: int, incremental: Incremental | None
) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, length, base digest or None when the chunk must be read)."""
    count = chunk_count(size, cs)
    if incremental is None:
        for i in range(count):
            yield i * cs, min(cs, size - i * cs), None
        return
    with IndexReader(incremental.base_index) as base:
        if base.count != count or base.chunk_size != cs:
            raise IntegrityError(f"base index of {incremental.base_index} has another geometry")
        for i, (bit, digest) in enumerate(zip(incremental.bits, base, strict=True)):
            yield i * cs, min(cs, size - i * cs), None if bit else digest


def _pipeline(
    plan: Iterator[tuple[int, int, bytes | None]],
    reader: DriveReader,
    store: ChunkBackend,
    pool: ThreadPoolExecutor,
    max_inflight: int,
    index: IndexWriter,
    tally: _Tally,
    check: Callable[[], None],
    throttle: _Throttle,
) -> None:
    pending: deque[Future[ChunkResult] | bytes] = deque()
    for offset, length, base_digest in plan:
        if base_digest is not None and _stored(store, base_digest):
            pending.append(base_digest)
        else:
            if base_digest is not None:
                tally.must_read(length)
            check()
            data = reader.read(offset, length)
            pending.append(pool.submit(process_chunk, store, data))
            throttle.consume(length)
        _retire(pending, index, tally, keep=max_inflight)
    _retire(pending, index, tally, keep=0)


def _stored(store: ChunkBackend, digest: bytes) -> bool:
    """A clean chunk's digest is taken from the base only while its chunk file is there:
    a chunk verify moved aside (or a lost one) is never silently referred to again."""
    return digest == ZERO_DIGEST or store.has(digest.hex())


def _retire(
    pending: deque[Future[ChunkResult] | bytes], index: IndexWriter, tally: _Tally, keep: int
) -> None:
    """Append finished heads to the index in order; block while more than ``keep`` wait."""
    while pending and (len(pending) > keep or _ready(pending[0])):
        head = pending.popleft()
        if isinstance(head, bytes):
            index.append(head)
        else:
            result = head.result()
            index.append(result.digest)
            tally.add(result)


def _ready(item: Future[ChunkResult] | bytes) -> bool:
    return isinstance(item, bytes) or item.done()
