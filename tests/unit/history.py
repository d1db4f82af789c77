"""A VM with a history: several committed backups, each with its own drive content and config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.unit.builders import CS, make_image, mixed_content, no_cancel, no_progress
from txnbackup.bitmap import RedisBitmaps
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.transaction import commit, copy, prepare

DRIVE = "scsi0"


@dataclass(frozen=True)
class Past:
    snapshot: SnapshotId
    content: bytes  # the drive's bytes at the time of the snapshot
    config: bytes  # the config blob "vm.conf" stored with it


def make_history(
    repo: Repository, bitmaps: RedisBitmaps, vmid: str, workdir: Path, count: int
) -> list[Past]:
    """``count`` snapshots of one drive of five chunks, oldest first; each backup changes
    the second chunk (and keeps the others, so the snapshots share chunks)."""
    workdir = workdir / vmid
    workdir.mkdir(parents=True, exist_ok=True)
    base = mixed_content(5 * CS - 100, seed=7)
    history = []
    for i in range(count):
        content = base[:CS] + mixed_content(CS, seed=1000 + i, pattern="r") + base[2 * CS :]
        image = make_image(workdir, DRIVE, content)
        bitmaps.mark_dirty(vmid, DRIVE, CS, CS)  # as the writer reports it
        plan = prepare(repo, bitmaps, vmid, [image.drive])
        copy(repo, bitmaps, plan, DRIVE, no_cancel, no_progress)
        config = f"name: vm{vmid}\nbackup: {i}\n".encode()
        history.append(Past(commit(repo, bitmaps, plan, {"vm.conf": config}), content, config))
    return history
