"""Verbs for writers: report changed byte ranges so the next backup copies them."""

from __future__ import annotations

import click

from txnbackup.names import check_drive_name, check_vmid
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker
from txnbackup_cli.sizes import size_option_value


# ignore_unknown_options lets "-4K" reach the size check (and its clear message) instead of
# being taken for an option.
@click.command("mark-dirty", context_settings={"ignore_unknown_options": True})
@click.argument("vmid")
@click.argument("drive")
@click.argument("offset", callback=size_option_value)
@click.argument("length", callback=size_option_value)
@click.pass_obj
def mark_dirty(settings: Settings, vmid: str, drive: str, offset: int, length: int) -> None:
    """Mark bytes OFFSET..OFFSET+LENGTH of DRIVE of VM VMID as changed.

    Run it after the write has completed; the next backup of the VM then copies every chunk
    the range touches. OFFSET and LENGTH are bytes, or take a K/M/G/T suffix (binary).
    A drive without a dirty bitmap yet is not an error: its next backup reads everything.
    """
    check_vmid(vmid)
    check_drive_name(drive)
    marked = Tracker.from_settings(settings).mark_dirty(vmid, drive, offset, length)
    if marked < 0:
        click.echo(
            f"drive {vmid}/{drive} has no dirty bitmap yet; its next backup reads everything"
        )
    else:
        click.echo(f"marked {marked} chunk(s) of drive {vmid}/{drive} dirty")


COMMANDS = (mark_dirty,)
