"""A file system that refuses direct I/O (EINVAL, as tmpfs on older kernels, some network
file systems, or a device with a larger sector size answer), made by patching the calls the
code makes; every other call goes to the real one."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

_REAL_FCNTL, _REAL_OPEN = fcntl.fcntl, os.open


def is_direct(fd: int) -> bool:
    return bool(_REAL_FCNTL(fd, fcntl.F_GETFL) & os.O_DIRECT)


def refuse_opening_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """``open`` with O_DIRECT fails."""

    def no_direct(path: str | Path, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return _REAL_OPEN(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)


def refuse_setting_direct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Setting O_DIRECT on an open file fails; the list grows by the descriptor each time."""
    refused: list[int] = []

    def no_flag(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(_REAL_FCNTL(fd, cmd, arg))

    monkeypatch.setattr(fcntl, "fcntl", no_flag)
    return refused
