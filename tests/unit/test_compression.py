"""Adaptive compression: incompressible chunks skip zstd, the level follows what binds."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import zstandard

from tests.unit.builders import random_bytes, text_bytes
from txnbackup import chunk
from txnbackup.chunk import HEADER, SAMPLE_SIZE, Compression
from txnbackup.compression import DISK_BINDS, FAST, SMALL, WINDOW, LevelChooser

BIG = 4 * 1024 * 1024  # the default chunk size: large enough for the trial


def binary_bytes(rng: random.Random, length: int) -> bytes:
    """Machine-code-like bytes: repeated instruction-ish patterns with varying operands."""
    ops = [rng.randbytes(rng.randrange(2, 8)) for _ in range(64)]
    out = bytearray()
    while len(out) < length:
        out += rng.choice(ops) + bytes([rng.randrange(16)]) * rng.randrange(1, 4)
    return bytes(out[:length])


def compression_of(encoded: bytes) -> int:
    return int(HEADER.unpack_from(encoded)[2])


class CountingCompressor:
    """A zstd compressor that remembers the largest input it was given."""

    def __init__(self, level: int) -> None:
        self.inner = zstandard.ZstdCompressor(level=level)
        self.largest = 0

    def compress(self, data: bytes | memoryview) -> bytes:
        self.largest = max(self.largest, len(data))
        return self.inner.compress(data)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> dict[int, CountingCompressor]:
    made: dict[int, CountingCompressor] = {}

    def compressor(level: int = 1) -> CountingCompressor:
        return made.setdefault(level, CountingCompressor(level))

    monkeypatch.setattr(chunk, "_compressor", compressor)
    return made


def test_a_random_chunk_is_stored_raw_without_compressing_it_whole(
    counting: dict[int, CountingCompressor],
) -> None:
    # Given a 4 MiB chunk of random bytes
    data = random_bytes(random.Random(5), BIG)

    # When it is encoded
    encoded = chunk.encode(data)

    # Then it is stored raw, and zstd saw only the trial's samples, never the chunk
    assert compression_of(encoded) == Compression.RAW
    assert chunk.decode(encoded, chunk.digest_of(data)) == data
    assert max(c.largest for c in counting.values()) == SAMPLE_SIZE


@pytest.mark.parametrize("text_at", [0, 1, 3, 7])
def test_a_chunk_with_compressible_parts_is_compressed(text_at: int) -> None:
    # Given a 4 MiB chunk of random bytes with one eighth of text somewhere
    rng = random.Random(6)
    parts = [random_bytes(rng, BIG // 8) for _ in range(8)]
    parts[text_at] = text_bytes(rng, BIG // 8)
    data = b"".join(parts)

    # When it is encoded, Then it is compressed (a sample found the text) and round-trips
    encoded = chunk.encode(data)
    assert compression_of(encoded) == Compression.ZSTD
    assert chunk.decode(encoded, chunk.digest_of(data)) == data


def feed(chooser: LevelChooser, compress: float, store: float, times: int = WINDOW) -> bool:
    for _ in range(times):
        chooser.record(compress, store)
    return chooser.disk_binds


def test_the_disk_binds_when_storing_takes_longer_than_compressing() -> None:
    chooser = LevelChooser()
    assert not chooser.disk_binds
    # Storing a chunk takes three times compressing it: the disk binds
    assert feed(chooser, 0.01, 0.03)
    # In between (storing 1.5 times compressing): the judgement stays
    assert feed(chooser, 0.02, 0.03)
    # Compressing takes longer than storing: the CPU binds
    assert not feed(chooser, 0.03, 0.02)
    # Just at the line the disk does not bind yet
    assert not feed(chooser, 0.01, 0.01 * DISK_BINDS)


def test_the_judgement_changes_only_after_a_whole_window() -> None:
    chooser = LevelChooser()

    assert not feed(chooser, 0.01, 1.0, times=WINDOW - 1)
    assert feed(chooser, 0.01, 1.0, times=1)


@pytest.mark.parametrize(
    ("make", "level"),
    [(binary_bytes, SMALL), (text_bytes, FAST)],
    ids=["level-3-pays", "level-3-larger"],
)
def test_a_bound_disk_gets_level_3_only_where_a_probe_finds_it_smaller(
    make: Callable[[random.Random, int], bytes], level: int
) -> None:
    # Given a copy whose disk binds
    chooser = LevelChooser()
    feed(chooser, 0.01, 0.03)
    rng = random.Random(8)
    first = make(rng, BIG)

    # When the next chunk (the probe) is encoded
    (header, payload), _ = chooser.encode(first)

    # Then the smaller of the two levels was stored, it decodes, and the level that follows
    # is zstd 3 only where zstd 3 was found smaller
    fast = chunk.encode(first, FAST)
    assert len(header) + len(payload) <= len(fast)
    assert chunk.decode(header + bytes(payload), chunk.digest_of(first)) == first
    assert chooser.level == level
    # And while the CPU binds it is zstd 1 whatever the probe found
    feed(chooser, 0.03, 0.01)
    assert chooser.level == FAST
