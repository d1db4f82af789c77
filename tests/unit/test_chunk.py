"""The chunk codec and the content-addressed chunk store."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.unit.builders import CS, random_bytes, stray_files, text_bytes
from txnbackup import chunk
from txnbackup.chunk import HEADER, Compression
from txnbackup.errors import CorruptChunk
from txnbackup.repository import Repository


def compression_of(encoded: bytes) -> int:
    return int(HEADER.unpack_from(encoded)[2])


def test_random_data_round_trips_and_is_stored_raw() -> None:
    # Given a chunk of random (incompressible) bytes
    data = random_bytes(random.Random(1), CS)

    # When it is encoded and decoded
    encoded = chunk.encode(data)

    # Then it comes back unchanged and was not compressed
    assert chunk.decode(encoded, chunk.digest_of(data)) == data
    assert compression_of(encoded) == Compression.RAW
    assert len(encoded) == HEADER.size + len(data)


def test_text_round_trips_and_is_stored_smaller() -> None:
    data = text_bytes(random.Random(2), CS)

    encoded = chunk.encode(data)

    assert chunk.decode(encoded, chunk.digest_of(data)) == data
    assert compression_of(encoded) == Compression.ZSTD
    assert len(encoded) < len(data) // 2


def test_store_round_trip_uses_the_digest_path_and_leaves_no_temp_files(
    repo: Repository,
) -> None:
    # Given a compressible and a random chunk
    rng = random.Random(3)
    chunks = [text_bytes(rng, CS), random_bytes(rng, CS), text_bytes(rng, 1000)]

    # When both are put into the store
    for data in chunks:
        assert repo.chunks.put(chunk.digest_of(data), chunk.encode(data)) is True
    repo.chunks.flush()

    # Then each reads back by digest, lives at chunks/<first 4 hex>/<digest>, and nothing else
    for data in chunks:
        digest = chunk.digest_of(data)
        assert repo.chunks.get(digest) == data
        assert repo.chunks.has(digest)
        assert (repo.path / "chunks" / digest[:4] / digest).is_file()
    files = [p for p in (repo.path / "chunks").rglob("*") if p.is_file()]
    assert len(files) == len(chunks)
    assert stray_files(repo.path) == []


def test_putting_a_stored_digest_is_a_no_op(repo: Repository) -> None:
    # Given a stored chunk
    data = text_bytes(random.Random(4), CS)
    digest = chunk.digest_of(data)
    repo.chunks.put(digest, chunk.encode(data))
    repo.chunks.flush()
    before = repo.chunks.path_for(digest).read_bytes()

    # When the same digest is put again (even with other bytes)
    again = repo.chunks.put(digest, b"something else entirely")

    # Then nothing is written and the caller learns it was already there
    assert again is False
    assert repo.chunks.path_for(digest).read_bytes() == before
    assert repo.chunks.get(digest) == data
    assert stray_files(repo.path) == []


@pytest.mark.parametrize("kind", ["random", "text"])
@pytest.mark.parametrize(
    "position",
    [0, 4, 5, 6, 7, 8, 12, HEADER.size, HEADER.size + 100, -1],
    ids=[
        "magic",
        "version",
        "compression",
        "reserved-hi",
        "reserved-lo",
        "length",
        "crc",
        "payload-first",
        "payload",
        "last",
    ],
)
def test_a_flipped_byte_in_a_chunk_file_is_detected_on_get(
    repo: Repository, kind: str, position: int
) -> None:
    # Given a stored chunk whose file then has one byte flipped on disk
    rng = random.Random(5)
    data = random_bytes(rng, CS) if kind == "random" else text_bytes(rng, CS)
    digest = chunk.digest_of(data)
    repo.chunks.put(digest, chunk.encode(data))
    repo.chunks.flush()
    path = repo.chunks.path_for(digest)
    damaged = bytearray(path.read_bytes())
    damaged[position] ^= 0x01
    path.write_bytes(bytes(damaged))

    # When it is read, Then the store refuses to return wrong data and names the chunk
    with pytest.raises(CorruptChunk) as caught:
        repo.chunks.get(digest)
    assert caught.value.args[0] == digest
    assert digest in str(caught.value)


def test_a_chunk_file_under_another_digest_is_detected(repo: Repository) -> None:
    # Given a valid chunk file stored under a digest that is not its content's
    rng = random.Random(6)
    data, other = random_bytes(rng, CS), random_bytes(rng, CS)
    wrong = chunk.digest_of(other)
    repo.chunks.put(wrong, chunk.encode(data))
    repo.chunks.flush()

    with pytest.raises(CorruptChunk, match="does not match its digest"):
        repo.chunks.get(wrong)


def test_a_missing_chunk_is_reported_as_corrupt(repo: Repository) -> None:
    digest = chunk.digest_of(b"never stored")

    assert not repo.chunks.has(digest)
    with pytest.raises(CorruptChunk, match="missing"):
        repo.chunks.get(digest)


def test_a_truncated_chunk_file_is_detected(repo: Repository) -> None:
    data = text_bytes(random.Random(7), CS)
    digest = chunk.digest_of(data)
    repo.chunks.put(digest, chunk.encode(data))
    repo.chunks.flush()
    path = repo.chunks.path_for(digest)
    path.write_bytes(path.read_bytes()[:10])

    with pytest.raises(CorruptChunk, match="truncated"):
        repo.chunks.get(digest)


def set_compression(raw: bytearray, method: int) -> None:
    raw[5] = method


def set_length(raw: bytearray, length: int) -> None:
    raw[8:12] = length.to_bytes(4, "big")


def plaintext_length(raw: bytearray) -> int:
    return int.from_bytes(raw[8:12], "big")


DAMAGE: dict[str, tuple[str, Callable[[bytearray], object]]] = {
    "raw-flagged-zstd": ("random", lambda raw: set_compression(raw, Compression.ZSTD)),
    "zstd-flagged-raw": ("text", lambda raw: set_compression(raw, Compression.RAW)),
    "unknown-compression": ("random", lambda raw: set_compression(raw, 2)),
    "raw-one-byte-short": ("random", lambda raw: raw.pop()),
    "raw-one-byte-long": ("random", lambda raw: raw.append(0)),
    "raw-length-field-minus-one": (
        "random",
        lambda raw: set_length(raw, plaintext_length(raw) - 1),
    ),
    "zstd-length-field-at-payload": ("text", lambda raw: set_length(raw, len(raw) - HEADER.size)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_chunk_file_with_a_damaged_header_or_length_is_not_reused(
    repo: Repository, damage: str
) -> None:
    # Given a stored chunk (raw or compressed) whose file was then damaged in its header or
    # its length, with the payload's CRC left as it was
    kind, change = DAMAGE[damage]
    rng = random.Random(8)
    data = random_bytes(rng, CS) if kind == "random" else text_bytes(rng, CS)
    digest = chunk.digest_of(data)
    repo.chunks.put(digest, chunk.encode(data))
    repo.chunks.flush()
    path = repo.chunks.path_for(digest)
    raw = bytearray(path.read_bytes())
    assert compression_of(bytes(raw)) == (Compression.RAW if kind == "random" else Compression.ZSTD)
    change(raw)
    path.write_bytes(bytes(raw))

    # When a backup looks for it, Then it reads as not stored, and storing it replaces the file
    assert not repo.chunks.has(digest)
    assert repo.chunks.put(digest, chunk.encode(data)) is True
    repo.chunks.flush()
    assert repo.chunks.get(digest) == data
    with pytest.raises(CorruptChunk):  # and the damaged file would never have decoded
        chunk.decode(bytes(raw), digest)
