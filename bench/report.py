"""What a run prints and writes: a table per data mix, the targets of issues 6, 15 (the cost of
encryption) and 16, JSON and a PNG chart."""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import Samples
from bench.run import CLI, TXN, TXN_ENC, MixResults, Results

PEERS = ("restic", "borg")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """A line of a mix's table: a case, and which txnbackup path its txnbackup column is."""

    label: str
    case: str
    txn: str


ROWS = (
    Row("API, 1 drive: full backup", "full", TXN),
    Row("API, 1 drive: full, encrypted", "full", TXN_ENC),
    Row("API, 1 drive: incr. clustered 1%", "clustered", TXN),
    Row("API, 1 drive: incr. scattered 1%", "scattered", TXN),
    Row("API, 1 drive: restore", "restore", TXN),
    Row("API, 2 drives/2 nodes: full", "full2", TXN),
    Row("CLI, 2 drives/2 nodes: full", "full2", CLI),
    Row("CLI, 2 drives: restore", "restore2", CLI),
)


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    value: float | None  # None: not measured in this run
    met: bool | None

    def line(self) -> str:
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[self.met]
        shown = "-" if self.value is None else f"{self.value:.2f}"
        return f"  {self.what:<58} {self.goal:<8} {shown:>8}  {verdict}"


def targets(r: Results) -> list[Target]:
    """Each target a ratio (or seconds) measured in this run, medians; per mix, then global."""
    if r.options.qemu_only:
        return qemu_targets(r.extra.get("qemu"))
    found = [t for name, m in r.mixes.items() for t in mix_targets(name, m)]
    overhead = r.extra.get("overhead", {})
    rss = [m.worker_rss_full.median for m in r.mixes.values() if m.worker_rss_full.values]
    rss.append(_get(r.extra, "sparse", "worker_peak_rss") or 0.0)
    share = _get(overhead, "throughput_share")
    tiny_cli = _get(r.extra, "cli_overhead", "overhead")
    return [
        *found,
        *qemu_targets(r.extra.get("qemu")),
        _at_most("worker peak RSS, MiB (full backups and sparse drive)", max(rss) / MIB, 300),
        _at_most("tiny 3-drive backup / bare canvas latency", _get(overhead, "latency_ratio"), 3),
        _at_least("tiny backups per s / bare canvases per s", share, 0.5),
        _at_most("CLI overhead over API, tiny 2-drive VM, s", tiny_cli, 0.5),
    ]


def qemu_targets(q: object) -> list[Target]:
    if not isinstance(q, dict) or "skipped" in q:
        return []
    found = [_at_most("QEMU qcow2 over NBD, full / same image as file drive", _qemu_ratio(q), 1.3)]
    for case in ("clustered", "scattered"):
        read, chunks = _get(q, case, "read"), _get(q, case, "dirty_chunks_bytes")
        found.append(
            _at_most(f"QEMU incr. {case} 1%: bytes read / dirty chunks", _div(read, chunks), 1.05)
        )
    return found


def _qemu_ratio(q: dict[str, Any]) -> float | None:
    return _div(_get(q, "qemu_full"), _get(q, "file_full"))


def mix_targets(name: str, m: MixResults) -> list[Target]:
    floor = m.floor.seconds if m.floor is not None else None
    growth = _median(m.growth, "clustered", TXN)
    changed = m.changed_compressed.get("clustered")
    p = f"[{name}] "
    cli_floor = _div(_median(m.times, "full2", CLI), floor)
    return [
        _faster(m, "full", TXN, "restic", 2.5, p + "API full"),
        _faster(m, "full", TXN, "borg", 1.6, p + "API full"),
        _faster(m, "full2", CLI, "restic", 2.5, p + "CLI full, 2 drives"),
        _faster(m, "full2", CLI, "borg", 1.6, p + "CLI full, 2 drives"),
        _faster(m, "restore", TXN, "restic", 2, p + "API restore"),
        _faster(m, "restore", TXN, "borg", 2, p + "API restore"),
        _faster(m, "restore2", CLI, "restic", 2, p + "CLI restore, 2 drives"),
        _faster(m, "restore2", CLI, "borg", 2, p + "CLI restore, 2 drives"),
        _at_most(p + "API full / floor", _div(_median(m.times, "full", TXN), floor), 1.3),
        _at_most(p + "API full, encrypted / unencrypted", encryption_cost(m), 1.15),
        _at_most(p + "CLI full, 2 drives / floor", cli_floor, 1.3),
        _faster(m, "clustered", TXN, "restic", 20, p + "incr. clustered"),
        _faster(m, "scattered", TXN, "restic", 3, p + "incr. scattered"),
        _at_most(p + "CLI overhead over API, 2-drive VM, s", cli_overhead(m), 0.5),
        _at_most(
            p + "clustered growth / its changed chunks (zstd)",
            _div(growth, changed.median if changed else None),
            1.5,
        ),
    ]


def encryption_cost(m: MixResults) -> float | None:
    """The encrypted full backup's time over the plain one's (medians, same image)."""
    return _div(_median(m.times, "full", TXN_ENC), _median(m.times, "full", TXN))


def cli_overhead(m: MixResults) -> float | None:
    """Seconds the command adds to the API path for the same 2-drive VM: the median of the
    differences of each round's pair (the command runs right after the API in every round,
    so the pair shares the machine's state of the moment), as for the tiny VM."""
    by = m.times.get("full2", {})
    api, cli = by.get(TXN), by.get(CLI)
    if api is None or cli is None or not api.values or len(api.values) != len(cli.values):
        return None
    return statistics.median(c - a for a, c in zip(api.values, cli.values, strict=True))


def _faster(m: MixResults, case: str, txn: str, peer: str, factor: float, what: str) -> Target:
    ratio = _div(_median(m.times, case, peer), _median(m.times, case, txn))
    return _at_least(f"{what}: {peer} / txnbackup", ratio, factor)


def _at_least(what: str, value: float | None, goal: float) -> Target:
    return Target(what, f">= {goal:g}", value, None if value is None else value >= goal)


def _at_most(what: str, value: float | None, goal: float) -> Target:
    return Target(what, f"<= {goal:g}", value, None if value is None else value <= goal)


def _median(table: dict[str, dict[str, Samples]], case: str, tool: str) -> float | None:
    return _median_of(table.get(case, {}), tool)


def _median_of(by: dict[str, Samples], tool: str) -> float | None:
    samples = by.get(tool)
    return samples.median if samples is not None and samples.values else None


def _get(d: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return float(d)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def render(r: Results) -> str:
    lines = [_conditions(r), ""]
    for name, m in r.mixes.items():
        lines += [*_mix(r, name, m), ""]
    lines += [*_overhead(r), *_qemu(r.extra.get("qemu")), ""]
    lines += ["targets (issues 6, 14, 15 and 16), medians of this run:"]
    lines += [t.line() for t in targets(r)]
    return "\n".join(lines)


def _mix(r: Results, name: str, m: MixResults) -> list[str]:
    kinds = m.image.get("kinds", {})
    assert isinstance(kinds, dict)
    shares = ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in kinds.items())
    head = f"mix {name} (seed {m.image.get('seed')}): {r.options.size / 2**30:.2f} GiB; {shares}"
    kept = f"restored images: {m.restored_images}"
    return [head, *_times(r, m), kept, "", *_repository(m), "", *_floor(m)]


def _conditions(r: Results) -> str:
    c = r.conditions
    m = c.get("machine", {})
    assert isinstance(m, dict)
    return (
        f"machine: {m.get('cpu')}, {m.get('cores')} cores, "
        f"{int(m.get('memory_bytes', 0)) / 2**30:.0f} GiB, Linux {m.get('kernel')}\n"
        f"load average (1, 5, 15 min) before: {_load(c.get('load_before'))}, "
        f"after: {_load(c.get('load_after'))}\n"
        f"page cache: {c.get('page_cache')}\n"
        f"bytecode: {c.get('bytecode', 'not compiled by the benchmark')}\n"
        "repositories: a new one per full run, none deleted before the end of the mix\n"
        + "".join(f"{name}: {desc}\n" for name, desc in r.tools.items())
        + "".join(f"{name}: skipped, {why}\n" for name, why in r.skipped.items())
    ).rstrip()


def _load(value: object) -> str:
    return ", ".join(f"{x:.2f}" for x in value) if isinstance(value, list | tuple) else "?"


def _times(r: Results, m: MixResults) -> list[str]:
    peers = [p for p in PEERS if any(p in by for by in m.times.values())]
    head = f"{'seconds, median [min-max]':<36}{'txnbackup':>22}" + "".join(
        f"{p:>22}" for p in peers
    )
    head += "".join(f"{p + '/txn':>12}" for p in peers)
    lines = [f"{r.options.runs} run(s) each", head]
    for row in ROWS:
        by = m.times.get(row.case, {})
        if row.txn not in by:
            continue
        line = f"{row.label:<36}{_spread(by.get(row.txn)):>22}"
        line += "".join(f"{_spread(by.get(p)):>22}" for p in peers)
        for peer in peers:
            ratio = _div(_median_of(by, peer), _median_of(by, row.txn))
            line += f"{'-' if ratio is None else f'{ratio:.2f}x':>12}"
        lines.append(line)
    overhead = cli_overhead(m)
    if overhead is not None:
        lines.append(f"{'CLI overhead (CLI - API, 2 drives)':<36}{overhead:>+21.2f}s")
    return lines


def _spread(samples: Any) -> str:
    if samples is None or not samples.values:
        return "-"
    return f"{samples.median:.2f} [{min(samples.values):.2f}-{max(samples.values):.2f}]"


def _repository(m: MixResults) -> list[str]:
    tools = [t for t in (TXN, *PEERS) if f"full/{t}" in m.repo_size]
    lines = [f"{'repository, MiB':<36}" + "".join(f"{t:>14}" for t in tools)]
    lines.append(f"{'after the full backup':<36}" + _row(tools, lambda t: m.repo_size[f"full/{t}"]))
    for case in ("clustered", "scattered"):
        grew = functools.partial(_median_of, m.growth.get(case, {}))
        lines.append(f"{'growth, ' + case:<36}" + _row(tools, grew))
        if case in m.changed_compressed:
            size = m.changed_compressed[case].median / MIB
            lines.append(f"{'  its changed chunks, zstd-1':<36}{size:>14.1f}")
    return lines


def _row(tools: list[str], value: Callable[[str], float | None]) -> str:
    cells = [value(t) for t in tools]
    return "".join(f"{'-' if v is None else f'{v / MIB:.1f}':>14}" for v in cells)


def _floor(m: MixResults) -> list[str]:
    f = m.floor
    if f is None:
        return []
    parts = f.parts()
    mb = 1e6
    write = parts.get("write")
    lines = [
        f"floor, seconds: read {f.read:.2f} (cold, {f.size / f.read / mb:.0f} MB/s; "
        f"{f.threads} threads, {f.in_flight} spans in flight as the engine reads; "
        f"{f.read_way}, the faster of cached and direct)",
        "  write "
        + (
            "-"
            if write is None
            else f"{write:.2f} ({f.write_bytes / MIB:.0f} MiB + fsync, "
            f"{f.write_bytes / write / mb:.0f} MB/s; {_ways(f.write_ways)})"
        )
        + f"; cpu {f.cpu:.2f} (sha256 {f.sha256_cpu:.2f} + zstd {f.zstd_cpu:.2f} CPU-s"
        f" / {f.cores} cores)",
        f"  {f.binds} binds: floor {f.seconds:.2f} s",
    ]
    for label, case, txn in (("API, 1 drive", "full", TXN), ("CLI, 2 drives", "full2", CLI)):
        by = m.times.get(case, {})
        cells = [(t, _median_of(by, t if t != "txnbackup" else txn)) for t in (TXN, *PEERS)]
        shown = ", ".join(f"{t} {v / f.seconds:.2f}x" for t, v in cells if v is not None)
        if shown:
            lines.append(f"  full backup / floor, {label}: {shown}")
    return lines


def _ways(ways: list[str]) -> str:
    """Which way of writing was the faster, over the samples."""
    counts = ", ".join(f"{w} {ways.count(w)} of {len(ways)}" for w in sorted(set(ways)))
    return f"the faster of cached and direct: {counts}"


def _overhead(r: Results) -> list[str]:
    lines = []
    rss = [m.worker_rss_full.median for m in r.mixes.values() if m.worker_rss_full.values]
    sparse = r.extra.get("sparse")
    if rss:
        lines.append(f"worker peak RSS, full backups of the image: {max(rss) / MIB:.0f} MiB")
    if isinstance(sparse, dict):
        lines.append(
            f"sparse drive of {sparse['size'] / 2**30:.0f} GiB: backed up in "
            f"{sparse['seconds']:.2f} s, worker peak RSS {sparse['worker_peak_rss'] / MIB:.0f} MiB"
        )
    o = r.extra.get("overhead")
    if isinstance(o, dict):
        b, c = o["backup_latency"], o["canvas_latency"]
        lines.append(
            f"tiny 3-drive backup, submit->done: {b['median'] * 1000:.0f} ms "
            f"[{b['min'] * 1000:.0f}-{b['max'] * 1000:.0f}]; bare canvas: "
            f"{c['median'] * 1000:.0f} ms [{c['min'] * 1000:.0f}-{c['max'] * 1000:.0f}]"
        )
        br, cr = o["backup_rate"], o["canvas_rate"]
        lines.append(
            f"{o['vms']} tiny VMs at once: {br['median']:.1f} backups/s "
            f"[{br['min']:.1f}-{br['max']:.1f}]; {o['vms']} bare canvases: "
            f"{cr['median']:.1f}/s [{cr['min']:.1f}-{cr['max']:.1f}]"
        )
    c = r.extra.get("cli_overhead")
    if isinstance(c, dict):
        api, cli, start = c["api"], c["cli"], c["startup"]
        lines.append(
            f"tiny 2-drive VM on 2 nodes: API {api['median'] * 1000:.0f} ms, "
            f"`txnbackup backup --wait` {cli['median'] * 1000:.0f} ms: the command adds "
            f"{c['overhead'] * 1000:.0f} ms, of which start-up (Python, CLI and Celery imports) "
            f"{start['median'] * 1000:.0f} ms, the rest submit, the wait (woken by the end's "
            "message) and output"
        )
    return lines


def _qemu(q: object) -> list[str]:
    if not isinstance(q, dict):
        return []
    if "skipped" in q:
        return [f"QEMU row skipped: {q['skipped']}"]
    if "failed" in q:
        return [f"QEMU row FAILED: {q['failed']}"]
    ratio = _qemu_ratio(q)
    lines = [
        f"QEMU drive ({q['size'] / MIB:.0f} MiB qcow2, qemu-storage-daemon, NBD): full "
        f"{_runs(q, 'qemu_full')}; the same image as a file drive {_runs(q, 'file_full')}; "
        f"ratio of the medians {ratio if ratio is None else f'{ratio:.2f}'}"
    ]
    for case in ("clustered", "scattered"):
        c = q[case]
        lines.append(
            f"QEMU incremental after a {case} 1% change ({c['action']}): read "
            f"{c['read'] / MIB:.1f} MiB, dirty chunks {c['dirty_chunks_bytes'] / MIB:.1f} MiB, "
            f"bitmap's dirty bytes {c['dirty'] / MIB:.1f} MiB"
        )
    return lines


def _runs(q: dict[str, Any], key: str) -> str:
    """The median in seconds, and every run's when there are several."""
    runs = q.get(f"{key}_runs") or [q[key]]
    each = f" [{', '.join(f'{t:.2f}' for t in runs)}]" if len(runs) > 1 else ""
    return f"{q[key]:.2f} s{each}"


def write(r: Results, out: Path) -> list[Path]:
    """results.json and, when matplotlib is installed (extra ``bench``), chart.png."""
    out.mkdir(parents=True, exist_ok=True)
    data = r.to_dict()
    data["targets"] = [t.__dict__ for t in targets(r)]
    path = out / "results.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    written = [path]
    chart = _chart(r, out / "chart.png")
    if chart is not None:
        written.append(chart)
    return written


def _chart(r: Results, path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: PLC0415 - optional (extra "bench")

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    mixes = list(r.mixes.items())
    fig, axes = plt.subplots(len(mixes), 1, figsize=(11, 4.5 * len(mixes)), squeeze=False)
    for ax, (name, m) in zip(axes[:, 0], mixes, strict=True):
        _chart_mix(ax, m)
        ax.set_title(f"mix {name}: {r.options.size / 2**30:.2f} GiB, {r.options.runs} runs")
    fig.suptitle(f"load before: {_load(r.conditions.get('load_before'))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _chart_mix(ax: Any, m: MixResults) -> None:
    rows = [row for row in ROWS if row.txn in m.times.get(row.case, {})]
    peers = [p for p in PEERS if any(p in by for by in m.times.values())]
    columns = ("txnbackup", *peers)
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        xs, meds, lows, highs = [], [], [], []
        for j, row in enumerate(rows):
            s = m.times[row.case].get(row.txn if column == "txnbackup" else column)
            if s is None or not s.values:
                continue
            xs.append(j + (i - (len(columns) - 1) / 2) * width)
            meds.append(s.median)
            lows.append(s.median - min(s.values))
            highs.append(max(s.values) - s.median)
        if xs:
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=column)
    ax.set_xticks(range(len(rows)), [row.label.replace(": ", "\n") for row in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, min-max)")
    ax.legend()
