"""A drive read over NBD with libnbd (Debian's python3-libnbd, module ``nbd``).

It is the engine's DriveReader for a fleecing export: reads, holes from ``base:allocation``
and the dirty chunks from ``qemu:dirty-bitmap:<name>``, all in the repository's chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType

from txnbackup.errors import DriveReadError, DriveUnreadable
from txnbackup.geometry import chunk_count

try:
    import nbd
except ImportError:  # without python3-libnbd the QEMU source cannot be used at all
    nbd = None

ALLOCATION = "base:allocation"
DIRTY_PREFIX = "qemu:dirty-bitmap:"
MAX_REQUEST = 32 * 1024 * 1024  # QEMU's NBD server refuses larger reads
MAX_STATUS = 1 << 30  # block status asks at most this much at a time
STATE_DIRTY = 1
# base:allocation's zero flag. Its hole flag (1) says only that the extent is not allocated:
# the content of a hole is not known (NBD protocol), and a drive on NBD or iSCSI storage
# reports holes that hold data. Only an extent that reads as zeros may go unread.
STATE_ZERO = 2

Extents = list[tuple[int, int, int]]  # (offset, length, flags)


def nbd_available() -> str | None:
    """None when libnbd's Python module imports, else why not."""
    return None if nbd is not None else "libnbd's Python module nbd (python3-libnbd) is missing"


class NbdDrive:
    """One NBD connection to an export; thread-safe as libnbd handles are."""

    def __init__(self, name: str, uri: str, bitmap: str | None = None) -> None:
        self.name, self.uri = name, uri
        self.context = DIRTY_PREFIX + bitmap if bitmap else None
        if nbd is None:
            raise DriveUnreadable(name, uri, nbd_available())
        self._h = nbd.NBD()
        try:
            self._h.add_meta_context(ALLOCATION)
            if self.context:
                self._h.add_meta_context(self.context)
            self._h.connect_uri(uri)
            self._size: int = self._h.get_size()
        except nbd.Error as exc:
            raise DriveUnreadable(name, uri, exc.string) from None
        if self.context and not self._h.can_meta_context(self.context):
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

    def prefetch(self, offset: int, length: int) -> None:
        """Nothing: each read is one request to the export already."""

    def next_data(self, offset: int) -> int:
        """Looks only as far as one block status reply reaches (the engine asks per span),
        answering the end of that reach when all of it reads as zeros."""
        if offset >= self._size:
            return offset
        extents = self._status(ALLOCATION, offset, self._size - offset)
        for start, _length, flags in extents:
            if not flags & STATE_ZERO:
                return start
        return min(extents[-1][0] + extents[-1][1], self._size)

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
        if self._h is not None:
            with contextlib.suppress(nbd.Error):  # the server went first: nothing to shut
                self._h.shutdown()
            self._h = None

    def __enter__(self) -> NbdDrive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            data: bytes = self._h.pread(length, offset)
        except nbd.Error as exc:
            raise DriveReadError(self.name, offset, exc.string) from None
        return data

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
        try:
            self._h.block_status(min(length, MAX_STATUS), offset, _collector(context, offset, got))
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
