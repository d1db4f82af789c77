"""One real guest per module (KVM, else TCG), running and writing through every backup of the
module, as a VM does through its backups; always stopped, also when a test fails."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_plugin import Fleet
from tests.qemu.qsd import missing_tools
from txnbackup_cli.demo.qemu.guest import GuestVM
from txnbackup_cli.demo.qemu.kit import guest_problem

WHY = missing_tools() or guest_problem()
NODE = "gnode"
FLEET_SETTINGS = {"TXNBACKUP_ROLLBACK_WAIT": "5"}


@pytest.fixture(scope="module")
def guest() -> Iterator[GuestVM]:
    if WHY:
        pytest.skip(WHY)
    # Not pytest's tmp_path: unix socket paths must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="txnb-guest-", dir="/tmp"))
    vm = GuestVM(workdir)
    try:
        vm.start()
        took = vm.wait_first_record()
        print(f"guest ({vm.accel.why}): first record {took:.1f} s after QEMU started")
        yield vm
    finally:
        vm.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def gfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet of its own with one worker on the VM's node (the fleets of tests/qemu's kind)."""
    fleet = Fleet(tmp_path_factory.mktemp("guest-fleet"), FLEET_SETTINGS)
    try:
        fleet.start(NODE)
        yield fleet
    finally:
        fleet.stop()
