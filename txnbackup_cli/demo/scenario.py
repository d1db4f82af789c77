"""What every step of the demo shares: the VM, the producer, the repository and the checks.

A step says what it does, does it through the public APIs (the Producer, the tracker,
restore, verify) and checks the outcomes a user would care about; the first check that fails
raises DemoFailed, so the demo is also a smoke test of the whole system.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from txnbackup.errors import TxnBackupError
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus, DriveStatus
from txnbackup_cli.demo.narration import Narrator, StatusSink, StepResult
from txnbackup_cli.demo.vm import DriveSpec, SampleVM

if TYPE_CHECKING:
    from tasks.producer import Producer

VMID = "100"
NODES = ("node1", "node2")
DRIVES = (
    DriveSpec("scsi0", "text", "node1", "system disk: OS and logs (text)"),
    DriveSpec("scsi1", "random", "node2", "database disk: incompressible data"),
    DriveSpec("scsi2", "zeros", "node1", "new data disk: all zeros (thin)"),
)
CONFIG_NAME = "qemu-server.conf"
BACKUP_TIMEOUT = 120.0  # seconds any one backup of the demo may take


class DemoFailed(TxnBackupError):
    """demo step {} did not come out as expected: {}"""


@dataclass
class Scenario:
    narrator: Narrator
    producer: Producer
    vm: SampleVM
    repo: Path
    config: Path
    workdir: Path
    drive_size: int
    backups: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    number: int = 0

    def run(self, steps: Sequence[tuple[str, Callable[[Scenario], None]]]) -> list[StepResult]:
        results = []
        for self.number, (title, step) in enumerate(steps, start=1):
            started = time.monotonic()
            # A step's docstring is what the demo says before doing it.
            self.narrator.step(self.number, len(steps), title, inspect.getdoc(step) or "")
            step(self)
            results.append(StepResult(self.number, title, time.monotonic() - started))
        return results

    def check(self, ok: bool, what: str, detail: object = "") -> None:
        if not ok:
            raise DemoFailed(self.number, f"{what}" + (f" ({detail})" if detail != "" else ""))
        self.narrator.ok(what)

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

    def follow(self, backup: str, on_update: StatusSink | None = None) -> BackupStatus:
        """Progress bars until the backup ends; ``on_update`` sees every status polled."""
        status = self.narrator.watch(self._wait, backup, on_update or (lambda _: None))
        self.check(not status.active, "the backup ended", status.status)
        return status

    def _wait(self, backup: str, sink: StatusSink) -> BackupStatus:
        return self.producer.wait(backup, timeout=BACKUP_TIMEOUT, interval=0.1, on_update=sink)

    def published(self) -> list[str]:
        return sorted(str(s) for s in Repository.open(self.repo).snapshots(VMID))

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
