"""Byte counters of one drive's copy (the per-drive part of the status)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DriveStats:
    """Counters in bytes, satisfying at every moment:

    ``zero_bytes + reused + written_raw == transferred <= dirty <= size`` where
    ``written_raw`` is the plaintext of chunks stored new by this backup, and at the end of a
    successful copy ``transferred == dirty``. ``dirty`` is what the backup must read: the
    frozen bitmap's chunks for a ``used`` bitmap, the whole drive otherwise. ``stored`` is what
    new chunk files added to the repository, after compression and headers.
    """

    size: int = 0
    dirty: int = 0
    transferred: int = 0
    zero_bytes: int = 0
    reused: int = 0
    stored: int = 0

    @property
    def written_raw(self) -> int:
        return self.transferred - self.zero_bytes - self.reused

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriveStats:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})
