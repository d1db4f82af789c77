"""Naming a snapshot: ``vm/<vmid>/<time>``, or ``vm/<vmid>/latest`` for the VM's newest
complete snapshot (its manifest readable, every drive's index matching its checksum)."""

from __future__ import annotations

from txnbackup.errors import IntegrityError, NoCompleteSnapshot, SnapshotNotFound
from txnbackup.names import check_vmid
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId

LATEST = "latest"


def resolve(repo: Repository, text: str) -> SnapshotId:
    """The snapshot ``text`` names; ``latest`` resolved now, in this repository."""
    parts = text.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "vm" and parts[2] == LATEST:
        vmid = check_vmid(parts[1])
        for snapshot in repo.snapshots(vmid):
            if _complete(repo, snapshot):
                return snapshot
        raise NoCompleteSnapshot(text, vmid)
    return SnapshotId.parse(text)


def _complete(repo: Repository, snapshot: SnapshotId) -> bool:
    try:
        drives = repo.manifest(snapshot).drives
    except (SnapshotNotFound, IntegrityError):
        return False
    return all(repo.complete_drive(snapshot, d.name) is not None for d in drives)
