"""The guest's records and initramfs, without a VM: the check a restore must pass, and an
archive the kernel can unpack."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from txnbackup_cli.demo.qemu.initramfs import INIT, build_initramfs
from txnbackup_cli.demo.qemu.kit import find_kit
from txnbackup_cli.demo.qemu.records import (
    RECORD,
    DiskMismatch,
    check_disk,
    consistent,
    record,
    slot,
)

SLOTS = 8


def disk_after(rounds: int, tmp: Path) -> Path:
    """A disk image as the guest leaves it after ``rounds`` rounds."""
    image = tmp / f"after-{rounds}.raw"
    image.write_bytes(bytes(SLOTS * RECORD))
    with open(image, "r+b") as fh:
        for n in range(1, rounds + 1):
            fh.seek(slot(n, SLOTS * RECORD) * RECORD)
            fh.write(record(n))
    return image


@pytest.mark.parametrize("rounds", [0, 1, 5, 8, 19])
def test_a_disk_as_the_guest_left_it_passes_with_its_last_record(
    tmp_path: Path, rounds: int
) -> None:
    assert check_disk(disk_after(rounds, tmp_path)) == rounds


def test_a_disk_missing_one_changed_block_fails(tmp_path: Path) -> None:
    image = disk_after(19, tmp_path)
    with open(image, "r+b") as fh:  # slot 6 as after round 6: an old chunk restored
        fh.seek(6 * RECORD)
        fh.write(record(6))
    with pytest.raises(DiskMismatch, match="block 6 is not record 14"):
        check_disk(image)


def test_b_is_a_s_last_record_or_one_behind() -> None:
    assert consistent(7, 7) and consistent(7, 6) and consistent(0, 0)
    assert not consistent(7, 5) and not consistent(7, 8)


def test_the_initramfs_is_a_newc_archive_with_the_init_and_the_drivers(tmp_path: Path) -> None:
    kit = find_kit()
    if kit is None:
        pytest.skip("no guest kit (scripts/ensure-guest.sh)")
    archive = gzip.decompress(build_initramfs(kit, tmp_path / "initramfs.gz").read_bytes())
    listing = subprocess.run(
        [str(kit.busybox), "cpio", "-t"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    names = set(listing.split())
    assert {"init", "bin/busybox", "bin/sh", "dev/console"} <= names
    assert {f"lib/modules/{m}.ko" for m in kit.modules} <= names
    extracted = subprocess.run(
        [str(kit.busybox), "cpio", "-i", "--to-stdout", "init"],
        input=archive,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert extracted == INIT
