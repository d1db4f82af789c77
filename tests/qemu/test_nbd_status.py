"""What an NBD server's block status may say, and what the NBD reader makes of it.

QEMU passes on what the storage under a VM's drive reports: a drive on NBD or iSCSI storage
may report a hole whose content is not known to be zeros (NBD_STATE_HOLE without
NBD_STATE_ZERO). The reader must then read it; only "reads as zeros" lets it skip a chunk.
A scripted server (tests/qemu/scripted_nbd.py) says what QEMU's own formats never say.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.qsd import missing_tools

WHY = missing_tools()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

from tests.qemu.scripted_nbd import DIRTY, HOLE, ZERO, Extents, ScriptedNbd  # noqa: E402
from tests.unit.builders import CS, no_cancel, no_progress, restored  # noqa: E402
from txnbackup.action import BitmapAction  # noqa: E402
from txnbackup.engine import CopyJob, Incremental, copy_drive  # noqa: E402
from txnbackup.errors import DriveReadError  # noqa: E402
from txnbackup.names import new_backup_id  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.repository import Repository  # noqa: E402
from txnbackup.snapshot import SnapshotId  # noqa: E402
from txnbackup.staging import Staging, publish  # noqa: E402

VM = "100"
BITMAP = "txnbackup-test"
RANDOM = random.Random(20).randbytes(CS)
# Three chunks: zeros, random data the server calls a hole (content unknown), zeros.
DATA = bytes(CS) + RANDOM + bytes(CS)
HOLE_OF_UNKNOWN_CONTENT: Extents = [(CS, HOLE | ZERO), (CS, HOLE), (CS, HOLE | ZERO)]


def back_up(
    repo: Repository, uri: str, time_: str, base: SnapshotId | None = None
) -> tuple[SnapshotId, int]:
    """Copy the export as drive ``drive0`` (incrementally from ``base`` with the export's
    dirty bitmap) and publish it; the snapshot and the bytes read."""
    backup = new_backup_id()
    staging = Staging(repo, backup)
    staging.create()
    with NbdDrive("drive0", uri, BITMAP if base else None) as reader:
        incremental = None
        if base is not None:
            index = repo.snapshot_dir(base) / "drive0.fidx"
            incremental = Incremental(reader.dirty_bytes(CS), reader.dirty_chunks(CS), index)
        action = BitmapAction.USED if base else BitmapAction.NEW
        job = CopyJob(VM, backup, "drive0", action)
        entry = copy_drive(job, reader, staging, incremental, no_cancel, no_progress)
    return publish(staging, VM, SnapshotId(VM, time_), ["drive0"], {}), entry.stats.transferred


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", CS)


def test_a_hole_of_unknown_content_is_read_not_taken_for_zeros(
    repo: Repository, tmp_path: Path
) -> None:
    # Given an export whose middle chunk holds data its server reports as a hole, not as zeros
    with ScriptedNbd(DATA, HOLE_OF_UNKNOWN_CONTENT, name="drive0") as server:
        # When it is backed up
        snapshot, _ = back_up(repo, server.uri(), "2026-01-01T00:00:00Z")

    # Then the snapshot restores the data the export reads, not zeros
    assert restored(repo, snapshot, "drive0", tmp_path) == DATA


@pytest.fixture
def nbd_storage_vm() -> Iterator[str]:
    """A drive on NBD storage (the scripted server) under a qcow2 overlay in QEMU, as a
    fleecing export stacks it: the URI of QEMU's export of the overlay."""
    with ScriptedNbd(DATA, HOLE_OF_UNKNOWN_CONTENT, name="remote") as storage:
        overlay = storage.dir / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(overlay), str(len(DATA))], check=True
        )
        socket = storage.dir / "qemu.sock"
        remote = f"server.type=unix,server.path={storage.path},export=remote"
        daemon = subprocess.Popen(
            [
                "qemu-storage-daemon",
                "--blockdev",
                f"driver=nbd,node-name=remote,{remote},read-only=on",
                "--blockdev",
                f"driver=qcow2,node-name=view,file.driver=file,file.filename={overlay},"
                "backing=remote,read-only=on",
                "--nbd-server",
                f"addr.type=unix,addr.path={socket}",
                "--export",
                "type=nbd,id=view,node-name=view,name=view",
            ]
        )
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(socket) and time.monotonic() < deadline:
                time.sleep(0.01)
            yield f"nbd+unix:///view?socket={socket}"
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
            overlay.unlink(missing_ok=True)
            socket.unlink(missing_ok=True)


def test_qemu_passes_on_a_hole_of_unknown_content_and_it_is_read(
    repo: Repository, tmp_path: Path, nbd_storage_vm: str
) -> None:
    # Given QEMU exporting an overlay over a drive whose NBD storage reports a data hole
    # When the export is backed up
    snapshot, _ = back_up(repo, nbd_storage_vm, "2026-01-01T00:00:00Z")

    # Then the snapshot restores what the VM reads
    assert restored(repo, snapshot, "drive0", tmp_path) == DATA


SIZE = 4 * CS + 1000  # five chunks, the last one short


def content(seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(CS, SIZE - at)) for at in range(0, SIZE, CS))


@pytest.mark.parametrize(
    ("dirty", "chunks"),
    [
        ([(CS - 1, 0), (2, DIRTY), (SIZE, 0)], [0, 1]),  # two bytes across a boundary
        ([(2 * CS + 7, 0), (1, DIRTY), (SIZE, 0)], [2]),  # one byte inside a chunk
        ([(4 * CS + 999, 0), (1, DIRTY)], [4]),  # the last byte of the short last chunk
        ([(512, DIRTY), (3 * CS, 0), (CS, DIRTY), (SIZE, 0)], [0, 3, 4]),
    ],
    ids=["across-a-boundary", "one-byte", "last-byte", "several"],
)
def test_dirty_extents_not_aligned_to_chunks_mark_every_chunk_they_touch(
    dirty: Extents, chunks: list[int]
) -> None:
    with (
        ScriptedNbd(content(1), [(SIZE, 0)], dirty) as server,
        NbdDrive("drive0", server.uri(), BITMAP) as reader,
    ):
        bits = reader.dirty_chunks(CS)
        dirty_bytes = reader.dirty_bytes(CS)
    assert [i for i, bit in enumerate(bits) if bit] == chunks
    assert dirty_bytes == sum(min(CS, SIZE - i * CS) for i in chunks)


def test_an_incremental_reads_what_unaligned_extents_touch_and_skips_zero_ones(
    repo: Repository, tmp_path: Path
) -> None:
    # Given a full backup of a drive
    old = content(1)
    with ScriptedNbd(old, [(SIZE, 0)], name="drive0") as server:
        base, _ = back_up(repo, server.uri(), "2026-01-01T00:00:00Z")
    # And a change: bytes across the boundary of chunks 0 and 1, chunk 3 zeroed (and reported
    # as zeros) while dirty, and the last byte of the short last chunk
    new = bytearray(old)
    new[CS - 3 : CS + 3] = b"abcdef"
    new[3 * CS : 4 * CS] = bytes(CS)
    new[-1] ^= 0xFF
    dirty = [(CS - 3, 0), (6, DIRTY), (2 * CS - 3, 0), (CS, DIRTY), (999, 0), (1, DIRTY)]
    allocation = [(3 * CS, 0), (CS, HOLE | ZERO), (SIZE, 0)]

    # When the incremental backup runs on the export's dirty bitmap
    with ScriptedNbd(bytes(new), allocation, dirty, name="drive0", bitmap=BITMAP) as server:
        incremental, transferred = back_up(repo, server.uri(), "2026-01-01T00:01:00Z", base)

    # Then it read chunks 0, 1, 3 and 4 only, and both snapshots restore their instants
    assert transferred == 3 * CS + 1000
    assert restored(repo, incremental, "drive0", tmp_path) == bytes(new)
    assert restored(repo, base, "drive0", tmp_path) == old


@pytest.mark.parametrize(
    "dirty",
    [
        [(SIZE, 0), (CS, DIRTY)],  # a dirty extent wholly past the end
        [(SIZE - 10, 0), (CS, DIRTY)],  # a dirty extent running past the end
    ],
    ids=["past-the-end", "across-the-end"],
)
def test_dirty_extents_past_the_end_of_the_drive_are_refused_clearly(dirty: Extents) -> None:
    # Given a server whose dirty bitmap says more than the export holds (not clipped)
    with (
        ScriptedNbd(content(2), [(SIZE, 0)], dirty, clip=False) as server,
        NbdDrive("drive0", server.uri(), BITMAP) as reader,
        # When the dirty chunks are asked for, Then the reader refuses, naming the drive
        pytest.raises(DriveReadError, match=r"drive0.*past the end"),
    ):
        reader.dirty_chunks(CS)


class EmptyExtents(ScriptedNbd):
    """A server whose every block status reply is one extent of length zero."""

    def _status(self, script: Extents, offset: int, length: int) -> Extents:
        return [(0, DIRTY)]


def test_an_empty_extent_is_refused_not_walked_forever() -> None:
    # Given a server answering block status with an extent that covers nothing
    with (
        EmptyExtents(content(3), [(SIZE, 0)], [(SIZE, DIRTY)]) as server,
        NbdDrive("drive0", server.uri(), BITMAP) as reader,
        # When the dirty chunks are asked for, Then the reader refuses instead of hanging
        pytest.raises(DriveReadError, match=r"drive0.*empty extent"),
    ):
        reader.dirty_chunks(CS)
