"""The fixed index: the ordered digests of one drive's chunks.

Layout: a 28-byte header (magic ``TXBI``, version u8, 3 zero bytes, chunk size u32, drive
size u64, chunk count u64; big-endian) followed by ``count`` raw 32-byte SHA-256 digests.
An all-zero chunk is recorded as ``ZERO_DIGEST`` (32 zero bytes) and never stored.
The manifest keeps the SHA-256 of the whole file, so a damaged index is detected.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from txnbackup.constants import DIGEST_SIZE
from txnbackup.errors import IntegrityError
from txnbackup.fsutil import temp_name, write_error
from txnbackup.geometry import chunk_count

MAGIC = b"TXBI"
VERSION = 1
HEADER = struct.Struct(">4sB3xIQQ")
READ_BATCH = 4096  # digests per read while iterating


@dataclass(frozen=True)
class IndexInfo:
    size: int
    chunk_size: int
    count: int
    sha256: str


class IndexWriter:
    """Appends digests in drive order; ``finish`` fsyncs and renames into place."""

    def __init__(self, path: Path, size: int, chunk_size: int) -> None:
        self.path = path
        self._tmp = temp_name(path)
        self._count = chunk_count(size, chunk_size)
        self._written = 0
        self._hash = hashlib.sha256()
        try:
            self._fh: BinaryIO = open(self._tmp, "xb")  # noqa: SIM115 - closed by finish/abort
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._info = (size, chunk_size)
        self._write(HEADER.pack(MAGIC, VERSION, chunk_size, size, self._count))

    def _write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._hash.update(data)

    def append(self, digest: bytes) -> None:
        self._write(digest)
        self._written += 1

    def finish(self) -> IndexInfo:
        if self._written != self._count:
            raise IntegrityError(f"index {self.path}: {self._written} of {self._count} entries")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.rename(self._tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        size, chunk_size = self._info
        return IndexInfo(size, chunk_size, self._count, self._hash.hexdigest())

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._fh.closed:
            self.abort()


class IndexReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise IntegrityError(f"index {path} is missing") from None
        header = self._fh.read(HEADER.size)
        if len(header) != HEADER.size:
            raise IntegrityError(f"index {path}: truncated header")
        magic, version, self.chunk_size, self.size, self.count = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION:
            raise IntegrityError(f"index {path}: bad magic or version")

    def __iter__(self) -> Iterator[bytes]:
        """Yield every digest in order, reading in batches (memory stays flat)."""
        self._fh.seek(HEADER.size)
        left = self.count
        while left:
            n = min(left, READ_BATCH)
            block = self._fh.read(n * DIGEST_SIZE)
            if len(block) != n * DIGEST_SIZE:
                raise IntegrityError(f"index {self.path}: truncated")
            for i in range(n):
                yield block[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
            left -= n

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
