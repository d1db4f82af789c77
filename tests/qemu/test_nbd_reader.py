"""The NBD reader under the engine's threads: a connection per reading thread where the
server allows several, exact bytes at every offset, a dropped connection failing the drive
without hanging, and ``next_data`` answered from the last block status reply.

Scripted servers (tests/qemu/scripted_nbd.py) say what the reader must cope with; a real
qemu-storage-daemon shows that QEMU's fleecing export is read the same way.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.qemu.qsd import CS, DRIVES, Guest, Qsd, missing_tools

WHY = missing_tools()
if WHY:
    pytest.skip(WHY, allow_module_level=True)

import nbd  # noqa: E402

from tests.qemu.scripted_nbd import HOLE, ZERO, Extents, ScriptedNbd  # noqa: E402
from tests.qemu.test_fleece import begin, end, session  # noqa: E402
from tests.unit.builders import no_cancel, no_progress, restored  # noqa: E402
from txnbackup.action import BitmapAction  # noqa: E402
from txnbackup.engine import CopyJob, copy_drive  # noqa: E402
from txnbackup.errors import DriveReadError  # noqa: E402
from txnbackup.names import new_backup_id  # noqa: E402
from txnbackup.qemu import nbd_drive  # noqa: E402
from txnbackup.qemu.nbd_drive import NbdDrive  # noqa: E402
from txnbackup.repository import Repository  # noqa: E402
from txnbackup.snapshot import SnapshotId  # noqa: E402
from txnbackup.staging import Staging, publish  # noqa: E402

THREADS = 4
SIZE = 20 * 1024 * 1024 + 1000  # several of the engine's 4 MiB spans, the last chunk short
PIECE = 1024 * 1024 + 4096  # reads that line up with nothing; the last one is short
DATA = random.Random(7).randbytes(SIZE)


def pieces(size: int, piece: int) -> list[tuple[int, int]]:
    return [(at, min(piece, size - at)) for at in range(0, size, piece)]


def read_in_threads(reader: NbdDrive, size: int, piece: int = PIECE) -> bytes:
    with ThreadPoolExecutor(THREADS) as pool:
        return b"".join(pool.map(lambda p: reader.read(*p), pieces(size, piece)))


def back_up(repo: Repository, uri: str) -> SnapshotId:
    backup = new_backup_id()
    staging = Staging(repo, backup)
    staging.create()
    with NbdDrive("drive0", uri) as reader:
        job = CopyJob("100", backup, "drive0", BitmapAction.NEW, workers=THREADS)
        copy_drive(job, reader, staging, None, no_cancel, no_progress)
    return publish(staging, "100", SnapshotId("100", "2026-01-01T00:00:00Z"), ["drive0"], {})


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", CS)


class Gathering(ScriptedNbd):
    """Answers no read until ``THREADS`` reads are in flight at once (then all of them);
    drops the connection when they never are."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.barrier = threading.Barrier(THREADS, timeout=10)

    def _read(self, offset: int, length: int) -> bytes:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise ConnectionError("reads came one at a time") from None
        return super()._read(offset, length)


def test_each_reading_thread_has_its_own_read_in_flight() -> None:
    # Given a server that advertises multi-conn and answers reads only once four are pending
    with (
        Gathering(DATA, [(SIZE, 0)], name="drive0", multi_conn=True) as server,
        NbdDrive("drive0", server.uri()) as reader,
    ):
        # When four threads read a span each
        spans = pieces(4 * CS, CS)
        got: dict[int, bytes] = {}
        threads = [
            threading.Thread(target=lambda at=at, n=n: got.update({at: reader.read(at, n)}))
            for at, n in spans
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    # Then all four were in flight together, and each got its bytes
    assert got == {at: DATA[at : at + n] for at, n in spans}
    assert server.connections == 1 + THREADS  # the reader's first, then one per thread


def test_the_engine_copies_over_several_connections_byte_for_byte(
    repo: Repository, tmp_path: Path
) -> None:
    # Given an export that allows several connections, its size not a multiple of the chunk
    with ScriptedNbd(DATA, [(SIZE, 0)], name="drive0", multi_conn=True) as server:
        # When the engine copies it
        snapshot = back_up(repo, server.uri())
        with NbdDrive("drive0", server.uri()) as reader:
            reads_from_threads = read_in_threads(reader, SIZE)

    # Then the snapshot restores every byte, the short last chunk too, read by several threads
    assert restored(repo, snapshot, "drive0", tmp_path) == DATA
    assert reads_from_threads == DATA
    assert server.connections > 2


def test_a_server_without_multi_conn_gets_one_connection_from_every_thread() -> None:
    # Given a server that does not advertise multi-conn
    with (
        ScriptedNbd(DATA, [(SIZE, 0)], name="drive0") as server,
        NbdDrive("drive0", server.uri()) as reader,
    ):
        # When several threads read it through one reader
        got = read_in_threads(reader, SIZE)

    # Then they shared the one connection, and every byte is right
    assert got == DATA
    assert server.connections == 1


class SlowToNegotiate(ScriptedNbd):
    """Takes a while over each new connection, so that many threads open theirs at once."""

    def _negotiate(self, conn: socket.socket) -> dict[int, str] | None:
        time.sleep(0.2)
        return super()._negotiate(conn)


def test_the_connection_cap_holds_while_threads_are_still_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nbd_drive, "MAX_CONNECTIONS", 3)
    # Given a multi-conn server that is slow to complete each connection
    with (
        SlowToNegotiate(DATA, [(SIZE, 0)], name="drive0", multi_conn=True) as server,
        NbdDrive("drive0", server.uri()) as reader,
    ):
        # When eight threads make their first read at the same moment
        start = threading.Barrier(8, timeout=10)
        spans = pieces(8 * PIECE, PIECE)
        got: dict[int, bytes] = {}

        def read(at: int, n: int) -> None:
            start.wait()
            got[at] = reader.read(at, n)

        threads = [threading.Thread(target=read, args=span) for span in spans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    # Then the reader opened no more connections than its cap, and every thread got its bytes
    assert got == {at: DATA[at : at + n] for at, n in spans}
    assert server.connections == 3


class TakingOne(ScriptedNbd):
    """Accepts one connection; later ones wait in the listen backlog (as QEMU's server does
    once it has ``max-connections`` clients)."""

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self.connections += 1
        threading.Thread(target=self._session, args=(conn,), daemon=True).start()


def test_a_server_taking_no_further_connection_is_read_over_the_first(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(nbd_drive, "CONNECT_WAIT", 0.5)
    got: list[bytes] = []
    # Given a server that advertises multi-conn but takes only the reader's first connection
    with TakingOne(DATA, [(SIZE, 0)], name="drive0", multi_conn=True) as server:
        # When several threads read it through one reader
        def read() -> None:
            with NbdDrive("drive0", server.uri()) as reader:
                got.append(read_in_threads(reader, SIZE))

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        reading.join(60)

        # Then the reads did not wait for ever: they went over the first connection
        assert not reading.is_alive(), "a thread waits for a connection the server never takes"
    assert got == [DATA]
    assert server.connections == 1
    assert "took no further connection; reading over one" in caplog.text


class Dropping(ScriptedNbd):
    """Drops a connection when a read reaches past the middle of the export."""

    def _read(self, offset: int, length: int) -> bytes:
        if offset + length > len(self.data) // 2:
            raise ConnectionError("the server went away")
        return super()._read(offset, length)


@pytest.mark.parametrize("multi_conn", [True, False], ids=["per-thread", "shared"])
def test_a_connection_dropped_mid_copy_fails_the_drive_and_close_returns(
    repo: Repository, multi_conn: bool
) -> None:
    # Given an export whose connections drop half way through
    outcome: list[BaseException] = []

    def copy() -> None:
        try:
            back_up(repo, server.uri())
        except BaseException as exc:
            outcome.append(exc)

    with Dropping(DATA, [(SIZE, 0)], name="drive0", multi_conn=multi_conn) as server:
        # When the engine copies it (and closes the reader on the way out)
        copying = threading.Thread(target=copy, daemon=True)
        copying.start()
        copying.join(60)

        # Then the copy ended, failing with a read error naming the drive
        assert not copying.is_alive(), "the copy or the reader's close hung"
    assert len(outcome) == 1 and isinstance(outcome[0], DriveReadError), outcome
    assert str(outcome[0]).startswith("drive drive0: read failed at offset ")
    assert repo.snapshots("100") == []


def script(seed: int, size: int) -> Extents:
    """Extents of 4-256 KiB, flagged at random: data, a hole of zeros, zeros, a hole."""
    rng = random.Random(seed)
    extents, at = [], 0
    while at < size:
        length = min(rng.randint(1, 64) * 4096, size - at)
        extents.append((length, rng.choice([0, HOLE | ZERO, ZERO, HOLE])))
        at += length
    return extents


def truth(extents: Extents, size: int) -> Callable[[int], int]:
    """The first offset at or after ``offset`` that does not read as zeros."""
    data, at = [], 0
    for length, flags in extents:
        if not flags & ZERO:
            data.append((at, at + length))
        at += length

    def first(offset: int) -> int:
        return next((max(s, offset) for s, e in data if e > offset), size)

    return first


class Truncating(ScriptedNbd):
    """Answers at most three extents per block status request (as a server may)."""

    def _status(self, script: Extents, offset: int, length: int) -> Extents:
        return super()._status(script, offset, length)[:3]


@pytest.mark.parametrize("server_type", [ScriptedNbd, Truncating], ids=["whole", "truncated"])
def test_next_data_from_the_last_reply_matches_an_uncached_walk(
    server_type: type[ScriptedNbd],
) -> None:
    size = 8 * 1024 * 1024 + 4096
    extents = script(3, size)
    offsets = list(range(0, size + 4096, 4096))
    first_data = truth(extents, size)
    with server_type(bytes(size), extents, name="drive0") as server:
        # Given what a fresh reader (no earlier reply) answers at every 4 KiB offset
        uncached = {}
        for offset in offsets[::16]:
            with NbdDrive("drive0", server.uri()) as fresh:
                uncached[offset] = fresh.next_data(offset)
        # When one reader is asked for every offset in order, then from four threads at random
        with NbdDrive("drive0", server.uri()) as reader:
            before = server.status_requests
            in_order = {offset: reader.next_data(offset) for offset in offsets}
            asked = server.status_requests - before
            shuffled = random.Random(5).sample(offsets, len(offsets))
            with ThreadPoolExecutor(THREADS) as pool:
                at_random = dict(zip(shuffled, pool.map(reader.next_data, shuffled), strict=True))

    # Then no answer skips data and none is short of an uncached walk's; with replies that
    # reach the end of the drive every answer is exact, and one reply served them all
    for answers in (in_order, at_random):
        assert all(offset <= answers[offset] <= first_data(offset) for offset in offsets)
        assert all(uncached[offset] <= answers[offset] for offset in uncached)
    if server_type is ScriptedNbd:
        assert in_order == at_random == {offset: first_data(offset) for offset in offsets}
        assert asked == 1
    else:
        assert asked <= 2 * len(extents) // 3 + 2 < len(offsets) // 4


@pytest.fixture
def view(qsd: Qsd, guest: Guest) -> Iterator[tuple[str, bytes]]:
    """A fleecing export of drive0 of a filled drive: its URI and its content at begin."""
    guest.fill()
    backup, _, model = begin(qsd, guest)
    with session(qsd, backup) as s:
        uri = s.view(next(d for d in s.drives if d.name == "drive0")).uri
    try:
        yield uri, model["drive0"]
    finally:
        end(qsd, backup, "commit")


def test_qemu_s_fleecing_export_is_read_over_several_connections(
    view: tuple[str, bytes], qsd: Qsd, guest: Guest
) -> None:
    uri, model = view
    # Given QEMU's read-only fleecing export, which advertises multi-conn
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.can_multi_conn()
    h.shutdown()
    # While the guest overwrites the drive
    for chunk in range(0, qsd.size // CS, 3):
        guest.write(DRIVES[0], chunk)

    # When several threads read it through one reader, skipping what reads as zeros
    with NbdDrive("drive0", uri) as reader:
        size = reader.size
        got = read_in_threads(reader, size)
        data_at = {o: reader.next_data(o) for o in range(0, size, CS)}
    uncached = {}
    for offset in range(0, size, 8 * CS):
        with NbdDrive("drive0", uri) as fresh:
            uncached[offset] = fresh.next_data(offset)

    # Then they read the drive as it was at begin, and next_data agrees with a fresh reader's
    assert got == model
    assert {o: data_at[o] for o in uncached} == uncached
    assert all(model[o : data_at[o]] == bytes(data_at[o] - o) for o in data_at)
