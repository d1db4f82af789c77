"""The same flow against a real ``qemu-system-x86_64`` VM, as hypervisors run it (the CPU
never starts: ``-S``); the session starts and stops its own NBD server there."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.qsd import CS, MIB, missing_tools, wait_for

WHY = missing_tools() or (
    None
    if shutil.which("qemu-system-x86_64")
    else "qemu-system-x86_64 is not installed (Debian qemu-system-x86; optional)"
)
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from txnbackup.action import BitmapAction  # noqa: E402
from txnbackup.names import new_backup_id  # noqa: E402
from txnbackup.qemu.discover import discover  # noqa: E402
from txnbackup.qemu.fleece import FleeceSession  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.qemu.qmp import QmpClient  # noqa: E402

SIZE = 16 * MIB


@pytest.fixture
def vm() -> Iterator[Path]:
    """A q35 VM with two virtio-blk drives and an empty CD-ROM; its monitors in the dir."""
    work = Path(tempfile.mkdtemp(prefix="txnb-vm-", dir="/tmp"))
    args = ["setpriv", "--pdeathsig", "TERM", "qemu-system-x86_64", "-M", "q35", "-S"]
    args += ["-nodefaults", "-display", "none", "-device", "ide-cd,id=cd0"]
    for i in range(2):
        image = work / f"disk{i}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE)], check=True
        )
        args += [
            "-blockdev", f"driver=file,node-name=f{i},filename={image}",
            "-blockdev", f"driver=qcow2,node-name=d{i},file=f{i}",
            "-device", f"virtio-blk-pci,drive=d{i},id=virtio{i}",
        ]  # fmt: skip
    for name in ("qmp", "harness"):
        args += ["-qmp", f"unix:{work / name}.sock,server=on,wait=off"]
    log = open(work / "qemu.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    log.close()  # the VM has its own copy
    try:
        wait_for(work / "harness.sock", proc)
        yield work
    finally:
        if proc.poll() is None:
            proc.kill()  # this VM only: its own pid
        proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


def guest_write(vm: Path, device: str, offset: int) -> None:
    """A write as the guest's would arrive, through the device's block backend (HMP)."""
    with QmpClient(str(vm / "harness.sock")) as qmp:
        line = f'qemu-io -d {device}/virtio-backend "write -P 0x5a {offset} {CS}"'
        # qemu-io reports to QEMU's stdout; the dirty bitmaps below show the write landed.
        qmp.execute("human-monitor-command", {"command-line": line})


def test_a_vm_s_drives_are_found_frozen_read_and_ended(vm: Path) -> None:
    with QmpClient(str(vm / "qmp.sock")) as qmp:
        drives = discover(qmp)
        assert [(d.name, d.node, d.size) for d in drives] == [
            ("virtio0", "d0", SIZE),
            ("virtio1", "d1", SIZE),
        ]
        full = FleeceSession(qmp, new_backup_id(), drives, run_root=vm)
        assert {d.action for d in full.begin().values()} == {BitmapAction.NEW}
        guest_write(vm, "virtio0", 0)  # after the instant: the view still reads zeros
        view = full.view(drives[0])
        with NbdDrive("virtio0", view.uri) as reader:
            assert reader.read(0, CS) == bytes(CS)
            assert reader.next_data(0) == SIZE  # an empty image is one hole
        full.commit()
        assert not full.leftovers()

        guest_write(vm, "virtio1", 3 * CS)
        incremental = FleeceSession(qmp, new_backup_id(), drives, run_root=vm)
        decisions = incremental.begin()
        assert {d.action for d in decisions.values()} == {BitmapAction.USED}
        for drive, expected in zip(drives, ({0}, {3}), strict=True):
            view = incremental.view(drive)
            with NbdDrive(drive.name, view.uri, view.bitmap) as reader:
                bits = reader.dirty_chunks(CS)
                assert {i for i, bit in enumerate(bits) if bit} == expected
                assert reader.read(0, CS) == (
                    b"\x5a" * CS if drive.name == "virtio0" else bytes(CS)
                )
        incremental.rollback()
        assert not incremental.leftovers()
        assert not incremental.run_dir.exists()

        retry = FleeceSession(qmp, new_backup_id(), drives, run_root=vm)
        retry.begin()
        view = retry.view(drives[1])
        with NbdDrive("virtio1", view.uri, view.bitmap) as reader:
            assert sum(reader.dirty_chunks(CS)) == 1  # the rolled-back bits are still there
        retry.commit()
        assert not retry.leftovers()
