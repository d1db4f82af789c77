"""Durable file primitives: every repository file is written once, atomically.

Repository files are created 0600 and directories 0700 (they hold every byte of every
backed-up drive), and nothing inside a repository is reached through a symbolic link: a
planted link must never make a reader read, or gc delete, anything outside the repository.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from txnbackup.errors import RepositoryWriteError

FILE_MODE = 0o600
DIR_MODE = 0o700
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
SYMLINK_REASON = "a symbolic link, which txnbackup never follows inside a repository"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path, *, exist_ok: bool = False) -> None:
    """Create a repository directory (0700); an existing one must be a real directory."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not exist_ok:
            raise
        if not is_real_dir(path):
            reason = "exists and is not a directory (or is a symbolic link)"
            raise FileExistsError(errno.EEXIST, reason, str(path)) from None


def is_real_dir(path: Path) -> bool:
    """A directory, and not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def open_file(path: Path) -> int:
    """Open a repository file for reading, refusing a symbolic link or anything not regular."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, SYMLINK_REASON, str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_file(path: Path) -> bytes:
    """The whole of a repository file (see ``open_file``)."""
    with os.fdopen(open_file(path), "rb") as fh:
        return fh.read()


def regular_files(directory: Path) -> list[os.DirEntry[str]]:
    """The regular files in ``directory`` (symbolic links are neither files nor followed)."""
    return [e for e in _scan(directory) if e.is_file(follow_symlinks=False)]


def real_dirs(directory: Path) -> list[os.DirEntry[str]]:
    """The directories in ``directory`` that are not symbolic links."""
    return [e for e in _scan(directory) if e.is_dir(follow_symlinks=False)]


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def temp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


def create_new(path: Path) -> int:
    """Create a new repository file (0600) for writing; never through a symbolic link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, FILE_MODE)


@contextlib.contextmanager
def atomic_writer(path: Path, *, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Write to a temporary name beside ``path``, fsync, then rename into place.

    Readers see either no file or the complete file. A failure leaves no temporary file.
    """
    tmp = temp_name(path)
    try:
        with os.fdopen(create_new(tmp), "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    with atomic_writer(path, sync_dir=sync_dir) as fh:
        fh.write(data)


def write_error(path: Path, exc: OSError) -> RepositoryWriteError:
    return RepositoryWriteError(str(path), os_reason(exc))


def os_reason(exc: OSError) -> str:
    return "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
