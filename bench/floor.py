"""The floor: what any backup of the image must at least spend on this machine.

A full backup reads every byte and hashes and compresses it. Measured on the image itself:
a cold sequential read, and SHA-256 and zstd-1 (each alone and both, as the engine does them)
over 4 MiB blocks already in the page cache, on one thread and on one thread per core. The
floor of a full backup is the slower of reading and hashing+compressing on every core, as if
the two overlapped perfectly and writing cost nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import zstandard

from bench.measure import PageCache, timed
from txnbackup.constants import ZSTD_LEVEL

BLOCK = 4 * 1024 * 1024  # bytes per read and per hashed or compressed block


@dataclass(frozen=True)
class Floor:
    size: int
    cores: int
    read: float  # bytes per second, each rate below likewise
    sha256_1: float
    sha256_n: float
    zstd_1: float
    zstd_n: float
    both_1: float
    both_n: float

    @property
    def seconds(self) -> float:
        return max(self.size / self.read, self.size / self.both_n)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "seconds": self.seconds}


def measure_floor(image: Path, cache: PageCache) -> Floor:
    size = image.stat().st_size
    cores = os.cpu_count() or 1
    cache.drop()
    read = size / timed(_read_all, image)
    local = threading.local()

    def compressor() -> zstandard.ZstdCompressor:
        if not hasattr(local, "zstd"):
            local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        zstd: zstandard.ZstdCompressor = local.zstd
        return zstd

    def sha(data: bytes) -> None:
        hashlib.sha256(data).digest()

    def zstd(data: bytes) -> None:
        compressor().compress(data)

    def both(data: bytes) -> None:
        sha(data)
        zstd(data)

    rates = {}
    for name, op in (("sha256", sha), ("zstd", zstd), ("both", both)):
        for label, threads in (("1", 1), ("n", cores)):
            rates[f"{name}_{label}"] = size / timed(_each_block, image, op, threads)
    return Floor(size, cores, read, **rates)


def _read_all(image: Path) -> None:
    fd = os.open(image, os.O_RDONLY)
    try:
        while os.read(fd, BLOCK):
            pass
    finally:
        os.close(fd)


def _each_block(image: Path, op: Callable[[bytes], None], threads: int) -> None:
    fd = os.open(image, os.O_RDONLY)
    size = os.fstat(fd).st_size
    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda off: op(os.pread(fd, BLOCK, off)), range(0, size, BLOCK)):
                pass
    finally:
        os.close(fd)
