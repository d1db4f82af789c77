"""What a run prints and writes: a table, the targets of issue 6, JSON and a PNG chart."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run import CASES, Results

TOOLS = ("txnbackup", "restic", "borg")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    value: float | None  # None: not measured in this run
    met: bool | None

    def line(self) -> str:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        shown = "-" if self.value is None else f"{self.value:.2f}"
        return f"  {self.what:<44} {self.goal:<10} {shown:>8}  {verdict}"


def targets(r: Results) -> list[Target]:
    """Issue 6's targets, each a ratio measured in this run (medians)."""
    floor = _get(r.extra, "floor", "seconds")
    latency, share = (
        _get(r.extra, "overhead", "latency_ratio"),
        _get(r.extra, "overhead", "throughput_share"),
    )
    rss = [_get(r.extra, "worker_rss_full", "max"), _get(r.extra, "sparse", "worker_peak_rss")]
    growth = _median(r.growth, "clustered", "txnbackup")
    changed = (
        r.changed_compressed["clustered"].median if "clustered" in r.changed_compressed else None
    )
    return [
        _faster(r, "full", "restic", 2.5),
        _faster(r, "full", "borg", 1.6),
        _at_most("full backup / floor", _div(_median(r.times, "full", "txnbackup"), floor), 1.5),
        _faster(r, "clustered", "restic", 20),
        _faster(r, "scattered", "restic", 3),
        _faster(r, "restore", "restic", 2),
        _at_most("clustered growth / its changed chunks (zstd)", _div(growth, changed), 1.5),
        _at_most("worker peak RSS, MiB (2 GiB and sparse drive)", _div(_max(rss), MIB), 300),
        _at_most("tiny 3-drive backup / bare canvas latency", latency, 3),
        _at_least("tiny backups per s / bare canvases per s", share, 0.5),
    ]


def _faster(r: Results, case: str, peer: str, factor: float) -> Target:
    ratio = _div(_median(r.times, case, peer), _median(r.times, case, "txnbackup"))
    return _at_least(f"{case}: {peer} time / txnbackup time", ratio, factor)


def _at_least(what: str, value: float | None, goal: float) -> Target:
    return Target(what, f">= {goal:g}", value, None if value is None else value >= goal)


def _at_most(what: str, value: float | None, goal: float) -> Target:
    return Target(what, f"<= {goal:g}", value, None if value is None else value <= goal)


def _median(table: dict[str, dict[str, Any]], case: str, tool: str) -> float | None:
    return _median_of(table.get(case, {}), tool)


def _median_of(by: dict[str, Any], tool: str) -> float | None:
    samples = by.get(tool)
    return samples.median if samples is not None and samples.values else None


def _get(d: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return float(d)  # type: ignore[arg-type]


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _max(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def render(r: Results) -> str:
    lines = [_conditions(r), "", *_times(r), "", *_repository(r), "", *_floor(r), ""]
    lines += [*_overhead(r), "", "targets (issue 6), medians of this run:"]
    lines += [t.line() for t in targets(r)]
    return "\n".join(lines)


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
        f"repositories: a new one per full run, none deleted before the end; restored images: "
        f"{c.get('restored_images', '?')}\n"
        + "".join(f"{name}: {desc}\n" for name, desc in r.tools.items())
        + "".join(f"{name}: skipped, {why}\n" for name, why in r.skipped.items())
    ).rstrip()


def _load(value: object) -> str:
    return ", ".join(f"{x:.2f}" for x in value) if isinstance(value, list | tuple) else "?"


def _times(r: Results) -> list[str]:
    tools = [t for t in TOOLS if any(t in by for by in r.times.values())]
    head = f"{'seconds, median [min-max]':<28}" + "".join(f"{t:>22}" for t in tools)
    head += "".join(f"{p + '/txn':>12}" for p in tools[1:])
    lines = [f"{r.options.runs} run(s) each, {r.options.size / 2**30:.2f} GiB image", head]
    names = {"full": "full backup", "clustered": "incr. clustered 1%"}
    names |= {"scattered": "incr. scattered 1%", "restore": "restore (checked)"}
    for case in CASES:
        by = r.times.get(case, {})
        row = f"{names[case]:<28}" + "".join(f"{_spread(by.get(t)):>22}" for t in tools)
        base = _median(r.times, case, "txnbackup")
        for peer in tools[1:]:
            ratio = _div(_median(r.times, case, peer), base)
            row += f"{'-' if ratio is None else f'{ratio:.1f}x':>12}"
        lines.append(row)
    return lines


def _spread(samples: Any) -> str:
    if samples is None or not samples.values:
        return "-"
    return f"{samples.median:.2f} [{min(samples.values):.2f}-{max(samples.values):.2f}]"


def _repository(r: Results) -> list[str]:
    tools = [t for t in TOOLS if t in r.repo_size]
    lines = [f"{'repository, MiB':<28}" + "".join(f"{t:>14}" for t in tools)]
    lines.append(f"{'after the full backup':<28}" + _row(tools, lambda t: r.repo_size[t]))
    for case in ("clustered", "scattered"):
        grew = functools.partial(_median_of, r.growth.get(case, {}))
        lines.append(f"{'growth, ' + case:<28}" + _row(tools, grew))
        if case in r.changed_compressed:
            size = r.changed_compressed[case].median / MIB
            lines.append(f"{'  its changed chunks, zstd-1':<28}{size:>14.1f}")
    return lines


def _row(tools: list[str], value: Callable[[str], float | None]) -> str:
    cells = [value(t) for t in tools]
    return "".join(f"{'-' if v is None else f'{v / MIB:.1f}':>14}" for v in cells)


def _floor(r: Results) -> list[str]:
    f = r.extra.get("floor")
    if not isinstance(f, dict):
        return []
    full = _median(r.times, "full", "txnbackup")
    mb = 1e6
    lines = [
        f"floor on this machine ({f['cores']} cores), MB/s: cold read {f['read'] / mb:.0f}; "
        f"sha256 {f['sha256_1'] / mb:.0f} (1 core) {f['sha256_n'] / mb:.0f} (all); "
        f"zstd-1 {f['zstd_1'] / mb:.0f} / {f['zstd_n'] / mb:.0f}; "
        f"both {f['both_1'] / mb:.0f} / {f['both_n'] / mb:.0f}",
        f"floor of a full backup: {f['seconds']:.2f} s",
    ]
    if full:
        lines.append(
            f"txnbackup full backup: {full:.2f} s = {full / f['seconds']:.2f}x the floor "
            f"({f['seconds'] / full:.0%} of its speed)"
        )
    return lines


def _overhead(r: Results) -> list[str]:
    lines = []
    rss = r.extra.get("worker_rss_full")
    sparse = r.extra.get("sparse")
    if isinstance(rss, dict) and "max" in rss:
        lines.append(f"worker peak RSS, full backups of the image: {rss['max'] / MIB:.0f} MiB")
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
    return lines


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
    tools = [t for t in TOOLS if any(t in by for by in r.times.values())]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, meds, lows, highs = [], [], [], []
        for j, case in enumerate(CASES):
            s = r.times.get(case, {}).get(tool)
            if s is None or not s.values:
                continue
            xs.append(j + (i - (len(tools) - 1) / 2) * width)
            meds.append(s.median)
            lows.append(s.median - min(s.values))
            highs.append(max(s.values) - s.median)
        ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=tool)
    ax.set_xticks(range(len(CASES)), ["full", "incr. clustered", "incr. scattered", "restore"])
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, min-max), log scale")
    load = _load(r.conditions.get("load_before"))
    ax.set_title(f"{r.options.size / 2**30:.2f} GiB image, {r.options.runs} runs; load {load}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
