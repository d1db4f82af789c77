"""Connecting to Redis, with one clear error when it cannot be reached.

A client rides out a short outage (a Redis restart, a failover, ``LOADING`` while it reads its
append-only file back): every command is retried on a connection error or timeout for about
OUTAGE_RIDE_OUT seconds before the error reaches the caller. Nothing is retried before the
first PING answered, so a Redis that is not there at all is reported at once.

Retrying is safe for almost every command txnbackup sends: reads, plain writes, SET with
the same value, the bitmap and finishing scripts (a repeat finds their work done). A command
whose reply was lost after Redis ran it can be repeated by the retry; for the phase claims
that means the repeat finds its own phase and reports "not won", which leaves a backup
without a lease for the reaper to finish (docs/brokers.md, "Redis restarts").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from txnbackup.errors import InvalidInput, ServiceUnavailable

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
CONNECT_TIMEOUT = 5  # seconds to open a TCP connection to Redis
COMMAND_TIMEOUT = 30  # seconds a command may take before its connection counts as broken
OUTAGE_RIDE_OUT = 30  # seconds of failed retries before a command's error is raised
BACKOFF_CAP = 1.0  # seconds between retries once backed off
BACKOFF_BASE = 0.05  # seconds before the first retry (then doubled up to the cap)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def outage_retry(ride_out: float = OUTAGE_RIDE_OUT) -> Retry:
    """Retries on connection errors and timeouts, backing off to BACKOFF_CAP, for ``ride_out``
    seconds of waiting in all (plus the time the failed attempts themselves take)."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE)
    retries, waited = 0, 0.0
    while waited < ride_out:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries, (RedisConnectionError, RedisTimeoutError, OSError))


def connect(url: str) -> Redis:
    """A client for ``url`` that has answered a PING (ServiceUnavailable otherwise)."""
    try:
        probe = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    except ValueError as exc:
        raise InvalidInput(f"Redis URL {redacted(url)!r}: {exc}") from None
    try:
        probe.ping()
    except REDIS_ERRORS as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)}", str(exc)) from None
    finally:
        probe.close()
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=30,
        retry=outage_retry(),
    )


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Turn a connection error or timeout that outlasted the retries into ServiceUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)}", str(exc)) from None
