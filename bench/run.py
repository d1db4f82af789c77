"""The benchmark run: the image, the floor, each case for each tool, the overheads.

Cases run tool after tool inside each repetition (txnbackup, restic, borg, then again), so a
change in the machine's load during the run touches every tool alike. The page cache is
dropped before every measured run where the kernel lets us, and every timed operation ends
with ``sync`` (txnbackup fsyncs what it writes; the sync makes the others pay for durability
too, and costs txnbackup next to nothing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.fleet import NODE, Fleet, bench_fleet
from bench.floor import measure_floor
from bench.image import Generator, Write, apply
from bench.measure import (
    PageCache,
    PeakRss,
    Samples,
    load_average,
    machine,
    process_tree,
    timed,
    tree_size,
)
from bench.overhead import measure_overhead
from bench.tools import BenchError, Borg, Restic, Tool, Txnbackup, find_peers, run_backup, version
from txnbackup import chunk
from txnbackup.constants import DEFAULT_CHUNK_SIZE
from txnbackup.drive import Drive
from txnbackup.index import file_sha256
from txnbackup.repository import Repository

VMID = "100"
SPARSE_VMID = "200"
CASES = ("full", "clustered", "scattered", "restore")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    size: int
    sparse_size: int
    runs: int
    seed: int
    peers: bool
    install: bool
    drop_caches: bool
    latency_samples: int
    vms: int
    workdir: Path | None
    keep: bool
    redis_url: str


@dataclass
class Results:
    """Everything measured; ``to_dict`` is the JSON the run writes."""

    options: Options
    conditions: dict[str, object] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    times: dict[str, dict[str, Samples]] = field(default_factory=dict)
    growth: dict[str, dict[str, Samples]] = field(default_factory=dict)
    repo_size: dict[str, int] = field(default_factory=dict)
    changed_compressed: dict[str, Samples] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def time(self, case: str, tool: str) -> Samples:
        return self.times.setdefault(case, {}).setdefault(tool, Samples("s"))

    def grew(self, case: str, tool: str) -> Samples:
        return self.growth.setdefault(case, {}).setdefault(tool, Samples("bytes"))

    def to_dict(self) -> dict[str, object]:
        def table(d: dict[str, dict[str, Samples]]) -> dict[str, object]:
            return {c: {t: s.to_dict() for t, s in by.items()} for c, by in d.items()}

        return {
            "options": {k: str(v) for k, v in self.options.__dict__.items()},
            "conditions": self.conditions,
            "tools": self.tools,
            "skipped": self.skipped,
            "times": table(self.times),
            "growth": table(self.growth),
            "repo_size_after_full": self.repo_size,
            "changed_chunks_compressed": {
                k: s.to_dict() for k, s in self.changed_compressed.items()
            },
            **self.extra,
        }


Say = Callable[[str], None]


def run(options: Options, say: Say) -> Results:
    results = Results(options)
    workdir, made = _workdir(options.workdir)
    try:
        _run_in(workdir, options, results, say)
    finally:
        if made and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept the work directory {workdir}")
    return results


def _workdir(path: Path | None) -> tuple[Path, bool]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve(), False
    return Path(tempfile.mkdtemp(prefix="txnbackup-bench-", dir="/var/tmp")), True


def _run_in(workdir: Path, options: Options, results: Results, say: Say) -> None:
    results.conditions["machine"] = machine()
    results.conditions["load_before"] = load_average()
    cache = PageCache(options.drop_caches)
    results.conditions["page_cache"] = cache.describe()
    say(f"page cache: {cache.describe()}")
    (workdir / "drives").mkdir()
    image = workdir / "drives" / "vm-100-disk-0.raw"
    generator = Generator(options.seed)
    say(f"writing the {options.size >> 20} MiB image (seed {options.seed})")
    kinds = generator.write_image(image, options.size)
    results.extra["image"] = {"size": options.size, "kinds": kinds}
    say("measuring the floor (cold read, sha256, zstd-1)")
    results.extra["floor"] = measure_floor(image, cache).to_dict()
    peers: list[str] = []
    if options.peers:
        peers, results.skipped = find_peers(options.install)
    else:
        results.skipped = {"restic": "--no-peers", "borg": "--no-peers"}
    for name, reason in results.skipped.items():
        say(f"skipping {name}: {reason}")
    with bench_fleet(workdir, options.redis_url) as fleet:
        rss = PeakRss(lambda: process_tree(fleet.worker.proc.pid))
        tools = _tools(fleet, image, workdir, peers)
        results.tools = {t.name: f"{_version(t.name)}; {t.note}" for t in tools}
        cases = _Cases(workdir, options, results, say, tools, fleet, generator, image, cache, rss)
        cases.full()
        cases.incremental("clustered")
        cases.incremental("scattered")
        cases.restore()
        say("backing up a sparse drive")
        results.extra["sparse"] = _sparse(fleet, workdir, options.sparse_size, cache, rss)
        say(
            f"orchestration: {options.latency_samples} tiny backups, then {options.vms} at once, "
            f"{options.runs} time(s)"
        )
        overhead = measure_overhead(
            fleet, workdir, options.latency_samples, options.vms, options.runs
        )
        results.extra["overhead"] = overhead.to_dict()
        results.conditions["redis"] = "private redis-server" if fleet.private_redis else "shared"
    results.conditions["load_after"] = load_average()


def _tools(fleet: Fleet, image: Path, workdir: Path, peers: Sequence[str]) -> list[Tool]:
    tools: list[Tool] = [Txnbackup(fleet, image, VMID)]
    if "restic" in peers:
        tools.append(Restic(image, workdir / "restic-cache"))
    if "borg" in peers:
        tools.append(Borg(image, workdir / "borg-base"))
    return tools


def _version(tool: str) -> str:
    if tool == "txnbackup":
        return "txnbackup (this tree)"
    return version([tool, "version"] if tool == "restic" else [tool, "--version"])


@dataclass
class _Cases:
    """The measured cases, each run ``options.runs`` times, tool after tool."""

    workdir: Path
    options: Options
    results: Results
    say: Say
    tools: list[Tool]
    fleet: Fleet
    generator: Generator
    image: Path
    cache: PageCache
    rss: PeakRss
    full_run: int = 0

    def repo(self, tool: Tool) -> Path:
        """The tool's repository of the latest full run (the later cases use it)."""
        return self.workdir / "repos" / f"{tool.name}-{self.full_run}"

    def full(self) -> None:
        # Each full run backs up into a new directory, and none is deleted before the end:
        # ext4 creates files slowly right after many were deleted, which would charge the
        # tool with the most files (txnbackup: one per chunk) for the previous run's rmtree.
        rss_full = Samples("bytes")
        for n in range(self.options.runs):
            self.say(f"full backup, run {n + 1} of {self.options.runs}")
            self.full_run = n
            for tool in self.tools:
                repo = self.repo(tool)
                repo.parent.mkdir(parents=True, exist_ok=True)
                tool.init(repo)
                self.cache.drop()
                self.rss.reset()
                self.results.time("full", tool.name).add(timed(_synced, tool.backup, repo))
                self.results.repo_size[tool.name] = tree_size(repo)
                if tool.name == "txnbackup":
                    rss_full.add(self.rss.peak())
        resettable = self.rss.resettable
        self.results.extra["worker_rss_full"] = {**rss_full.to_dict(), "resettable": resettable}

    def incremental(self, case: str) -> None:
        for n in range(self.options.runs):
            self.say(f"incremental after a {case} 1% change, run {n + 1} of {self.options.runs}")
            writes = getattr(self.generator, case)(self.options.size, n)
            _guest_writes(self.fleet, self.image, writes)
            changed = self.results.changed_compressed.setdefault(case, Samples("bytes"))
            changed.add(_changed_compressed(self.image, writes))
            for tool in self.tools:
                repo = self.repo(tool)
                before = tree_size(repo)
                self.cache.drop()
                self.results.time(case, tool.name).add(timed(_synced, tool.backup, repo))
                self.results.grew(case, tool.name).add(tree_size(repo) - before)

    def restore(self) -> None:
        expected = file_sha256(self.image)
        # Restored images are kept until every restore ran when the disk has room (deleting
        # one, with online discard, slows the writes of the next); else each goes at once.
        keep = _room_for(self.workdir, self.options.runs * len(self.tools) * self.options.size)
        self.results.conditions["restored_images"] = (
            "kept until all restores ran" if keep else "deleted after each (no room to keep)"
        )
        for n in range(self.options.runs):
            self.say(f"restore of the latest backup, run {n + 1} of {self.options.runs}")
            for tool in self.tools:
                into = self.workdir / "restored" / f"{tool.name}-{n}"
                into.mkdir(parents=True)
                self.cache.drop()
                started = time.perf_counter()
                restored = _synced(tool.restore, self.repo(tool), into)
                self.results.time("restore", tool.name).add(time.perf_counter() - started)
                if file_sha256(restored) != expected:
                    raise BenchError(f"{tool.name}: the restored image differs from the original")
                if not keep:
                    shutil.rmtree(into)
        shutil.rmtree(self.workdir / "restored")
        self.results.extra["restore_checked"] = "sha256 of each restored image equals the image's"


def _room_for(path: Path, nbytes: int) -> bool:
    """Whether ``nbytes`` more fit below ``path`` with a tenth of the disk to spare."""
    usage = shutil.disk_usage(path)
    return usage.free - nbytes > usage.total // 10


def _synced(action: Callable[..., R], *args: Path) -> R:
    """Run a tool's operation, then make everything written durable (all tools alike)."""
    out = action(*args)
    os.sync()
    return out


def _guest_writes(fleet: Fleet, image: Path, writes: Sequence[Write]) -> None:
    """What a running VM does: write, then report the write (txnbackup's writers' API)."""
    apply(image, writes)
    for w in writes:
        fleet.tracker.mark_dirty(VMID, "scsi0", w.offset, len(w.data))


def _changed_compressed(image: Path, writes: Sequence[Write]) -> int:
    """Bytes of the chunk files the changed chunks make (zstd-1 and headers), as stored."""
    cs = DEFAULT_CHUNK_SIZE
    touched = {
        i for w in writes for i in range(w.offset // cs, (w.offset + len(w.data) - 1) // cs + 1)
    }
    total = 0
    with open(image, "rb") as fh:
        for i in sorted(touched):
            fh.seek(i * cs)
            data = fh.read(cs)
            if data.count(0) != len(data):
                total += len(chunk.encode(data))
    return total


def _sparse(
    fleet: Fleet, workdir: Path, size: int, cache: PageCache, rss: PeakRss
) -> dict[str, object]:
    """A drive of ``size`` bytes with a little data at its start, middle and end."""
    path = workdir / "drives" / "vm-200-disk-0.raw"
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset in (0, size // 2, size - (1 << 20)):
            fh.seek(offset)
            fh.write(os.urandom(1 << 20))
    repo = workdir / "repos" / "sparse"
    Repository.init(repo)
    cache.drop()
    rss.reset()
    elapsed = timed(lambda: run_backup(fleet, SPARSE_VMID, [Drive("scsi0", str(path), NODE)], repo))
    return {"size": size, "seconds": elapsed, "worker_peak_rss": rss.peak()}
