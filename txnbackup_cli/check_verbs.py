"""The whole-repository check (reads only; no Redis, no Celery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from txnbackup.check import ALL, CheckReport, Subset, check_repository
from txnbackup.errors import CheckFailed, InvalidInput
from txnbackup.settings import Settings
from txnbackup_cli.options import json_option, open_repository, repo_option
from txnbackup_cli.output import print_json, print_table


@click.command()
@repo_option
@click.option("--read-data", is_flag=True, help="Also read and verify every chunk.")
@click.option(
    "--read-data-subset",
    metavar="N/M",
    default=None,
    help="Read and verify the N-th of M parts of the chunks (the same part on every run).",
)
@json_option
@click.pass_obj
def check(
    settings: Settings,
    repo: Path | None,
    read_data: bool,
    read_data_subset: str | None,
    as_json: bool,
) -> None:
    """Check the whole repository, changing nothing.

    Every snapshot's manifest and indexes parse and agree, every blob matches its checksum,
    every chunk an index refers to exists; with --read-data (or a subset) chunks are read,
    decoded and checked against their digest. Exit code 5 when anything is wrong, each
    problem named. Half-removed snapshots (an interrupted prune) are listed, not problems.

    \b
    --json prints:
      {"ok": bool, "snapshots": int, "half_removed": ["vm/<vmid>/<time>"],
       "chunks": <distinct chunks referred to>, "read": <chunks read and verified>,
       "subset": "N/M" or null, "problems": [{"where": str, "reason": str}]}
    """
    if read_data and read_data_subset:
        raise InvalidInput("give --read-data or --read-data-subset, not both")
    subset = Subset.parse(read_data_subset) if read_data_subset else ALL if read_data else None
    report = check_repository(open_repository(settings, repo), subset)
    if as_json:
        print_json(_json(report))
    else:
        _print(report)
    if not report.ok:
        raise CheckFailed(len(report.problems))


def _print(report: CheckReport) -> None:
    for name in report.half_removed:
        click.echo(f"{name}: half-removed (the next prune or gc finishes it)")
    if report.problems:
        print_table(("where", "problem"), [(p.where, p.reason) for p in report.problems])
    read = f", {report.read} read and verified ({report.subset})" if report.subset else ""
    verdict = "no problems" if report.ok else f"{len(report.problems)} problem(s)"
    click.echo(f"{report.snapshots} snapshot(s), {report.chunks} chunk(s){read}: {verdict}")


def _json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "snapshots": report.snapshots,
        "half_removed": report.half_removed,
        "chunks": report.chunks,
        "read": report.read,
        "subset": str(report.subset) if report.subset else None,
        "problems": [{"where": p.where, "reason": p.reason} for p in report.problems],
    }


COMMANDS = (check,)
