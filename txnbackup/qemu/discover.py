"""Which block nodes of a QEMU process are the VM's drives, and their txnbackup names.

A VM (qemu-system-*) names its drives in ``query-block``: the drive id (``device``, as with
``-drive id=drive-scsi0``) or else the guest device's id from its ``qdev`` path (``-blockdev``
plus ``-device ...,id=scsi0``). qemu-storage-daemon has no such list: there every named,
writable node of an image format is a drive, named by its node name. The rules that turn
these labels into drive names are in docs/qemu.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from txnbackup.errors import InvalidInput, QemuDriveError
from txnbackup.names import DRIVE_RE, check_drive_name
from txnbackup.qemu.naming import is_ours
from txnbackup.qemu.qmp import QmpClient

# Image formats (nodes that may hold dirty bitmaps), as opposed to protocols and filters.
FORMAT_DRIVERS = frozenset(
    {"qcow2", "raw", "qed", "vmdk", "vdi", "vpc", "vhdx", "parallels", "luks"}
)


@dataclass(frozen=True)
class QemuDrive:
    """A drive of a running QEMU: its txnbackup name and its format node."""

    name: str
    node: str
    size: int
    format: str

    @property
    def persistent(self) -> bool:
        """Only qcow2 stores bitmaps; on other formats they live until QEMU exits."""
        return self.format == "qcow2"


def drive_name(label: str) -> str:
    """``drive-scsi0`` → ``scsi0``; ``Virtio0`` → ``virtio0``; ``/machine/peripheral/vblk0/
    virtio-backend`` → ``vblk0``."""
    name = label.removesuffix("/virtio-backend").rsplit("/", 1)[-1].lower()
    name = name.removeprefix("drive-")
    if not DRIVE_RE.fullmatch(name):
        raise InvalidInput(
            f"QEMU drive {label!r} gives no drive name matching {DRIVE_RE.pattern}; "
            "name its node explicitly"
        )
    return name


def discover(qmp: QmpClient) -> list[QemuDrive]:
    """The drives of the QEMU process behind ``qmp``: a VM's in its order, a daemon's by
    name."""
    blocks = qmp.execute("query-block")
    drives = _vm_drives(blocks) if blocks else _daemon_drives(qmp)
    names = [d.name for d in drives]
    if len(set(names)) != len(names):
        raise InvalidInput(f"QEMU at {qmp.path}: drive names collide: {names}")
    return drives


def explicit(qmp: QmpClient, nodes: Mapping[str, str]) -> list[QemuDrive]:
    """The drives given as {drive name: node name}, checked against QEMU's nodes."""
    by_node = {n["node-name"]: n for n in qmp.execute("query-named-block-nodes", {"flat": True})}
    drives = []
    for name, node in nodes.items():
        info = by_node.get(node)
        if info is None:
            raise QemuDriveError(name, f"QEMU at {qmp.path} has no block node {node!r}")
        drives.append(_checked(name, node, info["drv"], info["image"]["virtual-size"]))
    return drives


def _vm_drives(blocks: list[dict[str, Any]]) -> list[QemuDrive]:
    drives = []
    for block in blocks:
        inserted = block.get("inserted")
        # Empty and removable media (CD-ROMs) and read-only drives are not backed up.
        if inserted is None or block.get("removable") or inserted.get("ro"):
            continue
        name = drive_name(block["device"] or block.get("qdev", ""))
        size = inserted["image"]["virtual-size"]
        drives.append(_checked(name, inserted["node-name"], inserted["drv"], size))
    return drives


def _daemon_drives(qmp: QmpClient) -> list[QemuDrive]:
    # Sorted: QEMU lists nodes newest first, an order that says nothing to a user.
    drives = [
        QemuDrive(drive_name(n["node-name"]), n["node-name"], n["image"]["virtual-size"], n["drv"])
        for n in qmp.execute("query-named-block-nodes", {"flat": True})
        if n["drv"] in FORMAT_DRIVERS
        and not n.get("ro")
        and not n["node-name"].startswith("#")
        and not is_ours(n["node-name"])
    ]
    return sorted(drives, key=lambda d: d.name)


def _checked(name: str, node: str, driver: str, size: int) -> QemuDrive:
    check_drive_name(name)
    if driver not in FORMAT_DRIVERS:
        raise QemuDriveError(
            name,
            f"block node {node!r} is a {driver!r} node, not an image format; name its "
            "format node explicitly",
        )
    return QemuDrive(name, node, size, driver)
