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
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
)
from txnbackup.fsutil import fsync_dir, write_atomic
from txnbackup.index import file_sha256
from txnbackup.manifest import MANIFEST_NAME, DriveEntry, Manifest
from txnbackup.names import check_backup_id, check_vmid
from txnbackup.snapshot import SnapshotId, parse_time

CONFIG_NAME = "config.json"


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
            for sub in ("chunks", "vm", "staging"):
                (path / sub).mkdir()
            write_atomic(path / CONFIG_NAME, json.dumps(config.__dict__, indent=2).encode())
            fsync_dir(path)
        except OSError as exc:
            raise RepositoryError(f"cannot create repository at {path}: {exc.strerror}") from exc
        return cls(path, config)

    @classmethod
    def open(cls, path: Path) -> Repository:
        try:
            raw = json.loads((path / CONFIG_NAME).read_bytes())
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
        return cls(path, config)

    def snapshot_dir(self, snapshot: SnapshotId) -> Path:
        return self.path / "vm" / snapshot.vmid / snapshot.time

    def staging_dir(self, backup: str) -> Path:
        return self.path / "staging" / check_backup_id(backup)

    def vmids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name for p in (self.path / "vm").iterdir() if p.is_dir())
        return []

    def snapshots(self, vmid: str | None = None) -> list[SnapshotId]:
        """Published snapshots, newest first (per VM when vmid is given)."""
        vmids = [check_vmid(vmid)] if vmid else self.vmids()
        found = [
            SnapshotId(v, d.name)
            for v in vmids
            for d in _listdir(self.path / "vm" / v)
            if _is_time(d.name) and (d / MANIFEST_NAME).exists()
        ]
        return sorted(found, key=lambda s: (s.time, s.vmid), reverse=True)

    def manifest(self, snapshot: SnapshotId) -> Manifest:
        try:
            raw = (self.snapshot_dir(snapshot) / MANIFEST_NAME).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotNotFound(str(snapshot)) from None
        try:
            return Manifest.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"manifest of {snapshot} is unreadable: {exc}") from None

    def complete_drive(self, snapshot: SnapshotId, drive: str) -> DriveEntry | None:
        """The drive's entry if the snapshot is published and its index intact, else None."""
        try:
            entry = self.manifest(snapshot).drive(drive)
            if entry is None:
                return None
            index = self.snapshot_dir(snapshot) / entry.index
            return entry if file_sha256(index) == entry.index_sha256 else None
        except (SnapshotNotFound, IntegrityError, OSError):
            return None

    def find_backup(self, vmid: str, backup: str) -> SnapshotId | None:
        """The snapshot a backup published, if any (re-delivered commits use this)."""
        for snapshot in self.snapshots(vmid):
            with contextlib.suppress(SnapshotNotFound, IntegrityError):
                if self.manifest(snapshot).backup == backup:
                    return snapshot
        return None


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_time(name: str) -> bool:
    try:
        parse_time(name)
    except InvalidInput:
        return False
    return not name.startswith(".") and os.sep not in name
