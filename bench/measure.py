"""Timing, samples, the page cache, peak memory, sizes on disk and the machine's state."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Samples:
    """Repeated measurements of one case (seconds, bytes or a rate) and what they mean."""

    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def to_dict(self) -> dict[str, object]:
        if not self.values:
            return {"unit": self.unit, "values": []}
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
        }


class PageCache:
    """Drops the page cache before a measured run, where the kernel lets us."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.reason = "" if enabled else "not asked to (--quick or --warm)"
        if enabled:
            try:
                self._drop()
            except OSError as exc:
                self.enabled = False
                self.reason = f"{DROP_CACHES} is not writable here ({exc.strerror})"

    def drop(self) -> None:
        if self.enabled:
            self._drop()

    def _drop(self) -> None:
        os.sync()  # drop_caches drops only clean pages
        DROP_CACHES.write_text("3\n")

    def describe(self) -> str:
        if self.enabled:
            return "dropped before every measured run (sync; echo 3 > /proc/sys/vm/drop_caches)"
        return f"NOT dropped: {self.reason}; cold-read numbers are warm"


def timed(action: Callable[..., object], *args: object) -> float:
    """Seconds ``action(*args)`` took."""
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def tree_size(path: Path) -> int:
    """Bytes of every file below ``path`` (their apparent sizes, as ``du -sb`` counts)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


class PeakRss:
    """Peak resident memory of a group of processes (a worker and its pool), per run.

    ``reset`` clears the kernel's high-water mark (``/proc/<pid>/clear_refs``, 5), so each
    run's peak is its own; where that is refused, the peak since the process started is
    reported instead and ``resettable`` says so.
    """

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self.resettable = True

    def reset(self) -> None:
        for pid in self._pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5\n")
            except OSError:
                self.resettable = False

    def peak(self) -> int:
        """The largest VmHWM among the processes, in bytes."""
        peaks = [0]
        for pid in self._pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) * 1024)
        return max(peaks)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a Celery worker and its pool processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(c) for c in children)]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count() or 1,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
