"""The benchmark's drive image and its change sets, generated from a seed (same seed, same bytes).

The image is a sequence of runs 64 KiB to 4 MiB long, not aligned to any chunk size: about 30%
zeros, 40% log-like text (compressible, ~4:1 with zstd-1) and 30% random bytes. Every 4 KiB of
text carries a unique line, so content-defined chunkers (restic, borg) find no duplicates that
txnbackup's fixed chunks could not find as well.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_RUN = 64 * 1024
MAX_RUN = 4 * 1024 * 1024
KINDS = (("zero", 0.3), ("text", 0.4), ("random", 0.3))
TEXT_BLOCK = 4096  # bytes of text between two unique lines
CORPUS_SIZE = 16 * 1024 * 1024
WRITE_SIZE = 64 * 1024  # one scattered guest write
CLUSTERS = 4  # contiguous regions of the clustered change set
ALIGN = 4096  # guest writes start at multiples of this

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
class Write:
    offset: int
    data: bytes


class Generator:
    """Deterministic content: the same seed gives the same image and the same change sets."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._corpus = _corpus(random.Random(seed ^ 0x5EED))
        self._serial = 0

    def write_image(self, path: Path, size: int) -> dict[str, int]:
        """Write the image; return how many bytes of each kind it holds."""
        rng = random.Random(self.seed)
        kinds = {name: 0 for name, _ in KINDS}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            while offset < size:
                length = min(rng.randint(MIN_RUN, MAX_RUN), size - offset)
                kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
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
