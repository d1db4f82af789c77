"""What a copy tells its watchers, without a fleet: log lines, Flower events and display, the
once-per-backup metrics."""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tasks.events import (
    DriveInfo,
    DriveReport,
    DriveReporter,
    backup_summary,
    bitmap_line,
    drive_read,
    drive_stopped,
)
from tests.operators.fleet import FLOWER_CONFIG
from txnbackup.action import BitmapAction
from txnbackup.keys import Keys
from txnbackup.record import BackupRecord, DriveState, Phase
from txnbackup.record_store import RecordStore
from txnbackup.stats import DriveStats
from txnbackup.status import from_record
from txnbackup.transaction import BackupPlan, DrivePlan
from txnbackup.units import format_duration, format_rate, format_size, percent
from workers import metrics

KIB = 1024
MIB = 1024 * KIB
INFO = DriveInfo("100", "b-uuid", "scsi0", "1/2", "used", "relative to vm/100/T")
WHO = "vm 100 backup b-uuid drive scsi0"


@pytest.mark.parametrize(
    ("action", "reason", "line"),
    [
        (
            "used",
            "relative to vm/100/T",
            "using fast incremental mode (dirty bitmap), 1.0 MiB of 8.0 MiB dirty",
        ),
        ("new", "no bitmap yet", "created new bitmap, full read of 8.0 MiB"),
        (
            "invalid",
            "base snapshot vm/100/T missing or incomplete",
            "bitmap invalid: base snapshot vm/100/T missing or incomplete, full read of 8.0 MiB",
        ),
        (
            "not-used",
            "full read requested",
            "bitmap not used (full read requested), full read of 8.0 MiB",
        ),
    ],
)
def test_the_first_line_of_a_drive_says_how_it_is_read(action: str, reason: str, line: str) -> None:
    info = DriveInfo("100", "b-uuid", "scsi0", "1/2", action, reason)
    assert bitmap_line(info, DriveStats(size=8 * MIB, dirty=MIB)) == f"{WHO}: {line}"


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sent:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


def stats(transferred: int, reused: int = 0, zero: int = 0) -> DriveStats:
    return DriveStats(
        size=8 * MIB, dirty=4 * MIB, transferred=transferred, zero_bytes=zero, reused=reused
    )


def test_a_drive_copy_is_logged_like_vzdump_and_sent_to_flower(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a reporter of a drive with 4 MiB dirty
    clock, sent, stopped, read = Clock(), Sent(), [], []
    reporter = DriveReporter(INFO, sent, clock)

    def on_stopped(sender: object, report: DriveReport, **_: object) -> None:
        stopped.append(report)

    def on_read(sender: object, info: DriveInfo, delta: DriveStats, **_: object) -> None:
        read.append(delta)

    drive_stopped.connect(on_stopped, weak=False)
    drive_read.connect(on_read, weak=False)
    try:
        with caplog.at_level(logging.INFO, logger="tasks.events"):
            # When the engine reports 0 %, 5 %, 15 %, 35 %, 100 % and then the end
            for seconds, done in ((0, 0), (1, 320 * KIB), (2, 640 * KIB), (3, 1472 * KIB)):
                clock.now = 100.0 + seconds
                reporter.update(DriveState.RUNNING, stats(done))
            clock.now = 104.0
            reporter.update(DriveState.RUNNING, stats(4 * MIB, reused=MIB, zero=2 * MIB))
            reporter.update(DriveState.DONE, stats(4 * MIB, reused=MIB, zero=2 * MIB))
    finally:
        drive_stopped.disconnect(on_stopped)
        drive_read.disconnect(on_read)

    # Then the log has the mode, a line per tenth reached, and the totals
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{WHO}: using fast incremental mode (dirty bitmap), 4.0 MiB of 8.0 MiB dirty",
        f"{WHO}:  15% (640.0 KiB of 4.0 MiB) in 2s, read: 320.0 KiB/s, write: 0 B/s",
        f"{WHO}:  35% (1.4 MiB of 4.0 MiB) in 3s, read: 490.7 KiB/s, write: 0 B/s",
        f"{WHO}: 100% (4.0 MiB of 4.0 MiB) in 4s, read: 1.0 MiB/s, write: 0 B/s",
        f"{WHO}: transferred 4.0 MiB in 4s (1.0 MiB/s), reused 1.0 MiB (25%), "
        "zero 2.0 MiB (50%), written 0 B",
    ]
    # and Flower got a progress event per report while running, none after the end
    assert [kind for kind, _ in sent.events] == ["task-progress"] * 5
    last = sent.events[3][1]
    assert last["retry"] is False
    assert (last["percent"], last["transferred"], last["dirty"], last["size"]) == (
        35,
        1472 * KIB,
        4 * MIB,
        8 * MIB,
    )
    assert last["result"] == (
        "35% · scsi0 1/2 · 1.4 MiB of 4.0 MiB dirty (drive 8.0 MiB) · 490.7 KiB/s · ETA 6s"
    )
    # and the metrics heard of every byte once, as it was read, and of the drive's end once
    assert len(read) == 4
    assert sum(d.transferred for d in read) == 4 * MIB
    assert (sum(d.reused for d in read), sum(d.zero_bytes for d in read)) == (MIB, 2 * MIB)
    assert [(r.state, r.seconds, r.stats.transferred) for r in stopped] == [
        (DriveState.DONE, 4.0, 4 * MIB)
    ]


def test_a_lost_progress_event_is_only_a_lost_event() -> None:
    def broken(kind: str, **fields: Any) -> None:
        raise ConnectionError("broker gone")

    reporter = DriveReporter(INFO, broken, Clock())
    reporter.update(DriveState.RUNNING, stats(MIB))  # no exception


@dataclass
class FlowerTask:
    """The fields of Flower's task record that its format hook sees."""

    name: str = "txnbackup.copy_drive"
    state: str = "PROGRESS"
    result: str | None = "42% · scsi0 1/2 · ..."
    succeeded: float | None = None
    failed: float | None = None
    revoked: float | None = None


def flower_config() -> dict[str, Any]:
    """The config file read the way Flower reads it: executed, its names taken."""
    namespace: dict[str, Any] = {}
    exec(compile(FLOWER_CONFIG.read_text(), str(FLOWER_CONFIG), "exec"), namespace)
    return namespace


def test_flower_shows_a_running_drive_with_its_terminate_button_and_progress() -> None:
    fmt = flower_config()["format_task"]
    assert isinstance(fmt, types.FunctionType)
    shown = fmt(FlowerTask())
    assert (shown.state, shown.result) == ("STARTED", "PROGRESS 42% · scsi0 1/2 · ...")


@pytest.mark.parametrize(
    ("task", "state", "result"),
    [
        (FlowerTask(revoked=1.0), "REVOKED", "stopped at 42% · scsi0 1/2 · ..."),
        (FlowerTask(state="FAILURE", failed=1.0), "FAILURE", "stopped at 42% · scsi0 1/2 · ..."),
        (FlowerTask(state="SUCCESS", result="{'size': 1}"), "SUCCESS", "{'size': 1}"),
        (
            FlowerTask(name="txnbackup.commit", state="SUCCESS", result="vm/1/T"),
            "SUCCESS",
            "vm/1/T",
        ),
        (FlowerTask(state="STARTED", result=None), "STARTED", None),
    ],
)
def test_flower_shows_ended_drives_as_they_ended(
    task: FlowerTask, state: str, result: str | None
) -> None:
    shown = flower_config()["format_task"](task)
    assert (shown.state, shown.result) == (state, result)


def test_flower_lists_the_readable_columns() -> None:
    from flower.views.tasks import TASK_COLUMNS  # noqa: PLC0415 - only this test needs Flower

    columns = flower_config()["tasks_columns"].split(",")
    assert {"args", "kwargs", "result", "state"} <= set(columns) <= set(TASK_COLUMNS)


def test_units_for_people() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 5 * MIB // 2)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "2.5 MiB",
    ]
    assert format_rate(3 * MIB, 2.0) == "1.5 MiB/s" and format_rate(5, 0) == "0 B/s"
    assert [format_duration(s) for s in (0, 0.2, 59, 61, 3725)] == [
        "0s",
        "1s",
        "59s",
        "1m 01s",
        "1h 02m 05s",
    ]
    assert (percent(1, 3), percent(3, 3), percent(0, 0)) == (33, 100, 100)


def sample_plan(backup: str) -> BackupPlan:
    drives = tuple(
        DrivePlan(name, f"/dev/{name}", "default", MIB, BitmapAction.NEW, "no bitmap yet", MIB)
        for name in ("scsi0", "scsi1")
    )
    return BackupPlan(backup, "100", "2026-11-27T00:00:00Z", drives)


def test_a_backup_s_outcome_is_counted_once_in_the_fleet(
    redis_client: Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a backup that was cancelled
    records = RecordStore(redis_client, keys, 600)
    backup = "6f1c2a53-5b36-4c59-9a57-8f0b3f2a1c11"
    records.create(sample_plan(backup), "/srv/repo", ["t1", "t2", "t3"])
    assert metrics.observe_ended(records, backup) is False  # still running: not yet
    records.report_drive(backup, "scsi0", DriveState.CANCELLED, DriveStats(MIB, MIB, MIB // 2))
    assert records.claim(backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING]).won
    assert records.finish(records.load(backup), Phase.CANCELLED, "cancelled by user")
    before = _sample(metrics.BACKUPS, outcome="cancelled")
    # When every worker process that ran one of its tasks looks at it
    with caplog.at_level(logging.INFO, logger="workers.metrics"):
        seen = [metrics.observe_ended(records, backup) for _ in range(3)]
    # Then exactly one counts it, with a rollback, and writes the summary
    assert seen == [True, False, False]
    assert _sample(metrics.BACKUPS, outcome="cancelled") == before + 1
    assert [r.getMessage() for r in caplog.records][-1] == (
        f"vm 100 backup {backup}: cancelled: cancelled by user"
    )


def test_the_backup_summary_reads_like_vzdump() -> None:
    raw = {
        "uuid": "u",
        "vmid": "100",
        "phase": "done",
        "start_time": "T",
        "snapshot": "vm/100/T",
        "repository": "/srv/repo",
        "plan": '{"backup": "u", "vmid": "100", "start_time": "T", "drives": [{"name": "scsi0",'
        ' "path": "/dev/sda", "node": "default", "action": "used", "reason": "", "size": 4194304,'
        ' "dirty": 2097152}]}',
        "drive:scsi0": '{"state": "done", "dirty": 2097152, "transferred": 2097152, '
        '"zero_bytes": 524288, "reused": 1048576}',
    }
    assert backup_summary(from_record(BackupRecord.parse(raw)), 2.0) == [
        "vm 100 backup u: backup is sparse: 512.0 KiB (25%) total zero data",
        "vm 100 backup u: backup was done incrementally, reused 1.0 MiB (50%)",
        "vm 100 backup u: transferred 2.0 MiB of 2.0 MiB dirty in 2s (1.0 MiB/s)",
        "vm 100 backup u: finished, snapshot vm/100/T",
    ]


def test_reaper_actions_are_counted_by_kind() -> None:
    before = _sample(metrics.REAPER_ACTIONS, kind="abandon")
    metrics.count_reaper_action("abandon")
    assert _sample(metrics.REAPER_ACTIONS, kind="abandon") == before + 1


def test_metrics_settings_and_a_clean_start(tmp_path: Path) -> None:
    assert metrics.MetricsConfig.from_env({}) is None
    env = {"TXNBACKUP_METRICS_PORT": "9808", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    config = metrics.MetricsConfig.from_env(env)
    assert config == metrics.MetricsConfig(9808, "127.0.0.1", tmp_path / "m")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "counter_123.db").write_bytes(b"old")
    metrics.clean_directory(tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


def _sample(metric: Any, **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels == labels:
                return float(s.value)
    return 0.0
