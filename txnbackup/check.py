"""Check the whole repository, reading only: every snapshot's manifest and indexes parse and
agree with each other and with the repository, every blob matches its checksum, every chunk
an index refers to exists, and (``read_data``) decodes to its digest.

Unlike verify (txnbackup.verify), check changes nothing: it moves no chunk aside and marks
no snapshot. ``Subset(n, m)`` reads the chunks whose digest, as a number, is ``n - 1``
modulo ``m``: the same ones on every run, so runs 1/m … m/m read every chunk once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from txnbackup.blob import load_blob
from txnbackup.constants import ZERO_DIGEST
from txnbackup.crypto import index_identity
from txnbackup.errors import CorruptChunk, IntegrityError, InvalidInput, SnapshotNotFound
from txnbackup.geometry import chunk_count
from txnbackup.index import IndexReader, file_sha256
from txnbackup.manifest import DriveEntry, Manifest
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.snapshot_files import being_removed, snapshot_dirs


@dataclass(frozen=True)
class Subset:
    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}/{self.m}"

    @classmethod
    def parse(cls, text: str) -> Subset:
        try:
            n, m = (int(part) for part in text.split("/"))
        except ValueError:
            raise InvalidInput(f"subset {text!r} is not like 1/10") from None
        if not 1 <= n <= m:
            raise InvalidInput(f"subset {text!r}: need 1 <= n <= m")
        return cls(n, m)

    def holds(self, digest: bytes) -> bool:
        return int.from_bytes(digest, "big") % self.m == self.n - 1


ALL = Subset(1, 1)


@dataclass(frozen=True)
class CheckProblem:
    where: str  # a snapshot, "<snapshot> <drive>" or "<snapshot> blob <name>", or "chunk <digest>"
    reason: str


@dataclass
class CheckReport:
    subset: Subset | None  # chunks read, when any
    snapshots: int = 0
    half_removed: list[str] = field(default_factory=list)  # the next prune or gc finishes them
    chunks: int = 0  # distinct chunks referred to
    read: int = 0  # of them read and decoded
    problems: list[CheckProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(repo: Repository, read_data: Subset | None = None) -> CheckReport:
    report = CheckReport(read_data)
    referrers: dict[bytes, str] = {}  # digest -> first "<snapshot> <drive> offset <n>"
    for directory in snapshot_dirs(repo):
        snapshot = SnapshotId(directory.parent.name, directory.name)
        if being_removed(directory):
            report.half_removed.append(str(snapshot))
            continue
        report.snapshots += 1
        report.problems += _check_snapshot(repo, snapshot, referrers)
    report.chunks = len(referrers)
    for digest, referrer in sorted(referrers.items()):
        problem = _check_chunk(repo, digest, read_data)
        if problem is not None:
            report.problems.append(CheckProblem(f"chunk {digest.hex()}", f"{problem} ({referrer})"))
        elif read_data is not None and read_data.holds(digest):
            report.read += 1
    return report


def _check_snapshot(
    repo: Repository, snapshot: SnapshotId, referrers: dict[bytes, str]
) -> Iterator[CheckProblem]:
    try:
        manifest = repo.manifest(snapshot)
    except (SnapshotNotFound, IntegrityError) as exc:
        yield CheckProblem(str(snapshot), str(exc))
        return
    for disagreement in _manifest_disagreements(repo, snapshot, manifest):
        yield CheckProblem(str(snapshot), disagreement)
    for entry in manifest.drives:
        if drive_problem := _check_drive(repo, snapshot, manifest, entry, referrers):
            yield CheckProblem(f"{snapshot} {entry.name}", drive_problem)
    for blob in manifest.blobs:
        try:
            load_blob(repo, snapshot, blob)
        except IntegrityError as exc:
            yield CheckProblem(f"{snapshot} blob {blob.name}", str(exc.args[0]))


def _manifest_disagreements(
    repo: Repository, snapshot: SnapshotId, manifest: Manifest
) -> Iterator[str]:
    if (manifest.vmid, manifest.time) != (snapshot.vmid, snapshot.time):
        yield f"manifest names vm/{manifest.vmid}/{manifest.time}"
    if manifest.repository != repo.id:
        yield f"manifest is of repository {manifest.repository}, not {repo.id}"
    if manifest.chunk_size != repo.chunk_size:
        yield f"chunk size {manifest.chunk_size}, the repository's is {repo.chunk_size}"


def _check_drive(
    repo: Repository,
    snapshot: SnapshotId,
    manifest: Manifest,
    entry: DriveEntry,
    referrers: dict[bytes, str],
) -> str | None:
    index = repo.snapshot_dir(snapshot) / entry.index
    identity = index_identity(manifest.backup, entry.name) if repo.encrypted else None
    try:
        if not repo.encrypted and file_sha256(index) != entry.index_sha256:
            return f"index {entry.index} does not match its checksum"
        with IndexReader(index, repo.codec, identity) as reader:
            if repo.encrypted and reader.sha256() != entry.index_sha256:
                return f"index {entry.index} does not match its checksum"
            geometry = (reader.size, reader.chunk_size, reader.count)
            expected = (entry.size, entry.chunk_size, entry.chunks)
            if geometry != expected or entry.chunks != chunk_count(entry.size, entry.chunk_size):
                return f"index header {geometry} disagrees with the manifest {expected}"
            for i, digest in enumerate(reader):
                if digest != ZERO_DIGEST and digest not in referrers:
                    referrers[digest] = f"{snapshot} {entry.name} offset {i * entry.chunk_size}"
    except FileNotFoundError:
        return f"index {entry.index} is missing"
    except (OSError, IntegrityError) as exc:
        return f"index {entry.index} unreadable: {exc}"
    return None


def _check_chunk(repo: Repository, digest: bytes, read_data: Subset | None) -> str | None:
    if read_data is None or not read_data.holds(digest):
        return None if repo.chunks.has(digest.hex()) else "missing from the repository"
    try:
        repo.chunks.get(digest.hex())
    except CorruptChunk as exc:
        return str(exc.args[1])
    return None
