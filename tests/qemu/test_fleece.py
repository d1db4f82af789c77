"""Point-in-time backups of a running qemu-storage-daemon's drives with its own bitmaps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.qsd import CS, DRIVES, Guest, Qsd, missing_tools

WHY = missing_tools()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from txnbackup.action import BitmapAction  # noqa: E402
from txnbackup.errors import (  # noqa: E402
    QemuDirUnusable,
    QemuDriveError,
    QmpCommandFailed,
    QmpUnavailable,
    TxnBackupError,
)
from txnbackup.names import new_backup_id  # noqa: E402
from txnbackup.qemu.bitmaps import node_bitmaps  # noqa: E402
from txnbackup.qemu.discover import QemuDrive, discover, explicit  # noqa: E402
from txnbackup.qemu.fleece import FleeceSession  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.qemu.qmp import QmpClient  # noqa: E402


@contextlib.contextmanager
def session(qsd: Qsd, backup: str) -> Iterator[FleeceSession]:
    """A session on a fresh monitor connection, as another worker process would open it."""
    with qsd.qmp() as qmp:
        yield FleeceSession(qmp, backup, discover(qmp), nbd_socket=qsd.nbd_socket, run_root=qsd.dir)


def begin(qsd: Qsd, guest: Guest) -> tuple[str, dict[str, BitmapAction], dict[str, bytes]]:
    """Begin a backup with the guest held off: the drives' content then is the begin
    instant's."""
    backup = new_backup_id()
    with guest.paused:
        model = {d: guest.handles[d].pread(qsd.size, 0) for d in DRIVES}
        with session(qsd, backup) as s:
            decisions = s.begin()
    return backup, {d: decisions[d].action for d in DRIVES}, model


def read_all(qsd: Qsd, backup: str, drive: str) -> bytes:
    with session(qsd, backup) as s:
        view = s.view(next(d for d in s.drives if d.name == drive))
    pieces = []
    with NbdDrive(drive, view.uri, view.bitmap) as reader:
        for offset in range(0, reader.size, 1024 * 1024):
            if reader.next_data(offset) >= offset + 1024 * 1024:
                pieces.append(bytes(1024 * 1024))
            else:
                pieces.append(reader.read(offset, 1024 * 1024))
    return b"".join(pieces)


def dirty(qsd: Qsd, backup: str, drive: str) -> set[int]:
    with session(qsd, backup) as s:
        view = s.view(next(d for d in s.drives if d.name == drive))
    assert view.bitmap is not None, f"{drive} has no frozen bitmap to read"
    with NbdDrive(drive, view.uri, view.bitmap) as reader:
        return {i for i, bit in enumerate(reader.dirty_chunks(CS)) if bit}


def end(qsd: Qsd, backup: str, ending: str) -> None:
    with session(qsd, backup) as s:
        getattr(s, ending)()
        assert not s.leftovers(), f"left in QEMU after {ending}: {s.leftovers()}"
        assert not s.run_dir.exists()


def bitmaps(qsd: Qsd) -> dict[str, list[str]]:
    with qsd.harness() as qmp:
        nodes = qmp.execute("query-named-block-nodes", {"flat": True})
    return {
        n["node-name"]: sorted(b["name"] for b in n.get("dirty-bitmaps", []) if "name" in b)
        for n in nodes
        if n["node-name"] in DRIVES
    }


def written(guest: Guest, since: int, drive: str) -> set[int]:
    return {c for d, c in guest.log[since:] if d == drive}


def test_full_read_is_the_begin_instant_while_the_guest_writes(qsd: Qsd, guest: Guest) -> None:
    guest.fill()
    guest.start()
    backup, actions, model = begin(qsd, guest)
    during = len(guest.log)
    assert actions == {"drive0": BitmapAction.NEW, "drive1": BitmapAction.NEW}
    for drive in DRIVES:
        assert read_all(qsd, backup, drive) == model[drive]
    guest.stop()
    assert len(guest.log) > during, "the guest wrote nothing during the read"
    end(qsd, backup, "commit")
    assert bitmaps(qsd) == {d: [f"txnbackup-{backup}"] for d in DRIVES}


def test_incremental_reads_exactly_the_chunks_written_since_the_begin(
    qsd: Qsd, guest: Guest
) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    mark = len(guest.log)
    for chunk in (3, 4, 100):  # during the full backup: after its instant
        guest.write("drive0", chunk)
    end(qsd, first, "commit")
    for chunk in (7, 255):
        guest.write("drive1", chunk)
    guest.write("drive0", 3)
    second, actions, model = begin(qsd, guest)
    assert actions == {"drive0": BitmapAction.USED, "drive1": BitmapAction.USED}
    assert dirty(qsd, second, "drive0") == written(guest, mark, "drive0") == {3, 4, 100}
    assert dirty(qsd, second, "drive1") == written(guest, mark, "drive1") == {7, 255}
    assert read_all(qsd, second, "drive1") == model["drive1"]
    end(qsd, second, "commit")
    assert bitmaps(qsd) == {d: [f"txnbackup-{second}"] for d in DRIVES}


def test_rollback_keeps_the_frozen_bits_for_the_next_backup(qsd: Qsd, guest: Guest) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    end(qsd, first, "commit")
    mark = len(guest.log)
    guest.write("drive0", 1)  # before the failed backup
    failed, _, _ = begin(qsd, guest)
    guest.write("drive0", 2)  # during it
    guest.write("drive1", 9)
    end(qsd, failed, "rollback")
    guest.write("drive1", 10)  # after it
    retry, actions, _ = begin(qsd, guest)
    assert actions == {"drive0": BitmapAction.USED, "drive1": BitmapAction.USED}
    assert dirty(qsd, retry, "drive0") == written(guest, mark, "drive0") == {1, 2}
    assert dirty(qsd, retry, "drive1") == written(guest, mark, "drive1") == {9, 10}
    end(qsd, retry, "commit")


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_an_ending_interrupted_anywhere_is_finished_by_another_connection(
    qsd: Qsd, guest: Guest, ending: str
) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    end(qsd, first, "commit")
    guest.write("drive0", 5)
    backup, _, _ = begin(qsd, guest)
    guest.write("drive1", 6)
    # A worker died after deleting one export and cancelling one job.
    with qsd.harness() as qmp:
        qmp.execute("block-export-del", {"id": f"txnbackup-{backup}-drive0"})
        qmp.execute("block-job-cancel", {"device": f"txnbackup-{backup}-drive1"})
    end(qsd, backup, ending)
    end(qsd, backup, ending)  # again, from yet another connection: nothing left to do
    # Rolled back, the bitmap named after the base's backup records again, holding both.
    kept = backup if ending == "commit" else first
    assert bitmaps(qsd) == {d: [f"txnbackup-{kept}"] for d in DRIVES}
    retry, _, _ = begin(qsd, guest)
    # Committed, the bits frozen at the begin are gone; rolled back, they count again.
    assert dirty(qsd, retry, "drive0") == ({5} if ending == "rollback" else set())
    assert dirty(qsd, retry, "drive1") == {6}
    end(qsd, retry, "rollback")


def test_an_inconsistent_bitmap_is_removed_and_the_drive_read_in_full(
    qsd: Qsd, guest: Guest
) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    end(qsd, first, "commit")
    guest.close()
    qsd.quit()  # the bitmaps reach the images only now
    qsd.start()
    qsd.kill()  # leaves them marked in-use: inconsistent at the next start
    qsd.start()
    with qsd.qmp() as qmp:
        s = FleeceSession(
            qmp, new_backup_id(), discover(qmp), nbd_socket=qsd.nbd_socket, run_root=qsd.dir
        )
        states = s.bitmap_states()
        assert all(state.inconsistent for state in states.values())
        decisions = s.begin()
        assert {d: decisions[d].action for d in DRIVES} == {d: BitmapAction.INVALID for d in DRIVES}
        assert "inconsistent" in decisions["drive0"].reason
        assert all(s.view(d).bitmap is None for d in s.drives)
        backup = s.backup
    assert bitmaps(qsd) == {d: [f"txnbackup-{backup}"] for d in DRIVES}
    fresh = Guest(qsd)
    try:
        assert read_all(qsd, backup, "drive1") == fresh.content("drive1")
    finally:
        fresh.close()
    end(qsd, backup, "commit")


def test_a_failed_begin_leaves_nothing_and_changes_no_bitmap(qsd: Qsd, guest: Guest) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    end(qsd, first, "commit")
    with qsd.qmp() as qmp:
        drives = [*discover(qmp), QemuDrive("ghost", "no-such-node", qsd.size, "qcow2")]
        s = FleeceSession(qmp, new_backup_id(), drives, nbd_socket=qsd.nbd_socket, run_root=qsd.dir)
        with pytest.raises(Exception, match="ghost") as failure:
            s.begin()
        assert "no-such-node" in str(failure.value)
        assert not s.leftovers()
        assert not s.run_dir.exists()
    assert bitmaps(qsd) == {d: [f"txnbackup-{first}"] for d in DRIVES}


def test_the_monitor_client_reports_qemu_s_own_message(qsd: Qsd) -> None:
    with QmpClient(qsd.qmp_path) as qmp:
        with pytest.raises(QmpCommandFailed) as failure:
            qmp.execute("block-dirty-bitmap-add", {"node": "nope", "name": "x"})
        assert failure.value.desc == "Cannot find device='nope' nor node-name='nope'"
        assert isinstance(failure.value, TxnBackupError) and failure.value.exit_code == 7
        assert qmp.execute("query-version")["qemu"]["major"] >= 7


def test_qemu_killed_mid_backup_rolls_back_to_a_full_read_next(qsd: Qsd, guest: Guest) -> None:
    guest.fill()
    first, _, _ = begin(qsd, guest)
    end(qsd, first, "commit")
    guest.close()
    qsd.quit()
    qsd.start()
    fresh = Guest(qsd)
    backup, actions, _ = begin(qsd, fresh)
    assert set(actions.values()) == {BitmapAction.USED}
    fresh.close()
    with qsd.qmp() as qmp:
        s = FleeceSession(qmp, backup, discover(qmp), nbd_socket=qsd.nbd_socket, run_root=qsd.dir)
        qsd.kill()
        with pytest.raises(QmpUnavailable):
            s.rollback()
        assert not s.run_dir.exists()  # the overlays are gone with it
    qsd.start()
    end(qsd, backup, "rollback")  # the frozen bits are lost: nothing may claim to cover them
    assert bitmaps(qsd) == {d: [] for d in DRIVES}
    with session(qsd, new_backup_id()) as s:
        decisions = s.begin()
        assert {d.action for d in decisions.values()} == {BitmapAction.NEW}
        s.rollback()


def test_drives_are_found_by_node_or_named_explicitly(qsd: Qsd, guest: Guest) -> None:
    backup, _, _ = begin(qsd, guest)
    with qsd.qmp() as qmp:
        # During a backup our overlays are qcow2 nodes too; they are not drives.
        assert [(d.name, d.node, d.size) for d in discover(qmp)] == [
            (d, d, qsd.size) for d in DRIVES
        ]
        assert [d.node for d in explicit(qmp, {"scsi0": "drive1"})] == ["drive1"]
        with pytest.raises(QemuDriveError, match=r"drive scsi1: .* no block node 'drive9'"):
            explicit(qmp, {"scsi1": "drive9"})
        with pytest.raises(QemuDriveError, match="'drive0-file' is a 'file' node"):
            explicit(qmp, {"scsi1": "drive0-file"})
    end(qsd, backup, "rollback")


def test_overlays_live_in_a_private_scratch_directory_until_the_end(
    qsd: Qsd, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o755)
    backup = new_backup_id()
    with qsd.qmp() as qmp:
        s = FleeceSession(
            qmp, backup, discover(qmp), nbd_socket=qsd.nbd_socket, scratch=scratch, run_root=qsd.dir
        )
        s.begin()
        mine = scratch / f"txnbackup-qemu-{backup}"
        assert mine.stat().st_mode & 0o777 == 0o700
        assert sorted(p.name for p in mine.iterdir()) == [
            f"txnbackup-{backup}-{d}.qcow2" for d in DRIVES
        ]
        s.commit()
        assert not mine.exists() and not s.run_dir.exists()
        assert not s.leftovers()


def test_a_run_directory_others_could_tamper_with_is_refused_before_qemu_is_touched(
    qsd: Qsd, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by anyone, not sticky
    with qsd.qmp() as qmp:
        before = {d: [b.name for b in bs] for d, bs in node_bitmaps(qmp).items()}
        s = FleeceSession(qmp, new_backup_id(), discover(qmp), run_root=shared)
        with pytest.raises(QemuDirUnusable, match="writable by others and not sticky"):
            s.begin()
        assert not s.leftovers()
        assert {d: [b.name for b in bs] for d, bs in node_bitmaps(qmp).items()} == before
        assert list(shared.iterdir()) == []
