"""A guest (KVM, else TCG: ``kit.choose_accel``) with two virtio-blk qcow2 disks, writing
records (``initramfs``).

``GuestVM(workdir).start()`` boots it: Debian's cloud kernel, the busybox initramfs, disks
``disk-a`` (``virtio0``, /dev/vda) and ``disk-b`` (``virtio1``, /dev/vdb), the serial console
in ``serial.log``, a QMP socket for the backups (``qmp.sock``) and one for the harness
(``harness.sock``; QEMU serves one client per monitor). ``stop()`` quits it and kills that
pid only if it has to; the process also dies with its parent (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from txnbackup.qemu.qmp import QmpClient
from txnbackup_cli.demo.qemu.initramfs import FIRST_RECORD, build_initramfs
from txnbackup_cli.demo.qemu.kit import Accel, Kit, choose_accel, find_kit
from txnbackup_cli.demo.qemu.process import create_images, quit_qemu

MIB = 1024 * 1024
DISKS = {"virtio0": "disk-a", "virtio1": "disk-b"}  # drive name (its device id) -> node


class GuestError(RuntimeError):
    pass


class GuestVM:
    def __init__(
        self,
        workdir: Path,
        size: int = 64 * MIB,
        kit: Kit | None = None,
        accel: Accel | None = None,
    ) -> None:
        self.accel = accel or choose_accel()
        found = kit or find_kit()
        if found is None:
            raise GuestError("no guest kit (scripts/ensure-guest.sh)")
        self.kit = found
        self.dir = workdir  # short: unix socket paths stay under 108 bytes
        self.size = size
        self.images = {node: workdir / f"{node}.qcow2" for node in DISKS.values()}
        self.qmp_path = str(workdir / "qmp.sock")
        self.harness_path = str(workdir / "harness.sock")
        self.serial = workdir / "serial.log"
        self.drives = dict(DISKS)
        self.nbd_socket = ""  # none: each backup starts QEMU's NBD server in its run directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def describe(self) -> str:
        kernel = self.kit.version.split()[0]
        return f"a guest under {self.accel.why}: Debian's {kernel} kernel, a busybox initramfs"

    def _args(self, initramfs: Path) -> list[str]:
        args = ["setpriv", "--pdeathsig", "TERM", "qemu-system-x86_64"]
        args += ["-machine", f"q35,accel={self.accel.name}", "-cpu", self.accel.cpu]
        args += ["-m", "256"]
        args += ["-nographic", "-nodefaults", "-no-reboot", "-serial", f"file:{self.serial}"]
        args += ["-kernel", str(self.kit.vmlinuz), "-initrd", str(initramfs)]
        args += ["-append", "console=ttyS0 panic=-1 quiet"]
        for device, node in DISKS.items():
            args += [
                "-blockdev", f"driver=file,node-name={node}-file,filename={self.images[node]}",
                "-blockdev", f"driver=qcow2,node-name={node},file={node}-file",
                "-device", f"virtio-blk-pci,drive={node},id={device}",
            ]  # fmt: skip
        for path in (self.qmp_path, self.harness_path):
            args += ["-qmp", f"unix:{path},server=on,wait=off"]
        return args

    def start(self) -> None:
        create_images(self.images.values(), self.size)
        initramfs = build_initramfs(self.kit, self.dir / "initramfs.gz")
        with open(self.dir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(
                self._args(initramfs), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait(lambda: Path(self.harness_path).exists(), 10, "the QMP sockets")

    def wait_first_record(self, timeout: float = 60) -> float:
        """Seconds from now until the guest reported its first record."""
        started = time.monotonic()
        self._wait(lambda: FIRST_RECORD in self.console(), timeout, "the guest's first record")
        return time.monotonic() - started

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc is None or self.proc.poll() is not None:
                raise GuestError(f"QEMU exited before {what}: {self._tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"no {what} within {timeout} s: {self._tail()}")
            time.sleep(0.02)

    def _tail(self) -> str:
        log = (self.dir / "qemu.log").read_text(errors="replace") if self.proc else ""
        return (log + self.console())[-1500:]

    def harness(self) -> QmpClient:
        return QmpClient(self.harness_path)

    def stop(self) -> None:
        """Quit QEMU (a clean shutdown), killing this VM's pid only if that fails."""
        if self.proc is not None:
            quit_qemu(self.proc, self.harness_path)
            self.proc = None
