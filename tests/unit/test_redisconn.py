"""What a worker says at start about the Redis it keeps dirty bitmaps in (issue 12)."""

from __future__ import annotations

from pathlib import Path

from redis import Redis

from tests.redis_server import private_redis
from txnbackup.redisconn import eviction_warning, eviction_warning_at


def test_a_redis_that_may_evict_keys_is_warned_about(tmp_path: Path) -> None:
    with private_redis(
        tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"
    ) as port:
        warning = eviction_warning(Redis(port=port))
        at_url = eviction_warning_at(f"redis://127.0.0.1:{port}/0")

    assert warning is not None and warning == at_url
    assert "allkeys-lru" in warning and "noeviction" in warning


def test_a_redis_that_never_evicts_is_not_warned_about(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "noeviction") as port:
        assert eviction_warning(Redis(port=port)) is None


def test_a_redis_whose_config_cannot_be_read_is_said_to_be_unchecked(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--rename-command", "CONFIG", "") as port:
        warning = eviction_warning(Redis(port=port))

    assert warning is not None and "cannot check" in warning and "noeviction" in warning


def test_an_unreachable_redis_gives_no_eviction_warning() -> None:
    assert eviction_warning_at("redis://127.0.0.1:1/0") is None
