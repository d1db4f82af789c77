"""Restore past the page cache: the image restored is the drive's bytes whichever way its
chunk files are read and its target written (directly where the file systems allow it,
through the cache elsewhere, or when the kernel refuses direct I/O midway)."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.builders import CS, Done, Image, make_image, run_backup, text_bytes
from tests.unit.refusals import is_direct, refuse_opening_direct, refuse_setting_direct
from tests.unit.test_encryption import PASSPHRASE, encrypted, reopened
from txnbackup import chunk, direct
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import CorruptChunk
from txnbackup.keyfile import KeyAccess
from txnbackup.repository import Repository
from txnbackup.restore import restore_all, restore_drive

VM = "100"


def _content(seed: int, kinds: str, tail: int) -> bytes:
    """Chunks of random (r), text (t), zero (z) or half-zero (h: zero blocks inside a data
    chunk, which the restore leaves holes) bytes, then ``tail`` random bytes: a size that
    ends mid-block, which no direct write can cover alone."""
    rng = random.Random(seed)
    make: dict[str, Callable[[], bytes]] = {
        "r": lambda: rng.randbytes(CS),
        "t": lambda: text_bytes(rng, CS),
        "z": lambda: bytes(CS),
        "h": lambda: bytes(CS // 2) + rng.randbytes(CS // 2),
    }
    return b"".join(make[k]() for k in kinds) + rng.randbytes(tail)


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Image, Image]:
    (tmp_path / "drives").mkdir()
    scsi0 = make_image(tmp_path / "drives", "scsi0", _content(1, "rthzrrtz", 0))
    scsi1 = make_image(tmp_path / "drives", "scsi1", _content(2, "thrz", 4096 + 1000))
    return scsi0, scsi1


@pytest.fixture
def backed_up(repo: Repository, bitmaps: RedisBitmaps, vm: tuple[Image, Image]) -> Done:
    return run_backup(repo, bitmaps, VM, [d.drive for d in vm])


@pytest.fixture(params=["disk", "tmpfs"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An empty directory on the test's own file system, or on tmpfs."""
    if request.param == "disk":
        (tmp_path / "out").mkdir()
        yield tmp_path / "out"
        return
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm (tmpfs) here")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield Path(d)


def _assert_restored(directory: Path, vm: tuple[Image, Image]) -> None:
    for disk in vm:
        assert (directory / f"{disk.name}.raw").read_bytes() == disk.read()


def test_every_drive_restores_byte_identical_on_any_file_system(
    out: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    # When both drives (one ending 1000 bytes into a block) are restored
    restore_all(repo, backed_up.snapshot, out)
    # Then each file holds exactly the drive's bytes, tail, zero chunks and zero blocks included
    _assert_restored(out, vm)
    assert sorted(p.name for p in out.iterdir()) == ["scsi0.raw", "scsi1.raw"]


def test_a_target_refusing_direct_writes_is_written_through_the_cache(
    tmp_path: Path,
    repo: Repository,
    vm: tuple[Image, Image],
    backed_up: Done,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a file system that refuses to open files for direct I/O (EINVAL)
    refuse_opening_direct(monkeypatch)
    # When the snapshot is restored
    restore_all(repo, backed_up.snapshot, tmp_path)
    # Then the drives are restored all the same
    _assert_restored(tmp_path, vm)


def test_a_target_refusing_direct_writes_midway_is_finished_through_the_cache(
    tmp_path: Path,
    repo: Repository,
    vm: tuple[Image, Image],
    backed_up: Done,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a target whose direct writes the kernel refuses after its first ones (EINVAL,
    # as a device with a larger sector size answers)
    real_pwrite, writes = os.pwrite, []

    def refuse_later(fd: int, data: memoryview, offset: int) -> int:
        if is_direct(fd):
            writes.append(offset)
            if len(writes) > 2:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_later)
    # When the snapshot is restored
    restore_all(repo, backed_up.snapshot, tmp_path)
    # Then the first writes went past the cache, and every byte is where it belongs
    assert len(writes) > 2
    _assert_restored(tmp_path, vm)


@pytest.mark.parametrize("when", ["at-once", "midway"])
def test_a_repository_refusing_direct_reads_is_read_through_the_cache(
    tmp_path: Path,
    repo: Repository,
    vm: tuple[Image, Image],
    backed_up: Done,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    # Given chunk files on a file system that refuses direct reads: at once (the flag is
    # refused) or on the read itself
    real_preadv = os.preadv

    def no_direct_read(fd: int, buffers: list[memoryview], offset: int) -> int:
        if is_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    if when == "at-once":
        refuse_setting_direct(monkeypatch)
    else:
        monkeypatch.setattr(os, "preadv", no_direct_read)
    # When the snapshot is restored
    restore_all(repo, backed_up.snapshot, tmp_path)
    # Then the drives are restored all the same
    _assert_restored(tmp_path, vm)


def test_a_chunk_file_read_directly_sees_bytes_still_in_the_page_cache(
    tmp_path: Path, repo: Repository, vm: tuple[Image, Image], backed_up: Done
) -> None:
    # Given a chunk file rewritten (same bytes, each written back only later) through the
    # cache, and another whose bytes changed in the cache only
    digest = chunk.digest_of(vm[1].read()[:CS])
    path = repo.chunks.path_for(digest)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0x01
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(damaged[-1:]), len(damaged) - 1)
        # When a restore reads it past the cache, before the kernel wrote it back
        with pytest.raises(CorruptChunk) as caught:
            restore_drive(repo, backed_up.snapshot, "scsi1", tmp_path / "scsi1.raw")
    finally:
        os.close(fd)
    # Then it reads the changed bytes, and says why they are wrong
    assert caught.value.args[0] == digest
    assert "CRC mismatch" in str(caught.value)
    assert not (tmp_path / "scsi1.raw").exists()


def test_an_encrypted_repository_restores_and_refuses_a_tampered_chunk(
    tmp_path: Path, bitmaps: RedisBitmaps, vm: tuple[Image, Image]
) -> None:
    # Given an encrypted repository holding both drives
    repo = encrypted(tmp_path / "repo")
    done = run_backup(repo, bitmaps, VM, [d.drive for d in vm])
    again = reopened(repo)
    # When it is restored, it holds the drives' bytes
    (tmp_path / "good").mkdir()
    restore_all(again, done.snapshot, tmp_path / "good")
    _assert_restored(tmp_path / "good", vm)
    # And when one chunk file has a byte flipped, restoring the drive holding it fails
    # authentication, naming the chunk, and leaves no file
    digest = chunk_id(again, vm[0].read()[:CS])
    path = again.chunks.path_for(digest)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    path.write_bytes(bytes(damaged))
    (tmp_path / "bad").mkdir()
    with pytest.raises(CorruptChunk) as caught:
        restore_all(Repository.open(repo.path, _keys(repo)), done.snapshot, tmp_path / "bad")
    assert caught.value.args[0] == digest
    assert "failed authentication" in str(caught.value)
    assert list((tmp_path / "bad").iterdir()) == []


def chunk_id(repo: Repository, data: bytes) -> str:
    return repo.chunks.codec.chunk_id(data).hex()


def _keys(repo: Repository) -> KeyAccess:
    return KeyAccess(PASSPHRASE, key_dir=repo.path.parent / "keys")


def test_buffers_a_thread_reuses_are_page_aligned_and_grow() -> None:
    # The direct transfers' precondition: the buffer's address is aligned, whatever its size
    buffers = direct.ThreadBuffers()
    small = buffers.get(5000)
    assert len(small) >= 5000
    bigger = buffers.get(3 * 1024 * 1024 + 1)
    assert len(bigger) > 3 * 1024 * 1024
    for view in (small, bigger):
        address = _address(view)
        assert address % direct.ALIGN == 0


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))
