"""How QEMU's drive labels become txnbackup drive names (docs/qemu.md)."""

from __future__ import annotations

import pytest

from txnbackup.errors import InvalidInput
from txnbackup.qemu import naming
from txnbackup.qemu.discover import drive_name
from txnbackup.settings import DEFAULT_QEMU_RUN_DIR


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("drive-scsi0", "scsi0"),  # -drive id=drive-scsi0, as Proxmox names them
        ("virtio1", "virtio1"),
        ("/machine/peripheral/vblk0/virtio-backend", "vblk0"),  # -blockdev + -device id=vblk0
        ("/machine/peripheral/scsi0", "scsi0"),
        ("Drive-SATA0", "sata0"),
    ],
)
def test_qemu_labels_map_to_drive_names(label: str, name: str) -> None:
    assert drive_name(label) == name


@pytest.mark.parametrize("label", ["/machine/peripheral-anon/device[0]", "#block123", "", "0disk"])
def test_labels_without_a_drive_name_are_refused_with_the_label(label: str) -> None:
    with pytest.raises(InvalidInput, match="name its node explicitly"):
        drive_name(label)


def test_qemu_object_names_fit_qemu_s_limits() -> None:
    backup, drive = "6f1c1f4e-8e0b-4c61-9d7e-2a4b5c6d7e8f", "d" * 32
    assert len(naming.overlay_node(backup, drive)) < 32  # QEMU's node-name limit
    assert naming.overlay_node(backup, drive) != naming.overlay_node(backup, "other")
    assert (
        len(str(naming.run_dir(backup, DEFAULT_QEMU_RUN_DIR) / "nbd.sock")) < 108
    )  # unix socket paths
