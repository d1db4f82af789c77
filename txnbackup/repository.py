"""The repository: a directory of write-once files.

Layout (see docs/format.md)::

    config.json                      format version, chunk size, repository id
    chunks/<4 hex>/<digest>          chunk files (txnbackup.chunk)
    vm/<vmid>/<time>/                published snapshots: manifest.json, <drive>.fidx, <blob>.blob
    staging/<backup uuid>/           a backup in progress; never visible as a snapshot

Transaction rules: a backup writes chunks (shared, content addressed, harmless if the backup
fails) and its indexes into its staging area only. Publishing writes the manifest into the
staging area, then renames the staging area to ``vm/<vmid>/<time>`` in one step. A snapshot
therefore exists completely or not at all; nothing in it is modified afterwards (verify keeps
its verdict beside it, ``vm/<vmid>/<time>.verify-failed``: txnbackup.verify).
Rolling back deletes the staging area. Chunks of a failed backup stay and are reused by dedup
until `txnbackup gc` (txnbackup.gc) deletes the unreferenced ones.

Reading trusts nothing it finds: a manifest is parsed strictly and checked against the
snapshot id and the repository that hold it, an index against its manifest entry (checksum,
size, chunk size, count), and no path below the repository is followed through a symbolic
link. Files are created 0600, directories 0700 (txnbackup.fsutil).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from txnbackup.chunkstore import ChunkStore
from txnbackup.constants import DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from txnbackup.errors import (
    FormatVersionMismatch,
    IntegrityError,
    InvalidInput,
    ManifestInvalid,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
)
from txnbackup.fsutil import (
    DIR_MODE,
    fsync_dir,
    is_real_dir,
    make_dir,
    read_file,
    real_dirs,
    regular_files,
    write_atomic,
)
from txnbackup.index import IndexReader
from txnbackup.manifest import MANIFEST_NAME, DriveEntry, Manifest, index_file
from txnbackup.names import VMID_RE, check_backup_id, check_vmid
from txnbackup.snapshot import SnapshotId, parse_time

CONFIG_NAME = "config.json"
SUBDIRS = ("chunks", "vm", "staging")


@dataclass(frozen=True)
class RepositoryConfig:
    format: int
    chunk_size: int
    id: str


def check_chunk_size(chunk_size: int) -> int:
    power_of_two = chunk_size > 0 and chunk_size & (chunk_size - 1) == 0
    if not power_of_two or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(
            f"chunk size {chunk_size} must be a power of two from {MIN_CHUNK_SIZE} "
            f"to {MAX_CHUNK_SIZE} bytes"
        )
    return chunk_size


class Repository:
    def __init__(self, path: Path, config: RepositoryConfig) -> None:
        self.path = path
        self.config = config
        self.chunks = ChunkStore(path / "chunks")

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @classmethod
    def init(cls, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Repository:
        check_chunk_size(chunk_size)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RepositoryExists(str(path))
        config = RepositoryConfig(FORMAT_VERSION, chunk_size, str(uuid.uuid4()))
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, DIR_MODE)
            for sub in SUBDIRS:
                make_dir(path / sub)
            write_atomic(path / CONFIG_NAME, json.dumps(config.__dict__, indent=2).encode())
            fsync_dir(path)
        except OSError as exc:
            raise RepositoryError(f"cannot create repository at {path}: {exc.strerror}") from exc
        return cls(path, config)

    @classmethod
    def open(cls, path: Path) -> Repository:
        try:
            raw = json.loads(read_file(path / CONFIG_NAME))
        except (FileNotFoundError, NotADirectoryError):
            raise RepositoryNotFound(str(path)) from None
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"cannot read {path / CONFIG_NAME}: {exc}") from None
        if not isinstance(raw, dict):
            raise RepositoryError(f"{path / CONFIG_NAME} is not a JSON object")
        if raw.get("format") != FORMAT_VERSION:
            raise FormatVersionMismatch(str(path), raw.get("format"), FORMAT_VERSION)
        try:
            chunk_size = check_chunk_size(int(raw["chunk_size"]))
            config = RepositoryConfig(FORMAT_VERSION, chunk_size, str(raw["id"]))
        except (KeyError, TypeError, ValueError, InvalidInput) as exc:
            raise RepositoryError(f"{path / CONFIG_NAME}: bad chunk_size or id: {exc}") from None
        for sub in SUBDIRS:
            if (path / sub).exists() and not is_real_dir(path / sub):
                raise RepositoryError(f"{path / sub} is not a directory (or is a symbolic link)")
        return cls(path, config)

    def snapshot_dir(self, snapshot: SnapshotId) -> Path:
        # A SnapshotId may be built without parse(): its parts are checked again here.
        parse_time(snapshot.time)
        return self.path / "vm" / check_vmid(snapshot.vmid) / snapshot.time

    def index_path(self, snapshot: SnapshotId, drive: str) -> Path:
        """A drive's index in a snapshot, derived from the drive name, never from a field."""
        return self.snapshot_dir(snapshot) / index_file(drive)

    def staging_dir(self, backup: str) -> Path:
        return self.path / "staging" / check_backup_id(backup)

    def vmids(self) -> list[str]:
        return [e.name for e in real_dirs(self.path / "vm") if VMID_RE.fullmatch(e.name)]

    def snapshots(self, vmid: str | None = None) -> list[SnapshotId]:
        """Published snapshots, newest first (per VM when vmid is given)."""
        vmids = [check_vmid(vmid)] if vmid else self.vmids()
        found = [
            SnapshotId(v, d.name)
            for v in vmids
            if is_real_dir(self.path / "vm" / v)
            for d in real_dirs(self.path / "vm" / v)
            if _is_time(d.name) and MANIFEST_NAME in {f.name for f in regular_files(Path(d))}
        ]
        return sorted(found, key=lambda s: (s.time, s.vmid), reverse=True)

    def manifest(self, snapshot: SnapshotId) -> Manifest:
        """The snapshot's manifest, parsed strictly and checked against where it lies."""
        where = str(snapshot)
        directory = self.snapshot_dir(snapshot)
        if not is_real_dir(directory.parent) or not is_real_dir(directory):
            if directory.is_symlink() or directory.parent.is_symlink():
                raise ManifestInvalid(where, "its directory is a symbolic link")
            raise SnapshotNotFound(where)
        try:
            raw = read_file(directory / MANIFEST_NAME)
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotNotFound(where) from None
        except OSError as exc:
            raise ManifestInvalid(where, exc.strerror or str(exc)) from None
        manifest = Manifest.from_json(raw, where)
        mismatch = [
            f"{name} {found!r}, expected {wanted!r}"
            for name, found, wanted in (
                ("vmid", manifest.vmid, snapshot.vmid),
                ("time", manifest.time, snapshot.time),
                ("chunk_size", manifest.chunk_size, self.chunk_size),
                ("repository", manifest.repository, self.id),
            )
            if found != wanted
        ]
        if mismatch:
            raise ManifestInvalid(where, "; ".join(mismatch))
        return manifest

    def open_index(self, snapshot: SnapshotId, entry: DriveEntry) -> IndexReader:
        """The drive's index, checked against its manifest entry (checksum and header)."""
        reader = IndexReader(self.index_path(snapshot, entry.name))
        try:
            if reader.sha256() != entry.index_sha256:
                raise IntegrityError(
                    f"index of drive {entry.name} in {snapshot} does not match its checksum"
                )
            header = (reader.size, reader.chunk_size, reader.count)
            listed = (entry.size, entry.chunk_size, entry.chunks)
            if header != listed:
                raise IntegrityError(
                    f"index of drive {entry.name} in {snapshot}: size, chunk size, count "
                    f"{header} differ from the manifest's {listed}"
                )
        except BaseException:
            reader.close()
            raise
        return reader

    def complete_drive(self, snapshot: SnapshotId, drive: str) -> DriveEntry | None:
        """The drive's entry if the snapshot is published and its index intact, else None."""
        try:
            entry = self.manifest(snapshot).drive(drive)
            if entry is None:
                return None
            self.open_index(snapshot, entry).close()
        except (SnapshotNotFound, IntegrityError, InvalidInput, OSError):
            return None
        return entry

    def find_backup(self, vmid: str, backup: str) -> SnapshotId | None:
        """The snapshot a backup published, if any (re-delivered commits use this)."""
        for snapshot in self.snapshots(vmid):
            with contextlib.suppress(SnapshotNotFound, IntegrityError):
                if self.manifest(snapshot).backup == backup:
                    return snapshot
        return None


def _is_time(name: str) -> bool:
    try:
        parse_time(name)
    except InvalidInput:
        return False
    return not name.startswith(".") and os.sep not in name
