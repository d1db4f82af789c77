"""``txnbackup demo --qemu``: a running VM backed up across its life, narrated and checked.

The VM is the guest (``guest``: KVM where it works, else TCG) or, without one, a
qemu-storage-daemon with a writer (``daemon``). Either way both disks receive the guest's
numbered records, alternately, while the fleet backs the VM up over QMP and NBD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from txnbackup.qemu.bitmaps import Bitmap, node_bitmaps
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.qmp import QmpClient
from txnbackup.qemu.vm import QemuVM
from txnbackup.status import BackupStatus
from txnbackup_cli.demo.walkthrough import VMID, DemoFailed, Walkthrough

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
class QemuScenario(Walkthrough):
    vm: RunningVM
    chunk_size: int
    cancelled: BackupStatus | None = None  # the revoked backup, for the step after it

    def submit(self, speed_limit: int | None = None) -> str:
        vm = QemuVM(self.vm.qmp_path, NODE, self.vm.nbd_socket)
        backup = self.producer.submit(
            VMID, [], repository=self.repo, qmp=vm, speed_limit=speed_limit
        )
        self.backups.append(backup)
        self.narrator.say(f"backup {backup} submitted: --qmp {self.vm.qmp_path}@{NODE}")
        return backup

    def committed_backup(self) -> BackupStatus:
        status = self.follow(self.submit())
        self.narrator.status(status)
        self.check(status.status == "done", "status done", status.errmsg)
        self.check([d.name for d in status.drives] == list(self.vm.drives), "both drives found")
        self.snapshots.append(status.snapshot)
        self.check(status.snapshot in self.published(), f"snapshot {status.snapshot} published")
        self.nothing_left()
        return status

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
