"""A backup's staging area, and publishing it as a snapshot in one rename.

Publishing is idempotent, so a re-delivered commit is harmless: once the manifest is in the
staging area it is reused as it is, and once the staging area has been renamed, the published
snapshot carrying the backup's uuid is the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from txnbackup.constants import FORMAT_VERSION
from txnbackup.crypto import Kind, Unsealable, blob_identity, manifest_identity
from txnbackup.errors import IntegrityError
from txnbackup.failpoints import failpoint
from txnbackup.fsutil import fsync_dir, make_dir, read_file, write_atomic, write_error
from txnbackup.manifest import MANIFEST_NAME, BlobEntry, DriveEntry, Manifest, index_file
from txnbackup.names import check_blob_name
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId

log = logging.getLogger(__name__)
ENTRY_SUFFIX = ".entry.json"


class Staging:
    def __init__(self, repo: Repository, backup: str) -> None:
        self.repo = repo
        self.backup = backup
        self.dir = repo.staging_dir(backup)

    def create(self) -> None:
        try:
            make_dir(self.dir, exist_ok=True)
        except OSError as exc:
            raise write_error(self.dir, exc) from exc

    def index_path(self, drive: str) -> Path:
        return self.dir / index_file(drive)

    def record_drive(self, entry: DriveEntry) -> None:
        write_atomic(self.dir / f"{entry.name}{ENTRY_SUFFIX}", json.dumps(entry.to_dict()).encode())

    def drive_entry(self, drive: str) -> DriveEntry | None:
        try:
            raw = read_file(self.dir / f"{drive}{ENTRY_SUFFIX}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IntegrityError(f"backup {self.backup}: drive {drive}: {exc}") from None
        return DriveEntry.from_json(raw, f"staging area of backup {self.backup}")

    def exists(self) -> bool:
        return self.dir.is_dir()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def publish(
    staging: Staging,
    vmid: str,
    start_time: SnapshotId,
    drives: Sequence[str],
    blobs: Mapping[str, bytes],
    bitmap_epochs: Mapping[str, str] | None = None,
) -> SnapshotId:
    """Write the manifest (last), then rename the staging area to the snapshot.

    ``bitmap_epochs`` (drive -> epoch of its fresh bitmap) go into the manifest, so the next
    backup can tell whether a bitmap in Redis is the one that started at this snapshot.
    """
    repo = staging.repo
    if not staging.exists():
        done = repo.find_backup(vmid, staging.backup)
        if done is None:
            raise IntegrityError(f"staging area of backup {staging.backup} is gone")
        return done
    manifest_path = staging.dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest = _written_manifest(staging, vmid)
    else:
        target = _free_time(repo, start_time)
        manifest = _write_manifest(staging, vmid, target, drives, blobs, bitmap_epochs or {})
    for name in drives:
        (staging.dir / f"{name}{ENTRY_SUFFIX}").unlink(missing_ok=True)
    failpoint("commit.before_rename")
    target = SnapshotId(vmid, manifest.time)
    parent = repo.snapshot_dir(target).parent
    try:
        make_dir(parent, exist_ok=True)
        fsync_dir(parent.parent)  # the first snapshot of a VM: make vm/<vmid> itself durable
        fsync_dir(staging.dir)
        os.rename(staging.dir, repo.snapshot_dir(target))
        fsync_dir(parent)
        fsync_dir(staging.dir.parent)
    except OSError as exc:
        raise write_error(parent, exc) from exc
    log.info("vm %s backup %s: published snapshot %s", vmid, staging.backup, target)
    return target


def _written_manifest(staging: Staging, vmid: str) -> Manifest:
    """The manifest a commit wrote before (a repeated commit publishes it as it is). Sealed,
    it names its snapshot, which must be the one it describes, of this VM and backup."""
    where = f"staging area of backup {staging.backup}"
    codec = staging.repo.codec
    try:
        raw = read_file(staging.dir / MANIFEST_NAME)
        claimed = codec.identity(raw)
        manifest = Manifest.from_json(codec.open(Kind.MANIFEST, raw, claimed), where)
    except OSError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    except Unsealable as exc:
        raise IntegrityError(f"{where}: manifest {exc.reason}") from None
    ours = (manifest.vmid, manifest.backup) == (vmid, staging.backup)
    if not ours or claimed not in (None, manifest_identity(vmid, manifest.time)):
        raise IntegrityError(f"{where}: its manifest is not this backup's")
    return manifest


def _free_time(repo: Repository, wanted: SnapshotId) -> SnapshotId:
    """Snapshot times strictly increase per VM, even for two backups in one second."""
    newest = repo.snapshots(wanted.vmid)
    candidate = wanted
    if newest and newest[0].time >= candidate.time:
        candidate = newest[0].next_second()
    while repo.snapshot_dir(candidate).exists():
        candidate = candidate.next_second()
    return candidate


def _write_manifest(
    staging: Staging,
    vmid: str,
    target: SnapshotId,
    drives: Sequence[str],
    blobs: Mapping[str, bytes],
    bitmap_epochs: Mapping[str, str],
) -> Manifest:
    entries = []
    for name in drives:
        entry = staging.drive_entry(name)
        if entry is None:
            raise IntegrityError(f"backup {staging.backup}: drive {name} was not copied")
        entries.append(entry)
    blob_entries = [
        _write_blob(staging, target, name, data) for name, data in sorted(blobs.items())
    ]
    manifest = Manifest(
        format=FORMAT_VERSION,
        vmid=vmid,
        time=target.time,
        backup=staging.backup,
        repository=staging.repo.id,
        chunk_size=staging.repo.chunk_size,
        drives=tuple(entries),
        blobs=tuple(blob_entries),
        bitmaps={name: bitmap_epochs[name] for name in drives if bitmap_epochs.get(name)},
    )
    identity = manifest_identity(vmid, target.time)
    sealed = staging.repo.codec.seal(Kind.MANIFEST, identity, manifest.to_json())
    write_atomic(staging.dir / MANIFEST_NAME, sealed)
    return manifest


def _write_blob(staging: Staging, target: SnapshotId, name: str, data: bytes) -> BlobEntry:
    file = f"{check_blob_name(name)}.blob"
    identity = blob_identity(target.vmid, target.time, name)
    sealed = staging.repo.codec.seal(Kind.BLOB, identity, data)
    write_atomic(staging.dir / file, sealed, sync_dir=False)
    return BlobEntry(name, file, len(data), hashlib.sha256(data).hexdigest())
