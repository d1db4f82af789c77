"""Retention verbs: prune, forget, protect, unprotect (the repository, and Redis for locks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from txnbackup.latest import resolve
from txnbackup.names import check_vmid
from txnbackup.protection import protect as protect_snapshot
from txnbackup.protection import unprotect as unprotect_snapshot
from txnbackup.prune import Outcome, Pruner, PruneReport
from txnbackup.retention import KeepPolicy, Rule
from txnbackup.settings import Settings
from txnbackup_cli.options import json_option, open_repository, repo_option
from txnbackup_cli.output import print_json, print_table, warn

dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Only print what would be kept and removed."
)


def _keep_options(command: Any) -> Any:
    for rule in reversed(Rule):
        what = "newest snapshots" if rule is Rule.LAST else f"{rule.value} periods"
        command = click.option(
            f"--keep-{rule.value}",
            f"keep_{rule.value}",
            type=click.IntRange(min=0),
            default=0,
            metavar="N",
            help=f"Keep the newest snapshot of each of the N newest {what}.",
        )(command)
    return command


@click.command()
@repo_option
@click.argument("vmid", required=False)
@_keep_options
@dry_run_option
@json_option
@click.pass_obj
def prune(
    settings: Settings,
    /,
    repo: Path | None,
    vmid: str | None,
    dry_run: bool,
    as_json: bool,
    **keep: int,
) -> None:
    """Remove the snapshots of VMID (or of every VM) that no --keep-* rule keeps.

    Each rule keeps the newest snapshot of each of its N newest periods (UTC) that have
    snapshots; a snapshot kept by any rule stays, protected ones always stay. With no rule
    given nothing is removed (an error). A VM whose backup is running is skipped (exit 6).
    Removing the base of a dirty bitmap is said: that drive's next backup reads everything.
    Chunks are freed by `txnbackup gc`.

    \b
    --json prints:
      {"dry_run": bool, "finished": ["vm/<vmid>/<time>" completed half-removed],
       "snapshots": [{"snapshot": str, "keep": bool, "reasons": ["last"|"hourly"|"daily"|
                      "weekly"|"monthly"|"yearly"|"protected"],
                      "invalidated_bitmaps": ["<vmid>/<drive>"]}],
       "blocked": [{"vmid": str, "backup": "<uuid>"}]}
    """
    policy = KeepPolicy(**{k.removeprefix("keep_"): n for k, n in keep.items()})
    repository = open_repository(settings, repo)
    report = Pruner.from_settings(repository, settings).prune(
        policy, check_vmid(vmid) if vmid else None, dry_run=dry_run
    )
    _print(report, as_json)
    if report.blocked:
        raise report.blocked[0]


@click.command()
@repo_option
@click.argument("snapshots", nargs=-1, required=True)
@dry_run_option
@json_option
@click.pass_obj
def forget(
    settings: Settings, repo: Path | None, snapshots: tuple[str, ...], dry_run: bool, as_json: bool
) -> None:
    """Remove the SNAPSHOTS given (vm/<vmid>/<time> or vm/<vmid>/latest).

    All must exist and none be protected, or nothing is removed. --json as for prune.
    """
    repository = open_repository(settings, repo)
    named = [resolve(repository, s) for s in snapshots]
    report = Pruner.from_settings(repository, settings).forget(named, dry_run=dry_run)
    _print(report, as_json)


@click.command()
@repo_option
@click.argument("snapshot")
@click.pass_obj
def protect(settings: Settings, repo: Path | None, snapshot: str) -> None:
    """Protect SNAPSHOT: prune and forget never remove it."""
    repository = open_repository(settings, repo)
    snap = resolve(repository, snapshot)
    done = protect_snapshot(repository, snap)
    click.echo(f"{snap}: {'protected' if done else 'already protected'}")


@click.command()
@repo_option
@click.argument("snapshot")
@click.pass_obj
def unprotect(settings: Settings, repo: Path | None, snapshot: str) -> None:
    """Remove the protection of SNAPSHOT."""
    repository = open_repository(settings, repo)
    snap = resolve(repository, snapshot)
    done = unprotect_snapshot(repository, snap)
    click.echo(f"{snap}: {'no longer protected' if done else 'was not protected'}")


def _print(report: PruneReport, as_json: bool) -> None:
    if as_json:
        print_json(_json(report))
        return
    for name in report.finished:
        click.echo(f"finished removing {name} (an earlier removal was interrupted)")
    if report.outcomes:
        rows = [(str(o.snapshot), _action(o, report.dry_run), _why(o)) for o in report.outcomes]
        print_table(("snapshot", "action", "why"), rows)
    removed = len(report.removed)
    verb = "would remove" if report.dry_run else "removed"
    click.echo(f"{verb} {removed} snapshot(s), kept {len(report.outcomes) - removed}")
    for exc in report.blocked:
        warn(f"VM {exc.args[1]} not pruned: backup running: {exc.args[0]}")


def _action(outcome: Outcome, dry_run: bool) -> str:
    if outcome.keep:
        return "keep"
    return "would remove" if dry_run else "removed"


def _why(outcome: Outcome) -> str:
    if outcome.keep:
        return ", ".join(outcome.reasons)
    if outcome.bitmaps:
        return f"base of bitmaps {', '.join(outcome.bitmaps)}: invalid, next backup reads all"
    return ""


def _json(report: PruneReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "finished": report.finished,
        "snapshots": [
            {
                "snapshot": str(o.snapshot),
                "keep": o.keep,
                "reasons": list(o.reasons),
                "invalidated_bitmaps": list(o.bitmaps),
            }
            for o in report.outcomes
        ],
        "blocked": [{"vmid": e.args[1], "backup": e.args[0]} for e in report.blocked],
    }


COMMANDS = (prune, forget, protect, unprotect)
