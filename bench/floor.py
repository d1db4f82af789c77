"""The floor: what any full backup of the drives must at least spend on this machine.

Three costs, each measured in the run that it is the floor of:

- read: the drives read cold, one after another, the way the engine reads them (spans of the
  engine's ``READ_SIZE`` on as many threads as it uses, as many spans in flight as it allows),
  both through the page cache (with its readahead) and past it, as the engine reads where the
  file system allows it; the faster of the two counts, so the floor is what this machine can
  read, whichever way the engine chose;
- write: as many bytes as txnbackup's full backup stored, written in 4 MiB blocks to one file
  and made durable with one fsync (the best a backup can do with its output), both through
  the page cache and past it; the faster counts, as for reading;
- cpu: SHA-256 and zstd (the engine's level) of every chunk that is not all zeros, in CPU
  seconds, divided by the cores (as if every core did nothing else).

They could overlap perfectly, so the floor is the slowest of the three; it ``binds``.

Beside it, for information (``shared``, printed by ``bench.engine_alone``): the drives read
while the stored bytes are written, both at once, each the faster way found above. A drive
and its repository on one disk share its bandwidth, so the read and write parts cannot
overlap perfectly there (on this machine's virtio disk the two together took about their
sum). The issue's floor, which the targets judge, stays the slowest of the three parts. The
full benchmark does not print it: measured there, right after the write part, it took 3.0-3.9
s for a 2 GiB image, more than the backups themselves and twice what it took alone (1.6-1.8
s), which is not understood yet.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zstandard

from bench.measure import PageCache, timed
from txnbackup.constants import DEFAULT_CHUNK_SIZE, ZSTD_LEVEL
from txnbackup.direct import anonymous, round_up
from txnbackup.drive import FileDrive
from txnbackup.engine import INFLIGHT_BYTES, READ_SIZE, default_workers

WRITE_BLOCK = 4 * 1024 * 1024  # bytes per write of the write floor


def binding(parts: Mapping[str, float]) -> tuple[str, float]:
    """The part that binds (the slowest; the first named on a tie) and its seconds."""
    if not parts:
        raise ValueError("a floor needs at least one part")
    name = max(parts, key=lambda k: parts[k])
    return name, parts[name]


def engine_queue_depth() -> tuple[int, int]:
    """The engine's reading pattern: threads reading, and spans in flight at most."""
    threads = default_workers()
    return threads, min(threads, max(2, INFLIGHT_BYTES // READ_SIZE))


@dataclass
class Floor:
    """One mix's floor; ``write`` has a sample per full-backup repetition (median used)."""

    size: int
    cores: int
    threads: int
    in_flight: int
    read: float  # seconds, each of the numbers below likewise
    sha256_cpu: float
    zstd_cpu: float
    write_bytes: int = 0
    write: list[float] = field(default_factory=list)
    read_way: str = "cached"  # the faster way to read: "cached" or "direct"
    write_ways: list[str] = field(default_factory=list)  # the faster way, each write sample
    shared: list[float] = field(default_factory=list)  # read and write at once, each sample

    def add_write(self, seconds: float, way: str) -> None:
        self.write.append(seconds)
        self.write_ways.append(way)

    @property
    def cpu(self) -> float:
        return (self.sha256_cpu + self.zstd_cpu) / self.cores

    def parts(self) -> dict[str, float]:
        parts = {"read": self.read, "cpu": self.cpu}
        if self.write:
            parts["write"] = statistics.median(self.write)
        return parts

    def add_shared(self, seconds: float) -> None:
        self.shared.append(seconds)

    @property
    def shared_seconds(self) -> float | None:
        """The median of the read-and-write-at-once samples (None: not measured)."""
        return statistics.median(self.shared) if self.shared else None

    @property
    def binds(self) -> str:
        return binding(self.parts())[0]

    @property
    def seconds(self) -> float:
        return binding(self.parts())[1]

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "cpu": self.cpu,
            "parts": self.parts(),
            "binds": self.binds,
            "seconds": self.seconds,
            "shared_seconds": self.shared_seconds,
        }


def measure_floor(drives: Sequence[Path], cache: PageCache) -> Floor:
    """Read and CPU parts of the floor (the write part comes once txnbackup has stored)."""
    threads, in_flight = engine_queue_depth()
    reads = {}
    for way, reader in (("cached", _read_cached), ("direct", _read_span)):
        cache.drop()
        reads[way] = timed(_read_like_engine, drives, threads, in_flight, reader)
    way = min(reads, key=lambda k: reads[k])
    sha, zst = _cpu_seconds(drives)
    size = sum(d.stat().st_size for d in drives)
    floor = Floor(size, os.cpu_count() or 1, threads, in_flight, reads[way], sha, zst)
    floor.read_way = way
    return floor


def measure_write(directory: Path, nbytes: int) -> tuple[float, str]:
    """Seconds to write ``nbytes`` of incompressible data into a new file and fsync it, the
    faster of through the page cache and past it (as a restore writes; where the file system
    refuses direct I/O, through the cache only); and which way was faster."""
    times = {"cached": _write_once(directory, nbytes, direct=False)}
    with contextlib.suppress(DirectRefused):
        times["direct"] = _write_once(directory, nbytes, direct=True)
    way = min(times, key=lambda k: times[k])
    return times[way], way


def measure_shared(
    drives: Sequence[Path], directory: Path, floor: Floor, cache: PageCache
) -> float:
    """Seconds to read ``drives`` as the engine does while ``floor.write_bytes`` are written
    and made durable, both at once, each the faster way ``floor`` found (cache dropped)."""
    read = _read_span if floor.read_way == "direct" else _read_cached
    direct = bool(floor.write_ways) and floor.write_ways[-1] == "direct"
    cache.drop()
    with ThreadPoolExecutor(1) as writer:
        started = time.perf_counter()
        written = writer.submit(_write_once, directory, floor.write_bytes, direct=direct)
        _read_like_engine(drives, floor.threads, floor.in_flight, read)
        written.result()
        return time.perf_counter() - started


class DirectRefused(Exception):
    """The file system refuses direct writes."""


def _write_once(directory: Path, nbytes: int, *, direct: bool) -> float:
    block = memoryview(anonymous(WRITE_BLOCK))  # the engine's kind of buffer, page-aligned
    block[:] = os.urandom(WRITE_BLOCK)
    path = directory / "floor-write.tmp"
    os.sync()  # what others left dirty is not this measurement's to write
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise DirectRefused(str(exc)) from exc
    try:
        started = time.perf_counter()
        for offset in range(0, nbytes, WRITE_BLOCK):
            n = min(WRITE_BLOCK, nbytes - offset)
            try:
                os.pwrite(fd, block[: round_up(n) if direct else n], offset)
            except OSError as exc:
                if direct and exc.errno == errno.EINVAL:
                    raise DirectRefused(str(exc)) from exc
                raise
        if direct:
            os.ftruncate(fd, nbytes)  # the last block was written whole
        os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()


SpanReader = Callable[[FileDrive, int, int], int]


def _read_like_engine(
    drives: Sequence[Path], threads: int, in_flight: int, read: SpanReader
) -> None:
    """Spans read as the engine reads them, ``in_flight`` at most, each by ``read``."""
    with ThreadPoolExecutor(threads) as pool:
        for drive in drives:
            with FileDrive(drive.name, drive) as reader:
                pending: deque[Future[int]] = deque()
                for offset in range(0, reader.size, READ_SIZE):
                    length = min(READ_SIZE, reader.size - offset)
                    pending.append(pool.submit(read, reader, offset, length))
                    while len(pending) >= in_flight:
                        pending.popleft().result()
                for f in pending:
                    f.result()


def _read_span(reader: FileDrive, offset: int, length: int) -> int:
    """Past the page cache where the file system allows it, as the engine reads."""
    return len(reader.read_span(offset, length))


def _read_cached(reader: FileDrive, offset: int, length: int) -> int:
    """Through the page cache, with the kernel's readahead."""
    return len(reader.read(offset, length))


def _cpu_seconds(drives: Sequence[Path]) -> tuple[float, float]:
    """CPU seconds of SHA-256 and of zstd over every chunk that is not all zeros."""
    zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    zeros = bytes(DEFAULT_CHUNK_SIZE)
    sha = comp = 0.0
    for drive in drives:
        with open(drive, "rb") as fh:
            while data := fh.read(DEFAULT_CHUNK_SIZE):
                if data == zeros[: len(data)]:
                    continue
                t0 = time.thread_time()
                hashlib.sha256(data).digest()
                t1 = time.thread_time()
                zstd.compress(data)
                sha, comp = sha + t1 - t0, comp + time.thread_time() - t1
    return sha, comp
