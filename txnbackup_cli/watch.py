"""Following a backup to its end: ``txnbackup watch UUID`` and ``txnbackup backup --wait``.

People get one live bar per drive (txnbackup_cli.progress_view), then the status table; without a
terminal each change of a drive's state is a line instead of bars; ``--json`` prints only
the final status (the shape of ``status --json``). Ctrl-C asks whether to cancel the backup
or just stop watching it; anything but an explicit ``cancel`` (Enter, end of input, a second
Ctrl-C) only stops watching, so a script never cancels a backup by accident.

Exit codes: 0 done, 1 error, 9 cancelled, 130 stopped watching (the backup goes on; the
status printed then is the one at that moment).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import click

from txnbackup.errors import Cancelled, TxnBackupError
from txnbackup.settings import Settings
from txnbackup.status import BackupStatus, DriveStatus
from txnbackup_cli import fleet
from txnbackup_cli.errors import EXIT_INTERRUPTED
from txnbackup_cli.options import json_option
from txnbackup_cli.output import print_json, print_status

if TYPE_CHECKING:
    from tasks.producer import Producer

EXIT_FOR_STATUS = {"done": 0, "error": TxnBackupError.exit_code, "cancelled": Cancelled.exit_code}
CANCEL, STOP, WATCH = "cancel", "stop", "watch"
CTRL_C_REASON = "cancelled by user (Ctrl-C while watching)"
STARTING_GRACE = 3.0  # seconds a drive may wait for its turn before we ask who serves its node


class View(Protocol):
    def update(self, status: BackupStatus) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class AfterDone(Protocol):
    """Run once a followed backup is done (backup --verify): its JSON fields to add to the
    status (with --json; else it prints its own lines) and an exit code (0: all good)."""

    def __call__(self, status: BackupStatus, as_json: bool) -> tuple[dict[str, Any], int]: ...


def follow_and_show(
    producer: Producer,
    uuid: str,
    as_json: bool,
    told: Collection[str] = (),
    after_done: AfterDone | None = None,
) -> int:
    """Follow the backup until it ends or the user stops watching; print it; the exit code.

    ``told``: the nodes the user already heard have no worker (warn_unserved).
    """
    with _view(as_json) as view:
        final = follow(producer, uuid, view, told)
    status = final or producer.status(uuid)
    extra: dict[str, Any] = {}
    code = 0
    if not as_json:
        print_status(status)
    if after_done is not None and final is not None and final.status == "done":
        extra, code = after_done(status, as_json)
    if as_json:
        print_json(status.to_dict() | extra)
    if final is None:
        click.echo(f"stopped watching; backup {uuid} goes on (txnbackup watch {uuid})", err=True)
        return EXIT_INTERRUPTED
    return code or EXIT_FOR_STATUS.get(final.status, 1)


def warn_unserved(producer: Producer, uuid: str, waiting: Mapping[str, str]) -> set[str]:
    """Say, on stderr, which nodes no live worker serves; return them. ``waiting``: node ->
    what waits for it ("drive scsi0 waits")."""
    unserved = producer.nodes_without_worker(list(waiting))
    for node in unserved:
        _warn(producer, uuid, node, f"{waiting[node]} for one")
    return set(unserved)


def _warn(producer: Producer, uuid: str, node: str, what: str) -> None:
    record = producer.rt.records.load_or_none(uuid)
    timeout = record.queue_timeout if record and record.queue_timeout else None
    limit = (
        f"{timeout} s without one (backup --timeout)"
        if timeout
        else f"{producer.rt.settings.queue_timeout} s without one (TXNBACKUP_QUEUE_TIMEOUT)"
    )
    click.echo(
        f"warning: no worker consumes the queue of node {node}; {what} "
        f"(start `txnbackup worker --node {node}`); the backup fails after {limit}",
        err=True,
    )


class WaitingDriveCheck:
    """Says once, on stderr, when the drive next in line waits on a node no worker serves."""

    def __init__(
        self, producer: Producer, told: Collection[str] = (), after: float = STARTING_GRACE
    ) -> None:
        self.producer = producer
        self.after = after
        self.since: dict[str, float] = {}
        self.told: set[str] = set(told)

    def __call__(self, status: BackupStatus) -> None:
        waiting = _next_waiting(status)
        if waiting is None or waiting.node in self.told:
            return
        first_seen = self.since.setdefault(waiting.name, time.monotonic())
        if time.monotonic() - first_seen < self.after:
            return
        self.told.add(waiting.node)
        if self.producer.nodes_without_worker([waiting.node]):
            what = f"drive {waiting.name} waits for one"
            _warn(self.producer, status.uuid, waiting.node, what)


def _next_waiting(status: BackupStatus) -> DriveStatus | None:
    """The pending drive whose predecessors are all done: the one the chain waits for."""
    if status.status != "active" or status.phase != "running":
        return None
    for drive in status.drives:
        if drive.state == "pending":
            return drive
        if drive.state != "done":
            return None
    return None


def _updates(check: WaitingDriveCheck, view: View | None) -> Callable[[BackupStatus], None]:
    def on_update(status: BackupStatus) -> None:
        check(status)
        if view is not None:
            view.update(status)

    return on_update


def follow(
    producer: Producer, uuid: str, view: View | None, told: Collection[str] = ()
) -> BackupStatus | None:
    """The final status, or None when the user chose to stop watching."""
    on_update = _updates(WaitingDriveCheck(producer, told), view)
    while True:
        try:
            return producer.wait(uuid, on_update=on_update)
        except KeyboardInterrupt:
            pass
        if view is not None:
            view.pause()
        answer = ask(uuid)
        if answer == STOP:
            return None
        if answer == CANCEL:
            producer.cancel(uuid, CTRL_C_REASON)
        if view is not None:
            view.resume()


def ask(uuid: str) -> str:
    """What to do after Ctrl-C; anything but an explicit ``cancel`` leaves the backup alone."""
    try:
        answer: str = click.prompt(
            f"\nCancel backup {uuid} (rolls everything back), stop watching (it goes on), "
            "or watch on?",
            type=click.Choice([CANCEL, STOP, WATCH], case_sensitive=False),
            default=STOP,
            err=True,
        )
    except click.Abort:  # end of input or another Ctrl-C
        return STOP
    return answer.lower()


@contextlib.contextmanager
def _view(as_json: bool) -> Iterator[View | None]:
    if as_json:
        yield None
        return
    # rich only for people: a --json run never imports it (txnbackup_cli.output)
    from rich.console import Console  # noqa: PLC0415

    from txnbackup_cli.progress_view import DriveBars, StateLines  # noqa: PLC0415

    console = Console()
    if not console.is_terminal:
        yield StateLines(click.echo)
    else:
        with DriveBars(console) as bars:
            yield bars


@click.command()
@click.argument("uuid")
@json_option
@click.pass_obj
def watch(settings: Settings, uuid: str, as_json: bool) -> None:
    """Follow backup UUID to its end: a progress bar per drive, then its status.

    Ctrl-C asks whether to cancel the backup or just stop watching.
    Exit code: 0 done, 1 error, 9 cancelled, 130 stopped watching.
    """
    producer = fleet.producer(settings)
    raise SystemExit(follow_and_show(producer, uuid, as_json))
