"""What the chunk store makes durable, and in which order (txnbackup.chunkstore and
txnbackup.writeback): a chunk file has its name only once its data is fsynced, ``flush``
returns only once every chunk put before it is named and its directory fsynced, and the copy
engine names a drive's index only after that.

``os.fsync`` is instrumented, not replaced: every call still syncs, and the log records what
the directory held at that moment (after a file's fsync returned, before a directory's began).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.builders import CS, make_image, mixed_content, no_cancel, no_progress
from txnbackup import chunk
from txnbackup.action import BitmapAction
from txnbackup.drive import FileDrive
from txnbackup.engine import CopyJob, copy_drive
from txnbackup.errors import RepositoryWriteError
from txnbackup.index import IndexReader
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.staging import Staging


@dataclass(frozen=True)
class Synced:
    """One fsync: of a directory, or of a file (``path`` is where its fd points)."""

    path: Path
    ino: int
    directory: bool
    names: frozenset[str]  # what the (file's) directory held


class FsyncLog:
    def __init__(self, fail_files: int | None = None) -> None:
        self.events: list[Synced] = []
        self._lock = threading.Lock()
        self._real = os.fsync
        self._fail_files = fail_files  # an errno for every fsync of a regular file

    def __call__(self, fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._record(Synced(path, st.st_ino, True, frozenset(os.listdir(path))))
            self._real(fd)
            return
        if self._fail_files is not None:
            raise OSError(self._fail_files, os.strerror(self._fail_files))
        self._real(fd)
        self._record(Synced(path, st.st_ino, False, frozenset(os.listdir(path.parent))))

    def _record(self, event: Synced) -> None:
        with self._lock:
            self.events.append(event)

    def position(self, found: Callable[[Synced], bool]) -> int:
        return next((i for i, e in enumerate(self.events) if found(e)), -1)

    def assert_durable(self, path: Path) -> int:
        """The chunk file at ``path`` was fsynced while it did not have its name, then its
        directory and the store's root were fsynced while they held it; the position of the
        last of these."""
        ino, directory = path.stat().st_ino, path.parent
        data = self.position(lambda e: not e.directory and e.ino == ino)
        assert data >= 0, f"{path.name}: its data was never fsynced"
        assert path.name not in self.events[data].names, f"{path.name}: named before its fsync"
        entry = self.position(
            lambda e: e.directory and e.path == directory and path.name in e.names
        )
        assert entry > data, f"{path.name}: its directory entry was never fsynced"
        root = self.position(
            lambda e: e.directory and e.path == directory.parent and directory.name in e.names
        )
        assert root >= 0, f"{directory.name}: the prefix directory was never fsynced in chunks/"
        return max(data, entry, root)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FsyncLog]:
    log = FsyncLog()
    monkeypatch.setattr(os, "fsync", log)
    yield log


def encoded_chunks(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    datas = [rng.randbytes(CS) for _ in range(count)]
    return [(chunk.digest_of(d), chunk.encode(d)) for d in datas]


def test_flush_makes_every_chunk_put_before_it_durable_and_named_only_once_synced(
    repo: Repository, fsyncs: FsyncLog
) -> None:
    # Given 24 chunks put from 4 threads at once (more than the writeback lets wait)
    chunks = encoded_chunks(24, seed=1)
    with ThreadPoolExecutor(4) as pool:
        stored = list(pool.map(lambda c: repo.chunks.put(c[0], c[1]), chunks))
    assert stored == [True] * len(chunks)

    # When the store is flushed
    repo.chunks.flush()

    # Then each chunk file is there under its name, and it got that name only after its
    # data was fsynced, and its directory entry was fsynced after it had the name
    for digest, _ in chunks:
        fsyncs.assert_durable(repo.chunks.path_for(digest))
    assert not any(p.name.startswith(".tmp-") for p in (repo.path / "chunks").rglob("*"))


def test_a_digest_put_again_before_the_flush_is_stored_once(
    repo: Repository, fsyncs: FsyncLog
) -> None:
    # Given a chunk put but not yet flushed
    ((digest, encoded),) = encoded_chunks(1, seed=2)
    assert repo.chunks.put(digest, encoded) is True

    # When the same digest is put, and looked for, before the flush
    again, reused = repo.chunks.put(digest, encoded), repo.chunks.reuse(digest)
    repo.chunks.flush()

    # Then it counts as already stored (the flush makes it durable), and one file holds it
    assert (again, reused) == (False, True)
    fsyncs.assert_durable(repo.chunks.path_for(digest))
    assert [p.name for p in (repo.path / "chunks").rglob("*") if p.is_file()] == [digest]


def test_a_chunk_whose_fsync_fails_never_gets_its_name_and_flush_says_why(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a disk that fails every chunk file's fsync with "no space left"
    monkeypatch.setattr(os, "fsync", FsyncLog(fail_files=errno.ENOSPC))
    chunks = encoded_chunks(3, seed=3)

    # When chunks are put and the store flushed, Then the flush fails saying the disk is full
    with pytest.raises(RepositoryWriteError, match="disk full"):
        for digest, encoded in chunks:
            repo.chunks.put(digest, encoded)
        repo.chunks.flush()

    # (the error may have come from a put, with files still queued: let the writeback finish)
    with contextlib.suppress(RepositoryWriteError):
        repo.chunks.flush()
    # And no chunk has its name, nor reads as stored, and no temporary file is left
    for digest, _ in chunks:
        assert not repo.chunks.present(digest) and not repo.chunks.reuse(digest)
    assert [p for p in (repo.path / "chunks").rglob("*") if p.is_file()] == []


def test_a_drive_index_is_named_only_after_every_chunk_it_names_is_durable(
    repo: Repository, fsyncs: FsyncLog, tmp_path: Path
) -> None:
    # Given a drive of 40 chunks (random, text and zero ones) copied by 4 threads
    image = make_image(tmp_path, "scsi0", mixed_content(40 * CS, seed=4))
    backup = new_backup_id()
    staging = Staging(repo, backup)
    staging.create()
    job = CopyJob("100", backup, "scsi0", BitmapAction.NEW, workers=4)

    # When the drive is copied
    with FileDrive("scsi0", image.path) as reader:
        copy_drive(job, reader, staging, None, no_cancel, no_progress)

    # Then every chunk its index names was durable before the index was fsynced (and named)
    index_path = staging.index_path("scsi0")
    index_synced = fsyncs.position(
        lambda e: not e.directory and e.path.name.endswith(index_path.name)
    )
    with IndexReader(index_path) as index:
        digests = {d.hex() for d in index if any(d)}
    assert len(digests) > 20
    for digest in digests:
        assert fsyncs.assert_durable(repo.chunks.path_for(digest)) < index_synced
