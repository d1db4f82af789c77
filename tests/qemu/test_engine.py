"""The copy engine reading QEMU's fleecing exports: what the pipeline will plug together."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.qemu.qsd import CS, DRIVES, Guest, Qsd, missing_tools

WHY = missing_tools()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from tests.unit.builders import no_cancel, no_progress, restored  # noqa: E402
from txnbackup.action import BitmapAction  # noqa: E402
from txnbackup.engine import CopyJob, Incremental, copy_drive  # noqa: E402
from txnbackup.names import new_backup_id  # noqa: E402
from txnbackup.qemu.discover import discover  # noqa: E402
from txnbackup.qemu.fleece import FleeceSession  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.repository import Repository  # noqa: E402
from txnbackup.snapshot import SnapshotId  # noqa: E402
from txnbackup.staging import Staging, publish  # noqa: E402

VM = "100"


def back_up(
    qsd: Qsd, guest: Guest, repo: Repository, time: str, base: SnapshotId | None
) -> tuple[SnapshotId, dict[str, bytes], dict[str, int], int]:
    """One backup of both drives while the guest writes; returns the snapshot, the drives'
    content at the begin instant, the bytes read per drive and the guest's log position
    at the begin instant."""
    backup = new_backup_id()
    with qsd.qmp() as qmp:
        session = FleeceSession(
            qmp, backup, discover(qmp), nbd_socket=qsd.nbd_socket, run_root=qsd.dir
        )
        with guest.paused:
            model = {d: guest.content(d) for d in DRIVES}
            decisions = session.begin()
            instant = len(guest.log)
        guest.start()
        staging = Staging(repo, backup)
        staging.create()
        read = {}
        for drive in session.drives:
            action = decisions[drive.name].action
            assert action is (BitmapAction.USED if base else BitmapAction.NEW)
            view = session.view(drive)
            with NbdDrive(drive.name, view.uri, view.bitmap) as reader:
                incremental = None
                if base is not None:
                    index = repo.snapshot_dir(base) / staging.index_path(drive.name).name
                    incremental = Incremental(
                        reader.dirty_bytes(CS), reader.dirty_chunks(CS), index
                    )
                job = CopyJob(VM, backup, drive.name, action)
                entry = copy_drive(job, reader, staging, incremental, no_cancel, no_progress)
            read[drive.name] = entry.stats.transferred
        guest.stop()
        snapshot = publish(staging, VM, SnapshotId(VM, time), list(DRIVES), {})
        session.commit()
        assert not session.leftovers()
    return snapshot, model, read, instant


def test_full_and_incremental_restore_the_begin_instants(
    qsd: Qsd, guest: Guest, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo", CS)
    guest.fill()
    full, model, _, first = back_up(qsd, guest, repo, "2026-01-01T00:00:00Z", None)
    for drive in DRIVES:
        assert restored(repo, full, drive, tmp_path) == model[drive]
    guest.write("drive0", 17)
    incremental, model, read, second = back_up(qsd, guest, repo, "2026-01-01T00:01:00Z", full)
    for drive in DRIVES:
        assert restored(repo, incremental, drive, tmp_path) == model[drive]
        # Exactly the chunks written between the two begin instants are read.
        between = {c for d, c in guest.log[first:second] if d == drive}
        assert read[drive] == len(between) * CS < qsd.size
