"""The bare-canvas baseline's task: nothing. The benchmark's worker loads it (``--include``)."""

from __future__ import annotations

from celery import shared_task

NOOP = "bench.noop"


@shared_task(name=NOOP)
def noop() -> None:
    """Does nothing, so a canvas of these costs only what Celery and the broker cost."""
