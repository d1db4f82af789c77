"""The snapshot manifest: what a snapshot holds, written last, before the publishing rename.

A manifest is read strictly (txnbackup.schema): every field has its type and range, a drive's
index file is ``<name>.fidx`` and its chunk count ``ceil(size / chunk_size)``, names are the
names a backup accepts, no drive or blob appears twice. ``manifest_sha256`` is the SHA-256 of
the manifest's canonical body (every other field, ``json.dumps(sort_keys=True,
separators=(",", ":"))``), so an edited or damaged manifest is refused. Manifests written
before the checksum existed are read without it; every other check still applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txnbackup.constants import FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from txnbackup.errors import InvalidInput, ManifestInvalid
from txnbackup.geometry import chunk_count
from txnbackup.names import check_backup_id, check_blob_name, check_drive_name, check_vmid
from txnbackup.schema import MAX_SIZE, Fields, SchemaError, parse_object
from txnbackup.snapshot import parse_time
from txnbackup.stats import DriveStats

MANIFEST_NAME = "manifest.json"
CHECKSUM_FIELD = "manifest_sha256"
ACTIONS = frozenset({"new", "used", "invalid", "not-used"})  # txnbackup.action.BitmapAction
DRIVE_FIELDS = ("name", "size", "chunk_size", "chunks", "index", "index_sha256", "action")
BLOB_FIELDS = ("name", "file", "size", "sha256")
MANIFEST_FIELDS = ("format", "vmid", "time", "backup", "repository", "chunk_size", "drives")


def index_file(drive: str) -> str:
    """The index's file name in its snapshot, derived from the (checked) drive name only."""
    return f"{check_drive_name(drive)}.fidx"


@dataclass(frozen=True)
class DriveEntry:
    name: str
    size: int
    chunk_size: int
    chunks: int
    index: str
    index_sha256: str
    action: str
    stats: DriveStats = field(default_factory=DriveStats)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "stats"}
        return data | {"stats": self.stats.to_dict()}

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> DriveEntry:
        """A drive entry, checked; raises ManifestInvalid naming ``where`` it was read."""
        try:
            return _drive_entry(parse_object(raw))
        except (SchemaError, InvalidInput) as exc:
            raise ManifestInvalid(where, _reason(exc)) from None


@dataclass(frozen=True)
class BlobEntry:
    name: str
    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format: int
    vmid: str
    time: str
    backup: str
    repository: str
    chunk_size: int
    drives: tuple[DriveEntry, ...]
    blobs: tuple[BlobEntry, ...] = ()
    # Per drive, the epoch of the dirty bitmap that starts at this snapshot (txnbackup.bitmap):
    # the next backup uses a bitmap only if it still carries this epoch.
    bitmaps: Mapping[str, str] = field(default_factory=dict)

    def bitmap_epoch(self, drive: str) -> str:
        """The epoch recorded for the drive's bitmap, or "" (none recorded: do not trust one)."""
        return self.bitmaps.get(drive, "")

    def drive(self, name: str) -> DriveEntry | None:
        return next((d for d in self.drives if d.name == name), None)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["drives"] = [d.to_dict() for d in self.drives]
        data["blobs"] = [b.__dict__ for b in self.blobs]
        data["bitmaps"] = dict(self.bitmaps)
        data[CHECKSUM_FIELD] = _checksum(data)
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse and check a manifest; raises ManifestInvalid naming ``where`` it was read."""
        try:
            return _manifest(parse_object(raw))
        except (SchemaError, InvalidInput) as exc:
            raise ManifestInvalid(where, _reason(exc)) from None


def _reason(exc: Exception) -> str:
    return str(exc).removeprefix("invalid input: ")


def _checksum(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != CHECKSUM_FIELD}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _manifest(data: dict[str, Any]) -> Manifest:
    f = Fields(data, "manifest", MANIFEST_FIELDS, ("blobs", "bitmaps", CHECKSUM_FIELD))
    if CHECKSUM_FIELD in data and f.hex64(CHECKSUM_FIELD) != _checksum(data):
        raise SchemaError(f"{CHECKSUM_FIELD} does not match its content (edited or damaged)")
    f.integer("format", FORMAT_VERSION, FORMAT_VERSION)
    chunk_size = f.integer("chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    drives = tuple(_drive_entry(d) for d in f.array("drives"))
    blobs = tuple(_blob_entry(b) for b in f.array("blobs"))
    _unique("drive", [d.name for d in drives])
    _unique("blob", [b.name for b in blobs])
    for d in drives:
        if d.chunk_size != chunk_size:
            raise SchemaError(f"drive {d.name}: chunk_size {d.chunk_size}, manifest {chunk_size}")
    time = f.text("time")
    parse_time(time)
    return Manifest(
        FORMAT_VERSION,
        check_vmid(f.text("vmid")),
        time,
        check_backup_id(f.text("backup")),
        f.text("repository"),
        chunk_size,
        drives,
        blobs,
        _bitmap_epochs(f.mapping("bitmaps"), {d.name for d in drives}),
    )


def _bitmap_epochs(raw: dict[str, Any], drives: set[str]) -> dict[str, str]:
    """The ``bitmaps`` member: drive name -> epoch (absent in older manifests: empty)."""
    for name, epoch in raw.items():
        if name not in drives:
            raise SchemaError(f"bitmaps: {name!r} is not a drive of this snapshot")
        if not isinstance(epoch, str) or not epoch.isalnum():
            raise SchemaError(f"bitmaps: drive {name}: epoch {epoch!r} is not a word")
    return dict(raw)


def _drive_entry(data: object) -> DriveEntry:
    f = Fields(data, "drive entry", DRIVE_FIELDS, ("stats",))
    name = check_drive_name(f.text("name"))
    f.what = f"drive {name}"
    size = f.integer("size")
    chunk_size = f.integer("chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    count = chunk_count(size, chunk_size)
    chunks = f.integer("chunks", count, count)
    if f.text("index") != index_file(name):
        raise SchemaError(f"drive {name}: index {f.data['index']!r} is not {index_file(name)!r}")
    action = f.text("action")
    if action not in ACTIONS:
        raise SchemaError(f"drive {name}: action {action!r} is not one of {sorted(ACTIONS)}")
    stats = _stats(Fields(f.mapping("stats"), f"drive {name} stats", (), _STATS))
    return DriveEntry(
        name, size, chunk_size, chunks, index_file(name), f.hex64("index_sha256"), action, stats
    )


_STATS = tuple(DriveStats.__dataclass_fields__)


def _stats(f: Fields) -> DriveStats:
    return DriveStats(**{k: f.integer(k, 0, MAX_SIZE, default=0) for k in _STATS})


def _blob_entry(data: object) -> BlobEntry:
    f = Fields(data, "blob entry", BLOB_FIELDS)
    name = check_blob_name(f.text("name"))
    if f.text("file") != f"{name}.blob":
        raise SchemaError(f"blob {name}: file {f.data['file']!r} is not {name + '.blob'!r}")
    return BlobEntry(name, f"{name}.blob", f.integer("size"), f.hex64("sha256"))


def _unique(what: str, names: list[str]) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SchemaError(f"{what} name(s) listed twice: {', '.join(twice)}")
