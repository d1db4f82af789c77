"""What a drive copy tells the people watching the fleet, from the counters the engine reports.

- Flower: each report of a running drive sends a ``task-progress`` event. Flower turns a custom
  ``task-<name>`` event into the task state ``<NAME>`` (PROGRESS) and merges the event's fields
  into its task record, but its pages and API show only Celery's fixed task fields. The event
  therefore carries a one-line summary as ``result`` (percentage, bytes, rate, ETA), which
  Flower's task list, task page and API show while the drive runs; the numbers travel as their
  own fields too. Events are best effort: a lost event never fails a backup.
- The worker log, in vzdump's words: one line when the drive starts (which bitmap mode), one
  each time another tenth of its dirty bytes is read, one with its totals when it stops.
- Two signals, sent in the copying process, for the worker metrics: ``drive_read`` with the
  bytes counted since the previous report (so byte counters grow while a drive is copied,
  and a drive killed mid-copy has had every reported byte counted), and ``drive_stopped``
  with a DriveReport when the drive stops for good (done, failed, cancelled).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, current_task
from celery.events.dispatcher import EventDispatcher
from celery.utils.dispatch import Signal

from tasks.names import COPY_DRIVE
from txnbackup.record import DriveState
from txnbackup.stats import DriveStats
from txnbackup.status import BackupStatus
from txnbackup.transaction import BackupPlan
from txnbackup.units import format_duration, format_rate, format_size, percent

log = logging.getLogger(__name__)

PROGRESS_EVENT = "task-progress"
LOG_STEP = 10  # percent of a drive's dirty bytes between two progress lines in the log
FINAL_STATES = frozenset({DriveState.DONE, DriveState.FAILED, DriveState.CANCELLED})

drive_read = Signal(name="txnbackup_drive_read")  # keywords: info (DriveInfo), delta (DriveStats)
drive_stopped = Signal(name="txnbackup_drive_stopped")  # keyword: report (a DriveReport)

EventSender = Callable[..., object]


@dataclass(frozen=True)
class DriveInfo:
    """What stays fixed while one drive of one backup is copied."""

    vmid: str
    backup: str
    drive: str
    part: str  # "2/3": the drive's place in the backup's chain
    action: str
    reason: str

    @classmethod
    def of(cls, plan: BackupPlan, drive: str) -> DriveInfo:
        names = [d.name for d in plan.drives]
        d = plan.drive(drive)
        part = f"{names.index(drive) + 1}/{len(names)}"
        return cls(plan.vmid, plan.backup, drive, part, str(d.action), d.reason)

    @property
    def who(self) -> str:
        return f"vm {self.vmid} backup {self.backup} drive {self.drive}"


@dataclass(frozen=True)
class DriveReport:
    """A drive that stopped for good: its final counters and how long its copy ran."""

    info: DriveInfo
    state: DriveState
    stats: DriveStats
    seconds: float


def bitmap_line(info: DriveInfo, stats: DriveStats) -> str:
    size = format_size(stats.size)
    if info.action == "used":
        dirty = format_size(stats.dirty)
        return f"{info.who}: using fast incremental mode (dirty bitmap), {dirty} of {size} dirty"
    if info.action == "new":
        return f"{info.who}: created new bitmap, full read of {size}"
    if info.action == "invalid":
        return f"{info.who}: bitmap invalid: {info.reason}, full read of {size}"
    return f"{info.who}: bitmap not used ({info.reason}), full read of {size}"


def progress_line(info: DriveInfo, stats: DriveStats, seconds: float) -> str:
    done = percent(stats.transferred, stats.dirty)
    return (
        f"{info.who}: {done:3d}% ({format_size(stats.transferred)} of "
        f"{format_size(stats.dirty)}) in {format_duration(seconds)}, "
        f"read: {format_rate(stats.transferred, seconds)}, "
        f"write: {format_rate(stats.stored, seconds)}"
    )


def totals_line(report: DriveReport) -> str:
    info, s, seconds = report.info, report.stats, report.seconds
    moved = f"{format_size(s.transferred)} in {format_duration(seconds)}"
    rate = format_rate(s.transferred, seconds)
    if report.state is not DriveState.DONE:
        return f"{info.who}: {report.state} after {moved} ({rate}) of {format_size(s.dirty)}"
    return (
        f"{info.who}: transferred {moved} ({rate}), "
        f"reused {format_size(s.reused)} ({percent(s.reused, s.transferred)}%), "
        f"zero {format_size(s.zero_bytes)} ({percent(s.zero_bytes, s.transferred)}%), "
        f"written {format_size(s.stored)}"
    )


def progress_summary(info: DriveInfo, stats: DriveStats, seconds: float) -> str:
    """One line for Flower: ``42% · 1.7 MiB of 4.0 MiB dirty (drive 64.0 MiB) · ...``."""
    rate = stats.transferred / seconds if seconds > 0 else 0.0
    left = stats.dirty - stats.transferred
    eta = format_duration(left / rate) if rate > 0 else "?"
    return (
        f"{percent(stats.transferred, stats.dirty)}% · {info.drive} {info.part} · "
        f"{format_size(stats.transferred)} of {format_size(stats.dirty)} dirty "
        f"(drive {format_size(stats.size)}) · {format_rate(stats.transferred, seconds)} · "
        f"ETA {eta}"
    )


def event_fields(info: DriveInfo, stats: DriveStats, seconds: float) -> dict[str, object]:
    """The ``task-progress`` event. Names avoid Celery's task fields (``eta`` is one)."""
    return {
        "result": progress_summary(info, stats, seconds),
        "vmid": info.vmid,
        "backup": info.backup,
        "drive": info.drive,
        "part": info.part,
        "percent": percent(stats.transferred, stats.dirty),
        "size": stats.size,
        "dirty": stats.dirty,
        "transferred": stats.transferred,
        "zero_bytes": stats.zero_bytes,
        "reused": stats.reused,
        "elapsed": round(seconds, 3),
    }


def current_task_events() -> EventSender | None:
    """An event sender for the copy task running in this thread, None outside one.

    Events go out through one dispatcher per process and thread, not ``Task.send_event``: that
    opens a broker channel per event, which on Redis is a new client and connection each time.
    """
    if not current_task or current_task.name != COPY_DRIVE:
        return None
    app, request = current_task.app, current_task.request
    return functools.partial(_send_event, app, request.hostname or "", request.id or "")


def _send_event(app: Celery, hostname: str, task_id: str, type_: str, **fields: Any) -> None:
    dispatcher = _dispatcher(app, hostname, os.getpid(), threading.get_ident())
    try:
        dispatcher.send(type_, uuid=task_id, **fields)
    except Exception:
        # A broken connection is not kept: the next event opens a new one.
        _dispatcher.cache_clear()
        with contextlib.suppress(Exception):
            dispatcher.close()
        raise


@functools.lru_cache(maxsize=64)
def _dispatcher(app: Celery, hostname: str, pid: int, thread: int) -> EventDispatcher:
    """This process's and thread's dispatcher: a forked child makes its own, and a thread
    pool (``-P threads``) never shares one, as a broker channel is not thread-safe."""
    connection = app.connection_for_write()
    dispatcher: EventDispatcher = app.events.Dispatcher(
        connection, hostname=hostname, buffer_while_offline=False
    )
    return dispatcher


class DriveReporter:
    """Turns the successive counters of one drive copy into log lines, events and the signal."""

    def __init__(
        self,
        info: DriveInfo,
        send: EventSender | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info
        self._send = send
        self._clock = clock
        self._start: float | None = None
        self._logged_step = 0
        self._counted = DriveStats()

    def update(self, state: DriveState, stats: DriveStats) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
            log.info("%s", bitmap_line(self.info, stats))
        seconds = now - self._start
        self._count(stats)
        if state in FINAL_STATES:
            report = DriveReport(self.info, state, stats, seconds)
            log.info("%s", totals_line(report))
            drive_stopped.send(sender=self.__class__, report=report)
            return
        self._log_progress(stats, seconds)
        self._event(stats, seconds)

    def _count(self, stats: DriveStats) -> None:
        c = self._counted
        delta = DriveStats(
            transferred=stats.transferred - c.transferred,
            zero_bytes=stats.zero_bytes - c.zero_bytes,
            reused=stats.reused - c.reused,
            stored=stats.stored - c.stored,
        )
        self._counted = stats
        if delta != DriveStats():
            drive_read.send(sender=self.__class__, info=self.info, delta=delta)

    def _log_progress(self, stats: DriveStats, seconds: float) -> None:
        step = percent(stats.transferred, stats.dirty) // LOG_STEP if stats.transferred else 0
        if step > self._logged_step:
            self._logged_step = step
            log.info("%s", progress_line(self.info, stats, seconds))

    def _event(self, stats: DriveStats, seconds: float) -> None:
        if self._send is None:
            return
        try:
            self._send(PROGRESS_EVENT, retry=False, **event_fields(self.info, stats, seconds))
        except Exception as exc:
            log.debug("%s: progress event not sent: %s", self.info.who, exc)


def backup_summary(status: BackupStatus, seconds: float) -> list[str]:
    """The lines vzdump ends a backup with, for the worker log."""
    who = f"vm {status.vmid} backup {status.uuid}"
    lines = []
    if status.transferred:
        zero = (
            f"{format_size(status.zero_bytes)} ({percent(status.zero_bytes, status.transferred)}%)"
        )
        reused = f"{format_size(status.reused)} ({percent(status.reused, status.transferred)}%)"
        how = "incrementally" if any(d.action == "used" for d in status.drives) else "in full"
        lines += [
            f"{who}: backup is sparse: {zero} total zero data",
            f"{who}: backup was done {how}, reused {reused}",
        ]
    moved = f"{format_size(status.transferred)} of {format_size(status.dirty)} dirty"
    rate = format_rate(status.transferred, seconds)
    lines.append(f"{who}: transferred {moved} in {format_duration(seconds)} ({rate})")
    if status.status == "done":
        lines.append(f"{who}: finished, snapshot {status.snapshot}")
    else:
        lines.append(f"{who}: {status.status}: {status.errmsg}")
    return lines
