"""The benchmark run: for each data mix, the image, the floor and each case for each tool; then
the overheads.

Cases run tool after tool inside each repetition (txnbackup, restic, borg, then again), so a
change in the machine's load during the run touches every tool alike. The page cache is
dropped before every measured run where the kernel lets us, and every timed operation ends
with ``sync`` (txnbackup fsyncs what it writes; the sync makes the others pay for durability
too, and costs txnbackup next to nothing).

Two VMs per mix, holding the same bytes: VM ``100-<mix>`` has the whole image as one drive
and is backed up through the API (producer, then polling); VM ``300-<mix>`` has the image's
two halves as two drives on two nodes, each read by its own ``txnbackup worker``, and is
backed up both through the API and with the ``txnbackup backup --wait`` command.
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

from bench.bytecode import compile_tree
from bench.cli_overhead import measure_cli_overhead
from bench.fleet import NODE, NODES, REPO_ROOT, Fleet, bench_fleet, node_workers
from bench.floor import Floor, measure_floor, measure_write
from bench.image import MIXES, Generator, Write, apply, split
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
from bench.qemu import measure_qemu
from bench.tools import (
    BenchError,
    Borg,
    Restic,
    Tool,
    Txnbackup,
    TxnbackupCli,
    TxnbackupEncrypted,
    find_peers,
    run_backup,
    version,
)
from txnbackup import chunk
from txnbackup.constants import DEFAULT_CHUNK_SIZE
from txnbackup.drive import Drive
from txnbackup.index import file_sha256
from txnbackup.repository import Repository

SPARSE_VMID = "200"
TXN, CLI = "txnbackup", "txnbackup-cli"  # tool names: the API path and the command
TXN_ENC = "txnbackup-enc"  # the API path into an encrypted repository
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    size: int
    sparse_size: int
    runs: int
    seed: int
    mixes: tuple[str, ...]
    peers: bool
    install: bool
    drop_caches: bool
    latency_samples: int
    vms: int
    workdir: Path | None
    keep: bool
    redis_url: str
    qemu_only: bool = False  # the QEMU row alone (python -m bench --qemu-only)


@dataclass
class MixResults:
    """What one data mix measured; cases: full, clustered, scattered, restore (VM 100, API;
    full also into an encrypted repository, txnbackup-enc), full2 and restore2 (VM 300:
    txnbackup is the API path, txnbackup-cli the command)."""

    mix: str
    image: dict[str, object] = field(default_factory=dict)
    times: dict[str, dict[str, Samples]] = field(default_factory=dict)
    growth: dict[str, dict[str, Samples]] = field(default_factory=dict)
    repo_size: dict[str, int] = field(default_factory=dict)
    changed_compressed: dict[str, Samples] = field(default_factory=dict)
    floor: Floor | None = None
    worker_rss_full: Samples = field(default_factory=lambda: Samples("bytes"))
    restored_images: str = ""  # whether restored images were kept until the end of the case

    def time(self, case: str, tool: str) -> Samples:
        return self.times.setdefault(case, {}).setdefault(tool, Samples("s"))

    def grew(self, case: str, tool: str) -> Samples:
        return self.growth.setdefault(case, {}).setdefault(tool, Samples("bytes"))

    def to_dict(self) -> dict[str, object]:
        def table(d: dict[str, dict[str, Samples]]) -> dict[str, object]:
            return {c: {t: s.to_dict() for t, s in by.items()} for c, by in d.items()}

        return {
            "image": self.image,
            "times": table(self.times),
            "growth": table(self.growth),
            "repo_size_after_full": self.repo_size,
            "changed_chunks_compressed": {
                k: s.to_dict() for k, s in self.changed_compressed.items()
            },
            "floor": None if self.floor is None else self.floor.to_dict(),
            "worker_rss_full": self.worker_rss_full.to_dict(),
            "restored_images": self.restored_images,
        }


@dataclass
class Results:
    """Everything measured; ``to_dict`` is the JSON the run writes."""

    options: Options
    conditions: dict[str, object] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    mixes: dict[str, MixResults] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "options": {k: str(v) for k, v in self.options.__dict__.items()},
            "conditions": self.conditions,
            "tools": self.tools,
            "skipped": self.skipped,
            "mixes": {name: m.to_dict() for name, m in self.mixes.items()},
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
    results.conditions["bytecode"] = compile_tree(REPO_ROOT)
    say(f"bytecode: {results.conditions['bytecode']}")
    peers: list[str] = []
    if options.peers:
        peers, results.skipped = find_peers(options.install)
    else:
        results.skipped = {"restic": "--no-peers", "borg": "--no-peers"}
    for name, reason in results.skipped.items():
        say(f"skipping {name}: {reason}")
    results.tools = {
        TXN: "txnbackup (this tree); " + Txnbackup.note,
        CLI: "txnbackup (this tree); " + TxnbackupCli.note,
        TXN_ENC: "txnbackup (this tree); " + TxnbackupEncrypted.note,
        **{p: f"{_version(p)}; {(Restic if p == 'restic' else Borg).note}" for p in peers},
    }
    with bench_fleet(workdir, options.redis_url) as fleet:
        if options.qemu_only:
            say("QEMU: a running VM's qcow2 drive read over NBD, next to the same image")
            results.extra["qemu"] = measure_qemu(
                fleet, workdir, options.size, options.seed, cache, say, options.runs
            )
            return
        rss = PeakRss(lambda: process_tree(fleet.worker.proc.pid))
        say(f"starting one worker per node of the 2-drive VM ({', '.join(NODES)})")
        # Only while the 2-drive VM's cases run: idle workers' polling would count in the
        # orchestration figures.
        with node_workers(fleet, workdir):
            for mix in options.mixes:
                mixdir = workdir / f"mix-{mix}"
                mixdir.mkdir()
                measured = MixResults(mix)
                results.mixes[mix] = measured
                _Mix(mixdir, options, measured, say, fleet, peers, cache, rss).run()
                if not options.keep and options.workdir is None:  # room for the next mix
                    shutil.rmtree(mixdir)
            say(f"CLI overhead: {options.latency_samples} tiny 2-drive backups, API and command")
            cli_overhead = measure_cli_overhead(fleet, workdir, options.latency_samples)
            results.extra["cli_overhead"] = cli_overhead.to_dict()
        say("QEMU: a running VM's qcow2 drive read over NBD, next to the same image as a file")
        try:
            qemu = measure_qemu(
                fleet, workdir, options.size, options.seed, cache, say, options.runs
            )
        except BenchError as exc:  # one failed row must not cost the whole table
            say(f"QEMU row failed: {exc}")
            qemu = {"failed": str(exc)}
        results.extra["qemu"] = qemu
        _orchestration(fleet, workdir, options, results, say, cache, rss)
        results.conditions["redis"] = "private redis-server" if fleet.private_redis else "shared"
    results.conditions["load_after"] = load_average()


def _orchestration(
    fleet: Fleet,
    workdir: Path,
    options: Options,
    results: Results,
    say: Say,
    cache: PageCache,
    rss: PeakRss,
) -> None:
    say("backing up a sparse drive")
    results.extra["sparse"] = _sparse(fleet, workdir, options.sparse_size, cache, rss)
    say(
        f"orchestration: {options.latency_samples} tiny backups, then {options.vms} at once, "
        f"{options.runs} time(s)"
    )
    overhead = measure_overhead(fleet, workdir, options.latency_samples, options.vms, options.runs)
    results.extra["overhead"] = overhead.to_dict()
    results.extra["worker_rss_resettable"] = rss.resettable


def _version(tool: str) -> str:
    return version([tool, "version"] if tool == "restic" else [tool, "--version"])


@dataclass
class _Mix:
    """One mix's cases, each run ``options.runs`` times, tool after tool."""

    workdir: Path
    options: Options
    results: MixResults
    say: Say
    fleet: Fleet
    peers: list[str]
    cache: PageCache
    rss: PeakRss
    generator: Generator = field(init=False)
    image: Path = field(init=False)
    halves: list[Path] = field(init=False)
    latest: dict[str, int] = field(default_factory=dict)  # case -> its latest full run

    def __post_init__(self) -> None:
        self.generator = Generator(self.options.seed, MIXES[self.results.mix])
        drives = self.workdir / "drives"
        drives.mkdir()
        self.image = drives / "vm-100-disk-0.raw"
        self.halves = [drives / "vm-300-disk-0.raw", drives / "vm-300-disk-1.raw"]

    @property
    def vmid(self) -> str:
        return f"100-{self.results.mix}"

    def run(self) -> None:
        mix, size = self.results.mix, self.options.size
        self.say(f"mix {mix}: writing the {size >> 20} MiB image (seed {self.options.seed})")
        kinds = self.generator.write_image(self.image, size)
        split(self.image, self.halves, DEFAULT_CHUNK_SIZE)
        self.results.image = {"size": size, "kinds": kinds, "seed": self.options.seed}
        self.say(f"mix {mix}: the floor (engine-like cold read, sha256 + zstd CPU time)")
        self.results.floor = measure_floor([self.image], self.cache)
        one = [Drive("scsi0", str(self.image), NODE)]
        # The same tool objects from a full backup to the restore: each knows its latest.
        tools = self._tools(Txnbackup(self.fleet, one, self.vmid), [self.image])
        encrypted = TxnbackupEncrypted(self.fleet, one, f"{self.vmid}-enc")
        self.full("full", [*tools, encrypted])
        pairs = enumerate(zip(self.halves, NODES, strict=True))
        two = [Drive(f"scsi{i}", str(path), node) for i, (path, node) in pairs]
        api2 = Txnbackup(self.fleet, two, f"300-{mix}")
        tools2 = self._tools(TxnbackupCli(self.fleet, two, f"300-{mix}", name=CLI), self.halves)
        self.full("full2", [api2, *tools2])
        self.restore("restore2", tools2, self.halves)
        self.incremental("clustered", tools)
        self.incremental("scattered", tools)
        self.restore("restore", tools, [self.image])

    def _tools(self, txn: Tool, images: list[Path]) -> list[Tool]:
        tools: list[Tool] = [txn]
        if "restic" in self.peers:
            tools.append(Restic(images, self.workdir / "restic-cache"))
        if "borg" in self.peers:
            tools.append(Borg(images, self.workdir / "borg-base"))
        return tools

    def repo(self, case: str, tool: Tool) -> Path:
        """The tool's repository of the case's latest full run (the later cases use it)."""
        return self.workdir / "repos" / f"{case}-{tool.name}-{self.latest[case]}"

    def full(self, case: str, tools: list[Tool]) -> None:
        # Each full run backs up into a new directory, and none is deleted before the end:
        # ext4 creates files slowly right after many were deleted, which would charge the
        # tool with the most files (txnbackup: one per chunk) for the previous run's rmtree.
        floor = self.results.floor
        assert floor is not None
        for n in range(self.options.runs):
            self.say(f"mix {self.results.mix}: {case} backup, run {n + 1} of {self.options.runs}")
            self.latest[case] = n
            for tool in tools:
                repo = self.repo(case, tool)
                repo.parent.mkdir(parents=True, exist_ok=True)
                tool.init(repo)
                self.cache.drop()
                self.rss.reset()
                self.results.time(case, tool.name).add(timed(_synced, tool.backup, repo))
                self.results.repo_size[f"{case}/{tool.name}"] = tree_size(repo)
                if case == "full" and tool.name == TXN:
                    self.results.worker_rss_full.add(self.rss.peak())
            # The write floor in every repetition, after the tools, as their writes vary too.
            floor.write_bytes = self.results.repo_size[f"{case}/{tools[0].name}"]
            floor.add_write(*measure_write(self.workdir, floor.write_bytes))

    def incremental(self, case: str, tools: list[Tool]) -> None:
        mix = self.results.mix
        for n in range(self.options.runs):
            self.say(f"mix {mix}: incremental after a {case} 1% change, run {n + 1}")
            writes = getattr(self.generator, case)(self.options.size, n)
            _guest_writes(self.fleet, self.vmid, self.image, writes)
            changed = self.results.changed_compressed.setdefault(case, Samples("bytes"))
            changed.add(_changed_compressed(self.image, writes))
            for tool in tools:
                repo = self.repo("full", tool)
                before = tree_size(repo)
                self.cache.drop()
                self.results.time(case, tool.name).add(timed(_synced, tool.backup, repo))
                self.results.grew(case, tool.name).add(tree_size(repo) - before)

    def restore(self, case: str, tools: list[Tool], originals: list[Path]) -> None:
        full = "full2" if case == "restore2" else "full"
        expected = [file_sha256(p) for p in originals]
        # Restored images are kept until every restore ran when the disk has room (deleting
        # one, with online discard, slows the writes of the next); else each goes at once.
        room = self.options.runs * len(tools) * self.options.size
        keep = _room_for(self.workdir, room)
        self.results.restored_images = (
            "kept until all restores ran" if keep else "deleted after each (no room to keep)"
        )
        for n in range(self.options.runs):
            self.say(f"mix {self.results.mix}: {case} of the latest backup, run {n + 1}")
            for tool in tools:
                into = self.workdir / "restored" / f"{case}-{tool.name}-{n}"
                into.mkdir(parents=True)
                self.cache.drop()
                started = time.perf_counter()
                restored = _synced(tool.restore, self.repo(full, tool), into)
                self.results.time(case, tool.name).add(time.perf_counter() - started)
                if [file_sha256(p) for p in restored] != expected:
                    raise BenchError(f"{tool.name}: a restored drive differs from the original")
                if not keep:
                    shutil.rmtree(into)
        shutil.rmtree(self.workdir / "restored")


def _room_for(path: Path, nbytes: int) -> bool:
    """Whether ``nbytes`` more fit below ``path`` with a tenth of the disk to spare."""
    usage = shutil.disk_usage(path)
    return usage.free - nbytes > usage.total // 10


def _synced(action: Callable[..., R], *args: Path) -> R:
    """Run a tool's operation, then make everything written durable (all tools alike)."""
    out = action(*args)
    os.sync()
    return out


def _guest_writes(fleet: Fleet, vmid: str, image: Path, writes: Sequence[Write]) -> None:
    """What a running VM does: write, then report the write (txnbackup's writers' API)."""
    apply(image, writes)
    for w in writes:
        fleet.tracker.mark_dirty(vmid, "scsi0", w.offset, len(w.data))


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
    (workdir / "drives").mkdir(exist_ok=True)
    path = workdir / "drives" / "vm-200-disk-0.raw"
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset in (0, size // 2, size - (1 << 20)):
            fh.seek(offset)
            fh.write(os.urandom(1 << 20))
    repo = workdir / "repos" / "sparse"
    repo.parent.mkdir(exist_ok=True)
    Repository.init(repo)
    cache.drop()
    rss.reset()
    elapsed = timed(lambda: run_backup(fleet, SPARSE_VMID, [Drive("scsi0", str(path), NODE)], repo))
    return {"size": size, "seconds": elapsed, "worker_peak_rss": rss.peak()}
