"""A drive read over NBD with libnbd (Debian's python3-libnbd, module ``nbd``).

It is the engine's DriveReader for a fleecing export: reads, holes from ``base:allocation``
and the dirty chunks from ``qemu:dirty-bitmap:<name>``, all in the repository's chunks.

A libnbd handle is thread-safe, but its synchronous ``pread`` holds the handle's lock for
the whole request: one handle has one read in flight whatever the number of threads. So each
thread that reads gets its own connection to the export, opened on its first read, when the
server advertises multi-conn (QEMU does for every read-only export; the export is a frozen
point in time anyway); otherwise every thread shares the first connection, as they also do
once the server did not take another connection within ``CONNECT_WAIT`` (a server started with
``max-connections`` leaves the extra ones waiting for ever).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from txnbackup.errors import DriveReadError, DriveUnreadable
from txnbackup.geometry import chunk_count

log = logging.getLogger(__name__)

try:
    import nbd
except ImportError:  # without python3-libnbd the QEMU source cannot be used at all
    nbd = None

ALLOCATION = "base:allocation"
DIRTY_PREFIX = "qemu:dirty-bitmap:"
MAX_REQUEST = 32 * 1024 * 1024  # QEMU's NBD server refuses larger reads
MAX_STATUS = 1 << 30  # block status asks at most this much at a time
MAX_CONNECTIONS = 8  # per reader: the engine's pool has at most this many threads
CONNECT_WAIT = 5.0  # seconds a further connection may take before the reader stops asking
STATE_DIRTY = 1
# base:allocation's zero flag. Its hole flag (1) says only that the extent is not allocated:
# the content of a hole is not known (NBD protocol), and a drive on NBD or iSCSI storage
# reports holes that hold data. Only an extent that reads as zeros may go unread.
STATE_ZERO = 2

Extents = list[tuple[int, int, int]]  # (offset, length, flags)


def nbd_available() -> str | None:
    """None when libnbd's Python module imports, else why not."""
    return None if nbd is not None else "libnbd's Python module nbd (python3-libnbd) is missing"


@dataclass(frozen=True)
class _Reach:
    """One ``base:allocation`` reply: extents in order, from ``starts[0]`` to ``end``. The
    export is a point-in-time view, so what a reply says stays true while it is read."""

    starts: list[int]
    extents: Extents

    @classmethod
    def of(cls, extents: Extents) -> _Reach:
        return cls([start for start, _, _ in extents], extents)

    @property
    def end(self) -> int:
        start, length, _ = self.extents[-1]
        return start + length

    def then(self, more: _Reach) -> _Reach:
        """This reach followed by the one that starts where it ends."""
        return _Reach(self.starts + more.starts, self.extents + more.extents)

    def covers(self, offset: int) -> bool:
        return self.starts[0] <= offset < self.end

    def first_data(self, offset: int) -> int | None:
        """The first offset at or after ``offset`` not reading as zeros, within the reach."""
        for start, _length, flags in self.extents[bisect.bisect_right(self.starts, offset) - 1 :]:
            if not flags & STATE_ZERO:
                return max(start, offset)
        return None


class NbdDrive:
    """An NBD export read by any number of threads, a connection per reading thread."""

    def __init__(self, name: str, uri: str, bitmap: str | None = None) -> None:
        self.name, self.uri = name, uri
        self.context = DIRTY_PREFIX + bitmap if bitmap else None
        if nbd is None:
            raise DriveUnreadable(name, uri, nbd_available())
        self._lock = threading.Lock()
        self._handles: dict[int, Any] = {}  # thread id -> its libnbd handle
        self._first: Any = None
        self._opening = 0  # further connections being opened now, counted against the cap
        self._reach: _Reach | None = None  # the last base:allocation reply
        try:
            self._first = self._connect()
            self._size: int = self._first.get_size()
            self._multi_conn: bool = self._first.can_multi_conn()
        except nbd.Error as exc:
            raise DriveUnreadable(name, uri, exc.string) from None
        self._handles[threading.get_ident()] = self._first
        if self.context and not self._first.can_meta_context(self.context):
            self.close()
            raise DriveUnreadable(name, uri, f"the export does not offer {self.context}")

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if length <= MAX_REQUEST:
            return self._pread(length, offset)
        # One bytes object per piece, joined once: growing a buffer piece by piece is slow.
        return b"".join(
            self._pread(min(MAX_REQUEST, offset + length - at), at)
            for at in range(offset, offset + length, MAX_REQUEST)
        )

    def read_span(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        """Nothing: the pool's threads each have a read in flight on their own connection."""

    def next_data(self, offset: int) -> int:
        """Answers from the last ``base:allocation`` reply when it covers ``offset``, else
        from a new one; looks one reply further when the rest of that reply reads as zeros,
        and answers the end of that reach when it does too."""
        if offset >= self._size:
            return offset
        reach = self._reach
        if reach is None or not reach.covers(offset):
            reach = self._cache(self._allocation(offset))
        found = reach.first_data(offset)
        if found is None and reach.end < self._size:
            reach = self._cache(reach.then(self._allocation(reach.end)))
            found = reach.first_data(offset)
        return min(reach.end, self._size) if found is None else found

    def dirty_chunks(self, chunk_size: int) -> list[bool]:
        """Per chunk of ``chunk_size`` bytes: whether any byte is in a dirty extent of the
        exported bitmap (what the engine's Incremental.bits takes)."""
        if self.context is None:
            raise DriveUnreadable(self.name, self.uri, "no dirty bitmap was asked for")
        bits = [False] * chunk_count(self._size, chunk_size)
        for start, length, flags in self._extents(self.context, 0, self._size):
            if not flags & STATE_DIRTY:
                continue
            if start + length > self._size:
                # Bits for bytes the drive does not have: the bitmap is not this drive's.
                raise DriveReadError(
                    self.name,
                    start,
                    f"{self.context} reaches past the end of the drive "
                    f"({start + length} > {self._size} bytes)",
                )
            first, last = start // chunk_size, (start + length - 1) // chunk_size
            bits[first : last + 1] = [True] * (last - first + 1)
        return bits

    def dirty_bytes(self, chunk_size: int) -> int:
        """The bytes of the dirty chunks (the last one may be short)."""
        bits = self.dirty_chunks(chunk_size)
        total = sum(bits) * chunk_size
        if bits and bits[-1]:
            total -= len(bits) * chunk_size - self._size
        return total

    def close(self) -> None:
        """Disconnect every connection; one whose server went first has nothing to shut."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
            self._first = None
        for h in handles:
            with contextlib.suppress(nbd.Error):
                h.shutdown()

    def __enter__(self) -> NbdDrive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> Any:
        h = nbd.NBD()
        h.add_meta_context(ALLOCATION)
        if self.context:
            h.add_meta_context(self.context)
        h.connect_uri(self.uri)
        return h

    def _handle(self, offset: int) -> Any:
        """The calling thread's connection, opened now if it has none (``offset``: what it
        is about to read, for the error when the reader was closed)."""
        me = threading.get_ident()
        h = self._handles.get(me)
        if h is not None:
            return h
        with self._lock:
            if self._first is None:
                raise DriveReadError(self.name, offset, "the reader is closed")
            if not self._multi_conn or len(self._handles) + self._opening >= MAX_CONNECTIONS:
                return self._first
            self._opening += 1  # the slot is taken before the connection is: the cap holds
        h = self._connect_more()
        with self._lock:
            self._opening -= 1
            if h is not None and self._first is not None:
                self._handles[me] = h
                return h
            first, gave_up = self._first, self._multi_conn and h is None
            self._multi_conn = self._multi_conn and h is not None
        if h is not None:  # closed meanwhile: this one is not to be kept
            with contextlib.suppress(nbd.Error):
                h.shutdown()
        if first is None:
            raise DriveReadError(self.name, offset, "the reader is closed")
        if gave_up:
            log.warning(
                "drive %s: %s took no further connection; reading over one", self.name, self.uri
            )
        return first

    def _connect_more(self) -> Any:
        """Another connection, or None when the server does not complete it in CONNECT_WAIT
        (whatever went wrong, the first connection still reads, or says why it cannot)."""
        h = nbd.NBD()
        try:
            h.add_meta_context(ALLOCATION)
            if self.context:
                h.add_meta_context(self.context)
            h.aio_connect_uri(self.uri)
            deadline = time.monotonic() + CONNECT_WAIT
            while h.aio_is_connecting() and (left := deadline - time.monotonic()) > 0:
                h.poll(int(left * 1000) + 1)
        except nbd.Error:
            return None
        return h if h.aio_is_ready() else None

    def _pread(self, length: int, offset: int) -> bytes:
        h = self._handle(offset)
        try:
            data: bytes = h.pread(length, offset)
        except nbd.Error as exc:
            raise DriveReadError(self.name, offset, exc.string) from None
        return data

    def _allocation(self, offset: int) -> _Reach:
        return _Reach.of(self._status(ALLOCATION, offset, self._size - offset))

    def _cache(self, reach: _Reach) -> _Reach:
        self._reach = reach  # one reference replaced at once: readers see one reach or another
        return reach

    def _extents(self, context: str, offset: int, length: int) -> Extents:
        """The extents of ``context`` covering [offset, offset+length), in order."""
        found: Extents = []
        at, end = offset, offset + length
        while at < end:
            got = self._status(context, at, end - at)
            found += got
            at = got[-1][0] + got[-1][1]
        return found

    def _status(self, context: str, offset: int, length: int) -> Extents:
        """One block status reply: the extents of ``context`` from ``offset`` on."""
        got: Extents = []
        h = self._handle(offset)
        try:
            h.block_status(min(length, MAX_STATUS), offset, _collector(context, offset, got))
        except nbd.Error as exc:
            raise DriveReadError(self.name, offset, exc.string) from None
        if not got:
            raise DriveReadError(self.name, offset, f"no {context} status from the server")
        if any(length == 0 for _, length, _ in got):
            # An extent that covers nothing would never let a walk over the drive advance.
            raise DriveReadError(self.name, offset, f"empty extent in {context} status")
        return got


def _collector(
    context: str, offset: int, into: Extents
) -> Callable[[str, int, list[int], object], int]:
    def collect(meta: str, _offset: int, entries: list[int], _err: object) -> int:
        if meta == context:
            at = offset
            for i in range(0, len(entries), 2):
                into.append((at, entries[i], entries[i + 1]))
                at += entries[i]
        return 0

    return collect
