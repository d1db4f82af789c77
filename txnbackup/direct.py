"""Direct I/O (O_DIRECT): the copy engine reads drives past the page cache.

A backup reads each drive once; through the page cache every 4 KiB costs the kernel a copy,
a page's bookkeeping and later its reclaim. On a 2-core host that was more CPU than hashing
the data (docs/performance.md, "Direct I/O"), and it evicted the host's cache for bytes
nobody reads again. A direct read needs its offset, length and buffer aligned (``ALIGN``);
buffers here are page-aligned anonymous maps, one per thread, reused from one read to the
next. A file system that refuses direct I/O (tmpfs on older kernels, some network file
systems) is read through the cache as before.

Writes stay buffered. Chunk files written directly saved CPU but not time (each write then
waits for the device on a thread that could be hashing); restore's image writes likewise
(their copy into an aligned buffer ate the kernel's saving): docs/performance.md.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

ALIGN = 4096  # bytes: offsets, lengths and buffers of direct transfers are multiples of this
GROWTH = 1024 * 1024  # bytes: buffers grow in these steps, so sizes that vary do not churn


def round_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


class ThreadBuffers:
    """One page-aligned buffer per thread: a view returned stays valid until that thread
    asks again."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, size: int) -> memoryview:
        buffer: memoryview | None = getattr(self._local, "view", None)
        if buffer is None or len(buffer) < size:
            buffer = self._local.view = memoryview(mmap.mmap(-1, round_up(size, GROWTH)))
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
