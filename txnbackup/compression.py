"""Which zstd level a drive's chunks get, chosen by what binds the copy: the CPU or the disk.

The pool threads of one drive copy time (wall clock) what each chunk they compress costs them
in compressing and in storing it (writing its file, and waiting for room in the chunk store's
writeback: txnbackup.writeback makes files durable on its own threads, and a writer waits
only when the disk lags behind). Every WINDOW such chunks the copy judges that window:

- storing took more than DISK_BINDS times the compressing: the disk binds;
- storing took less than the compressing: the CPU binds (or another process holds it);
- in between the judgement stays (level 3 costs ~1.6 times level 1's CPU, so a narrower
  band would switch back and forth).

While the disk binds, the first chunk of each window is a probe, compressed at both FAST
(zstd 1) and SMALL (zstd 3), and the smaller is stored. The chunks get SMALL while the disk
binds and the last probe found SMALL at least SAVES smaller (on binaries it is ~9% smaller,
at ~60% of level 1's speed: CPU time that would otherwise wait for the disk; on some data,
such as text full of random numbers, it is larger); else FAST, the format's default.

A chunk that does not compress (``chunk.encode_parts`` stores it raw after a trial on
samples) is not counted: its level changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from txnbackup import chunk

FAST = 1  # zstd level when the CPU binds, or level 3 does not pay
SMALL = 3  # zstd level when the disk binds and it pays
WINDOW = 8  # compressed chunks between two judgements
DISK_BINDS = 2.0  # storing / compressing above which the disk binds
SAVES = 0.03  # SMALL is used only when a probe found it this much smaller than FAST

Encoded = tuple[bytes, bytes | memoryview]
Encoder = Callable[[bytes | memoryview, int], Encoded]  # data, zstd level -> chunk file parts


class LevelChooser:
    """Encodes the chunks of one drive copy at the level its disk and CPU call for
    (thread-safe: the copy's pool threads share one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compress = self._store = 0.0
        self._count = 0
        self.disk_binds = False
        self.small_pays = False
        self._probe_due = False

    @property
    def level(self) -> int:
        return SMALL if self.disk_binds and self.small_pays else FAST

    def encode(
        self, data: bytes | memoryview, encode: Encoder = chunk.encode_parts
    ) -> tuple[Encoded, float]:
        """The chunk's (header, payload) and the seconds encoding it took; ``encode`` is the
        repository's (txnbackup.crypto: plain, or sealed after compression)."""
        started = time.perf_counter()
        with self._lock:
            probe, self._probe_due = self._probe_due, False
        if not probe:
            return encode(data, self.level), time.perf_counter() - started
        fast, small = encode(data, FAST), encode(data, SMALL)
        with self._lock:
            self.small_pays = _size(small) <= (1 - SAVES) * _size(fast)
        best = small if _size(small) < _size(fast) else fast
        return best, time.perf_counter() - started

    def record(self, compress_seconds: float, store_seconds: float) -> None:
        """What one compressed chunk cost: encoding it, then storing it."""
        with self._lock:
            self._compress += compress_seconds
            self._store += store_seconds
            self._count += 1
            if self._count < WINDOW:
                return
            if self._store > DISK_BINDS * self._compress:
                self.disk_binds = True
            elif self._store < self._compress:
                self.disk_binds = False
            self._probe_due = self.disk_binds
            self._compress = self._store = 0.0
            self._count = 0


def _size(encoded: Encoded) -> int:
    return len(encoded[0]) + len(encoded[1])
