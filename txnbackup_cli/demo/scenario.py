"""The sample VM's scenario: its drives are files, its guest writes through the tracker.

What every step of ``txnbackup demo`` shares beyond ``Walkthrough``: the VM, its config
file and the checks that need to know what the guest wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from txnbackup.status import BackupStatus, DriveStatus
from txnbackup_cli.demo.vm import DriveSpec, SampleVM
from txnbackup_cli.demo.walkthrough import VMID, Walkthrough

NODES = ("node1", "node2")
DRIVES = (
    DriveSpec("scsi0", "text", "node1", "system disk: OS and logs (text)"),
    DriveSpec("scsi1", "random", "node2", "database disk: incompressible data"),
    DriveSpec("scsi2", "zeros", "node1", "new data disk: all zeros (thin)"),
)
CONFIG_NAME = "qemu-server.conf"


@dataclass
class Scenario(Walkthrough):
    vm: SampleVM
    config: Path
    drive_size: int

    @property
    def chunks(self) -> int:
        """Chunks per drive."""
        return self.drive_size // self.vm.chunk_size

    def offset(self, fraction: float, within: int = 0) -> int:
        """A byte offset ``within`` the chunk found at ``fraction`` of a drive."""
        index = min(self.chunks - 1, int(fraction * self.chunks))
        return index * self.vm.chunk_size + within

    def submit(self, speed_limit: int | None = None) -> str:
        backup = self.producer.submit(
            VMID,
            list(self.vm.drives.values()),
            repository=self.repo,
            speed_limit=speed_limit,
            config={CONFIG_NAME: self.config},
        )
        self.backups.append(backup)
        self.narrator.say(f"backup {backup} submitted")
        return backup

    def committed_backup(self, incremental: bool = False) -> BackupStatus:
        """Submit, follow, show and check a backup that must commit.

        An incremental one must read exactly the chunks the guest changed since the last
        snapshot, which the VM knows independently of the bitmaps.
        """
        frozen = self.vm.frozen()
        status = self.follow(self.submit())
        self.narrator.status(status)
        self.check(status.status == "done", "status done", status.errmsg)
        self.snapshots.append(status.snapshot)
        self.check(status.snapshot in self.published(), f"snapshot {status.snapshot} published")
        self.check(
            all(d.transferred == d.dirty for d in status.drives),
            "every dirty byte of every drive copied",
        )
        if incremental:
            self.check(all(d.action == "used" for d in status.drives), "every bitmap 'used'")
            self.dirty_as_written(status, frozen)
        self.vm.committed(frozen)
        return status

    def dirty_as_written(self, status: BackupStatus, changed: dict[str, set[int]]) -> None:
        expected = {name: self.vm.dirty_bytes(name, chunks) for name, chunks in changed.items()}
        actual = {d.name: d.dirty for d in status.drives}
        counts = ", ".join(f"{name} {len(chunks)}" for name, chunks in changed.items())
        self.check(
            actual == expected,
            f"read exactly the chunks the guest changed ({counts})",
            f"read {actual}, changed {expected}",
        )

    def nothing_published(self) -> None:
        self.check(self.published() == sorted(self.snapshots), "no snapshot published")
        staging = [p.name for p in (self.repo / "staging").iterdir()]
        self.check(not staging, "no staging area left behind", staging)

    def bitmaps_kept(self) -> None:
        """Every bitmap holds every change since the last snapshot, relative to it."""
        bitmaps = self.producer.rt.bitmaps
        for name in self.vm.drives:
            kept = bitmaps.dirty_chunks(VMID, name)
            want = self.vm.pending[name]
            meta = bitmaps.meta(VMID, name)
            base = meta.base if meta else None
            self.check(
                kept == want and base == self.snapshots[-1],
                f"{name}: bitmap keeps its {len(want)} dirty chunk(s), base unchanged",
                f"kept {sorted(kept)}, base {base}",
            )


def drive(status: BackupStatus, name: str) -> DriveStatus:
    return next(d for d in status.drives if d.name == name)
