"""Starting a worker for one node: it consumes that node's queue and the control queue."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from tasks.queues import CONTROL_QUEUE, node_queue
from txnbackup.drive import DEFAULT_NODE
from txnbackup.settings import Settings
from workers.app import worker_app


def worker_argv(
    node: str = DEFAULT_NODE,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    loglevel: str = "info",
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        "worker",
        "--queues",
        f"{CONTROL_QUEUE},{node_queue(node)}",
        "--hostname",
        name or f"{node}@{socket.gethostname()}",
        "--loglevel",
        loglevel,
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return [*argv, *extra]


def run_worker(argv: Sequence[str], settings: Settings | None = None) -> None:
    """Run a worker in this process until it is stopped (Celery handles the signals), with
    the app made here from ``settings`` (the environment's when None)."""
    worker_app(settings or Settings.from_env()).worker_main(list(argv))
