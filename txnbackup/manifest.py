"""The snapshot manifest: what a snapshot holds, written last, before the publishing rename."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txnbackup.stats import DriveStats

MANIFEST_NAME = "manifest.json"


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
    def from_dict(cls, data: dict[str, Any]) -> DriveEntry:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k != "stats"}
        return cls(**fields, stats=DriveStats.from_dict(data.get("stats", {})))


@dataclass(frozen=True)
class BlobEntry:
    name: str
    file: str
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlobEntry:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["drives"] = [d.to_dict() for d in self.drives]
        data["blobs"] = [b.__dict__ for b in self.blobs]
        data["bitmaps"] = dict(self.bitmaps)
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        return cls(
            format=int(data["format"]),
            vmid=data["vmid"],
            time=data["time"],
            backup=data["backup"],
            repository=data["repository"],
            chunk_size=int(data["chunk_size"]),
            drives=tuple(DriveEntry.from_dict(d) for d in data["drives"]),
            blobs=tuple(BlobEntry.from_dict(b) for b in data.get("blobs", [])),
            bitmaps=_bitmap_epochs(data.get("bitmaps", {})),
        )


def _bitmap_epochs(raw: Any) -> dict[str, str]:
    """The ``bitmaps`` member: drive name -> epoch, both strings (absent in older manifests)."""
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError("bitmaps must map drive names to epoch strings")
    return dict(raw)
