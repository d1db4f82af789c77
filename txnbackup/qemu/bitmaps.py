"""QEMU's dirty bitmaps of a drive as txnbackup sees them, and the bitmap action they allow.

Each drive carries at most one bitmap of ours between backups, named after the backup that
started it (``txnbackup-<uuid>``); during a backup it has a second one, the frozen bits of
the previous, which commit removes and rollback merges back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from txnbackup.action import BitmapAction, Decision
from txnbackup.qemu.naming import is_ours
from txnbackup.qemu.qmp import QmpClient


@dataclass(frozen=True)
class Bitmap:
    """One named dirty bitmap of a block node, as query-named-block-nodes reports it."""

    name: str
    count: int  # dirty bytes
    granularity: int
    recording: bool
    persistent: bool
    inconsistent: bool
    busy: bool

    @classmethod
    def from_qmp(cls, raw: Mapping[str, Any]) -> Bitmap:
        return cls(
            raw["name"],
            raw["count"],
            raw["granularity"],
            raw["recording"],
            raw.get("persistent", False),
            raw.get("inconsistent", False),
            raw["busy"],
        )


def node_bitmaps(qmp: QmpClient) -> dict[str, list[Bitmap]]:
    """Our bitmaps on every named node (the anonymous ones of block jobs have no name)."""
    found: dict[str, list[Bitmap]] = {}
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        ours = [
            Bitmap.from_qmp(b)
            for b in node.get("dirty-bitmaps", [])
            if "name" in b and is_ours(b["name"])
        ]
        found.setdefault(node["node-name"], []).extend(ours)
    return found


@dataclass(frozen=True)
class BitmapState:
    """Our bitmaps on one drive's node outside any backup, for the bitmap keeper."""

    drive: str
    bitmaps: tuple[Bitmap, ...]

    @property
    def present(self) -> bool:
        return bool(self.bitmaps)

    @property
    def recording(self) -> bool:
        return len(self.bitmaps) == 1 and self.bitmaps[0].recording

    @property
    def inconsistent(self) -> bool:
        return any(b.inconsistent for b in self.bitmaps)

    @property
    def count(self) -> int:
        return sum(b.count for b in self.bitmaps)

    @property
    def current(self) -> Bitmap | None:
        """The bitmap a backup may read the dirty chunks from, when it is usable."""
        return self.bitmaps[0] if self.recording and not self.inconsistent else None

    def decision(self) -> Decision:
        """What QEMU's side allows; the keeper still checks the base snapshot and size."""
        if not self.bitmaps:
            return Decision(BitmapAction.NEW, "no bitmap yet")
        names = ", ".join(b.name for b in self.bitmaps)
        if len(self.bitmaps) > 1:
            return Decision(BitmapAction.INVALID, f"several bitmaps ({names})")
        if self.inconsistent:
            return Decision(
                BitmapAction.INVALID,
                f"bitmap {names} is inconsistent (QEMU did not shut down cleanly)",
            )
        if not self.recording:
            return Decision(BitmapAction.INVALID, f"bitmap {names} is not recording")
        return Decision(BitmapAction.USED, f"bitmap {names}, {self.count} dirty bytes")


def bitmap_states(
    qmp: QmpClient, drives: Mapping[str, str], exclude: Sequence[str] = ()
) -> dict[str, BitmapState]:
    """Each drive's state; ``drives`` maps drive names to node names."""
    per_node = node_bitmaps(qmp)
    return {
        drive: BitmapState(drive, tuple(b for b in per_node.get(node, []) if b.name not in exclude))
        for drive, node in drives.items()
    }
