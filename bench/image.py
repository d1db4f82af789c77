"""The benchmark's drive images and their change sets, generated from a mix and a seed (same
mix and seed, same bytes).

An image is a sequence of runs whose lengths are drawn at random, so no run is aligned to any
chunk size. Two mixes:

- ``default``: runs of 64 KiB to 4 MiB; about 30% zeros, 40% log-like text (~4:1 with zstd-1)
  and 30% random bytes.
- ``second``: shorter runs (4 KiB to 1 MiB, so few 4 MiB chunks are all zero); about 10% zeros,
  25% text, 45% random and 20% binary (bytes from a 16-symbol alphabet, ~2:1 with zstd-1, as
  executables and databases compress).

Every 4 KiB of text carries a unique line, so content-defined chunkers (restic, borg) find no
duplicates that txnbackup's fixed chunks could not find as well.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TEXT_BLOCK = 4096  # bytes of text between two unique lines
CORPUS_SIZE = 16 * 1024 * 1024
WRITE_SIZE = 64 * 1024  # one scattered guest write
CLUSTERS = 4  # contiguous regions of the clustered change set
ALIGN = 4096  # guest writes start at multiples of this
BINARY_SYMBOLS = 16  # distinct byte values of a binary run (4 bits of entropy per byte)

PROGRAMS = (b"sshd", b"kernel", b"systemd", b"nginx", b"postgres", b"cron", b"dockerd")
MESSAGES = (
    b"Accepted publickey for backup from 10.0.0.4 port 52144 ssh2",
    b'"GET /api/v1/items?page=3 HTTP/1.1" 200 5123 "-" "curl/7.88"',
    b"checkpoint complete: wrote 1234 buffers (7.5%); 0 WAL file(s) added",
    b"Started Session 4711 of user root.",
    b"eth0: link up, 10000 Mbps, full duplex, flow control rx/tx",
    b"(root) CMD (run-parts /etc/cron.hourly)",
    b"container 3f2a9c exited with code 0",
)
LINE = b"2026-%02d-%02dT%02d:%02d:%02d.%06dZ node%02d %s[%d]: %s\n"


@dataclass(frozen=True)
class Mix:
    """What an image is made of: the share of each kind of run, and the runs' lengths."""

    name: str
    kinds: tuple[tuple[str, float], ...]
    min_run: int  # bytes
    max_run: int  # bytes


MIXES = {
    "default": Mix("default", (("zero", 0.3), ("text", 0.4), ("random", 0.3)), 64 << 10, 4 << 20),
    "second": Mix(
        "second",
        (("zero", 0.1), ("text", 0.25), ("random", 0.45), ("binary", 0.2)),
        4 << 10,
        1 << 20,
    ),
}


@dataclass(frozen=True)
class Write:
    offset: int
    data: bytes


class Generator:
    """Deterministic content: the same mix and seed give the same image and change sets."""

    def __init__(self, seed: int, mix: Mix = MIXES["default"]) -> None:
        self.seed = seed
        self.mix = mix
        self._corpus = _corpus(random.Random(seed ^ 0x5EED))
        self._serial = 0

    def write_image(self, path: Path, size: int) -> dict[str, int]:
        """Write the image; return how many bytes of each kind it holds."""
        # The default mix keeps the stream of the benchmark's first runs, so its images are
        # the bytes earlier results were measured on.
        default = self.mix.name == "default"
        rng = random.Random(self.seed if default else f"{self.seed}-{self.mix.name}")
        kinds = {name: 0 for name, _ in self.mix.kinds}
        names, weights = [k for k, _ in self.mix.kinds], [w for _, w in self.mix.kinds]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            while offset < size:
                length = min(rng.randint(self.mix.min_run, self.mix.max_run), size - offset)
                kind = rng.choices(names, weights)[0]
                for piece in self._content(rng, kind, length):
                    os.write(fd, piece)
                kinds[kind] += length
                offset += length
            os.fsync(fd)
        finally:
            os.close(fd)
        return kinds

    def clustered(self, size: int, run: int) -> list[Write]:
        """1% of the drive in a few contiguous regions (a file copied, a database table)."""
        rng = random.Random(f"{self.seed}-clustered-{run}")
        total = size // 100
        writes = []
        for i in range(CLUSTERS):
            length = total // CLUSTERS + (total % CLUSTERS if i == 0 else 0)
            offset = rng.randrange(0, size - length) // ALIGN * ALIGN
            writes.append(Write(offset, self._fresh(rng, length)))
        return writes

    def scattered(self, size: int, run: int) -> list[Write]:
        """1% of the drive in 64 KiB writes spread over all of it (metadata, logs, swap)."""
        rng = random.Random(f"{self.seed}-scattered-{run}")
        count = max(1, size // 100 // WRITE_SIZE)
        return [
            Write(
                rng.randrange(0, size - WRITE_SIZE) // ALIGN * ALIGN, self._fresh(rng, WRITE_SIZE)
            )
            for _ in range(count)
        ]

    def _fresh(self, rng: random.Random, length: int) -> bytes:
        kind = "text" if rng.random() < 0.5 else "random"
        return b"".join(self._content(rng, kind, length))

    def _content(self, rng: random.Random, kind: str, length: int) -> Iterator[bytes]:
        if kind == "zero":
            yield bytes(length)
        elif kind == "random":
            for start in range(0, length, 1 << 20):
                yield rng.randbytes(min(1 << 20, length - start))
        elif kind == "binary":
            yield _binary(rng, length)
        else:
            yield self._text(rng, length)

    def _text(self, rng: random.Random, length: int) -> bytes:
        parts = []
        for _ in range(0, length, TEXT_BLOCK):
            self._serial += 1
            unique = b"%016x seq %d seed %d\n" % (rng.getrandbits(64), self._serial, self.seed)
            start = rng.randrange(0, CORPUS_SIZE - TEXT_BLOCK)
            parts.append(unique + self._corpus[start : start + TEXT_BLOCK - len(unique)])
        return b"".join(parts)[:length]


def _binary(rng: random.Random, length: int) -> bytes:
    """Random bytes of a 16-symbol alphabet: each random byte gives two symbols."""
    alphabet = rng.sample(range(256), BINARY_SYMBOLS)
    high = bytes(alphabet[x >> 4] for x in range(256))
    low = bytes(alphabet[x & 15] for x in range(256))
    raw = rng.randbytes((length + 1) // 2)
    out = bytearray(2 * len(raw))
    out[0::2] = raw.translate(high)
    out[1::2] = raw.translate(low)
    return bytes(out[:length])


def _corpus(rng: random.Random) -> bytes:
    lines = []
    size = 0
    while size < CORPUS_SIZE:
        x = rng.getrandbits(64)
        line = LINE % (
            1 + x % 12,
            1 + (x >> 4) % 28,
            (x >> 9) % 24,
            (x >> 14) % 60,
            (x >> 20) % 60,
            (x >> 26) % 1000000,
            (x >> 46) % 32,
            PROGRAMS[(x >> 51) % len(PROGRAMS)],
            (x >> 30) % 65536,
            MESSAGES[(x >> 54) % len(MESSAGES)],
        )
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def apply(path: Path, writes: Sequence[Write]) -> None:
    """Write the change set into the image, as the guest would, and make it durable."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for w in writes:
            os.pwrite(fd, w.data, w.offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def split(image: Path, parts: Sequence[Path], align: int) -> None:
    """Copy ``image`` into ``len(parts)`` files of equal size (a multiple of ``align``, the
    last one taking the rest), so each part's chunks are chunks of the image."""
    size = image.stat().st_size
    each = size // len(parts) // align * align
    with open(image, "rb") as src:
        for i, part in enumerate(parts):
            length = each if i < len(parts) - 1 else size - each * i
            with open(part, "wb") as dst:
                offset = each * i
                while length > 0:
                    copied = os.copy_file_range(src.fileno(), dst.fileno(), length, offset)
                    if copied == 0:
                        raise OSError(f"{image} ended early")
                    offset += copied
                    length -= copied
                os.fsync(dst.fileno())
