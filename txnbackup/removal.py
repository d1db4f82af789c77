"""Removing a snapshot so that a crash at any step leaves it whole or gone.

1. Rename ``manifest.json`` to ``manifest.json.removing`` and fsync the snapshot directory.
   From here on no reader sees the snapshot (a snapshot is a directory with
   ``manifest.json``), and no manifest can point at a file that was deleted.
2. If the snapshot was protected meanwhile (txnbackup.protection), rename the manifest back:
   nothing has been deleted yet.
3. Delete every other file of the directory, then ``manifest.json.removing``, then the
   directory and the ``.verify-failed`` and ``.protected`` files beside it; fsync
   ``vm/<vmid>/``.

A crash after step 1 leaves a *half-removed* snapshot: a directory named for a time holding
``manifest.json.removing`` (or nothing at all). ``finish_removals``, run by every prune,
forget and gc, completes it. Chunks are never deleted here: ``txnbackup gc`` reclaims those
no index refers to any more.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from txnbackup.crypto import Kind, Unsealable, manifest_identity
from txnbackup.errors import IntegrityError, SnapshotNotFound, SnapshotProtected
from txnbackup.failpoints import failpoint
from txnbackup.fsutil import fsync_dir, read_file
from txnbackup.manifest import MANIFEST_NAME, Manifest
from txnbackup.protection import PROTECTED_SUFFIX
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.snapshot_files import snapshot_dirs
from txnbackup.verify import FAILED_SUFFIX

log = logging.getLogger(__name__)

REMOVING_NAME = f"{MANIFEST_NAME}.removing"


def remove_snapshot(repo: Repository, snapshot: SnapshotId) -> None:
    """Remove a published snapshot (its chunks stay until gc); see the module docstring."""
    directory = repo.snapshot_dir(snapshot)
    manifest, removing = directory / MANIFEST_NAME, directory / REMOVING_NAME
    try:
        os.rename(manifest, removing)
    except (FileNotFoundError, NotADirectoryError):
        raise SnapshotNotFound(str(snapshot)) from None
    fsync_dir(directory)
    failpoint("prune.manifest_renamed", str(snapshot))
    if _beside(directory, PROTECTED_SUFFIX).exists():
        os.rename(removing, manifest)
        fsync_dir(directory)
        raise SnapshotProtected(str(snapshot))
    _delete(directory)
    log.info("removed snapshot %s", snapshot)


def half_removed(repo: Repository, vmid: str | None = None) -> Iterator[Path]:
    """Directories of snapshots whose removal was interrupted."""
    for directory in snapshot_dirs(repo, vmid):
        if _interrupted(directory):
            yield directory


def finish_removals(repo: Repository, vmid: str | None = None) -> list[str]:
    """Complete interrupted removals; the ids of the snapshots finished."""
    finished = []
    for directory in list(half_removed(repo, vmid)):
        if _restore_if_protected(repo, directory):
            continue
        _delete(directory)
        finished.append(f"vm/{directory.parent.name}/{directory.name}")
        log.info("finished removing snapshot %s", finished[-1])
    return finished


def _interrupted(directory: Path) -> bool:
    if (directory / MANIFEST_NAME).exists():
        return False
    try:
        names = {p.name for p in directory.iterdir()}
    except FileNotFoundError:
        return False
    return REMOVING_NAME in names or not names


def _restore_if_protected(repo: Repository, directory: Path) -> bool:
    """Put back a snapshot protected before its removal's crash (nothing of it deleted)."""
    removing = directory / REMOVING_NAME
    if not _beside(directory, PROTECTED_SUFFIX).exists():
        return False
    identity = manifest_identity(directory.parent.name, directory.name)
    try:
        raw = repo.codec.open(Kind.MANIFEST, read_file(removing), identity)
        manifest = Manifest.from_json(raw, str(removing))
    except (OSError, IntegrityError, Unsealable):
        return False
    files = [d.index for d in manifest.drives] + [b.file for b in manifest.blobs]
    if not all((directory / name).exists() for name in files):
        return False
    os.rename(removing, directory / MANIFEST_NAME)
    fsync_dir(directory)
    log.warning("kept protected snapshot %s whose removal was interrupted", directory)
    return True


def _delete(directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        if path.name != REMOVING_NAME:
            _unlink(path)
            failpoint("prune.file_removed", path.name)
    _unlink(directory / REMOVING_NAME)
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()
    for suffix in (FAILED_SUFFIX, PROTECTED_SUFFIX):
        _unlink(_beside(directory, suffix))
    fsync_dir(directory.parent)


def _beside(directory: Path, suffix: str) -> Path:
    return directory.with_name(f"{directory.name}{suffix}")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
