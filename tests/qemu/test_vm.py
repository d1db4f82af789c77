"""The same flow against a real ``qemu-system-x86_64`` VM, as hypervisors run it (the CPU
never starts: ``-S``); the session starts and stops its own NBD server there."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fleet_plugin import Fleet
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
from txnbackup.qemu.bitmaps import node_bitmaps  # noqa: E402
from txnbackup.qemu.discover import discover  # noqa: E402
from txnbackup.qemu.fleece import FleeceSession  # noqa: E402
from txnbackup.qemu.leftovers import find_leftovers  # noqa: E402
from txnbackup.qemu.naming import bitmap_name  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.qemu.qmp import QmpClient  # noqa: E402
from txnbackup.qemu.vm import QemuVM  # noqa: E402
from txnbackup.repository import Repository  # noqa: E402
from txnbackup.restore import restore_drive  # noqa: E402
from txnbackup.snapshot import SnapshotId  # noqa: E402

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


def guest_write(vm: Path, device: str, offset: int, length: int = CS) -> None:
    """A write as the guest's would arrive, through the device's block backend (HMP)."""
    with QmpClient(str(vm / "harness.sock")) as qmp:
        line = f'qemu-io -d {device}/virtio-backend "write -P 0x5a {offset} {length}"'
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


def test_a_vm_s_backups_through_the_fleet_begin_commit_and_roll_back(
    vm: Path, make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    """The fleet discovers the VM's drives, starts its own NBD server in the run directory
    (QEMU_RUN_DIR: the VM's directory), commits, rolls a cancelled backup back."""
    fleet = make_fleet({"TXNBACKUP_QEMU_RUN_DIR": str(vm)})
    fleet.start("vmnode")
    producer = fleet.producer
    repo = Repository.init(tmp_path / "repo", CS)
    qemu = QemuVM(str(vm / "qmp.sock"), "vmnode")
    guest_write(vm, "virtio0", 0)
    full = producer.wait(producer.submit("100", [], repository=repo.path, qmp=qemu), 60)
    assert full.status == "done", full.errmsg
    assert [(d.name, d.action, d.size) for d in full.drives] == [
        ("virtio0", "new", SIZE),
        ("virtio1", "new", SIZE),
    ]
    assert restored(repo, full.snapshot, "virtio0", tmp_path)[:CS] == b"\x5a" * CS

    guest_write(vm, "virtio0", 0, 8 * CS)
    guest_write(vm, "virtio1", 3 * CS)
    slow = producer.submit("100", [], repository=repo.path, qmp=qemu, speed_limit=CS)
    deadline = time.monotonic() + 30
    while not any(d.transferred for d in producer.status(slow).drives):
        assert time.monotonic() < deadline, "the incremental did not start copying"
        time.sleep(0.05)
    producer.cancel(slow)
    assert producer.wait(slow, 30).status == "cancelled"
    with QmpClient(str(vm / "harness.sock")) as qmp:
        assert not find_leftovers(qmp)
    assert not (vm / f"txnbackup-qemu-{slow}").exists()

    guest_write(vm, "virtio0", 20 * CS)
    after = producer.wait(producer.submit("100", [], repository=repo.path, qmp=qemu), 60)
    assert after.status == "done", after.errmsg
    assert [(d.action, d.dirty) for d in after.drives] == [("used", 9 * CS), ("used", CS)]
    assert restored(repo, after.snapshot, "virtio1", tmp_path)[3 * CS : 4 * CS] == b"\x5a" * CS
    with QmpClient(str(vm / "harness.sock")) as qmp:
        assert not find_leftovers(qmp)
        names = {n: [b.name for b in bs] for n, bs in node_bitmaps(qmp).items() if bs}
    assert names == {"d0": [bitmap_name(after.uuid)], "d1": [bitmap_name(after.uuid)]}


def restored(repo: Repository, snapshot: str, drive: str, tmp: Path) -> bytes:
    target = tmp / f"{snapshot.replace('/', '_')}-{drive}.raw"
    restore_drive(repo, SnapshotId.parse(snapshot), drive, target)
    return target.read_bytes()
