"""A ``used`` bitmap checked against the drive before the incremental trusts it.

A clean chunk is taken from the base snapshot unread. That is right only if nothing changed
the chunk since the base without the bitmap hearing of it. One such change shows from the
outside: a chunk that now reads as zeros in full (a hole of a sparse file, an extent NBD's
``base:allocation`` calls zero) while the base holds data there. QEMU drops a bitmap's bits
when a drive shrinks and starts a regrown region clean, so a drive shrunk and grown back to
its old size looks exactly like that; so does a file punched with holes by a writer that
does not report. Such a bitmap has lost changes, so none of its clean bits can be believed:
the drive is read in full (``invalid``).

A cut that ends inside a chunk leaves that chunk holding some data; it is caught by the
last non-zero byte the base holds in its last clean chunk with data, which then reads as zero
(``contradiction``). A change elsewhere that leaves every chunk it touched holding some data
(a writer that zeroes part of a chunk without reporting) is not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from txnbackup.constants import ZERO_DIGEST
from txnbackup.geometry import chunk_count, extent
from txnbackup.index import IndexReader

CAUSES = "was the drive shrunk and grown back, or written without reporting?"


class ZeroAware(Protocol):
    """What the check asks of a drive (every DriveReader answers it)."""

    @property
    def size(self) -> int: ...

    def next_data(self, offset: int) -> int: ...


class _ZeroRuns:
    """Whether a range reads as zeros in full, remembering the last zero run seen, so a run
    across many chunks costs the reader one question."""

    def __init__(self, reader: ZeroAware) -> None:
        self.reader = reader
        self.start = self.end = 0  # [start, end) reads as zeros

    def all_zero(self, offset: int, length: int) -> bool:
        end = offset + length
        if self.start <= offset < self.end:
            return end <= self.end  # else data starts at self.end, inside the range
        data = self.reader.next_data(offset)
        self.start, self.end = offset, data
        return data >= end


Fetch = Callable[[bytes], bytes | None]  # a base chunk's plaintext by digest, None if gone


def contradiction(
    reader: ZeroAware,
    bits: Iterable[bool],
    base_digests: Iterable[bytes],
    chunk_size: int,
    fetch: Fetch,
) -> str | None:
    """Why the bitmap cannot be used, or None.

    Two proofs of lost changes: a clean chunk with base data that now reads as zeros in full;
    and the last such chunk's last non-zero base byte reading as zero now. A shrink cuts a
    drive's tail, so after a grow either some later clean chunk with base data reads zeros in
    full, or the chunk the cut ended in is that last one, and the byte is inside the cut.
    """
    size = reader.size
    zeros = _ZeroRuns(reader)
    last: tuple[int, bytes] | None = None  # the last clean chunk holding base data
    for i, (dirty, digest) in enumerate(zip(bits, base_digests, strict=True)):
        if dirty or digest == ZERO_DIGEST:
            continue
        offset, length = extent(i, size, chunk_size)
        if zeros.all_zero(offset, length):
            return (
                f"chunk {i} (offset {offset}) reads as zeros where the base snapshot holds "
                f"data, yet the bitmap has it unchanged ({CAUSES})"
            )
        last = (offset, digest)
    return None if last is None else _tail_cut(reader, *last, fetch)


def _tail_cut(reader: ZeroAware, offset: int, digest: bytes, fetch: Fetch) -> str | None:
    data = fetch(digest)
    if data is None:  # the engine reads a chunk whose base file is gone anyway
        return None
    held = len(data.rstrip(b"\0"))
    if not held:
        return None
    byte = offset + held - 1
    if reader.next_data(byte) <= byte:
        return None
    return (
        f"offset {byte} reads as zero where the base snapshot holds data, yet the bitmap has "
        f"its chunk unchanged ({CAUSES})"
    )


def check_base(
    reader: ZeroAware,
    bits: Iterable[bool],
    base_index: IndexReader,
    chunk_size: int,
    fetch: Fetch,
) -> str | None:
    """``contradiction`` against a base index of the drive's geometry (None for another
    geometry: the engine refuses that base on its own)."""
    if (base_index.size, base_index.count, base_index.chunk_size) != (
        reader.size,
        chunk_count(reader.size, chunk_size),
        chunk_size,
    ):
        return None
    return contradiction(reader, bits, base_index, chunk_size, fetch)
