"""``qemu-clean``: end in QEMU the sessions of backups that ended without it (docs/qemu.md)."""

from __future__ import annotations

import click

from txnbackup.errors import ConflictError, NotFound, Refused
from txnbackup.qemu.cleanup import Outcome, Verdict, clean
from txnbackup.qemu.vm import QemuVM
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup_cli.options import json_option
from txnbackup_cli.output import print_json, print_table


@click.command("qemu-clean")
@click.option(
    "--qmp",
    "spec",
    required=True,
    metavar="SOCKET@NODE",
    help="The VM's QMP socket on this node, as given to `backup --qmp`.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be ended; change nothing.")
@json_option
@click.pass_obj
def qemu_clean(settings: Settings, spec: str, dry_run: bool, as_json: bool) -> None:
    """End in QEMU what backups that already ended left there (run on the VM's node).

    A backup whose ending could not reach QEMU's monitor (every commit attempt failed) ends
    with its exports, jobs, overlays and both bitmaps still in QEMU, and the VM's next
    backup refuses to begin. This ends each such session as its record says: a done
    backup is committed, any other rolled back (no change the guest made is lost either
    way). A backup still in progress is left alone (exit 6); one whose record expired is
    listed for removal by hand (exit 3).
    """
    vm = QemuVM.parse(spec)
    outcomes = clean(Runtime.from_settings(settings), vm, dry_run=dry_run)
    _print(outcomes, dry_run, as_json)
    _fail_for(outcomes)


def _print(outcomes: list[Outcome], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json([o.__dict__ | {"seen": list(o.seen)} for o in outcomes])
        return
    if not outcomes:
        click.echo("nothing of txnbackup's left in this QEMU")
        return
    rows = [(o.backup, o.phase or "-", _what(o), "; ".join(o.seen)) for o in outcomes]
    print_table(["backup", "phase", "would do" if dry_run else "done", "found"], rows)


def _what(o: Outcome) -> str:
    if o.verdict == Verdict.ENDED:
        return f"{o.ending}: ended"
    if o.verdict == Verdict.WOULD_END:
        return f"would {o.ending}"
    return f"left: {o.reason}"


def _fail_for(outcomes: list[Outcome]) -> None:
    """A non-zero exit when something was left: refused (1), in progress (6), no record (3)."""
    for o in outcomes:
        if o.verdict == Verdict.REFUSED:
            raise Refused(f"backup {o.backup}: {o.reason}")
    for o in outcomes:
        if o.verdict == Verdict.RUNNING:
            raise ConflictError(f"backup {o.backup}: {o.reason}")
    for o in outcomes:
        if o.verdict == Verdict.NO_RECORD:
            raise NotFound(f"backup {o.backup}: {o.reason}")


COMMANDS = (qemu_clean,)
