"""The worker's message consumer: Celery's, made to survive a broker that goes away mid-task.

With the Redis transport, when the broker connection is lost while a late-acknowledged task
runs (every drive copy), Celery 5.7 / kombu 5.7 first drop the dead transport and then close
its channel, whose attempt to requeue the unacknowledged message meets the dropped transport
and raises AttributeError: the worker exits with "Unrecoverable error". Acking that task's
message when it ends, on the dead channel, raises the same error. This consumer lets the
reconnect go on and drops that ack. The message stays in the broker's unacked set, which
redelivers it after the visibility timeout; a redelivered drive, commit or rollback task is
harmless by design (docs/brokers.md).

It also asks RabbitMQ (3.11.15 and later) not to cancel a consumer whose task runs for hours:
its delivery acknowledgement timeout on every queue it consumes is the visibility timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)
CONSUMER_TIMEOUT_ARG = "x-consumer-timeout"  # RabbitMQ's per-consumer delivery timeout, in ms


class Consumer(CeleryConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeout_ms = int(self.app.conf.broker_transport_options["visibility_timeout"]) * 1000
        for queue in self.app.amqp.queues.consume_from.values():
            queue.consumer_arguments = {
                **(queue.consumer_arguments or {}),
                CONSUMER_TIMEOUT_ARG: timeout_ms,
            }

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning("broker connection lost (%r); reconnecting", exc, exc_info=True)
            self.connection = None

    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ack = _dropped_if_connection_lost(p)
        return super().call_soon_ack(ack, *args, **kwargs)  # type: ignore[misc]  # not in the stubs


def _dropped_if_connection_lost(ack: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return ack(*args, **kwargs)
        except AttributeError:
            log.warning(
                "cannot ack a task that came on a lost broker connection; the broker "
                "delivers it again after the visibility timeout, harmlessly"
            )
            return None

    return call
