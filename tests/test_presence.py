"""Which nodes have a live worker: what `backup` warns about without asking every worker."""

from __future__ import annotations

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.presence import Presence


def test_an_announced_node_is_served_until_its_announcement_expires(
    redis_client: Redis, keys: Keys
) -> None:
    presence = Presence(redis_client, keys, ttl=10)
    presence.announce("w1@host", ["node1", "node2"], now=1000.0)
    assert presence.unserved(["node1", "node2", "node3"], now=1005.0) == ["node3"]
    assert presence.unserved(["node1", "node1"], now=1010.5) == ["node1"]


def test_a_renewed_announcement_keeps_the_node_served(redis_client: Redis, keys: Keys) -> None:
    presence = Presence(redis_client, keys, ttl=10)
    presence.announce("w1@host", ["node1"], now=1000.0)
    presence.announce("w1@host", ["node1"], now=1008.0)
    assert presence.unserved(["node1"], now=1015.0) == []


def test_a_node_stays_served_while_any_of_its_workers_lives(
    redis_client: Redis, keys: Keys
) -> None:
    presence = Presence(redis_client, keys, ttl=10)
    presence.announce("w1@host", ["node1"], now=1000.0)
    presence.announce("w2@host", ["node1"], now=1000.0)
    presence.withdraw("w1@host", ["node1"])
    assert presence.unserved(["node1"], now=1001.0) == []
    presence.withdraw("w2@host", ["node1"])
    assert presence.unserved(["node1"], now=1001.0) == ["node1"]
