"""The running VM of ``txnbackup demo --qemu``: the guest where it can run, else a daemon."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from txnbackup.qemu.nbd_drive import nbd_available
from txnbackup_cli.demo.narration import Narrator
from txnbackup_cli.demo.qemu.daemon import DaemonVM
from txnbackup_cli.demo.qemu.guest import GuestVM
from txnbackup_cli.demo.qemu.kit import guest_problem
from txnbackup_cli.demo.qemu.records import RECORD
from txnbackup_cli.demo.services import DemoServiceError

SOCKET_ROOM = 90  # a unix socket path must stay under 108 bytes


def qemu_problem() -> str | None:
    """Why no QEMU VM can be backed up here at all, or None."""
    for tool in ("qemu-storage-daemon", "qemu-img", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ensure-qemu.sh installs QEMU's tools)"
    return nbd_available()


@contextmanager
def running_vm(
    workdir: Path, size: int, narrator: Narrator, daemon: bool = False
) -> Iterator[GuestVM | DaemonVM]:
    """The VM started, its first record written; stopped on exit (its directory too, when
    it had to live outside the work directory for its sockets' sake)."""
    problem = qemu_problem()
    if problem:
        raise DemoServiceError(f"--qemu needs QEMU: {problem}")
    if size % RECORD:
        raise DemoServiceError(f"--drive-size {size} must be a multiple of {RECORD}")
    vmdir, temporary = workdir / "vm", False
    if len(str(vmdir / "harness.sock")) > SOCKET_ROOM:
        vmdir, temporary = Path(tempfile.mkdtemp(prefix="txnb-demo-vm-", dir="/tmp")), True
    vmdir.mkdir(exist_ok=True)
    why = "--qemu-daemon" if daemon else guest_problem()
    vm: GuestVM | DaemonVM = DaemonVM(vmdir, size) if why else GuestVM(vmdir, size)
    if why:
        narrator.say(f"no guest ({why}): {vm.describe}")
    try:
        vm.start()
        took = vm.wait_first_record()
        narrator.say(f"VM started in {vmdir}; its first record written {took:.1f} s later")
        yield vm
    finally:
        vm.stop()
        if temporary:
            shutil.rmtree(vmdir, ignore_errors=True)
