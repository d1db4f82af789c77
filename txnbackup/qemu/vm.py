"""Which running QEMU process a backup reads: its QMP socket and the node that reaches it."""

from __future__ import annotations

from dataclasses import dataclass

from txnbackup.errors import InvalidInput
from txnbackup.names import check_node

DRIVE_PREFIX = "qemu:"  # a drive's path naming a block node: ``qemu:<node-name>``


@dataclass(frozen=True)
class QemuVM:
    """``qmp`` is a path on ``node``; only that node's workers can open it, so every task
    of the backup runs there. ``nbd_socket`` names the NBD server QEMU already runs, if any
    (QEMU allows one per process and cannot tell its address)."""

    qmp: str
    node: str
    nbd_socket: str = ""

    @classmethod
    def parse(cls, spec: str, nbd_socket: str = "") -> QemuVM:
        """``/path/to/qmp.sock@NODE`` as given to ``--qmp``."""
        path, sep, node = spec.rpartition("@")
        if not sep or not path or not node:
            raise InvalidInput(f"--qmp {spec!r} must look like /path/to/qmp.sock@NODE")
        if not path.startswith("/"):
            raise InvalidInput(f"--qmp {spec!r}: the QMP socket path must be absolute")
        if nbd_socket and not nbd_socket.startswith("/"):
            raise InvalidInput(f"--nbd-socket {nbd_socket!r} must be an absolute path")
        return cls(path, check_node(node), nbd_socket)


def block_node(path: str) -> str:
    """The block node a QEMU drive's path names (``qemu:drive0`` -> ``drive0``)."""
    node = path.removeprefix(DRIVE_PREFIX)
    if not path.startswith(DRIVE_PREFIX) or not node:
        raise InvalidInput(f"QEMU drive path {path!r} must look like {DRIVE_PREFIX}NODE-NAME")
    return node
