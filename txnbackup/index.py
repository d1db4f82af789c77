"""The fixed index: the ordered digests of one drive's chunks.

Layout: a 28-byte header (magic ``TXBI``, version u8, 3 zero bytes, chunk size u32, drive
size u64, chunk count u64; big-endian) followed by ``count`` raw 32-byte SHA-256 digests.
An all-zero chunk is recorded as ``ZERO_DIGEST`` (32 zero bytes) and never stored.
The manifest keeps the SHA-256 of the whole file, so a damaged index is detected. A reader
checks the header (count = ceil(size / chunk size), a valid chunk size) and that the file
holds exactly ``count`` entries, and never opens an index through a symbolic link.

In an encrypted repository the index is one sealed object (txnbackup.crypto), named by its
backup and drive: the writer keeps it in memory (32 bytes per chunk) and seals it when it is
complete, the reader opens it whole. The manifest's SHA-256 is of the plain index.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from txnbackup.constants import DIGEST_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from txnbackup.crypto import PLAIN, Codec, Kind, Unsealable
from txnbackup.errors import IntegrityError
from txnbackup.fsutil import create_new, open_file, temp_name, write_error
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
    """Appends digests in drive order; ``finish`` fsyncs and renames into place.

    The temporary file is created at once (gc relies on it: txnbackup.engine); a sealed index
    is gathered in memory and written there by ``finish``."""

    def __init__(
        self, path: Path, size: int, chunk_size: int, codec: Codec = PLAIN, identity: str = ""
    ) -> None:
        self.path = path
        self._tmp = temp_name(path)
        self._count = chunk_count(size, chunk_size)
        self._written = 0
        self._hash = hashlib.sha256()
        self._codec, self._identity = codec, identity
        try:
            self._file: BinaryIO = os.fdopen(create_new(self._tmp), "wb")
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._fh: BinaryIO = io.BytesIO() if codec.encrypted else self._file
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
            if self._fh is not self._file:
                assert isinstance(self._fh, io.BytesIO)
                plain = self._fh.getvalue()
                self._file.write(self._codec.seal(Kind.INDEX, self._identity, plain))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        size, chunk_size = self._info
        return IndexInfo(size, chunk_size, self._count, self._hash.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._file.closed:
            self.abort()


class IndexReader:
    """An index file, its header checked against itself and the file's length.

    A sealed index is opened whole with ``codec``; ``identity`` is the name it must be
    sealed under (None: any name ending in the file's own name, for gc's strays)."""

    def __init__(self, path: Path, codec: Codec = PLAIN, identity: str | None = None) -> None:
        self.path = path
        try:
            self._fh: BinaryIO = os.fdopen(open_file(path), "rb")
        except FileNotFoundError:
            raise IntegrityError(f"index {path} is missing") from None
        except OSError as exc:
            raise IntegrityError(f"index {path}: {exc.strerror or exc}") from None
        try:
            if codec.encrypted:
                self._fh = io.BytesIO(self._open_sealed(codec, identity))
            self._check_header()
        except BaseException:
            self._fh.close()
            raise

    def _open_sealed(self, codec: Codec, identity: str | None) -> bytes:
        with self._fh:
            sealed = self._fh.read()
        try:
            claimed = codec.identity(sealed) or ""
            if identity is None and not claimed.endswith(f"/{self.path.name}"):
                raise Unsealable(f"is sealed as {claimed!r}, another index")
            return codec.open(Kind.INDEX, sealed, identity)
        except Unsealable as exc:
            raise IntegrityError(f"index {self.path} {exc.reason}") from None

    def _check_header(self) -> None:
        header = self._fh.read(HEADER.size)
        if len(header) != HEADER.size:
            raise IntegrityError(f"index {self.path}: truncated header")
        magic, version, self.chunk_size, self.size, self.count = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION:
            raise IntegrityError(f"index {self.path}: bad magic or version")
        cs = self.chunk_size
        if cs & (cs - 1) or not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"index {self.path}: bad chunk size {cs}")
        if self.count != chunk_count(self.size, cs):
            raise IntegrityError(
                f"index {self.path}: {self.count} entries for {self.size} bytes "
                f"in chunks of {cs} (expected {chunk_count(self.size, cs)})"
            )
        length = self._fh.seek(0, io.SEEK_END)
        if length != HEADER.size + self.count * DIGEST_SIZE:
            raise IntegrityError(
                f"index {self.path}: {length} bytes, a header and {self.count} entries "
                f"take {HEADER.size + self.count * DIGEST_SIZE}"
            )

    def sha256(self) -> str:
        """The SHA-256 of the whole file, as the manifest records it."""
        h = hashlib.sha256()
        self._fh.seek(0)
        while block := self._fh.read(1 << 20):
            h.update(block)
        return h.hexdigest()

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
    with os.fdopen(open_file(path), "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
