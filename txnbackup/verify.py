"""Verify a snapshot: every referenced chunk is present, decodes and matches its digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from txnbackup.constants import ZERO_DIGEST
from txnbackup.errors import CorruptChunk, IntegrityError
from txnbackup.index import IndexReader, file_sha256
from txnbackup.manifest import DriveEntry
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId


@dataclass(frozen=True)
class Problem:
    """A bad chunk (drive, byte offset, digest) or a bad index or blob (offset -1)."""

    drive: str
    offset: int
    digest: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    snapshot: SnapshotId
    chunks: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_snapshot(repo: Repository, snapshot: SnapshotId) -> VerifyReport:
    manifest = repo.manifest(snapshot)
    problems: list[Problem] = []
    checked: dict[str, str | None] = {}  # digest -> reason it is bad, None when good
    chunks = 0
    for entry in manifest.drives:
        n, drive_problems = _verify_drive(repo, snapshot, entry, checked)
        chunks += n
        problems += drive_problems
    for blob in manifest.blobs:
        path = repo.snapshot_dir(snapshot) / blob.file
        try:
            good = hashlib.sha256(path.read_bytes()).hexdigest() == blob.sha256
        except OSError:
            good = False
        if not good:
            problems.append(
                Problem(f"blob:{blob.name}", -1, blob.sha256, "blob missing or damaged")
            )
    return VerifyReport(snapshot, chunks, tuple(problems))


def _verify_drive(
    repo: Repository, snapshot: SnapshotId, entry: DriveEntry, checked: dict[str, str | None]
) -> tuple[int, list[Problem]]:
    index = repo.snapshot_dir(snapshot) / entry.index
    try:
        if file_sha256(index) != entry.index_sha256:
            return 0, [Problem(entry.name, -1, entry.index_sha256, "index checksum mismatch")]
        reader = IndexReader(index)
    except (OSError, IntegrityError) as exc:
        return 0, [Problem(entry.name, -1, entry.index_sha256, f"index unreadable: {exc}")]
    problems = []
    with reader:
        for i, raw in enumerate(reader):
            if raw == ZERO_DIGEST:
                continue
            digest = raw.hex()
            if digest not in checked:
                checked[digest] = _check_chunk(repo, digest)
            if (reason := checked[digest]) is not None:
                problems.append(Problem(entry.name, i * entry.chunk_size, digest, reason))
        return reader.count, problems


def _check_chunk(repo: Repository, digest: str) -> str | None:
    try:
        repo.chunks.get(digest)
    except CorruptChunk as exc:
        return str(exc.args[1])
    return None
