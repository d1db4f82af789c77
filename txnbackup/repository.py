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

An encrypted repository (format version 2, chosen at ``init``) has the same layout; its
``codec`` (txnbackup.crypto) keys chunk ids and seals every chunk, index, manifest and blob.
The key (txnbackup.keyfile) is unlocked on first use, or up front with ``unlock``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from txnbackup.chunkstore import ChunkStore
from txnbackup.constants import (
    DEFAULT_CHUNK_SIZE,
    ENCRYPTED_FORMAT_VERSION,
    FORMAT_VERSION,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
)
from txnbackup.crypto import (
    CHUNK_IDS,
    CIPHER,
    PLAIN,
    Codec,
    Kind,
    LazyCodec,
    MasterKeys,
    SealedCodec,
    Unsealable,
    index_identity,
    manifest_identity,
)
from txnbackup.errors import (
    EncryptionDowngrade,
    FormatVersionMismatch,
    IntegrityError,
    InvalidInput,
    ManifestInvalid,
    PassphraseMissing,
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
from txnbackup.keyfile import KeyAccess, KeyMode, NewKey, protect, read_key, unlock
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
    encryption: KeyMode | None = None  # None: not encrypted (format version 1)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"format": self.format, "chunk_size": self.chunk_size, "id": self.id}
        if self.encryption is not None:
            mode = str(self.encryption)
            data["encryption"] = {"mode": mode, "cipher": CIPHER, "chunk_ids": CHUNK_IDS}
        return json.dumps(data, indent=2).encode()


def check_chunk_size(chunk_size: int) -> int:
    power_of_two = chunk_size > 0 and chunk_size & (chunk_size - 1) == 0
    if not power_of_two or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(
            f"chunk size {chunk_size} must be a power of two from {MIN_CHUNK_SIZE} "
            f"to {MAX_CHUNK_SIZE} bytes"
        )
    return chunk_size


class Repository:
    def __init__(self, path: Path, config: RepositoryConfig, codec: Codec = PLAIN) -> None:
        self.path = path
        self.config = config
        self.codec = codec
        self.chunks = ChunkStore(path / "chunks", codec)

    @property
    def encrypted(self) -> bool:
        return self.config.encryption is not None

    def unlock(self) -> None:
        """Unlock the key now (a no-op unless encrypted): a wrong or missing passphrase or
        key fails here, before anything is written."""
        if isinstance(self.codec, LazyCodec):
            self.codec.unlocked()

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @classmethod
    def init(
        cls, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, encryption: NewKey | None = None
    ) -> Repository:
        """A new repository; encrypted with a new key when ``encryption`` is given (the key
        is written before ``config.json``, whose presence makes the directory a repository)."""
        check_chunk_size(chunk_size)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RepositoryExists(str(path))
        version = FORMAT_VERSION if encryption is None else ENCRYPTED_FORMAT_VERSION
        mode = None if encryption is None else encryption.mode
        config = RepositoryConfig(version, chunk_size, str(uuid.uuid4()), mode)
        codec: Codec = PLAIN
        key_path = None
        if encryption is not None:
            key_path = encryption.access.location(path, config.id, encryption.mode)
            if key_path.exists():
                raise RepositoryError(f"key file {key_path} exists; not replacing it")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, DIR_MODE)
            for sub in SUBDIRS:
                make_dir(path / sub)
            if encryption is not None and key_path is not None:
                codec = _new_key(encryption, config.id, key_path)
            write_atomic(path / CONFIG_NAME, config.to_json())
            fsync_dir(path)
        except OSError as exc:
            raise RepositoryError(f"cannot create repository at {path}: {exc.strerror}") from exc
        return cls(path, config, codec)

    @classmethod
    def open(cls, path: Path, keys: KeyAccess | None = None) -> Repository:
        """The repository at ``path``; an encrypted one unlocks its key with ``keys`` on
        first use (``unlock`` to fail early). A plain one is refused when ``keys`` expect it
        encrypted (EncryptionDowngrade): whoever can write config.json cannot make a process
        configured with a key write plain text."""
        config = _read_config(path)
        for sub in SUBDIRS:
            if (path / sub).exists() and not is_real_dir(path / sub):
                raise RepositoryError(f"{path / sub} is not a directory (or is a symbolic link)")
        codec: Codec = PLAIN
        if config.encryption is None:
            _refuse_downgrade(path, config, keys)
        else:
            codec = LazyCodec(functools.partial(_unlock, path, config, keys or KeyAccess()))
        return cls(path, config, codec)

    def key_path(self, keys: KeyAccess) -> Path:
        """Where this repository's key lies (its mode's place)."""
        if self.config.encryption is None:
            raise InvalidInput(f"repository {self.path} is not encrypted: it has no key")
        return keys.location(self.path, self.id, self.config.encryption)

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
        try:
            identity = manifest_identity(snapshot.vmid, snapshot.time)
            raw = self.codec.open(Kind.MANIFEST, raw, identity)
        except Unsealable as exc:
            raise ManifestInvalid(where, exc.reason) from None
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

    def open_index(
        self, snapshot: SnapshotId, entry: DriveEntry, backup: str | None = None
    ) -> IndexReader:
        """The drive's index, checked against its manifest entry (checksum and header).

        An encrypted index is sealed under the backup that wrote it: ``backup`` is the
        manifest's (read again when not given)."""
        identity = None
        if self.encrypted:
            backup = backup or self.manifest(snapshot).backup
            identity = index_identity(backup, entry.name)
        reader = IndexReader(self.index_path(snapshot, entry.name), self.codec, identity)
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
            manifest = self.manifest(snapshot)
            entry = manifest.drive(drive)
            if entry is None:
                return None
            self.open_index(snapshot, entry, manifest.backup).close()
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


def _read_config(path: Path) -> RepositoryConfig:
    try:
        raw = json.loads(read_file(path / CONFIG_NAME))
    except (FileNotFoundError, NotADirectoryError):
        raise RepositoryNotFound(str(path)) from None
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"cannot read {path / CONFIG_NAME}: {exc}") from None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path / CONFIG_NAME} is not a JSON object")
    if raw.get("format") not in (FORMAT_VERSION, ENCRYPTED_FORMAT_VERSION):
        versions = f"{FORMAT_VERSION} and {ENCRYPTED_FORMAT_VERSION}"
        raise FormatVersionMismatch(str(path), raw.get("format"), versions)
    try:
        chunk_size = check_chunk_size(int(raw["chunk_size"]))
        mode = _encryption(raw)
        config = RepositoryConfig(int(raw["format"]), chunk_size, str(raw["id"]), mode)
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInput) as exc:
        raise RepositoryError(
            f"{path / CONFIG_NAME}: bad chunk_size, id or encryption: {exc}"
        ) from None
    return config


def _encryption(raw: dict[str, Any]) -> KeyMode | None:
    """The key mode of a format 2 config (its ``encryption`` member, checked); None for 1."""
    if raw["format"] == FORMAT_VERSION:
        return None
    spec = raw["encryption"]
    if spec.get("cipher") != CIPHER or spec.get("chunk_ids") != CHUNK_IDS:
        raise ValueError(f"unknown cipher or chunk ids: {spec}")
    return KeyMode(spec["mode"])


def _new_key(encryption: NewKey, repo_id: str, key_path: Path) -> SealedCodec:
    keys = MasterKeys.generate()
    document = protect(keys, repo_id, encryption.passphrase, encryption.kdf)
    if encryption.mode is KeyMode.KEYFILE:
        key_path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    write_atomic(key_path, document)
    return SealedCodec(keys)


def _unlock(path: Path, config: RepositoryConfig, keys: KeyAccess) -> MasterKeys:
    assert config.encryption is not None
    key_path = keys.location(path, config.id, config.encryption)
    raw = read_key(key_path, config.id)
    if keys.passphrase is None:
        raise PassphraseMissing(str(path))
    return unlock(raw, str(key_path), config.id, keys.passphrase)


def _is_time(name: str) -> bool:
    try:
        parse_time(name)
    except InvalidInput:
        return False
    return not name.startswith(".") and os.sep not in name


def _refuse_downgrade(path: Path, config: RepositoryConfig, keys: KeyAccess | None) -> None:
    why = keys.expects_encryption(path, config.id) if keys is not None else None
    if why is not None:
        raise EncryptionDowngrade(str(path), why)
