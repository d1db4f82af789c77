"""What the demo prints: a rule per step, what happens and why, progress bars, checks, tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

from txnbackup.status import BackupStatus
from txnbackup_cli.progress_view import DriveBars, StateLines
from txnbackup_cli.sizes import format_size
from txnbackup_cli.status_view import status_table

PIPE_WIDTH = 110  # columns when stdout is not a terminal (CI logs)

StatusSink = Callable[[BackupStatus], None]
Watcher = Callable[[str, StatusSink], BackupStatus]


@dataclass(frozen=True)
class StepResult:
    number: int
    title: str
    seconds: float


class Narrator:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or _console()

    def step(self, number: int, steps: int, title: str, about: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]Step {number}/{steps} · {title}", align="left")
        self.console.print(" ".join(about.split()), style="dim")

    def say(self, text: str) -> None:
        self.console.print(text)

    def ok(self, text: str) -> None:
        self.console.print(f"  [green]✓[/] {text}")

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def status(self, status: BackupStatus) -> None:
        self.console.print(status_table(status))

    def watch(self, watcher: Watcher, backup: str, on_update: StatusSink) -> BackupStatus:
        """Follow a backup until it ends, as ``backup --wait`` shows it (bars or lines)."""
        with self._view() as view:

            def update(status: BackupStatus) -> None:
                view.update(status)
                on_update(status)

            return watcher(backup, update)

    @contextmanager
    def _view(self) -> Iterator[DriveBars | StateLines]:
        if not self.console.is_terminal:
            yield StateLines(lambda line: self.console.print(f"  {line}", markup=False))
            return
        with DriveBars(self.console) as bars:
            yield bars

    def summary(self, results: Sequence[StepResult], total: float) -> None:
        table = Table("step", "what", "seconds", box=box.SIMPLE_HEAD, title="All steps as expected")
        for r in results:
            table.add_row(str(r.number), r.title, f"{r.seconds:.1f}")
        table.add_row("", "[bold]total (with start-up and clean-up)", f"[bold]{total:.1f}")
        self.console.print()
        self.console.print(table)
        self.console.print(f"demo: {len(results)} passed, 0 failed", markup=False)


def sizes(*pairs: tuple[str, int]) -> str:
    """``dirty 8.0 MiB, reused 4.0 MiB``: labelled byte counts for people."""
    return ", ".join(f"{label} {format_size(value)}" for label, value in pairs)


def _console() -> Console:
    console = Console(highlight=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, width=PIPE_WIDTH)
