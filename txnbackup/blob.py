"""Config blobs of a snapshot (the VM's config files, stored whole): read one back, checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from txnbackup.crypto import Kind, Unsealable, blob_identity
from txnbackup.errors import IntegrityError, InvalidInput, NotFound, TargetWriteError
from txnbackup.fsutil import fsync_dir, os_reason, read_file, temp_name
from txnbackup.manifest import BlobEntry
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
    return load_blob(repo, snapshot, entry)


def load_blob(repo: Repository, snapshot: SnapshotId, entry: BlobEntry) -> bytes:
    """A blob the manifest lists, opened (when sealed) and checked; IntegrityError naming it."""
    what = f"config {entry.name} of {snapshot}"
    try:
        raw = read_file(repo.snapshot_dir(snapshot) / entry.file)
        identity = blob_identity(snapshot.vmid, snapshot.time, entry.name)
        data = repo.codec.open(Kind.BLOB, raw, identity)
    except OSError as exc:
        raise IntegrityError(f"{what} is unreadable: {exc.strerror or exc}") from None
    except Unsealable as exc:
        raise IntegrityError(f"{what} {exc.reason}") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise IntegrityError(f"{what} does not match its checksum")
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
