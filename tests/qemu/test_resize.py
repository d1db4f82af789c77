"""A QEMU drive resized between two backups.

A size change makes QEMU's bitmap unusable (``invalid``: a full read). A drive shrunk and
grown back to the size of its base snapshot keeps a bitmap of the right size: QEMU drops the
bits of the cut region and the regrown region starts clean. The copy engine sees that the
drive reads zeros in whole chunks the bitmap calls unchanged while the base holds data there
(txnbackup.crosscheck), and reads the drive in full instead of restoring stale base data.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.qemu.qsd import CS, Guest, Qsd, missing_tools

WHY = missing_tools()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from tests.qemu.test_engine import back_up  # noqa: E402
from tests.unit.builders import restored  # noqa: E402
from txnbackup.repository import Repository  # noqa: E402


def resize_offline(qsd: Qsd, drive: str, *sizes: int) -> None:
    """Stop QEMU, resize the drive's image with qemu-img (bitmaps kept), start QEMU again."""
    qsd.quit()
    for size in sizes:
        shrink = ["--shrink"] if size < qsd.size else []
        subprocess.run(
            ["qemu-img", "resize", "-q", *shrink, str(qsd.images[drive]), str(size)], check=True
        )
    qsd.start()


def test_a_drive_shrunk_and_grown_back_is_not_restored_from_stale_base_data(
    qsd: Qsd, tmp_path: Path
) -> None:
    # Given a full backup of drives holding data in their first three quarters
    repo = Repository.init(tmp_path / "repo", CS)
    guest = Guest(qsd)
    try:
        guest.fill()
        full, _, _, _ = back_up(qsd, guest, repo, "2026-01-01T00:00:00Z", None)
    finally:
        guest.close()
    # And drive0 then cut and grown back: it reads zeros from the cut on
    cut = qsd.size // 2
    resize_offline(qsd, "drive0", cut, qsd.size)

    # When the next backup runs (the bitmap is used: same size as the base)
    guest = Guest(qsd)
    try:
        incremental, model, read, _ = back_up(qsd, guest, repo, "2026-01-01T00:01:00Z", full)
    finally:
        guest.close()

    # Then it restores the drive as it was at the backup, zeros in the regrown part
    assert model["drive0"][cut:] == bytes(qsd.size - cut)
    assert restored(repo, incremental, "drive0", tmp_path) == model["drive0"]
    # And only the resized drive was read in full: drive1's bitmap is still believed
    assert read["drive0"] == qsd.size
    assert read["drive1"] < qsd.size
    (drive0,) = (d for d in repo.manifest(incremental).drives if d.name == "drive0")
    assert drive0.action == "invalid"
