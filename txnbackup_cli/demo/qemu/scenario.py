"""``txnbackup demo --qemu``: a running VM backed up across its life, narrated and checked.

The VM is the guest (``guest``: KVM where it works, else TCG) or, without one, a
qemu-storage-daemon with a writer (``daemon``). Either way both disks receive the guest's
numbered records, alternately, while the fleet backs the VM up over QMP and NBD.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from txnbackup.qemu.bitmaps import Bitmap, node_bitmaps
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.qmp import QmpClient
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus
from txnbackup_cli.demo.narration import Narrator, StatusSink, StepResult
from txnbackup_cli.demo.scenario import BACKUP_TIMEOUT, DemoFailed

if TYPE_CHECKING:
    from tasks.producer import Producer

VMID = "100"
NODE = "node1"


class RunningVM(Protocol):
    drives: dict[str, str]  # drive name -> its block node, in copy order
    size: int
    qmp_path: str
    nbd_socket: str

    @property
    def describe(self) -> str: ...

    def harness(self) -> QmpClient: ...


@dataclass
class QemuScenario:
    narrator: Narrator
    producer: Producer
    vm: RunningVM
    repo: Path
    workdir: Path
    chunk_size: int
    backups: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    number: int = 0
    cancelled: BackupStatus | None = None  # the revoked backup, for the step after it

    def run(self, steps: Sequence[tuple[str, Callable[[QemuScenario], None]]]) -> list[StepResult]:
        results = []
        for self.number, (title, step) in enumerate(steps, start=1):
            started = time.monotonic()
            self.narrator.step(self.number, len(steps), title, inspect.getdoc(step) or "")
            step(self)
            results.append(StepResult(self.number, title, time.monotonic() - started))
        return results

    def check(self, ok: bool, what: str, detail: object = "") -> None:
        if not ok:
            raise DemoFailed(self.number, f"{what}" + (f" ({detail})" if detail != "" else ""))
        self.narrator.ok(what)

    def submit(self, speed_limit: int | None = None) -> str:
        vm = QemuVM(self.vm.qmp_path, NODE, self.vm.nbd_socket)
        backup = self.producer.submit(
            VMID, [], repository=self.repo, qmp=vm, speed_limit=speed_limit
        )
        self.backups.append(backup)
        self.narrator.say(f"backup {backup} submitted: --qmp {self.vm.qmp_path}@{NODE}")
        return backup

    def follow(self, backup: str, on_update: StatusSink | None = None) -> BackupStatus:
        status = self.narrator.watch(self._wait, backup, on_update or (lambda _: None))
        self.check(not status.active, "the backup ended", status.status)
        return status

    def _wait(self, backup: str, sink: StatusSink) -> BackupStatus:
        return self.producer.wait(backup, timeout=BACKUP_TIMEOUT, interval=0.1, on_update=sink)

    def committed_backup(self) -> BackupStatus:
        status = self.follow(self.submit())
        self.narrator.status(status)
        self.check(status.status == "done", "status done", status.errmsg)
        self.check([d.name for d in status.drives] == list(self.vm.drives), "both drives found")
        self.snapshots.append(status.snapshot)
        self.check(status.snapshot in self.published(), f"snapshot {status.snapshot} published")
        self.nothing_left()
        return status

    def published(self) -> list[str]:
        return sorted(str(s) for s in Repository.open(self.repo).snapshots(VMID))

    def bitmaps(self) -> dict[str, list[Bitmap]]:
        """Our bitmaps per drive, as QEMU lists them."""
        with self.vm.harness() as qmp:
            per_node = node_bitmaps(qmp)
        return {name: per_node.get(node, []) for name, node in self.vm.drives.items()}

    def nothing_left(self) -> None:
        with self.vm.harness() as qmp:
            left = find_leftovers(qmp)
        self.check(not left, "QEMU holds no export, job or node of ours", left)

    def wait_for_writes(self, chunks: int, chunk_size: int) -> None:
        """Until the guest has dirtied ``chunks`` chunks of the first disk since the last
        backup (QEMU's recording bitmap says so)."""
        first = next(iter(self.vm.drives))
        deadline = time.monotonic() + 60
        while sum(b.count for b in self.bitmaps()[first] if b.recording) < chunks * chunk_size:
            if time.monotonic() > deadline:
                raise DemoFailed(self.number, "the guest stopped writing")
            time.sleep(0.1)
