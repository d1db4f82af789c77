"""Config blobs of a snapshot (the VM's config files, stored whole): read one back, checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from txnbackup.errors import IntegrityError, InvalidInput, NotFound, TargetWriteError
from txnbackup.fsutil import fsync_dir, os_reason, temp_name
from txnbackup.names import check_blob_name
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId


def read_blob(repo: Repository, snapshot: SnapshotId, name: str) -> bytes:
    """The blob's bytes, checked against the size and SHA-256 in the manifest."""
    manifest = repo.manifest(snapshot)
    entry = next((b for b in manifest.blobs if b.name == check_blob_name(name)), None)
    if entry is None:
        names = ", ".join(b.name for b in manifest.blobs) or "none"
        raise NotFound(f"config {name} in snapshot {snapshot} (it has: {names})")
    try:
        data = (repo.snapshot_dir(snapshot) / entry.file).read_bytes()
    except OSError as exc:
        raise IntegrityError(f"config {name} of {snapshot} is unreadable: {exc}") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise IntegrityError(f"config {name} of {snapshot} does not match its checksum")
    return data


def restore_blob(
    repo: Repository, snapshot: SnapshotId, name: str, target: Path, *, overwrite: bool = False
) -> int:
    """Write the blob to the file ``target`` (appearing only complete); its size."""
    data = read_blob(repo, snapshot, name)
    if target.exists() and (not target.is_file() or not overwrite):
        raise InvalidInput(f"{target} exists; pass --overwrite to replace a file")
    if not target.parent.is_dir():
        raise NotFound(f"directory {target.parent}")
    tmp = temp_name(target)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TargetWriteError(str(target), os_reason(exc)) from exc
    return len(data)
