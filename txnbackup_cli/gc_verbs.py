"""The repository's garbage collection verb (no Redis, no Celery)."""

from __future__ import annotations

from pathlib import Path

import click

from txnbackup.gc import DEFAULT_GRACE, GcReport, collect
from txnbackup.settings import Settings
from txnbackup_cli.options import json_option, open_repository, repo_option
from txnbackup_cli.output import print_json
from txnbackup_cli.sizes import format_size


@click.command()
@repo_option
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="Keep unreferenced chunks younger than this (protects backups on hosts with skewed "
    "clocks).",
)
@json_option
@click.pass_obj
def gc(settings: Settings, repo: Path | None, dry_run: bool, grace: float, as_json: bool) -> None:
    """Delete chunk files that no snapshot and no running backup refers to.

    Reclaims the space of failed and cancelled backups and of pruned snapshots, and
    finishes snapshot removals a crash interrupted; safe while backups run (see
    docs/format.md, "Garbage collection"). Also removes chunk files moved aside by verify
    once they are no longer needed, and stray temporary files.

    \b
    --json prints:
      {"dry_run": bool, "chunks": <chunk files>, "referenced": int,
       "young": <unreferenced, kept: newer than the grace period or a running backup>,
       "removed": int, "removed_bytes": int, "bad_removed": int, "tmp_removed": int,
       "finished": ["vm/<vmid>/<time>" whose interrupted removal gc completed]}
    """
    report = collect(open_repository(settings, repo), grace=grace, dry_run=dry_run)
    if as_json:
        print_json(_json(report))
        return
    verb = "would remove" if dry_run else "removed"
    for name in report.finished:
        click.echo(f"finished removing {name} (an earlier removal was interrupted)")
    click.echo(
        f"{verb} {report.removed} unreferenced chunk file(s), "
        f"{format_size(report.removed_bytes)}; kept {report.referenced} referenced and "
        f"{report.young} too young to remove; {verb} {report.bad_removed} .bad and "
        f"{report.tmp_removed} temporary file(s)"
    )


def _json(report: GcReport) -> dict[str, object]:
    return {
        "dry_run": report.dry_run,
        "chunks": report.chunks,
        "referenced": report.referenced,
        "young": report.young,
        "removed": report.removed,
        "removed_bytes": report.removed_bytes,
        "bad_removed": report.bad_removed,
        "tmp_removed": report.tmp_removed,
        "finished": report.finished,
    }


COMMANDS = (gc,)
