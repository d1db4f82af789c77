"""Garbage collection: delete chunk files that no snapshot and no running backup refers to.

Chunks of a failed or cancelled backup stay in ``chunks/`` after its rollback (they are
content addressed and may be reused); ``collect`` reclaims their space. It runs beside
backups, never stopping them, by these rules:

1. **Cutoff.** ``cutoff = min(now - grace, mtime of every staging directory)``. Only a chunk
   file whose mtime is older than the cutoff may be deleted. A running backup counts on
   chunks its current drive stored or reused (``ChunkStore.reuse`` refreshes the mtime) but
   has not indexed yet; the engine changes its staging directory only before such a drive
   starts and after its index is complete, so all of them are newer than the cutoff.
2. **Mark.** Every digest in the indexes of every staging area (drives already copied), then
   in the indexes of every published snapshot (by its manifest, read strictly), listed after
   the staging areas were read (a backup publishing meanwhile is found in one place or the
   other), then in every other index file a snapshot directory holds, and in every index file
   of a snapshot whose manifest an interrupted removal renamed away (txnbackup.removal). A
   manifest or an index that cannot be read, or does not match what refers to it, stops the
   collection before anything is deleted (unless its snapshot is being removed meanwhile).
3. **Sweep.** An unmarked chunk file older than the cutoff is renamed to a ``.tmp-`` name,
   looked at again, and deleted only if its mtime is still old: a backup that reused it
   just before the rename has refreshed it (it is put back), one just after finds it gone
   and stores the chunk again.

Also removed: ``<digest>.bad`` files (moved aside by verify) once no snapshot refers to
the digest or a good copy was stored again, and stray ``.tmp-*`` files older than the
cutoff in ``chunks/`` and ``vm/<vmid>/``. Snapshots are never removed here, but removals a
crash interrupted are finished first (txnbackup.removal).

gc never follows a symbolic link: a link in the repository is neither a directory to walk
nor a file to delete, so nothing outside the repository can be reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from txnbackup.chunkstore import BAD_SUFFIX
from txnbackup.constants import ZERO_DIGEST
from txnbackup.crypto import index_identity
from txnbackup.errors import IntegrityError, InvalidInput
from txnbackup.failpoints import failpoint
from txnbackup.fsutil import real_dirs, regular_files, temp_name
from txnbackup.index import IndexReader
from txnbackup.removal import finish_removals
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.snapshot_files import being_removed, snapshot_dirs

log = logging.getLogger(__name__)

DEFAULT_GRACE = 3600  # seconds; longer than any clock skew between the hosts of a fleet
TMP_PREFIX = ".tmp-"
DIGEST_HEX = 64
HEX = frozenset("0123456789abcdef")


@dataclass
class GcReport:
    """What a collection found and did (a dry run counts what it would remove)."""

    dry_run: bool
    cutoff: float
    chunks: int = 0  # chunk files looked at
    referenced: int = 0
    young: int = 0  # unreferenced, but not older than the cutoff: kept
    removed: int = 0
    removed_bytes: int = 0
    bad_removed: int = 0
    tmp_removed: int = 0
    finished: list[str] = field(default_factory=list)  # interrupted snapshot removals completed
    marked: set[bytes] = field(default_factory=set, repr=False)


def collect(repo: Repository, *, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcReport:
    """Mark every referenced chunk, then sweep the unreferenced ones older than the cutoff."""
    if grace < 0:
        raise InvalidInput(f"grace period {grace} must not be negative")
    report = GcReport(dry_run, _cutoff(repo, time.time() - grace))
    if not dry_run:
        report.finished = finish_removals(repo)
    _mark_all(repo, report.marked)
    _sweep(repo, report)
    log.info(
        "gc %s: %d chunk files, %d referenced, %d removed (%d bytes), %d kept as too young",
        repo.path,
        report.chunks,
        report.referenced,
        report.removed,
        report.removed_bytes,
        report.young,
    )
    return report


def _mark_all(repo: Repository, marked: set[bytes]) -> None:
    # Staging areas first, published snapshots second: see the module docstring.
    for index in _indexes(repo.path / "staging"):
        _mark_staging(repo, marked, index)
    try:
        for directory in snapshot_dirs(repo):
            _mark_snapshot(repo, directory, marked)
    except IntegrityError as exc:
        raise IntegrityError(f"gc: {_reason(exc)}; nothing deleted") from None
    marked.discard(ZERO_DIGEST)


def _mark_snapshot(repo: Repository, directory: Path, marked: set[bytes]) -> None:
    """A snapshot's indexes: those its manifest lists, checked against it, then every other
    index file it holds (all of them when an interrupted removal renamed the manifest away).
    Files vanishing under a removal running meanwhile are no reason to stop."""
    seen: set[Path] = set()
    snapshot = SnapshotId(directory.parent.name, directory.name)
    try:
        if not being_removed(directory):
            manifest = repo.manifest(snapshot)
            for entry in manifest.drives:
                with repo.open_index(snapshot, entry, manifest.backup) as reader:
                    marked.update(reader)
                seen.add(reader.path)
        for index in _indexes(directory, depth=0):
            if index not in seen:
                # An index no manifest lists: a sealed one may carry any backup's name.
                with IndexReader(index, repo.codec) as reader:
                    marked.update(reader)
    except IntegrityError:
        if not being_removed(directory):
            raise


def _mark_staging(repo: Repository, marked: set[bytes], index: Path) -> None:
    identity = index_identity(index.parent.name, index.stem) if repo.encrypted else None
    try:
        with IndexReader(index, repo.codec, identity) as reader:
            marked.update(reader)
    except IntegrityError as exc:
        if os.path.lexists(index):
            raise IntegrityError(f"gc: {_reason(exc)}; nothing deleted") from None
        # else a staging area published or rolled back while we read it


def _sweep(repo: Repository, report: GcReport) -> None:
    for prefix in _subdirs(repo.path / "chunks"):
        for path in _files(prefix):
            _sweep_chunk_dir_entry(repo, path, report)
    for vmdir in _subdirs(repo.path / "vm"):
        for path in _files(vmdir):
            if path.name.startswith(TMP_PREFIX):
                _remove_stray(path, report)


def _cutoff(repo: Repository, oldest_allowed: float) -> float:
    cutoff = oldest_allowed
    for staging in _subdirs(repo.path / "staging"):
        try:
            cutoff = min(cutoff, staging.lstat().st_mtime)
        except FileNotFoundError:
            continue  # published or rolled back meanwhile
    return cutoff


def _indexes(top: Path, depth: int = 1) -> Iterator[Path]:
    """The index files ``depth`` real directories below ``top`` (links are not followed)."""
    directories = [top]
    for _ in range(depth):
        directories = [sub for d in directories for sub in _subdirs(d)]
    for directory in directories:
        for path in _files(directory):
            if path.suffix == ".fidx" and not path.name.startswith(TMP_PREFIX):
                yield path


def _sweep_chunk_dir_entry(repo: Repository, path: Path, report: GcReport) -> None:
    name = path.name
    if name.startswith(TMP_PREFIX):
        _remove_stray(path, report)
    elif name.endswith(BAD_SUFFIX):
        digest = name.removesuffix(BAD_SUFFIX)
        stored_again = repo.chunks.has(digest)
        if stored_again or _raw(digest) not in report.marked:
            report.bad_removed += _remove(path, report.dry_run)
    elif _is_digest(name):
        report.chunks += 1
        if _raw(name) in report.marked:
            report.referenced += 1
        else:
            _sweep_chunk(path, report)


def _sweep_chunk(path: Path, report: GcReport) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if st.st_mtime >= report.cutoff:
        report.young += 1
        return
    if report.dry_run:
        report.removed += 1
        report.removed_bytes += st.st_size
        return
    doomed = temp_name(path)
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    failpoint("gc.chunk_renamed", path.name)
    st = doomed.lstat()
    if st.st_mtime >= report.cutoff:
        _put_back(doomed, path)  # a backup reused it between our stat and the rename
        report.young += 1
        return
    doomed.unlink()
    report.removed += 1
    report.removed_bytes += st.st_size


def _put_back(doomed: Path, path: Path) -> None:
    with contextlib.suppress(FileExistsError):  # a backup stored the chunk again meanwhile
        os.link(doomed, path)
    doomed.unlink()


def _remove_stray(path: Path, report: GcReport) -> None:
    try:
        old = path.lstat().st_mtime < report.cutoff
    except FileNotFoundError:
        return
    if old:
        report.tmp_removed += _remove(path, report.dry_run)


def _remove(path: Path, dry_run: bool) -> int:
    if dry_run:
        return 1
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _reason(exc: IntegrityError) -> str:
    return str(exc).removeprefix("integrity error: ")


def _is_digest(name: str) -> bool:
    return len(name) == DIGEST_HEX and all(c in HEX for c in name)


def _raw(digest: str) -> bytes:
    return bytes.fromhex(digest) if _is_digest(digest) else b""


def _subdirs(path: Path) -> list[Path]:
    return [Path(e.path) for e in real_dirs(path)]


def _files(path: Path) -> list[Path]:
    return [Path(e.path) for e in regular_files(path)]
