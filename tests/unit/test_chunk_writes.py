"""How chunk files reach the disk: written past the page cache by the writeback threads
(txnbackup.chunkstore, txnbackup.direct), through it where the file system refuses, and what
a failed write leaves. Whichever way, a chunk file is exactly its header and payload, and
reads back as the chunk."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import random
from pathlib import Path

import pytest

from tests.unit.builders import text_bytes
from tests.unit.refusals import is_direct, refuse_setting_direct
from txnbackup import chunk, direct
from txnbackup.errors import RepositoryWriteError
from txnbackup.repository import Repository

# Lengths that end mid-block, one under the chunk size, and more than the writer's buffers
# hold at once (16): the direct write covers whole blocks, the file is cut back to its size.
SIZES = [1, 4095, 4096 + 17, 60_000, 65_535]


def chunks(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [SIZES[i % len(SIZES)] for i in range(count)]
    return [rng.randbytes(n) if i % 2 else text_bytes(rng, n) for i, n in enumerate(sizes)]


def put_all(repo: Repository, datas: list[bytes]) -> list[str]:
    digests = []
    for data in datas:
        digest = chunk.digest_of(data)
        repo.chunks.put(digest, *chunk.encode_parts(data))
        digests.append(digest)
    return digests


def assert_stored(repo: Repository, datas: list[bytes]) -> None:
    for data in datas:
        digest = chunk.digest_of(data)
        path = repo.chunks.path_for(digest)
        assert path.stat().st_size == len(chunk.encode(data))
        assert repo.chunks.get(digest) == data
        assert repo.chunks.has(digest)
    files = [p for p in (repo.path / "chunks").rglob("*") if p.is_file()]
    assert len(files) == len({chunk.digest_of(d) for d in datas})


def refuse_direct(monkeypatch: pytest.MonkeyPatch, when: str) -> list[int]:
    """Make the file system refuse direct I/O: on setting the flag, or on the write itself.
    Returns a list that grows by one per refusal."""
    if when == "flag":
        return refuse_setting_direct(monkeypatch)
    refused: list[int] = []
    real_pwrite = os.pwrite

    def no_write(fd: int, data: memoryview, offset: int) -> int:
        if is_direct(fd):
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", no_write)
    return refused


def test_chunk_files_are_exactly_their_bytes_and_read_back(repo: Repository) -> None:
    # Given chunks of lengths that end mid-block, more than the writer has buffers for
    datas = chunks(1, 40)
    # When they are put and flushed
    put_all(repo, datas)
    repo.chunks.flush()
    # Then each file holds its header and payload, no padding, and reads back as the chunk
    assert_stored(repo, datas)


@pytest.mark.parametrize("when", ["flag", "write"])
def test_a_file_system_refusing_direct_writes_gets_the_chunks_through_the_cache(
    repo: Repository, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # Given a file system that refuses direct writes (EINVAL), at once or on the write
    refused = refuse_direct(monkeypatch, when)
    datas = chunks(2, 24)
    # When chunks are put and flushed
    put_all(repo, datas)
    repo.chunks.flush()
    # Then every chunk is stored all the same, and the store stopped asking once refused
    # (the files already handed over by then were each refused once)
    assert_stored(repo, datas)
    assert refused
    more = chunks(3, 8)
    before = len(refused)
    put_all(repo, more)
    repo.chunks.flush()
    assert len(refused) == before
    assert_stored(repo, datas + more)


def test_a_failed_write_names_no_chunk_and_returns_every_buffer(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a disk that fails every direct write with "no space left"
    real_pwrite = os.pwrite

    def full(fd: int, data: memoryview, offset: int) -> int:
        if is_direct(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    datas = chunks(4, 40)  # more than the writer's buffers: a lost one would hang a put
    # When chunks are put and flushed, Then the flush (or a put) says the disk is full
    with pytest.raises(RepositoryWriteError, match="disk full"):
        put_all(repo, datas)
        repo.chunks.flush()
    with contextlib.suppress(RepositoryWriteError):
        repo.chunks.flush()
    # And no chunk has its name, nor reads as stored, and no temporary file is left
    for data in datas:
        digest = chunk.digest_of(data)
        assert not repo.chunks.present(digest) and not repo.chunks.reuse(digest)
    assert [p for p in (repo.path / "chunks").rglob("*") if p.is_file()] == []
    # And once the disk has room again, the same chunks are stored
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    put_all(repo, datas)
    repo.chunks.flush()
    assert_stored(repo, datas)


def test_a_chunk_file_written_directly_is_not_left_in_the_page_cache(
    repo: Repository,
) -> None:
    # The point of writing directly: a backup's chunk files do not fill the host's cache
    # (nor cost the writer the kernel's copy into it)
    datas = chunks(5, 4)
    put_all(repo, datas)
    repo.chunks.flush()
    for data in datas:
        assert cached_pages(repo.chunks.path_for(chunk.digest_of(data))) == 0


def cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore of a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def test_a_forked_child_writing_a_pooled_buffer_leaves_the_parents_bytes_alone() -> None:
    # A prefork worker's pool processes are forked from a parent that may have copied
    # drives: each must get its own copy of a buffer, never write into another's.
    buffer = direct.anonymous(direct.GROWTH)
    buffer[:4] = b"mine"
    pid = os.fork()
    if pid == 0:
        buffer[:4] = b"kids"
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert buffer[:4] == b"mine"
    assert len(buffer) == direct.GROWTH and direct.round_up(len(buffer)) == len(buffer)
