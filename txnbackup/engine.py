"""The copy engine: one drive of one backup into the staging area.

Reading, hashing, compressing and storing overlap. The calling thread walks the plan in drive
order and keeps the index in that order; a thread pool (pread, hashlib, zstd and zlib all
release the GIL) reads each span of consecutive chunks with one large read and hashes,
compresses and stores its chunks. Storing a chunk writes its file; the chunk store's own
threads make it durable meanwhile (txnbackup.writeback), and ``flush`` waits for them before
the index is written. At most ``INFLIGHT_BYTES`` of spans are in flight, so memory
stays flat whatever the drive size. The zstd level follows what binds the copy, the CPU or
the disk (txnbackup.compression). Chunks lying in a hole of a sparse image are zero chunks
without being read. The clean chunks of an incremental backup are not read: the pool looks
for their base chunk files in batches, and reads again only a chunk whose file is gone.

Garbage collection (txnbackup.gc) relies on one ordering here: a drive's index file is
created in the staging directory before the drive's first chunk is stored or reused, and the
directory is not changed again until the index is complete. The staging directory's mtime is
therefore never later than any chunk the running drive counts on but has not indexed yet.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from txnbackup import chunk
from txnbackup.action import BitmapAction
from txnbackup.chunkstore import ChunkBackend
from txnbackup.compression import LevelChooser
from txnbackup.constants import ZERO_DIGEST
from txnbackup.crosscheck import check_base
from txnbackup.crypto import Codec, index_identity
from txnbackup.drive import DriveReader
from txnbackup.errors import Cancelled, CorruptChunk, IntegrityError
from txnbackup.geometry import chunk_count, extent
from txnbackup.index import IndexReader, IndexWriter
from txnbackup.manifest import DriveEntry
from txnbackup.staging import Staging
from txnbackup.stats import DriveStats

log = logging.getLogger(__name__)

CancelCheck = Callable[[], str | None]
ProgressSink = Callable[[DriveStats], None]
PROGRESS_INTERVAL = 0.5  # seconds between progress reports
READ_SIZE = 4 * 1024 * 1024  # bytes: consecutive chunks smaller than this are read together
INFLIGHT_BYTES = 32 * 1024 * 1024  # bytes of spans read but not yet in the index, at most
CLEAN_BATCH = 64  # clean chunks whose base chunk files one pool job looks for


def default_workers() -> int:
    """The cores, plus two threads to keep them busy while others wait in pread (or for the
    chunk store's writeback, when the disk binds)."""
    return min(8, (os.cpu_count() or 1) + 2)


class Outcome(Enum):
    ZERO = "zero"
    REUSED = "reused"
    STORED = "stored"
    CLEAN = "clean"  # not read: the digest is the base index's


@dataclass(frozen=True)
class ChunkResult:
    digest: bytes
    length: int
    outcome: Outcome
    stored: int = 0
    reread: bool = False  # a clean chunk read again, as its base chunk file is gone


@dataclass(frozen=True)
class CopyJob:
    vmid: str
    backup: str
    drive: str
    action: BitmapAction
    speed_limit: int | None = None  # bytes per second read from the drive
    workers: int = default_workers()


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """Whether every byte is zero. A comparison of bytes with zeros is a memcmp that stops at
    the first non-zero byte (counting zero bytes would scan every chunk at the speed of hashing
    it); a view's comparison goes byte by byte, so a view that passes a look at three of its
    bytes is copied first (a zero chunk is neither hashed nor compressed: that copy is all
    the work it costs)."""
    if not isinstance(data, memoryview):  # bytes, or an NBD read's bytearray
        return data == _zeros(len(data))
    n = len(data)
    if n == 0:
        return True
    if data[0] or data[n // 2] or data[n - 1]:
        return False
    return data.tobytes() == _zeros(n)


def process_chunk(
    store: ChunkBackend, data: bytes | memoryview, levels: LevelChooser
) -> ChunkResult:
    """Zero check, hash, dedup check, compress (at the level ``levels`` chooses) and store
    one chunk, telling ``levels`` what compressing and storing it took. ``data`` may be a
    view into the reading thread's buffer: nothing here keeps it once the chunk is stored."""
    if is_zero(data):
        return ChunkResult(ZERO_DIGEST, len(data), Outcome.ZERO)
    digest = store.codec.chunk_id(data)
    if store.reuse(digest.hex()):
        return ChunkResult(digest, len(data), Outcome.REUSED)
    encode = functools.partial(store.codec.encode_chunk, digest)
    (header, payload), encoding = levels.encode(data, encode)
    started = time.perf_counter()
    stored = store.put(digest.hex(), header, payload)
    if chunk.is_compressed(header):  # its level mattered
        levels.record(encoding, time.perf_counter() - started)
    if not stored:
        return ChunkResult(digest, len(data), Outcome.REUSED)
    return ChunkResult(digest, len(data), Outcome.STORED, len(header) + len(payload))


def store_span(
    reader: DriveReader,
    store: ChunkBackend,
    offset: int,
    length: int,
    cs: int,
    levels: LevelChooser,
) -> list[ChunkResult]:
    """Read ``[offset, offset + length)`` (whole chunks) at once and process each chunk."""
    if reader.next_data(offset) >= offset + length:
        return [ChunkResult(ZERO_DIGEST, n, Outcome.ZERO) for n in _pieces(length, cs)]
    data = reader.read_span(offset, length)
    if length <= cs:
        return [process_chunk(store, data, levels)]
    view = memoryview(data)  # slices of bytes would copy each chunk
    return [process_chunk(store, view[i : i + cs], levels) for i in range(0, length, cs)]


def check_clean(
    reader: DriveReader,
    store: ChunkBackend,
    chunks: list[tuple[int, int, bytes]],
    cs: int,
    levels: LevelChooser,
) -> list[ChunkResult]:
    """Take each clean chunk's digest from the base index while its chunk file is there and
    looks whole (``ChunkBackend.has``: one open and one header read); read and store again one
    whose file is gone or damaged (a chunk verify moved aside, a lost or truncated one, is never
    silently referred to again)."""
    results = []
    for offset, length, digest in chunks:
        if digest == ZERO_DIGEST or store.has(digest.hex()):
            results.append(ChunkResult(digest, length, Outcome.CLEAN))
        else:
            (read,) = store_span(reader, store, offset, length, cs, levels)
            results.append(dataclasses.replace(read, reread=True))
    return results


def _pieces(length: int, cs: int) -> Iterator[int]:
    for start in range(0, length, cs):
        yield min(cs, length - start)


class _Tally:
    """The drive's byte counters, reported at most every PROGRESS_INTERVAL."""

    def __init__(self, size: int, dirty: int, progress: ProgressSink) -> None:
        self.size, self.dirty = size, dirty
        self.transferred = self.zero_bytes = self.reused = self.stored = 0
        self._progress = progress
        self._last = 0.0  # the first chunk is reported at once: watchers see bytes moving
        self.reread = 0  # clean chunks read because the base's chunk file is gone

    def must_read(self, length: int) -> None:
        """A clean chunk has to be read after all: it is dirty for this backup."""
        self.dirty += length
        self.reread += 1

    @property
    def stats(self) -> DriveStats:
        return DriveStats(
            self.size, self.dirty, self.transferred, self.zero_bytes, self.reused, self.stored
        )

    def add(self, result: ChunkResult) -> None:
        self.transferred += result.length
        if result.outcome is Outcome.ZERO:
            self.zero_bytes += result.length
        elif result.outcome is Outcome.REUSED:
            self.reused += result.length
        self.stored += result.stored
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

    def consume(self, nbytes: int, before_waiting: Callable[[], None]) -> None:
        self.done += nbytes
        if not self.limit:
            return
        if self.start + self.done / self.limit > time.monotonic():
            before_waiting()
        while (wait := self.start + self.done / self.limit - time.monotonic()) > 0:
            self.cancel()
            time.sleep(min(wait, 0.1))


@dataclass(frozen=True)
class Incremental:
    """What a ``used`` bitmap gives the engine: the frozen bits and the base index."""

    dirty_bytes: int
    bits: Iterable[bool]
    base_index: Path
    base_identity: str | None = None  # what a sealed base index is named (txnbackup.crypto)


def copy_drive(
    job: CopyJob,
    reader: DriveReader,
    staging: Staging,
    incremental: Incremental | None,
    cancel: CancelCheck,
    progress: ProgressSink,
) -> DriveEntry:
    """Copy one drive: every chunk, or only the dirty ones when ``incremental`` is given.

    ``progress`` gets the counters at most every PROGRESS_INTERVAL while the copy runs; the
    final counters are the returned entry's. Raises Cancelled when ``cancel`` returns a
    reason; the staging index is then absent.
    """
    repo = staging.repo
    size, cs = reader.size, repo.chunk_size
    if incremental is not None:
        job, incremental = _believe(job, reader, incremental, repo.chunks, cs)
    tally = _Tally(size, incremental.dirty_bytes if incremental else size, progress)

    def check() -> None:
        reason = cancel()
        if reason is not None:
            raise Cancelled(reason)

    with (
        IndexWriter(
            staging.index_path(job.drive),
            size,
            cs,
            repo.codec,
            index_identity(job.backup, job.drive),
        ) as index,
        ThreadPoolExecutor(job.workers, thread_name_prefix=f"copy-{job.drive}") as pool,
    ):
        pipeline = _Pipeline(reader, repo.chunks, pool, cs, index, tally)
        try:
            throttle = _Throttle(job.speed_limit, check)
            for offset, length, base_digest in _plan(size, cs, incremental, repo.codec):
                if base_digest is not None:
                    pipeline.clean(offset, length, base_digest)
                else:
                    check()
                    # What is gathered is read now, not after the wait: a limited copy reads
                    # at the limit chunk by chunk rather than in bursts of READ_SIZE.
                    throttle.consume(length, before_waiting=pipeline.flush)
                    pipeline.read(offset, length)
            pipeline.finish()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        # Every chunk the index names must be durable before the index is.
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
    entry = DriveEntry(
        job.drive, size, cs, info.count, index.path.name, info.sha256, job.action, tally.stats
    )
    staging.record_drive(entry)
    return entry


def _believe(
    job: CopyJob, reader: DriveReader, incremental: Incremental, store: ChunkBackend, cs: int
) -> tuple[CopyJob, Incremental | None]:
    """The copy as asked, or a full read (``invalid``) when the drive shows the bitmap lost
    changes (txnbackup.crosscheck)."""

    def fetch(digest: bytes) -> bytes | None:
        try:
            return store.get(digest.hex())
        except CorruptChunk:
            return None

    incremental = dataclasses.replace(incremental, bits=list(incremental.bits))
    with IndexReader(incremental.base_index, store.codec, incremental.base_identity) as base:
        lost = check_base(reader, incremental.bits, base, cs, fetch)
    if lost is None:
        return job, incremental
    log.warning(
        "vm %s backup %s drive %s: bitmap invalid: %s; full read",
        job.vmid,
        job.backup,
        job.drive,
        lost,
    )
    return dataclasses.replace(job, action=BitmapAction.INVALID), None


def _plan(
    size: int, cs: int, incremental: Incremental | None, codec: Codec
) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, length, base digest or None when the chunk must be read)."""
    count = chunk_count(size, cs)
    if incremental is None:
        for i in range(count):
            yield *extent(i, size, cs), None
        return
    base_index = IndexReader(incremental.base_index, codec, incremental.base_identity)
    with base_index as base:
        # The size too: a drive that changed within its last chunk keeps its chunk count, and
        # the base's last chunk would be the wrong length for it.
        if (base.size, base.count, base.chunk_size) != (size, count, cs):
            raise IntegrityError(f"base index of {incremental.base_index} has another geometry")
        for i, (bit, digest) in enumerate(zip(incremental.bits, base, strict=True)):
            yield *extent(i, size, cs), None if bit else digest


class _Pipeline:
    """Puts chunks into the index in drive order while the pool works ahead.

    Consecutive chunks to read are gathered into one span (one read of up to READ_SIZE);
    consecutive clean chunks into one batch (up to CLEAN_BATCH). Spans and batches go to the
    pool in drive order and are retired in that order.
    """

    def __init__(
        self,
        reader: DriveReader,
        store: ChunkBackend,
        pool: ThreadPoolExecutor,
        cs: int,
        index: IndexWriter,
        tally: _Tally,
    ) -> None:
        self.reader, self.store, self.pool, self.cs = reader, store, pool, cs
        self.index, self.tally = index, tally
        self.levels = LevelChooser()  # one per drive copy: its disk and CPU decide
        self.max_inflight = max(2, INFLIGHT_BYTES // max(cs, READ_SIZE))
        self.pending: deque[Future[list[ChunkResult]]] = deque()
        self.span_start = self.span_end = 0
        self.batch: list[tuple[int, int, bytes]] = []

    def clean(self, offset: int, length: int, digest: bytes) -> None:
        self.submit_span()
        self.batch.append((offset, length, digest))
        if len(self.batch) >= CLEAN_BATCH:
            self.submit_batch()

    def read(self, offset: int, length: int) -> None:
        self.submit_batch()
        if offset != self.span_end or self.span_end - self.span_start + length > READ_SIZE:
            self.submit_span()
            self.span_start = offset
        self.span_end = offset + length

    def flush(self) -> None:
        """Hand what is gathered to the pool (at most one of the two holds anything)."""
        self.submit_batch()
        self.submit_span()

    def finish(self) -> None:
        self.flush()
        self._retire(keep=0)

    def submit_batch(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        args = (self.reader, self.store, batch, self.cs, self.levels)
        self.pending.append(self.pool.submit(check_clean, *args))
        self._retire(keep=self.max_inflight)

    def submit_span(self) -> None:
        if self.span_end == self.span_start:
            return
        length = self.span_end - self.span_start
        # Queued spans are read ahead while the pool's threads hash and compress earlier ones.
        self.reader.prefetch(self.span_start, length)
        args = (self.reader, self.store, self.span_start, length, self.cs, self.levels)
        self.pending.append(self.pool.submit(store_span, *args))
        self.span_start = self.span_end
        self._retire(keep=self.max_inflight)

    def _retire(self, keep: int) -> None:
        """Append finished heads to the index; block while more than ``keep`` wait."""
        pending = self.pending
        while pending and (len(pending) > keep or pending[0].done()):
            for result in pending.popleft().result():
                self.index.append(result.digest)
                if result.outcome is Outcome.CLEAN:
                    continue
                if result.reread:
                    self.tally.must_read(result.length)
                self.tally.add(result)
