"""Connecting to Redis, with one clear error when it cannot be reached."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from txnbackup.errors import InvalidInput, ServiceUnavailable

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def connect(url: str) -> Redis:
    """A client for ``url`` that has answered a PING (ServiceUnavailable otherwise)."""
    try:
        client = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as exc:
        raise InvalidInput(f"Redis URL {redacted(url)!r}: {exc}") from None
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)}", str(exc)) from None
    return client
