"""The signal handlers of a txnbackup worker; ``install`` connects them (workers.app)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from celery import Celery, current_app
from celery.signals import task_postrun, task_revoked, worker_ready, worker_shutdown
from celery.utils.dispatch import Signal
from celery.worker import state as worker_state

from tasks.begin import hand_over
from tasks.finish import send_rollback
from tasks.queues import NODE_QUEUE_PREFIX
from tasks.runtime import runtime
from txnbackup import trust
from txnbackup.presence import Presence
from txnbackup.redisconn import eviction_warning_at
from workers.metrics import count_reaper_action
from workers.reaper import Reaper, ReaperThread
from workers.revocation import RevokeWatcher, handle_revoked

log = logging.getLogger(__name__)
_threads: list[RevokeWatcher | ReaperThread] = []
_announced: list[tuple[Presence, str, frozenset[str]]] = []


def _on_revoked(task_id: str) -> object:
    return handle_revoked(runtime(), task_id, send_rollback)


def start_background_threads(sender: Any = None, **_: Any) -> None:
    rt = runtime()
    if warning := eviction_warning_at(rt.settings.redis_url):
        log.warning("txnbackup: %s", warning)
    nodes = _served_nodes(sender)
    presence = rt.presence()
    name = _worker_name(sender)
    reaper = ReaperThread(
        Reaper(
            rt,
            send_rollback,
            on_action=count_reaper_action,
            nodes=nodes,
            stop_task=_terminator(getattr(sender, "app", None) or current_app),
        ),
        rt.settings.reaper_interval,
        heartbeat=lambda: presence.announce(name, nodes),
    )
    _announced.append((presence, name, nodes))
    reaper.start()
    watcher = RevokeWatcher(lambda: list(worker_state.revoked), _on_revoked)
    watcher.start()
    _threads.extend([reaper, watcher])
    log.info("txnbackup reaper started (every %s s)", rt.settings.reaper_interval)
    log.info("txnbackup revoke watcher started")


def _terminator(app: Celery) -> Callable[[str], None]:
    def terminate(task_id: str) -> None:
        """Stop a stalled drive's task, on whichever worker runs it, freeing its pool slot."""
        app.control.revoke(task_id, terminate=True)

    return terminate


def _served_nodes(consumer: Any) -> frozenset[str]:
    """The nodes whose queues this worker consumes (a QEMU VM's backup needs its node)."""
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None)
    if queues is None:
        log.warning("txnbackup reaper: cannot tell this worker's queues; it ends no QEMU backup")
        return frozenset()
    names = [q.name for q in queues]
    return frozenset(
        n.removeprefix(NODE_QUEUE_PREFIX) for n in names if n.startswith(NODE_QUEUE_PREFIX)
    )


def stop_background_threads(**_: Any) -> None:
    for thread in _threads:
        thread.stopping.set()
    for presence, name, nodes in _announced:
        try:
            presence.withdraw(name, nodes)
        except Exception:  # Redis gone: the announcement expires on its own
            log.warning("txnbackup worker: could not withdraw %s from %s", name, sorted(nodes))


def _worker_name(consumer: Any) -> str:
    return str(getattr(consumer, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}")


def on_task_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        handle_revoked(runtime(), task_id, send_rollback, terminated=bool(terminated))


def warn_about_trust(**_: Any) -> None:
    for warning in trust.warnings(runtime().settings):
        log.warning("txnbackup worker: %s", warning)


# (signal, handler): what install connects.
_HANDLERS: tuple[tuple[Signal, Callable[..., None]], ...] = (
    (worker_ready, start_background_threads),
    (worker_shutdown, stop_background_threads),
    (task_revoked, on_task_revoked),
    (worker_ready, warn_about_trust),
    (task_postrun, hand_over),
)


def install() -> None:
    """Connect the handlers (again: no effect)."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, dispatch_uid=f"txnbackup.hooks.{handler.__name__}", weak=False)
