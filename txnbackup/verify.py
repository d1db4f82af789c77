"""Verify a snapshot: every referenced chunk is present, decodes, matches its digest and has
the length of the drive's slice it fills: every check a restore makes of it.

As Proxmox Backup Server does, verify also acts on what it finds. A chunk file that does not
decode is moved aside (``ChunkStore.quarantine``): its digest then reads as not stored, so
the next backup that reads the chunk stores it again instead of deduplicating against the
damage. A snapshot that fails gets a marker beside it, ``vm/<vmid>/<time>.verify-failed``
(outside the write-once snapshot directory; a later verify that passes removes it), and a
dirty bitmap based on a marked snapshot is not used (txnbackup.action).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from txnbackup.blob import load_blob
from txnbackup.constants import ZERO_DIGEST
from txnbackup.errors import CorruptChunk, IntegrityError
from txnbackup.fsutil import fsync_dir, write_atomic, write_error
from txnbackup.geometry import extent
from txnbackup.index import IndexReader
from txnbackup.manifest import DriveEntry
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId, format_time

FAILED_SUFFIX = ".verify-failed"


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
    checked: dict[str, str | int] = {}  # digest -> its length, or why it is bad
    chunks = 0
    for entry in manifest.drives:
        n, drive_problems = _verify_drive(repo, snapshot, entry, manifest.backup, checked)
        chunks += n
        problems += drive_problems
    for blob in manifest.blobs:
        try:
            load_blob(repo, snapshot, blob)
        except IntegrityError as exc:
            reason = f"blob missing or damaged: {exc.args[0]}"
            problems.append(Problem(f"blob:{blob.name}", -1, blob.sha256, reason))
    report = VerifyReport(snapshot, chunks, tuple(problems))
    _record(repo, report)
    return report


def failed_marker(repo: Repository, snapshot: SnapshotId) -> Path:
    return repo.snapshot_dir(snapshot).with_name(f"{snapshot.time}{FAILED_SUFFIX}")


def failed_verification(repo: Repository, snapshot: SnapshotId) -> bool:
    """Whether the last verify of the snapshot found a problem."""
    return failed_marker(repo, snapshot).exists()


def _record(repo: Repository, report: VerifyReport) -> None:
    marker = failed_marker(repo, report.snapshot)
    try:
        if report.ok:
            if marker.exists():
                marker.unlink()
                fsync_dir(marker.parent)
            return
    except OSError as exc:
        raise write_error(marker, exc) from exc
    record = {
        "snapshot": str(report.snapshot),
        "verified": format_time(datetime.now(UTC)),
        "problems": [asdict(p) for p in report.problems],
    }
    write_atomic(marker, json.dumps(record, indent=2).encode() + b"\n")


def _verify_drive(
    repo: Repository,
    snapshot: SnapshotId,
    entry: DriveEntry,
    backup: str,
    checked: dict[str, str | int],
) -> tuple[int, list[Problem]]:
    try:
        reader: IndexReader = repo.open_index(snapshot, entry, backup)
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
            offset, length = extent(i, entry.size, entry.chunk_size)
            if (reason := _problem(checked[digest], length)) is not None:
                problems.append(Problem(entry.name, offset, digest, reason))
        return reader.count, problems


def _problem(checked: str | int, length: int) -> str | None:
    """Why the chunk cannot fill a slice of ``length`` bytes (restore checks the same)."""
    if isinstance(checked, str):
        return checked
    return None if checked == length else f"length {checked}, expected {length}"


def _check_chunk(repo: Repository, digest: str) -> str | int:
    """The chunk's plaintext length, or why it does not decode."""
    try:
        return len(repo.chunks.get(digest))
    except CorruptChunk as exc:
        reason = str(exc.args[1])
        if repo.chunks.present(digest) and repo.chunks.quarantine(digest):
            reason += "; file moved aside (.bad)"
        return reason
