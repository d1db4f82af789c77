"""What txnbackup may have left in a QEMU process: exports, block jobs, block nodes."""

from __future__ import annotations

from dataclasses import dataclass

from txnbackup.qemu.naming import PREFIX
from txnbackup.qemu.qmp import QmpClient


@dataclass(frozen=True)
class Leftovers:
    exports: tuple[str, ...]
    jobs: tuple[str, ...]
    nodes: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.exports or self.jobs or self.nodes)

    def __str__(self) -> str:
        parts = [("exports", self.exports), ("jobs", self.jobs), ("nodes", self.nodes)]
        return "; ".join(f"{what} {', '.join(names)}" for what, names in parts if names)


def find_leftovers(qmp: QmpClient) -> Leftovers:
    """Our objects of any backup: a QEMU process is one VM, which has one backup at a time."""
    exports = tuple(
        e["id"] for e in qmp.execute("query-block-exports") if e["id"].startswith(PREFIX)
    )
    jobs = tuple(
        j["device"] for j in qmp.execute("query-block-jobs") if j["device"].startswith(PREFIX)
    )
    nodes = tuple(
        n["node-name"]
        for n in qmp.execute("query-named-block-nodes", {"flat": True})
        if n["node-name"].startswith(PREFIX)
    )
    return Leftovers(exports, jobs, nodes)
