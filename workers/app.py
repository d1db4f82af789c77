"""A worker process's one Celery app: txnbackup's app with the worker runtime wired in.

``txnbackup worker`` (``workers.start``) and Celery's own ``celery -A tasks worker``
(``tasks.app``) both make it here: the message consumer that survives a lost broker, the
signal handlers (revokes, reaper, revoke watcher) and the metrics, connected explicitly.
"""

from __future__ import annotations

import functools

from celery import Celery

from tasks.celeryapp import make_app
from txnbackup import aead
from txnbackup.settings import Settings
from workers import hooks, metrics
from workers.consumer import Consumer


def worker_app(settings: Settings) -> Celery:
    app = make_app(settings)
    app.conf.worker_consumer = Consumer
    hooks.install()
    metrics.install()
    aead.preload()  # before the pool forks: its processes share it
    return app


@functools.cache
def celery_cli_app() -> Celery:
    """The app of ``celery -A tasks ...``: settings from the environment, made once."""
    return worker_app(Settings.from_env())
