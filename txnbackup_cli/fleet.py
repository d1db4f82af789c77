"""The CLI's one way to the Celery fleet, imported when a verb needs it.

Both imports below are lazy on purpose, and only here (docs/design.md, "One app per
process"): importing Celery costs about 80 ms, a third of `txnbackup --help`, which most
verbs (repository, snapshots, tracker) never need; and a worker's metrics need
PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported, which the worker verb does
first. Importing either module has no other effect: no app is made until these run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from txnbackup.settings import Settings

if TYPE_CHECKING:
    from tasks.producer import Producer


def producer(settings: Settings) -> Producer:
    """A producer with this process's one Celery app, made from ``settings``."""
    from tasks.producer import Producer  # noqa: PLC0415 - see the module docstring

    return Producer.from_settings(settings)


def run_worker(
    node: str, name: str | None, concurrency: int | None, loglevel: str, extra: Sequence[str]
) -> None:
    """Run a worker for ``node`` in this process (its app made here from the environment)."""
    from workers.start import run_worker, worker_argv  # noqa: PLC0415 - see the docstring

    argv = worker_argv(node, name=name, concurrency=concurrency, loglevel=loglevel, extra=extra)
    run_worker(argv)
