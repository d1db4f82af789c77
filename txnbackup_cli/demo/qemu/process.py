"""What the guest, the daemon and the QEMU tests' daemon (tests/qemu/qsd.py) share about a
QEMU process: its qcow2 images, the storage daemon's command line, a clean quit."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from txnbackup.qemu.qmp import QmpClient


def create_images(images: Iterable[Path], size: int) -> None:
    for image in images:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size)], check=True
        )


def storage_daemon_args(
    nbd_socket: str, images: Mapping[str, Path], monitors: Iterable[str]
) -> list[str]:
    """A qemu-storage-daemon with a writable NBD export ``guest-<node>`` of each qcow2 image
    (its block node named by the key) and a QMP monitor on each of the ``monitors`` sockets;
    it dies with its parent."""
    args = ["setpriv", "--pdeathsig", "TERM", "qemu-storage-daemon"]
    # The server before the exports that use it.
    args += ["--nbd-server", f"addr.type=unix,addr.path={nbd_socket}"]
    for node, image in images.items():
        args += [
            "--blockdev", f"driver=file,node-name={node}-file,filename={image}",
            "--blockdev", f"driver=qcow2,node-name={node},file={node}-file",
            "--export", f"type=nbd,id=guest-{node},node-name={node},name=guest-{node},"
            "writable=on",
        ]  # fmt: skip
    for n, path in enumerate(monitors):
        args += [
            "--chardev", f"socket,id=qmp{n},path={path},server=on,wait=off",
            "--monitor", f"chardev=qmp{n}",
        ]  # fmt: skip
    return args


def quit_qemu(proc: subprocess.Popen[bytes], harness_path: str, timeout: float = 10) -> None:
    """Quit QEMU through the monitor at ``harness_path`` (a clean shutdown: QEMU writes the
    persistent bitmaps into the images), killing this one pid only if that fails."""
    if proc.poll() is not None:
        return
    try:
        with QmpClient(harness_path) as qmp:
            qmp.execute("quit")
        proc.wait(timeout)
    except Exception:  # any failure: kill this one process
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
