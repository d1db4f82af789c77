"""How a backup's status is shown: a rich table for people, a stable dict for --json."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table

from txnbackup.status import BackupStatus
from txnbackup_cli.sizes import format_size

STATUS_STYLE = {"active": "cyan", "done": "green", "error": "red", "cancelled": "yellow"}


def status_table(status: BackupStatus) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    style = STATUS_STYLE.get(status.status, "")
    rows = [
        ("backup", status.uuid),
        ("vm", status.vmid),
        ("status", f"[{style}]{status.status}[/]" + (" (finishing)" if status.finishing else "")),
        ("reason" if status.status == "cancelled" else "error", status.errmsg),
        ("commit", status.commit_error if status.active else ""),
        ("started", status.start_time),
        ("ended", status.end_time),
        ("snapshot", status.snapshot),
        ("total", _totals(status)),
    ]
    for name, value in rows:
        if value:
            head.add_row(name, value)
    return Group(head, drive_table(status))


def _totals(s: BackupStatus) -> str:
    return (
        f"{format_size(s.total)}, dirty {format_size(s.dirty)}, "
        f"transferred {format_size(s.transferred)}, zero {format_size(s.zero_bytes)}, "
        f"reused {format_size(s.reused)}"
    )


def drive_table(status: BackupStatus) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in (
        "drive",
        "node",
        "bitmap",
        "state",
        "size",
        "dirty",
        "transferred",
        "zero",
        "reused",
        "task",
    ):
        table.add_column(header, justify="right" if header in _NUMERIC else "left")
    for d in status.drives:
        table.add_row(
            d.name,
            d.node,
            d.action,
            d.state,
            *(format_size(v) for v in (d.size, d.dirty, d.transferred, d.zero_bytes, d.reused)),
            d.task_id,
        )
    return table


_NUMERIC = {"size", "dirty", "transferred", "zero", "reused"}
