"""The bare-canvas baseline's task: nothing. The benchmark's worker loads it (``--include``)."""

from __future__ import annotations

from tasks.celeryapp import app

NOOP = "bench.noop"


@app.task(name=NOOP)
def noop() -> None:
    """Does nothing, so a canvas of these costs only what Celery and the broker cost."""
