"""Which nodes have a live worker, kept in Redis by the workers themselves.

Every worker announces the nodes whose queues it consumes at start and on each reaper pass,
each entry with an expiry a few passes ahead; a worker that dies simply stops renewing. The
producer reads this (one round trip) instead of broadcasting ``inspect active_queues``, which
always waits its whole timeout because nobody knows how many workers will answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from redis import Redis

from txnbackup.keys import Keys


class Presence:
    def __init__(self, redis: Redis, keys: Keys, ttl: float) -> None:
        """``ttl``: seconds an announcement stays true without renewal."""
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def announce(self, worker: str, nodes: Iterable[str], now: float | None = None) -> None:
        """``worker`` consumes the queues of ``nodes`` until ``ttl`` from ``now``."""
        at = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            key = self.keys.serving(node)
            pipe.zadd(key, {worker: at + self.ttl})
            pipe.zremrangebyscore(key, "-inf", at)
            pipe.expire(key, int(self.ttl) + 1)
        pipe.execute()

    def withdraw(self, worker: str, nodes: Iterable[str]) -> None:
        """A worker shutting down stops answering for ``nodes`` at once."""
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.zrem(self.keys.serving(node), worker)
        pipe.execute()

    def unserved(self, nodes: Sequence[str], now: float | None = None) -> list[str]:
        """The nodes, in order and once each, with no worker announced as alive at ``now``."""
        at = time.time() if now is None else now
        unique = list(dict.fromkeys(nodes))
        pipe = self.redis.pipeline(transaction=False)
        for node in unique:
            pipe.zcount(self.keys.serving(node), f"({at}", "+inf")
        counts = pipe.execute()
        return [node for node, count in zip(unique, counts, strict=True) if not count]
