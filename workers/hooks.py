"""Signal handlers every txnbackup worker loads (via the app's ``imports`` setting)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery.signals import task_revoked, worker_ready, worker_shutdown
from celery.worker import state as worker_state

from tasks.celeryapp import app
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
    return handle_revoked(runtime().records, task_id, send_rollback)


@worker_ready.connect
def start_background_threads(sender: Any = None, **_: Any) -> None:
    rt = runtime()
    if warning := eviction_warning_at(rt.settings.redis_url):
        log.warning("txnbackup: %s", warning)
    nodes = _served_nodes(sender)
    presence = rt.presence()
    name = _worker_name(sender)
    reaper = ReaperThread(
        Reaper(rt, send_rollback, on_action=count_reaper_action, nodes=nodes, stop_task=_terminate),
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


def _terminate(task_id: str) -> None:
    """Stop a stalled drive's task, on whichever worker runs it, freeing its pool slot."""
    app.control.revoke(task_id, terminate=True)


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


@worker_shutdown.connect
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


@task_revoked.connect
def on_task_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        handle_revoked(runtime().records, task_id, send_rollback, terminated=bool(terminated))


@worker_ready.connect
def warn_about_trust(**_: Any) -> None:
    for warning in trust.warnings(runtime().settings):
        log.warning("txnbackup worker: %s", warning)
