"""The QEMU drive source and bitmap keeper: the plan's ``qemu`` names the VM, and every name
of our objects there derives from the backup uuid, so any worker of the VM's node can open a
drive's view or end the backup from the plan alone.

Commit and rollback inspect QEMU first (FleeceSession), so repeating them is harmless. When
QEMU is gone (its monitor refuses us and nothing listens on the backup's NBD socket), its
bitmaps went with it, or come back marked inconsistent: nothing is left to commit or merge,
and the next backup reads in full. A monitor that cannot be reached while QEMU still serves
the NBD socket (the socket file removed) fails the ending, which is then resumed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from txnbackup.action import BitmapAction
from txnbackup.bitmap import TxnState
from txnbackup.errors import QmpUnavailable
from txnbackup.qemu import dirs as qemu_dirs
from txnbackup.qemu import naming
from txnbackup.qemu.discover import QemuDrive
from txnbackup.qemu.fleece import DriveView, FleeceSession
from txnbackup.qemu.nbd_drive import NbdDrive
from txnbackup.qemu.qmp import QmpClient
from txnbackup.qemu.vm import QemuVM, block_node
from txnbackup.repository import Repository
from txnbackup.settings import QemuDirs
from txnbackup.snapshot import SnapshotId
from txnbackup.source import OpenDrive

if TYPE_CHECKING:
    from txnbackup.transaction import BackupPlan, DrivePlan

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 2.0  # seconds a connect to the NBD socket may take to say QEMU is there


def qemu_drive(d: DrivePlan) -> QemuDrive:
    # The format only matters to begin (persistent bitmaps); the endings need name and node.
    return QemuDrive(d.name, block_node(d.path), d.size, "")


def session(
    vm: QemuVM, qmp: QmpClient, backup: str, drives: list[QemuDrive], dirs: QemuDirs
) -> FleeceSession:
    return FleeceSession(
        qmp,
        backup,
        drives,
        nbd_socket=vm.nbd_socket or None,
        scratch=dirs.scratch,
        run_root=dirs.run,
    )


class QemuSource:
    """A drive's point-in-time view, read over NBD; a ``used`` drive's dirty bits are the
    frozen bitmap exported with it (the bitmap of the backup that made the base)."""

    def __init__(self, vm: QemuVM, dirs: QemuDirs) -> None:
        self.vm = vm
        self.dirs = dirs

    @contextlib.contextmanager
    def open(self, repo: Repository, plan: BackupPlan, drive: DrivePlan) -> Iterator[OpenDrive]:
        socket = self.vm.nbd_socket or qemu_dirs.nbd_socket(self.dirs, plan.backup)
        bitmap = None
        if drive.action is BitmapAction.USED:
            base_backup = repo.manifest(SnapshotId.parse(drive.base)).backup
            bitmap = naming.bitmap_name(base_backup)
        export = naming.export_name(plan.backup, drive.name)
        view = DriveView(qemu_drive(drive), socket, export, bitmap)
        with NbdDrive(drive.name, view.uri, bitmap) as reader:
            yield OpenDrive(reader, reader.dirty_chunks)


class QemuKeeper:
    """FleeceSession's endings for a backup's plan."""

    def __init__(self, vm: QemuVM, dirs: QemuDirs) -> None:
        self.vm = vm
        self.dirs = dirs

    def state(self, backup: str) -> TxnState | None:
        return None  # QEMU keeps no transaction record; the phase claims keep endings apart

    def commit(self, plan: BackupPlan, snapshot: str, repository: str) -> bool:
        self._end(plan, "commit")
        return True

    def rollback(self, plan: BackupPlan) -> bool:
        self._end(plan, "rollback")
        return True

    def _serving(self, backup: str) -> bool:
        """Whether a QEMU still listens on the backup's NBD socket (the VM's own, or the one
        begin started in the backup's run directory)."""
        path = self.vm.nbd_socket or qemu_dirs.nbd_socket(self.dirs, backup)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            try:
                probe.connect(path)
            except OSError:
                return False
        return True

    def _end(self, plan: BackupPlan, ending: str) -> None:
        """Only a monitor that refuses the connection means QEMU is gone. A connection lost
        once made (QEMU ran some of our commands) raises: the ending fails and is resumed
        (commit retried, rollback by the reaper) until QEMU answers or is really gone."""
        drives = [qemu_drive(d) for d in plan.drives]
        try:
            qmp = QmpClient(self.vm.qmp)
        except QmpUnavailable as exc:
            if self._serving(plan.backup):
                # The monitor's socket file is gone or unreachable, QEMU is not: ending now
                # would leave our objects and both bitmaps in it. Fail, to be resumed.
                raise QmpUnavailable(
                    self.vm.qmp, f"{exc.args[1]}, yet QEMU still serves the backup's NBD socket"
                ) from None
            log.warning(
                "vm %s backup %s: %s: QEMU is gone (%s); its bitmaps went with it",
                plan.vmid,
                plan.backup,
                ending,
                exc,
            )
            shutil.rmtree(qemu_dirs.run_dir(self.dirs, plan.backup), ignore_errors=True)
            shutil.rmtree(qemu_dirs.scratch_dir(self.dirs, plan.backup), ignore_errors=True)
            return
        with qmp:
            fleece = session(self.vm, qmp, plan.backup, drives, self.dirs)
            if ending == "commit":
                fleece.commit()
            else:
                fleece.rollback()
