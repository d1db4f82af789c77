"""What verbs print: rich tables for people, JSON for programs, warnings on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import click
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

PIPE_WIDTH = 1000  # columns when stdout is not a terminal: whole rows, never folded cells


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = Table(*headers, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    print_renderable(table)


def print_renderable(renderable: RenderableType) -> None:
    """Print any rich renderable (a table, a panel, grouped renderables) to stdout."""
    _console().print(renderable)


def warn(message: str) -> None:
    click.echo(f"txnbackup: warning: {message}", err=True)


def _console() -> Console:
    console = Console(highlight=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, width=PIPE_WIDTH, no_color=True)
