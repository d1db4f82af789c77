"""The content-addressed chunk store: ``chunks/<first 4 hex>/<digest>``.

Chunk files are write-once: putting a digest that is present is a no-op, and a chunk file
appears under its final name only complete and fsynced. Directory entries of new chunks are
fsynced in batches by ``flush`` (called before anything that refers to them is written), so a
backup does not pay one directory fsync per chunk.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from txnbackup import chunk
from txnbackup.errors import CorruptChunk, RepositoryWriteError
from txnbackup.fsutil import atomic_writer, fsync_dir, write_error


class ChunkStore:
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
        with atomic_writer(path, sync_dir=False) as fh:
            fh.write(encoded)
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
        return chunk.decode(blob, digest)
