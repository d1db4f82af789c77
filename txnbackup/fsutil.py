"""Durable file primitives: every repository file is written once, atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from txnbackup.errors import RepositoryWriteError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


@contextlib.contextmanager
def atomic_writer(path: Path, *, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Write to a temporary name beside ``path``, fsync, then rename into place.

    Readers see either no file or the complete file. A failure leaves no temporary file.
    """
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as fh:
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
