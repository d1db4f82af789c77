"""Without a guest (no qemu-system-x86_64 or no guest kit): a ``qemu-storage-daemon`` serving
the two qcow2 disks, and a writer thread that writes the guest's records through the daemon's
own writable NBD export of each disk, as the guest's virtio disks would (``records``)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from txnbackup.qemu.qmp import QmpClient
from txnbackup_cli.demo.qemu.process import create_images, quit_qemu, storage_daemon_args
from txnbackup_cli.demo.qemu.records import RECORD, record, slot

MIB = 1024 * 1024
NODES = ("disk-a", "disk-b")


class DaemonError(RuntimeError):
    pass


class DaemonVM:
    """Drives are named by their block nodes here (a daemon has no guest devices)."""

    describe = "a qemu-storage-daemon with a writer thread (no guest: see scripts/ensure-guest.sh)"

    def __init__(self, workdir: Path, size: int = 64 * MIB) -> None:
        self.dir = workdir
        self.size = size
        self.drives = {node: node for node in NODES}
        self.images = {node: workdir / f"{node}.qcow2" for node in NODES}
        self.qmp_path = str(workdir / "qmp.sock")
        self.harness_path = str(workdir / "harness.sock")
        self.nbd_socket = str(workdir / "nbd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        create_images(self.images.values(), self.size)
        monitors = (self.qmp_path, self.harness_path)
        args = storage_daemon_args(self.nbd_socket, self.images, monitors)
        with open(self.dir / "qsd.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not all(Path(p).exists() for p in (self.harness_path, self.nbd_socket)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DaemonError(f"qemu-storage-daemon did not start: see {self.dir}/qsd.log")
            time.sleep(0.01)
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        import nbd  # noqa: PLC0415  (Debian's python3-libnbd, linked by ensure-qemu.sh)

        handles: list[Any] = []
        try:
            for node in NODES:
                h = nbd.NBD()
                h.connect_uri(f"nbd+unix:///guest-{node}?socket={self.nbd_socket}")
                handles.append(h)
            while not self._stop.is_set():
                n = self.rounds + 1
                for h in handles:  # disk A, then disk B
                    h.pwrite(record(n), slot(n, self.size) * RECORD)
                self.rounds = n
                time.sleep(0.002)
        except BaseException as exc:  # the demo reports it: the writer must not die silently
            self._error = exc
        finally:
            for h in handles:
                h.shutdown()

    def wait_first_record(self, timeout: float = 10) -> float:
        started = time.monotonic()
        while self.rounds == 0:
            if self._error is not None or time.monotonic() - started > timeout:
                raise DaemonError(f"the writer wrote no record: {self._error}")
            time.sleep(0.01)
        return time.monotonic() - started

    def harness(self) -> QmpClient:
        return QmpClient(self.harness_path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.proc is not None:
            quit_qemu(self.proc, self.harness_path)
            self.proc = None
