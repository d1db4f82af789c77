"""A backup's progress for people: one live rich bar per drive, or one line per change.

Each bar counts the bytes the drive's copy must read (its dirty bytes: everything for a full
read) and shows the drive's size beside them, the throughput and the time left; the drive
being copied is highlighted. Without a terminal there are no bars: each change of a drive's
state is one plain line, which reads well in a log.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from txnbackup.status import BackupStatus, DriveStatus
from txnbackup_cli.sizes import format_size

MARK = {
    "pending": "[dim]  {}[/]",
    "running": "[bold cyan]▶ {}[/]",
    "done": "[green]✓ {}[/]",
    "failed": "[bold red]✗ {}[/]",
    "cancelled": "[yellow]✗ {}[/]",
    "skipped": "[dim]- {}[/]",
}


def drive_label(d: DriveStatus) -> str:
    return MARK.get(d.state, "  {}").format(d.name)


class RateColumn(ProgressColumn):
    """Read throughput in binary units, like every other size txnbackup shows."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("?", style="progress.data.speed")
        return Text(f"{format_size(int(speed))}/s", style="progress.data.speed")


class DriveBars:
    """Live bars, fed with each new status of the backup (a context manager)."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("[dim]{task.fields[action]}[/]"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
        )
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> DriveBars:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def pause(self) -> None:
        self.progress.stop()

    def resume(self) -> None:
        self.progress.start()

    def update(self, status: BackupStatus) -> None:
        for d in status.drives:
            if d.name not in self._bars:
                self._bars[d.name] = self.progress.add_task(
                    drive_label(d), start=False, action=d.action, amount="", state=""
                )
            if d.state != "pending":
                self.progress.start_task(self._bars[d.name])  # the clock of speed and ETA
            # A drive with nothing dirty has nothing to read: its bar is full once it is done.
            nothing = d.dirty == 0
            self.progress.update(
                self._bars[d.name],
                description=drive_label(d),
                total=1 if nothing else d.dirty,
                completed=int(d.state == "done") if nothing else d.transferred,
                action=d.action,
                amount=f"{format_size(d.transferred)} of {format_size(d.dirty)} dirty, "
                f"drive {format_size(d.size)}",
                state=d.state,
            )


class StateLines:
    """One line per change of a drive's state, for output that is not a terminal."""

    def __init__(self, echo: Callable[[str], object]) -> None:
        self._echo = echo
        self._seen: dict[str, str] = {}

    def update(self, status: BackupStatus) -> None:
        for d in status.drives:
            if self._seen.get(d.name) != d.state:
                self._seen[d.name] = d.state
                self._echo(state_line(d))

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None


def state_line(d: DriveStatus) -> str:
    amount = f"{format_size(d.transferred)} of {format_size(d.dirty)} dirty"
    return f"drive {d.name} ({d.action}, size {format_size(d.size)}): {d.state}, {amount}"
