"""What verbs print: rich tables for people, JSON for programs, warnings on stderr.

rich is imported by the functions that print for people, not with this module: a verb
printing JSON (``backup --wait --json``) never pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from txnbackup.status import BackupStatus

PIPE_WIDTH = 1000  # columns when stdout is not a terminal: whole rows, never folded cells


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    from rich import box  # noqa: PLC0415 - see the module docstring
    from rich.table import Table  # noqa: PLC0415

    table = Table(*headers, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    print_renderable(table)


def print_status(status: BackupStatus) -> None:
    """A backup's status as a table (txnbackup_cli.status_view)."""
    from txnbackup_cli.status_view import status_table  # noqa: PLC0415 - it imports rich

    print_renderable(status_table(status))


def print_renderable(renderable: RenderableType) -> None:
    """Print any rich renderable (a table, a panel, grouped renderables) to stdout."""
    _console().print(renderable)


def warn(message: str) -> None:
    click.echo(f"txnbackup: warning: {message}", err=True)


def _console() -> Console:
    from rich.console import Console  # noqa: PLC0415 - see the module docstring

    console = Console(highlight=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, width=PIPE_WIDTH, no_color=True)
