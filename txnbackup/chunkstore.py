"""The content-addressed chunk store: ``chunks/<first 4 hex>/<digest>``.

Chunk files are write-once: putting a digest that is present is a no-op, and a chunk file
appears under its final name only complete and fsynced. ``put`` writes the file under a
temporary name and returns; background threads (txnbackup.writeback) fsync it, give it its
name and fsync its directory, so the threads that hash and compress never wait for the disk.
``flush`` waits for all of that and fsyncs ``chunks/``: it is called before anything that
refers to the chunks put so far is written. Until then a digest put is "being stored":
``reuse`` and ``put`` count it as stored, so one backup writes it once.

A backup that stores a digest another process stored meanwhile (both wrote it) counts it as
stored, not reused; both files held the same bytes, and one is kept.

Garbage collection (txnbackup.gc) deletes a chunk file that nothing refers to only when its
mtime is older than its cutoff. A writer that deduplicates against a stored chunk therefore
``reuse``s it, which refreshes the mtime: a chunk a running backup counts on looks in use.

Deduplication trusts a stored chunk only after a cheap look (one open and one read of its
header, ``chunk.plausible``): a regular file, not a symbolic link, whose length fits its
header. A chunk file that fails it reads as not stored, and storing the chunk replaces it.

How a chunk becomes a file and back (and its id) is the repository's codec
(txnbackup.crypto): plain, or sealed in an encrypted repository.

Verify moves a corrupt chunk file aside (``quarantine``, to ``<digest>.bad``), so that the
digest reads as not stored and the next backup that reads the chunk stores it again.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import threading
from pathlib import Path
from typing import Protocol

from txnbackup import chunk, direct
from txnbackup.crypto import PLAIN, Codec
from txnbackup.errors import CorruptChunk
from txnbackup.fsutil import (
    NOFOLLOW,
    SYMLINK_REASON,
    create_new,
    fsync_dir,
    is_real_dir,
    make_dir,
    read_file,
    temp_name,
    write_error,
)
from txnbackup.writeback import Writeback, Written

BAD_SUFFIX = ".bad"
QUARANTINED = "found corrupt by verify and moved aside (.bad)"
_READ_BUFFERS = direct.ThreadBuffers()  # each reading thread's chunk file, while it decodes
# Chunk files put and not yet written by the writeback (of 4 MiB chunks: 64 MiB at most).
_WRITE_BUFFERS = direct.BufferPool(16)
os.register_at_fork(after_in_child=_WRITE_BUFFERS.reset)


class ChunkBackend(Protocol):
    """The repository seam the engine, restore and verify use: a directory today,
    S3-compatible object storage later. A chunk ``put`` is durable, and readable, once
    ``flush`` returned."""

    codec: Codec  # chunk ids and chunk files: plain or sealed

    def has(self, digest: str) -> bool: ...

    def reuse(self, digest: str) -> bool: ...

    def put(self, digest: str, *encoded: bytes | memoryview) -> bool: ...

    def get(self, digest: str) -> bytes: ...

    def get_into(self, digest: str, out: memoryview) -> memoryview: ...

    def flush(self) -> None: ...


class ChunkStore:
    """Chunks as files in a directory tree (the ChunkBackend of a directory repository)."""

    def __init__(self, root: Path, codec: Codec = PLAIN) -> None:
        self.root = root
        self.codec = codec
        self._named = False  # a chunk was named since the last flush
        self._writing: set[str] = set()  # digests put but not yet named
        self._lock = threading.Lock()
        self._writeback = Writeback(self._name, self._finished)
        self._real_prefixes: set[str] = set()  # prefix directories seen not to be links
        self._direct = True  # chunk files written past the page cache, until refused

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:4] / digest

    def bad_path_for(self, digest: str) -> Path:
        return self.root / digest[:4] / f"{digest}{BAD_SUFFIX}"

    def present(self, digest: str) -> bool:
        """Whether a chunk file (a regular file, not a link) is there, whole or not."""
        try:
            return stat.S_ISREG(os.lstat(self.path_for(digest)).st_mode)
        except FileNotFoundError:
            return False

    def has(self, digest: str) -> bool:
        """Whether the chunk is stored and its file looks whole (``chunk.plausible``)."""
        return self._found(digest, touch=False)

    def reuse(self, digest: str) -> bool:
        """``has``, and if so, mark the chunk in use now (its mtime, for gc); or the chunk is
        being stored here (put, not yet named: the next ``flush`` makes it durable)."""
        with self._lock:
            if digest in self._writing:
                return True
        return self._found(digest, touch=True)

    def _found(self, digest: str, *, touch: bool) -> bool:
        return self._real_prefix(digest) and _plausible(
            self.path_for(digest), self.codec, touch=touch
        )

    def _real_prefix(self, digest: str) -> bool:
        """Whether the chunk's prefix directory is a directory, not a link (looked at once)."""
        prefix = digest[:4]
        if prefix in self._real_prefixes:
            return True
        if not is_real_dir(self.root / prefix):
            return False
        self._real_prefixes.add(prefix)
        return True

    def put(self, digest: str, *encoded: bytes | memoryview) -> bool:
        """Store an encoded chunk, given whole or in parts (chunk.encode_parts); return False
        when the digest was already stored or is being stored. The chunk file is written now
        and named in the background (txnbackup.writeback); ``flush`` makes it durable."""
        with self._lock:
            if digest in self._writing:
                return False
            self._writing.add(digest)  # until named: no gap in which it looks absent
        try:
            if self._found(digest, touch=True):
                self._finished(digest)
                return False
            self._write_new(self.path_for(digest), digest, encoded)
        except BaseException:
            self._finished(digest)
            raise
        return True

    def _write_new(self, path: Path, digest: str, parts: tuple[bytes | memoryview, ...]) -> None:
        """Write the chunk file under a temporary name and hand it to the writeback."""
        try:
            make_dir(path.parent, exist_ok=True)
        except OSError as exc:
            raise write_error(path.parent, exc) from exc
        tmp = temp_name(path)
        contents = self._direct_contents(parts)
        try:
            fd = create_new(tmp) if contents else _write_started(tmp, parts)
        except OSError as exc:
            if contents:
                contents.release()
            raise write_error(path, exc) from exc
        try:
            self._writeback.submit(Written(fd, tmp, path, digest, contents))
        except BaseException:
            if contents:
                contents.release()
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def _direct_contents(self, parts: tuple[bytes | memoryview, ...]) -> _Contents | None:
        """The file's bytes in a buffer of the pool (waiting for one while the writeback
        holds them all), for a writeback thread to write past the page cache; None once the
        file system refused that (the writer then writes through the cache itself)."""
        if not self._direct:
            return None
        size = sum(len(p) for p in parts)
        buffer = _WRITE_BUFFERS.take(direct.round_up(size))
        view, at = memoryview(buffer), 0
        for part in parts:
            view[at : at + len(part)] = part
            at += len(part)
        view[size : direct.round_up(size)] = bytes(direct.round_up(size) - size)
        return _Contents(self, buffer, size)

    def _refused_direct(self) -> None:
        self._direct = False

    def _name(self, written: Written) -> None:
        """Give a chunk file whose data is durable its final name, and make that durable
        (on a writeback thread). Another writer may have stored the digest meanwhile (another
        backup): its file is kept, and this one was counted as stored all the same."""
        tmp, path = written.tmp, written.path
        if not _link_new(tmp, path) and not _plausible(path, self.codec, touch=True):
            os.rename(tmp, path)  # the file there is damaged, or a link: replace it
        tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        with self._lock:
            self._named = True

    def _finished(self, digest: str) -> None:
        with self._lock:
            self._writing.discard(digest)

    def flush(self) -> None:
        """Make every chunk put so far durable: wait until each has its name in a fsynced
        directory, then fsync ``chunks/`` (new prefix directories)."""
        self._writeback.drain()
        with self._lock:
            named, self._named = self._named, False
        if named:
            try:
                fsync_dir(self.root)
            except OSError as exc:
                raise write_error(self.root, exc) from exc

    def get(self, digest: str) -> bytes:
        """Return a chunk's plaintext, checked against its digest."""
        return self.codec.decode_chunk(self._read(digest), digest)

    def get_into(self, digest: str, out: memoryview) -> memoryview:
        """``get`` into ``out`` (as long as the chunk, or longer): the plaintext is ``out``'s
        start, returned; no copy of the chunk is made on the way (a restore's path)."""
        return self.codec.decode_chunk_into(self._read(digest), digest, out)

    def _read(self, digest: str) -> bytes | memoryview:
        """The chunk file's bytes, read past the page cache into this thread's buffer (valid
        until the thread's next read); CorruptChunk when it is missing or unreadable."""
        try:
            if not self._real_prefix(digest) and os.path.islink(self.root / digest[:4]):
                raise OSError(errno.ELOOP, SYMLINK_REASON, str(self.root / digest[:4]))
            return direct.read_file(self.path_for(digest), _READ_BUFFERS)
        except FileNotFoundError:
            if os.path.lexists(self.bad_path_for(digest)):
                raise CorruptChunk(digest, QUARANTINED) from None
            raise CorruptChunk(digest, "missing from the repository") from None
        except OSError as exc:
            raise CorruptChunk(digest, f"unreadable: {exc.strerror or exc}") from None

    def quarantine(self, digest: str) -> bool:
        """Move a corrupt chunk file aside to ``<digest>.bad``; False when it was not there.

        A file that decodes after the move was replaced by a good copy in the meantime (gc
        removed the bad one and a backup stored the chunk again): it is put back.
        """
        path, bad = self.path_for(digest), self.bad_path_for(digest)
        try:
            os.replace(path, bad)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise write_error(path, exc) from exc
        try:
            self.codec.decode_chunk(read_file(bad), digest)
        except (CorruptChunk, OSError):
            fsync_dir(path.parent)
            return True
        _link_new(bad, path)
        bad.unlink(missing_ok=True)
        return False


class _Contents:
    """A chunk file's bytes in a pool buffer, written by a writeback thread past the page
    cache, or through it where the file system refuses that (and from then on by the
    writer itself)."""

    def __init__(self, store: ChunkStore, buffer: mmap.mmap, size: int) -> None:
        self._store, self._buffer, self._size = store, buffer, size

    def write(self, fd: int) -> None:
        data = memoryview(self._buffer)
        if not direct.write_new(fd, data, self._size):
            self._store._refused_direct()
            direct.write_all(fd, data[: self._size], 0)

    def release(self) -> None:
        _WRITE_BUFFERS.give(self._buffer)


def _write_started(path: Path, parts: tuple[bytes | memoryview, ...]) -> int:
    """Create ``path`` holding the parts one after another, start writing it back, and return
    its descriptor (the caller fsyncs and closes it)."""
    fd = create_new(path)
    try:
        left = sum(len(p) for p in parts)
        views = [memoryview(p) for p in parts]
        while left:
            written = os.writev(fd, views)
            left -= written
            views = _advance(views, written)
        # Starts the writeback of its dirty pages without waiting for it (Linux); advice only.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _plausible(path: Path, codec: Codec, *, touch: bool) -> bool:
    """One open (never through a link; non-blocking, should a FIFO be planted) and one read
    of the header; ``touch`` sets the mtime through the same descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
    except OSError:  # missing, a symbolic link (ELOOP) or unreadable: not usable
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        if not codec.plausible_chunk(os.pread(fd, chunk.PROBE_SIZE, 0), st.st_size):
            return False
        if touch:
            with contextlib.suppress(OSError):  # a chunk we may read but not touch: still good
                os.utime(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _advance(views: list[memoryview], written: int) -> list[memoryview]:
    """What is left of ``views`` after a short write of ``written`` bytes."""
    while views and written >= len(views[0]):
        written -= len(views.pop(0))
    if views:
        views[0] = views[0][written:]
    return views


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
