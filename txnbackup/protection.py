"""Protected snapshots: ``vm/<vmid>/<time>.protected`` beside the snapshot's directory.

The marker lives outside the write-once snapshot directory, as verify's ``.verify-failed``
does; its name is not a snapshot time, so listings ignore it. Prune and forget never remove
a snapshot with a marker. ``protect`` needs no lock against a concurrent removal: it writes
the marker, then checks that the manifest is still there, while a removal renames the
manifest away, then looks for a marker and puts the manifest back if it finds one
(txnbackup.removal). Whichever order the two steps interleave in, either the snapshot stays
or ``protect`` reports it gone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from txnbackup.errors import SnapshotNotFound
from txnbackup.fsutil import fsync_dir, write_atomic
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId, format_time

PROTECTED_SUFFIX = ".protected"


def marker(repo: Repository, snapshot: SnapshotId) -> Path:
    return repo.snapshot_dir(snapshot).with_name(f"{snapshot.time}{PROTECTED_SUFFIX}")


def is_protected(repo: Repository, snapshot: SnapshotId) -> bool:
    return marker(repo, snapshot).exists()


def protect(repo: Repository, snapshot: SnapshotId) -> bool:
    """Protect a published snapshot; False when it already was."""
    manifest = repo.snapshot_dir(snapshot) / MANIFEST_NAME
    if not manifest.exists():
        raise SnapshotNotFound(str(snapshot))
    if is_protected(repo, snapshot):
        return False
    record = {"snapshot": str(snapshot), "protected": format_time(datetime.now(UTC))}
    write_atomic(marker(repo, snapshot), json.dumps(record).encode() + b"\n")
    if not manifest.exists():  # a removal renamed it away before it could see the marker
        _unlink(marker(repo, snapshot))
        raise SnapshotNotFound(str(snapshot))
    return True


def unprotect(repo: Repository, snapshot: SnapshotId) -> bool:
    """Remove the protection; False when the snapshot was not protected."""
    if not (repo.snapshot_dir(snapshot) / MANIFEST_NAME).exists():
        raise SnapshotNotFound(str(snapshot))
    return _unlink(marker(repo, snapshot))


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
