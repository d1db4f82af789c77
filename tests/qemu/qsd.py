"""A real qemu-storage-daemon on small qcow2 drives, and a guest writing to them.

The daemon runs one NBD server (QEMU allows one per process) with a writable export per
drive for the guest; the backup's read-only exports join it (FleeceSession's nbd_socket).
It has two monitors: ``qmp.sock`` for the code under test and ``harness.sock`` for the test.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from txnbackup.qemu.nbd_drive import nbd_available
from txnbackup.qemu.qmp import QmpClient
from txnbackup_cli.demo.qemu.process import create_images, quit_qemu, storage_daemon_args

MIB = 1024 * 1024
CS = 64 * 1024  # repository chunks and qcow2 clusters alike
DRIVES = ("drive0", "drive1")


def missing_tools() -> str | None:
    """Why the QEMU tests cannot run here, or None."""
    for tool in ("qemu-storage-daemon", "qemu-img", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ensure-qemu.sh installs it)"
    return nbd_available()


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


class Qsd:
    """The daemon, restartable on the same images (as after a crash of the host's QEMU)."""

    def __init__(self, size: int = 16 * MIB) -> None:
        # Not pytest's tmp_path: unix socket paths must stay under 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="txnb-qsd-", dir="/tmp"))
        self.size = size
        self.images = {d: self.dir / f"{d}.qcow2" for d in DRIVES}
        create_images(self.images.values(), size)
        self.qmp_path = str(self.dir / "qmp.sock")
        self.harness_path = str(self.dir / "harness.sock")
        self.nbd_socket = str(self.dir / "nbd.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for sock in (self.qmp_path, self.harness_path, self.nbd_socket):
            Path(sock).unlink(missing_ok=True)
        monitors = (self.qmp_path, self.harness_path)
        args = storage_daemon_args(self.nbd_socket, self.images, monitors)
        with open(self.dir / "qsd.log", "ab") as log:
            self.proc = subprocess.Popen(args, stderr=log)
        try:
            for sock in (self.qmp_path, self.harness_path, self.nbd_socket):
                wait_for(Path(sock), self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(self.dir / 'qsd.log').read_text()}") from None

    def qmp(self) -> QmpClient:
        """A connection to the monitor of the code under test."""
        return QmpClient(self.qmp_path)

    def harness(self) -> QmpClient:
        return QmpClient(self.harness_path)

    def guest_uri(self, drive: str) -> str:
        return f"nbd+unix:///guest-{drive}?socket={self.nbd_socket}"

    def quit(self) -> None:
        """A clean shutdown: QEMU writes the persistent bitmaps into the images."""
        if self.proc is not None:
            quit_qemu(self.proc, self.harness_path, timeout=5)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def cleanup(self) -> None:
        self.quit()
        shutil.rmtree(self.dir, ignore_errors=True)


class Guest:
    """Writes 64 KiB blocks of random bytes through the guest exports, logging each one;
    ``paused`` holds the writer off (around begin, to know the begin instant)."""

    def __init__(self, qsd: Qsd, seed: int = 1) -> None:
        self.qsd = qsd
        self.rand = random.Random(seed)
        self.handles: dict[str, Any] = {}  # libnbd handles
        import nbd  # noqa: PLC0415  (present: missing_tools said so)

        for d in DRIVES:
            h = nbd.NBD()
            h.connect_uri(qsd.guest_uri(d))
            self.handles[d] = h
        self.paused = threading.Lock()
        self.log: list[tuple[str, int]] = []  # (drive, chunk) of every write, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, drive: str, chunk: int, data: bytes | None = None) -> None:
        with self.paused:
            self.handles[drive].pwrite(data or self.rand.randbytes(CS), chunk * CS)
            self.log.append((drive, chunk))

    def fill(self) -> None:
        """Random content in three quarters of each drive; the rest stays a hole."""
        chunks = self.qsd.size // CS
        for d in DRIVES:
            for c in range(chunks * 3 // 4):
                self.write(d, c)

    def content(self, drive: str) -> bytes:
        data: bytes = self.handles[drive].pread(self.qsd.size, 0)
        return data

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        chunks = self.qsd.size // CS
        while not self._stop.is_set():
            self.write(self.rand.choice(DRIVES), self.rand.randrange(chunks))
            time.sleep(0.001)

    def flush(self) -> None:
        for h in self.handles.values():
            h.flush()

    def close(self) -> None:
        self.stop()
        for h in self.handles.values():
            h.shutdown()
        self.handles.clear()
