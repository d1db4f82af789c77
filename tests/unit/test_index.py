"""The fixed index: the ordered digests of one drive."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.unit.builders import CS, stray_files
from txnbackup.constants import ZERO_DIGEST
from txnbackup.errors import IntegrityError
from txnbackup.geometry import chunk_count
from txnbackup.index import HEADER, IndexReader, IndexWriter, file_sha256


def digests(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


def test_round_trip_with_a_short_last_chunk(tmp_path: Path) -> None:
    # Given a drive of 5 full chunks and a short sixth one, with a zero chunk in between
    size = 5 * CS + 123
    entries = digests(6)
    entries[2] = ZERO_DIGEST
    path = tmp_path / "scsi0.fidx"

    # When its index is written
    with IndexWriter(path, size, CS) as writer:
        for d in entries:
            writer.append(d)
        info = writer.finish()

    # Then the reader gives back the geometry and every digest in order
    assert (info.size, info.chunk_size, info.count) == (size, CS, 6)
    with IndexReader(path) as reader:
        assert (reader.size, reader.chunk_size, reader.count) == (size, CS, 6)
        assert list(reader) == entries
    assert path.stat().st_size == HEADER.size + 6 * 32
    assert stray_files(tmp_path) == []


def test_the_checksum_in_index_info_is_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "scsi0.fidx"
    with IndexWriter(path, 3 * CS, CS) as writer:
        for d in digests(3):
            writer.append(d)
        info = writer.finish()

    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.sha256 == file_sha256(path)


@pytest.mark.parametrize("written", [2, 4])
def test_finish_refuses_a_wrong_entry_count_and_leaves_no_file(
    tmp_path: Path, written: int
) -> None:
    # Given a writer for a 3-chunk drive that gets too few or too many digests
    path = tmp_path / "scsi0.fidx"
    with (
        pytest.raises(IntegrityError, match=f"{written} of 3"),
        IndexWriter(path, 2 * CS + 1, CS) as writer,
    ):
        for d in digests(written):
            writer.append(d)
        writer.finish()

    # Then no index (and no temporary file) is left behind
    assert not path.exists()
    assert stray_files(tmp_path) == []


def test_an_abandoned_writer_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "scsi0.fidx"
    with pytest.raises(RuntimeError), IndexWriter(path, CS, CS) as writer:
        writer.append(digests(1)[0])
        raise RuntimeError("copy failed")

    assert list(tmp_path.iterdir()) == []


def test_a_truncated_index_is_reported_while_reading(tmp_path: Path) -> None:
    # Given an index whose last digest was cut short
    path = tmp_path / "scsi0.fidx"
    with IndexWriter(path, 4 * CS, CS) as writer:
        for d in digests(4):
            writer.append(d)
        writer.finish()
    path.write_bytes(path.read_bytes()[:-5])

    # When it is opened, Then the damage is reported, not silently shortened
    with pytest.raises(IntegrityError, match="151 bytes, a header and 4 entries take 156"):
        IndexReader(path)


def test_a_truncated_index_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "scsi0.fidx"
    path.write_bytes(b"TXBI\x01")

    with pytest.raises(IntegrityError, match="truncated header"):
        IndexReader(path)


def test_a_file_that_is_no_index_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "scsi0.fidx"
    path.write_bytes(b"\0" * 200)

    with pytest.raises(IntegrityError, match="bad magic"):
        IndexReader(path)


def test_a_missing_index_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="missing"):
        IndexReader(tmp_path / "nope.fidx")


def test_an_empty_drive_has_an_empty_index(tmp_path: Path) -> None:
    path = tmp_path / "empty.fidx"
    with IndexWriter(path, 0, CS) as writer:
        info = writer.finish()

    assert info.count == chunk_count(0, CS) == 0
    with IndexReader(path) as reader:
        assert list(reader) == []
