"""What the copy engine reads of a file drive: the drive's bytes, whichever way they are read
(past the page cache where the file system allows it, through it elsewhere)."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from txnbackup.drive import FileDrive
from txnbackup.errors import DriveReadError

CS = 64 * 1024


def _shm_dir() -> Iterator[Path]:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm (tmpfs) here to read without direct I/O")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield Path(d)


@pytest.fixture(params=["disk", "tmpfs"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on the test's own file system (direct reads), or on tmpfs (none)."""
    if request.param == "disk":
        yield tmp_path
    else:
        yield from _shm_dir()


def _image(path: Path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [3 * CS, 3 * CS + 1000, 1000])
def test_every_span_reads_the_drive_s_bytes(where: Path, size: int) -> None:
    # Given an image whose size may end mid-block (a tail a direct read cannot ask for alone)
    data = _image(where / "d.raw", size)
    with FileDrive("d", where / "d.raw") as reader:
        # When the engine reads it span by span, one thread reading again and again
        spans = [(o, min(CS, size - o)) for o in range(0, size, CS)]
        got = [bytes(reader.read_span(o, n)) for o, n in spans]
        # Then each span holds exactly the drive's bytes, the tail included
        assert b"".join(got) == data
        assert bytes(reader.read_span(0, size)) == data


def test_a_direct_read_sees_what_a_writer_left_in_the_page_cache(tmp_path: Path) -> None:
    # Given a drive whose guest wrote through the page cache and has not synced yet
    path = tmp_path / "d.raw"
    _image(path, 4 * CS)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xab" * CS, CS)
        with FileDrive("d", path) as reader:
            # Then the engine's read returns the written bytes, not the disk's older ones
            assert bytes(reader.read_span(CS, CS)) == b"\xab" * CS
    finally:
        os.close(fd)


def test_a_drive_that_shrank_is_a_read_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "d.raw"
    _image(path, 4 * CS)
    with FileDrive("d", path) as reader:
        os.truncate(path, 2 * CS + 100)
        with pytest.raises(DriveReadError, match="shrank from 262144 to 131172 bytes"):
            reader.read_span(2 * CS, 2 * CS)


def test_a_drive_refusing_direct_reads_midway_is_read_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a drive whose direct reads the kernel refuses after it was opened (EINVAL, as a
    # device with a larger sector size answers)
    data = _image(tmp_path / "d.raw", 4 * CS)

    def refuse(*_: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    with FileDrive("d", tmp_path / "d.raw") as reader:
        monkeypatch.setattr(os, "preadv", refuse)
        # Then every span still reads the drive's bytes, now and after
        assert bytes(reader.read_span(0, CS)) == data[:CS]
        assert bytes(reader.read_span(CS, 3 * CS)) == data[CS:]
