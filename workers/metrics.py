"""Prometheus metrics of a worker, served by its main process on ``--metrics-port``.

With the prefork pool each pool process counts into its own files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode) and the main process serves their sum, so nothing a
pool process counted is lost when it exits. The directory belongs to one worker and is
emptied when the worker starts (an earlier run's files would be added to this run's counts).
`txnbackup worker --metrics-port` sets it up; a plain `celery -A tasks worker` serves
metrics when TXNBACKUP_METRICS_PORT and PROMETHEUS_MULTIPROC_DIR are both set. The metrics
live in no global registry, so Flower, which imports this module with the app, keeps its own
/metrics as they were.

| metric | type | labels | counts |
|---|---|---|---|
| txnbackup_backups_total | counter | outcome | backups that ended: done, error, cancelled |
| txnbackup_rollbacks_total | counter | outcome | rollbacks that ended a backup (error, cancelled) |
| txnbackup_backup_duration_seconds | histogram | outcome | from submit to the end |
| txnbackup_drive_duration_seconds | histogram | action, state | copy time of one drive |
| txnbackup_read_bytes_total | counter | vmid | read from drives (status: transferred) |
| txnbackup_written_bytes_total | counter | vmid | new chunk files written (compressed) |
| txnbackup_reused_bytes_total | counter | vmid | read, already in the repository |
| txnbackup_zero_bytes_total | counter | vmid | read, all-zero chunks (never stored) |
| txnbackup_running_drives | gauge | worker | drives being copied now |
| txnbackup_active_backups | gauge | | backups not yet ended, fleet-wide (from Redis) |
| txnbackup_reaper_actions_total | counter | kind | what the reaper did (count_reaper_action) |

A backup's outcome is counted once in the whole fleet: by the first worker process that sees
it ended after a commit or rollback task (or a reaper action naming it), which claims it with
a counter in the backup record. Drive bytes are counted by the process that copies the drive,
at each progress report, so they equal the status's counters, also for a drive killed
mid-copy (its status keeps the last report).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.utils.dispatch import Signal
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasks.events import (
    DriveInfo,
    DriveReport,
    backup_summary,
    drive_read,
    drive_stopped,
)
from tasks.names import COMMIT, COPY_DRIVE, ROLLBACK
from tasks.runtime import runtime
from txnbackup.catalog import Catalog
from txnbackup.record import Field
from txnbackup.record_store import RecordStore
from txnbackup.stats import DriveStats
from txnbackup.status import from_record

log = logging.getLogger(__name__)

FINISHING_TASKS = frozenset({COMMIT, ROLLBACK})
_serving: list[MetricsConfig] = []
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)

BACKUPS = Counter(
    "txnbackup_backups", "Backups that ended, by outcome.", ["outcome"], registry=None
)
ROLLBACKS = Counter(
    "txnbackup_rollbacks",
    "Rollbacks that ended a backup, by outcome (error or cancelled).",
    ["outcome"],
    registry=None,
)
BACKUP_SECONDS = Histogram(
    "txnbackup_backup_duration_seconds",
    "Time from submit to the end of a backup, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
DRIVE_SECONDS = Histogram(
    "txnbackup_drive_duration_seconds",
    "Time one drive copy ran, by bitmap action and final drive state.",
    ["action", "state"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
READ_BYTES = Counter(
    "txnbackup_read_bytes",
    "Bytes read from drives (the status field 'transferred'), per VM.",
    ["vmid"],
    registry=None,
)
WRITTEN_BYTES = Counter(
    "txnbackup_written_bytes",
    "Bytes of new chunk files written to the repository (compressed), per VM.",
    ["vmid"],
    registry=None,
)
REUSED_BYTES = Counter(
    "txnbackup_reused_bytes",
    "Bytes read whose chunk the repository already had, per VM.",
    ["vmid"],
    registry=None,
)
ZERO_BYTES = Counter(
    "txnbackup_zero_bytes", "Bytes read in all-zero chunks, per VM.", ["vmid"], registry=None
)
RUNNING_DRIVES = Gauge(
    "txnbackup_running_drives",
    "Drives being copied now by this worker.",
    ["worker"],
    multiprocess_mode="livesum",
    registry=None,
)
REAPER_ACTIONS = Counter(
    "txnbackup_reaper_actions", "Actions of the reaper, by kind.", ["kind"], registry=None
)


def count_reaper_action(kind: str, backup: str | None = None) -> None:
    """The reaper did ``kind``; pass the ``backup`` it acted on to count its outcome too."""
    REAPER_ACTIONS.labels(kind).inc()
    if backup is not None:
        observe_ended(runtime().records, backup)


def count_drive(report: DriveReport) -> None:
    DRIVE_SECONDS.labels(report.info.action, str(report.state)).observe(report.seconds)


def _count_bytes(vmid: str, s: DriveStats) -> None:
    READ_BYTES.labels(vmid).inc(s.transferred)
    WRITTEN_BYTES.labels(vmid).inc(s.stored)
    REUSED_BYTES.labels(vmid).inc(s.reused)
    ZERO_BYTES.labels(vmid).inc(s.zero_bytes)


def observe_ended(records: RecordStore, backup: str) -> bool:
    """Count the backup's outcome and log its summary, once in the whole fleet.

    True when this call counted it; False when it has not ended or was counted before.
    """
    record = records.load_or_none(backup)
    if record is None or not record.phase.final or records.count(backup, Field.OBSERVED) != 1:
        return False
    status = from_record(record)
    seconds = max(0.0, time.time() - (record.started or time.time()))
    BACKUPS.labels(status.status).inc()
    BACKUP_SECONDS.labels(status.status).observe(seconds)
    if status.status != "done":
        ROLLBACKS.labels(status.status).inc()
    for line in backup_summary(status, seconds):
        log.info("%s", line)
    return True


class ActiveBackups(Collector):
    """``txnbackup_active_backups``, read from Redis at each scrape."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "txnbackup_active_backups", "Backups not yet ended, in the whole fleet."
        )
        try:
            gauge.add_metric([], len(self.catalog.active()))
        except Exception as exc:
            log.warning("metrics: active backups unknown: %s", exc)
            return
        yield gauge


@dataclass(frozen=True)
class MetricsConfig:
    port: int
    address: str
    directory: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> MetricsConfig | None:
        """None when the worker serves no metrics (no TXNBACKUP_METRICS_PORT)."""
        env = dict(os.environ) if env is None else env
        port = env.get("TXNBACKUP_METRICS_PORT")
        if not port:
            return None
        directory = env.get("PROMETHEUS_MULTIPROC_DIR", "")
        return cls(int(port), env.get("TXNBACKUP_METRICS_ADDRESS", "127.0.0.1"), Path(directory))


def clean_directory(directory: Path) -> None:
    """Remove the files of an earlier run; the directory is created when missing."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def serve(config: MetricsConfig, catalog: Catalog) -> None:
    """Start the /metrics server thread of this (main) worker process."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(config.directory))  # type: ignore[no-untyped-call]
    registry.register(ActiveBackups(catalog))
    start_http_server(config.port, config.address, registry)


def _multiprocess_ready(config: MetricsConfig) -> str | None:
    """Why metrics cannot be served safely, or None."""
    if not str(config.directory) or os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None:
        return "PROMETHEUS_MULTIPROC_DIR is not set"
    if values.ValueClass is values.MutexValue:
        return "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set"
    return None


def start_metrics_server(**_: Any) -> None:
    config = MetricsConfig.from_env()
    if config is None:
        return
    problem = _multiprocess_ready(config)
    if problem:
        log.error("txnbackup metrics not served: %s", problem)
        return
    clean_directory(config.directory)
    try:
        serve(config, runtime().catalog)
    except OSError as exc:
        log.error("txnbackup metrics not served on %s:%s: %s", config.address, config.port, exc)
        return
    _serving.append(config)


def announce_metrics_server(**_: Any) -> None:
    """Said once logging is set up (worker_init comes before it)."""
    for config in _serving:
        log.info(
            "txnbackup metrics on http://%s:%s/metrics (files in %s)",
            config.address,
            config.port,
            config.directory,
        )


def forget_pool_process(pid: int | None = None, **_: Any) -> None:
    if pid is not None and MetricsConfig.from_env() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def drive_started(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == COPY_DRIVE:
        RUNNING_DRIVES.labels(task.request.hostname or "").inc()


def task_ended(task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    if name == COPY_DRIVE:
        RUNNING_DRIVES.labels(task.request.hostname or "").dec()
    elif name in FINISHING_TASKS and args:
        observe_ended(runtime().records, str(args[0]))


def drive_bytes_read(
    sender: Any = None, info: DriveInfo | None = None, delta: DriveStats | None = None, **_: Any
) -> None:
    if info is not None and delta is not None:
        _count_bytes(info.vmid, delta)


def drive_stopped_for_good(sender: Any = None, report: DriveReport | None = None, **_: Any) -> None:
    if report is not None:
        count_drive(report)


# (signal, handler): what install connects.
_HANDLERS: tuple[tuple[Signal, Callable[..., None]], ...] = (
    (worker_init, start_metrics_server),
    (worker_ready, announce_metrics_server),
    (worker_process_shutdown, forget_pool_process),
    (task_prerun, drive_started),
    (task_postrun, task_ended),
    (drive_read, drive_bytes_read),
    (drive_stopped, drive_stopped_for_good),
)


def install() -> None:
    """Connect the handlers (again: no effect); a worker without a metrics port serves none."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, dispatch_uid=f"txnbackup.metrics.{handler.__name__}", weak=False)
