"""The Celery layer of txnbackup.

``celery -A tasks worker`` (or ``flower``, ``inspect``...) finds the app here: ``tasks.app``
is made on first access, for Celery's own command line, and is a whole txnbackup worker's app
(``workers.app.worker_app``). Importing ``tasks`` or any module in it makes no app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["app"]


def __getattr__(name: str) -> Celery:
    if name != "app":
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    # Celery's command line is an edge of the worker layer: the one import up a layer.
    from workers.app import celery_cli_app  # noqa: PLC0415

    return celery_cli_app()
