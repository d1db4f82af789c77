"""The Celery app: JSON only, late acks with a prefetch of one, TTLs longer than any backup.

Nothing here makes an app at import: each process makes its one app at its edge, from its own
Settings (the producer in ``tasks.producer``, a worker in ``workers.app``). The tasks are
shared tasks (``tasks.begin``, ``tasks.copy``, ``tasks.finish``): they bind to that app.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from tasks.queues import CONTROL_QUEUE, node_queue
from txnbackup.drive import DEFAULT_NODE
from txnbackup.redisconn import COMMAND_TIMEOUT, CONNECT_TIMEOUT, OUTAGE_RIDE_OUT
from txnbackup.settings import Settings

# Sending a task (the next drive of a chain, a rollback, a submit) retries for about 7 s.
PUBLISH_RETRY_POLICY = {
    "max_retries": 6,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
BACKEND_RETRIES = OUTAGE_RIDE_OUT  # about one a second once backed off


def make_app(settings: Settings) -> Celery:
    app = Celery(
        "txnbackup",
        broker=settings.broker_url,
        backend=settings.redis_url,
        include=["tasks.begin", "tasks.copy", "tasks.finish"],
        # No Django fix-up: txnbackup is no Django project, and loading the fix-up imports
        # Celery's worker modules into every producer (the CLI's start-up, issue 16).
        fixups=[],
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_extended=True,
        result_expires=settings.state_ttl,
        task_default_queue=CONTROL_QUEUE,
        # A plain `celery -A tasks worker` serves the control queue and the default node.
        task_queues=[_queue(CONTROL_QUEUE), _queue(node_queue(DEFAULT_NODE))],
        broker_transport_options=_transport_options(settings),
        result_backend_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A worker rides out any broker outage (docs/brokers.md); its consumer survives
        # losing the connection while a late-acked task runs (workers.app sets it).
        broker_connection_max_retries=None,
        # A running drive goes on when the broker connection drops (its redelivered message
        # is ignored); cancelling it, Celery 6's default, would cancel the whole backup.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        # Storing a result or counting a chord part waits out a Redis restart.
        result_backend_always_retry=True,
        result_backend_max_retries=BACKEND_RETRIES,
        result_backend_max_sleep_between_retries_ms=1000,
        redis_socket_connect_timeout=CONNECT_TIMEOUT,
        redis_socket_timeout=COMMAND_TIMEOUT,
        redis_retry_on_timeout=True,
        redis_backend_health_check_interval=30,
        # The rollback errback goes on every header task too (the future Celery default).
        task_allow_error_cb_on_chord_header=True,
        worker_hijack_root_logger=True,
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker_key_prefix:
        # Several fleets (or test runs) can share one Redis broker without sharing queues.
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def _queue(name: str) -> Queue:
    """A queue with its own direct exchange, as Celery creates missing queues."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)
