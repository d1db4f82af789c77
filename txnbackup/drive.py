"""Drives: the named block sources of a VM, and how their bytes are read."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from txnbackup import direct
from txnbackup.closing import Closing
from txnbackup.errors import DriveNotFound, DriveReadError, DriveUnreadable, InvalidInput
from txnbackup.names import check_drive_name

DEFAULT_NODE = "default"
_BUFFERS = direct.ThreadBuffers()  # each reading thread's, whichever drive it reads


@dataclass(frozen=True)
class Drive:
    """A drive of a VM: its name, its path on its node, and that node (a worker queue)."""

    name: str
    path: str
    node: str = DEFAULT_NODE

    @classmethod
    def parse(cls, spec: str) -> Drive:
        """Parse ``name=/path[@node]`` as given on the command line."""
        name, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise InvalidInput(f"drive {spec!r} must look like name=/path/to/image[@node]")
        path, _, node = rest.rpartition("@") if "@" in rest else (rest, "", DEFAULT_NODE)
        if not node or not path:
            raise InvalidInput(f"drive {spec!r}: empty path or node")
        return cls(check_drive_name(name), path, node)


class DriveReader(Protocol):
    """What the copy engine needs of a drive (raw image or block device today, NBD later)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def read_span(self, offset: int, length: int) -> bytes | memoryview:
        """``read`` for the copy engine, which is done with the bytes before it reads again
        on the same thread: may return a view into a buffer of the calling thread, valid
        until that thread's next ``read_span`` (of any drive)."""
        ...

    def next_data(self, offset: int) -> int:
        """The first offset at or after ``offset`` that may hold data (the bytes between read
        as zeros); ``offset`` itself when the drive cannot tell."""
        ...

    def prefetch(self, offset: int, length: int) -> None:
        """A hint that ``read`` of this range follows soon: start reading it now (may do
        nothing)."""
        ...

    def close(self) -> None: ...


class FileDrive(Closing):
    """A raw image file or a block device, read with pread (no shared file position).

    The engine's reads (``read_span``) bypass the page cache where the file system allows
    it (txnbackup.direct). Data a guest wrote through the cache is still read: a direct read
    writes back the range's dirty pages first. Elsewhere (no direct I/O, a range not
    aligned) it reads through the cache.
    """

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        try:
            # Non-blocking, so that a FIFO is refused instead of waiting for a writer.
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise DriveNotFound(name, str(path)) from None
        except OSError as exc:
            raise DriveUnreadable(name, str(path), exc.strerror or str(exc)) from None
        try:
            self._size = self._check_size()
        except BaseException:
            os.close(self._fd)
            raise
        # Open until close, even once direct reads were refused after all (_refused): another
        # thread may be reading through it, and a number closed early could name another file.
        self._direct_fd = direct.open_read(path, os.fstat(self._fd))
        self._refused = False

    def _check_size(self) -> int:
        try:
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise DriveUnreadable(
                    self.name, str(self.path), f"not a raw image or block device ({_kind(mode)})"
                )
            os.set_blocking(self._fd, True)
            # The engine reads front to back: let the kernel read ahead further.
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            return os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            raise DriveUnreadable(self.name, str(self.path), exc.strerror or str(exc)) from None

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            reason = "drive shrank" if exc.errno == errno.EINVAL else exc.strerror or str(exc)
            raise DriveReadError(self.name, offset, reason) from None
        if len(data) != length:
            raise DriveReadError(self.name, offset + len(data), self._short_read(len(data), length))
        return data

    @property
    def _direct(self) -> int | None:
        return None if self._refused else self._direct_fd

    def read_span(self, offset: int, length: int) -> bytes | memoryview:
        fd = self._direct
        if fd is None or offset % direct.ALIGN:
            return self.read(offset, length)
        aligned = direct.round_up(length)  # the tail's read stops at EOF
        buffer = _BUFFERS.get(aligned)
        try:
            got = os.preadv(fd, [buffer[:aligned]], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise DriveReadError(self.name, offset, exc.strerror or str(exc)) from None
            self._refused = True  # refused here after all (a device's larger sector size)
            return self.read(offset, length)
        if got < length:
            raise DriveReadError(self.name, offset + got, self._short_read(got, length))
        return buffer[:length]

    def _short_read(self, got: int, wanted: int) -> str:
        try:
            now = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            now = self._size
        if now < self._size:
            return f"drive shrank from {self._size} to {now} bytes during the backup"
        return f"short read ({got} of {wanted} bytes)"

    def prefetch(self, offset: int, length: int) -> None:
        """Queue the range's reads now (WILLNEED), without waiting: the device works on
        every span the engine has queued, not only on those a pool thread reads now. Not
        for direct reads, which would read the range a second time."""
        if self._direct is not None:
            return
        with contextlib.suppress(OSError):  # a hint only
            os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def next_data(self, offset: int) -> int:
        try:
            return os.lseek(self._fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return offset  # no SEEK_DATA here: everything may be data
        # No data after offset: a hole up to the end of the file, which may have shrunk since.
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
        os.close(self._fd)


def drive_size(name: str, path: str) -> int:
    with FileDrive(name, Path(path)) as reader:
        if reader.size == 0:
            raise InvalidInput(f"drive {name}: {path} is empty (0 bytes); nothing to back up")
        return reader.size


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
