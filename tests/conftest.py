"""Shared fixtures: a real Redis (unique key prefix per test, cleaned up) and real files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from txnbackup.bitmap import BitmapBackend, RedisBitmaps
from txnbackup.keys import Keys
from txnbackup.memory_bitmaps import InMemoryBitmaps
from txnbackup.repository import Repository

pytest_plugins = ("tests.fleet_plugin",)

TEST_REDIS_URL = os.environ.get("TXNBACKUP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SMALL_CHUNK = 64 * 1024


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except RedisConnectionError as exc:
        pytest.fail(f"tests need a real Redis at {TEST_REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def keys(redis_client: Redis) -> Iterator[Keys]:
    k = Keys(f"txnbackup-test:{uuid.uuid4().hex[:12]}:")
    yield k
    stale = list(redis_client.scan_iter(match=k.pattern(), count=1000))
    if stale:
        redis_client.delete(*stale)


@pytest.fixture
def bitmaps(request: pytest.FixtureRequest) -> BitmapBackend:
    """The Redis keeper; the in-memory one for a test parametrized with ``KEEPERS``."""
    if getattr(request, "param", "redis") == "memory":
        return InMemoryBitmaps()
    redis_client, keys = request.getfixturevalue("redis_client"), request.getfixturevalue("keys")
    return RedisBitmaps(redis_client, keys, ttl=3600)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", SMALL_CHUNK)
