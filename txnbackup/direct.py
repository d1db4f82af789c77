"""Direct I/O (O_DIRECT): drives and chunk files are read, restored images written, past
the page cache.

A backup reads each drive once, a restore each chunk file once and writes each image once;
through the page cache every 4 KiB costs the kernel a copy, a page's bookkeeping and later
its reclaim. On a 2-core host that was more CPU than hashing the data (docs/performance.md,
"Direct I/O" and "Restore past the page cache"), and it evicted the host's cache for bytes
nobody reads again. A direct transfer needs its offset, length and buffer aligned
(``ALIGN``); buffers here are page-aligned private anonymous maps (``anonymous``: huge
pages where the kernel gives them), one per thread, reused from one transfer to the next.
A file system that refuses direct I/O (tmpfs on older kernels, some network file systems)
is read and written through the cache as before.

Chunk files are written directly too, but not by the threads that hash and compress (there
a direct write saved CPU and no time: the thread waited for the device). Such a thread copies
the file's bytes into a buffer of a ``BufferPool`` and the chunk store's writeback threads
write it (txnbackup.chunkstore).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

from txnbackup.fsutil import open_file

ALIGN = 4096  # bytes: offsets, lengths and buffers of direct transfers are multiples of this
GROWTH = 1024 * 1024  # bytes: buffers grow in these steps, so sizes that vary do not churn


def round_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def anonymous(size: int) -> mmap.mmap:
    """A page-aligned buffer of ``size`` bytes: private (``mmap``'s default is a shared map,
    which is shmem: 4 KiB pages only, and a forked child's writes would land in its parent's
    buffer) and on transparent huge pages where the kernel gives them (``madvise`` mode).
    Each direct transfer pins its buffer's pages, and its first touch faults them in: 2 MiB
    at a time instead of 4 KiB. Engine alone, 1 GiB, perf: the kernel's share of reading
    fell from ~0.12 to ~0.03 CPU-s, of writing chunk files from ~0.06 to ~0.03."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # no THP here: 4 KiB pages it is
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


class ThreadBuffers:
    """One page-aligned buffer per thread: a view returned stays valid until that thread
    asks again."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, size: int) -> memoryview:
        buffer: memoryview | None = getattr(self._local, "view", None)
        if buffer is None or len(buffer) < size:
            buffer = self._local.view = memoryview(anonymous(round_up(size, GROWTH)))
        return buffer


def open_read(path: Path, opened: os.stat_result) -> int | None:
    """A descriptor of the file ``opened`` for direct reads, or None where they are refused
    (or the path names another file by now)."""
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_DIRECT)
    except OSError:  # EINVAL: no direct I/O on this file system
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def read_file(path: Path, buffers: ThreadBuffers) -> bytes | memoryview:
    """The whole of a repository file (``fsutil.open_file``'s checks), read past the page
    cache into this thread's buffer from ``buffers`` (valid until the thread's next read),
    or through the cache where direct reads are refused."""
    fd = open_file(path)
    try:
        size = os.fstat(fd).st_size
        view = _read_direct(fd, size, buffers)
        if view is not None:
            return view
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def _read_direct(fd: int, size: int, buffers: ThreadBuffers) -> memoryview | None:
    """The file's bytes read directly (fewer if it shrank meanwhile), or None when direct
    I/O is refused on it (the descriptor is left as it was, at offset 0)."""
    if not hasattr(os, "O_DIRECT") or not _set_direct(fd, True):
        return None
    aligned = round_up(size)
    buffer = buffers.get(max(aligned, ALIGN))
    got = 0
    try:
        while got < aligned:
            n = os.preadv(fd, [buffer[got:aligned]], got)
            if n == 0:
                break
            got += n
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _set_direct(fd, False)  # refused after all (a device's larger sector size)
        return None
    return buffer[: min(got, size)]


def _set_direct(fd: int, on: bool) -> bool:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


class BufferPool:
    """At most ``count`` page-aligned buffers, lent to one holder at a time: ``take`` waits
    while all are lent, ``give`` returns one. A buffer is reused, and grows when a larger one
    is asked for; a buffer's pages, once touched, stay the process's (the worker's RSS grows
    by up to ``count`` chunk files: docs/performance.md)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self.reset()

    def reset(self) -> None:
        """Every buffer free again (a forked child: what its parent had lent is not its own)."""
        self._free: list[mmap.mmap] = []
        self._left = self._count  # buffers not yet made
        self._cond = threading.Condition()

    def take(self, size: int) -> mmap.mmap:
        with self._cond:
            while not self._free and not self._left:
                self._cond.wait()
            if self._free:
                buffer = self._free.pop()
            else:
                self._left -= 1
                buffer = anonymous(round_up(size, GROWTH))
        if len(buffer) < size:
            buffer.close()
            buffer = anonymous(round_up(size, GROWTH))
        return buffer

    def give(self, buffer: mmap.mmap) -> None:
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()


def write_new(fd: int, data: memoryview, size: int) -> bool:
    """Write ``data[:size]`` (``data`` a page-aligned buffer of at least ``round_up(size)``
    bytes, zeros after ``size``) to the start of the new file ``fd``, directly; False, and
    nothing written, where the file system refuses direct I/O (the descriptor left as it
    was)."""
    if not hasattr(os, "O_DIRECT") or not _set_direct(fd, True):
        return False
    try:
        write_all(fd, data[: round_up(size)], 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _set_direct(fd, False)
        os.ftruncate(fd, 0)
        return False
    _set_direct(fd, False)
    os.ftruncate(fd, size)  # the last block was written whole
    return True


class DirectWriter:
    """Writes to one file or block device, each run past the page cache where its offset and
    length are aligned and the file system takes direct writes (the data must be in a
    buffer from ThreadBuffers), else through the cache. ``fd`` is the buffered descriptor;
    the caller fsyncs it, which covers both."""

    def __init__(self, path: Path, fd: int) -> None:
        self.fd = fd
        self._direct_fd = _open_write(path, os.fstat(fd))
        self._refused = False

    def pwrite(self, data: memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``."""
        direct = None if self._refused else self._direct_fd
        cut = len(data) - len(data) % ALIGN
        if direct is not None and offset % ALIGN == 0 and cut:
            try:
                write_all(direct, data[:cut], offset)
                data, offset = data[cut:], offset + cut
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._refused = True  # refused here after all: through the cache from now on
        if len(data):
            write_all(self.fd, data, offset)

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None


def _open_write(path: Path, opened: os.stat_result) -> int | None:
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:  # EINVAL: no direct I/O on this file system
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino, st.st_rdev) != (opened.st_dev, opened.st_ino, opened.st_rdev):
        os.close(fd)
        return None
    return fd


def write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
