"""The content-addressed chunk store: ``chunks/<first 4 hex>/<digest>``.

Chunk files are write-once: putting a digest that is present is a no-op, and a chunk file
appears under its final name only complete and fsynced. Directory entries of new chunks are
fsynced in batches by ``flush`` (called before anything that refers to them is written), so a
backup does not pay one directory fsync per chunk.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Protocol

from txnbackup import chunk
from txnbackup.errors import CorruptChunk, RepositoryWriteError
from txnbackup.fsutil import fsync_dir, temp_name, write_error


class ChunkBackend(Protocol):
    """The repository seam the engine, restore and verify use: a directory today,
    S3-compatible object storage later."""

    def has(self, digest: str) -> bool: ...

    def put(self, digest: str, encoded: bytes) -> bool: ...

    def get(self, digest: str) -> bytes: ...

    def flush(self) -> None: ...


class ChunkStore:
    """Chunks as files in a directory tree (the ChunkBackend of a directory repository)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._unsynced: set[Path] = set()
        self._lock = threading.Lock()

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:4] / digest

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path_for(digest))

    def put(self, digest: str, encoded: bytes) -> bool:
        """Store an encoded chunk; return False when the digest was already stored."""
        path = self.path_for(digest)
        if path.exists():
            return False
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(path.parent, exc) from exc
        tmp = temp_name(path)
        try:
            with open(tmp, "xb") as fh:
                fh.write(encoded)
                fh.flush()
                os.fsync(fh.fileno())
            if not _link_new(tmp, path):
                return False
        except OSError as exc:
            raise write_error(path, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._unsynced.add(path.parent)
        return True

    def flush(self) -> None:
        """Make every chunk stored so far durable (fsync their directories)."""
        with self._lock:
            pending, self._unsynced = self._unsynced, set()
        try:
            for directory in pending:
                fsync_dir(directory)
            if pending:
                fsync_dir(self.root)
        except OSError as exc:
            raise RepositoryWriteError(str(self.root), exc.strerror or str(exc)) from exc

    def get(self, digest: str) -> bytes:
        """Return a chunk's plaintext, checked against its digest."""
        try:
            blob = self.path_for(digest).read_bytes()
        except FileNotFoundError:
            raise CorruptChunk(digest, "missing from the repository") from None
        except OSError as exc:
            raise CorruptChunk(digest, f"unreadable: {exc.strerror or exc}") from None
        return chunk.decode(blob, digest)


def _link_new(tmp: Path, path: Path) -> bool:
    """Give the complete file ``tmp`` the name ``path`` unless that exists already.

    A link, unlike a rename, never replaces: of two writers of one digest (two threads of one
    backup, or two backups), exactly one stores the chunk and the other counts it as reused.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        os.rename(tmp, path)  # a file system without hard links: the last writer wins
    return True
