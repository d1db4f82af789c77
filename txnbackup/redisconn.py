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

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from txnbackup.errors import (
    InvalidInput,
    RedisAuthFailed,
    RedisPermissionDenied,
    RedisTlsFailed,
    ServiceUnavailable,
    TxnBackupError,
)

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
CONNECT_TIMEOUT = 5  # seconds to open a TCP connection to Redis
COMMAND_TIMEOUT = 30  # seconds a command may take before its connection counts as broken
OUTAGE_RIDE_OUT = 30  # seconds of failed retries before a command's error is raised
BACKOFF_CAP = 1.0  # seconds between retries once backed off
BACKOFF_BASE = 0.05  # seconds before the first retry (then doubled up to the cap)
FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
CERT_REQS_HINT = "ssl_cert_reqs takes none, optional or required"


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
    """A client for ``url`` that has answered a PING; otherwise the error that says why not:
    a bad URL or option, failed authentication, TLS, or Redis not reachable."""
    _check_url_files(url)
    try:
        probe = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    except ValueError as exc:
        raise InvalidInput(f"Redis URL {redacted(url)!r}: {exc}") from None
    try:
        probe.ping()
    except (RedisError, OSError) as exc:
        raise connection_error(url, exc) from None
    finally:
        probe.close()
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=30,
        retry=outage_retry(),
    )


def connection_error(url: str, exc: RedisError | OSError) -> TxnBackupError:
    """The error a user should see when talking to Redis at ``url`` failed with ``exc``."""
    where = redacted(url)
    if isinstance(exc, AuthenticationError):
        has_password = urlsplit(url).password is not None
        reason = str(exc) if has_password else "Redis wants a password and the URL gives none"
        return RedisAuthFailed(where, reason)
    if isinstance(exc, NoPermissionError):
        return RedisPermissionDenied(where, str(exc))
    tls = _tls_failure(exc)
    if tls and urlsplit(url).scheme == "rediss":
        return RedisTlsFailed(where, tls)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return ServiceUnavailable(f"Redis at {where}", str(exc))
    # Not a failure to connect: redis-py rejecting an option of the URL when it connects.
    hint = f" ({CERT_REQS_HINT})" if "Certificate Requirements" in str(exc) else ""
    return InvalidInput(f"Redis URL {where!r}: {exc}{hint}")


def _tls_failure(exc: BaseException) -> str | None:
    """What went wrong in the TLS handshake under ``exc``, if that is what failed."""
    cause = exc.__context__ or exc
    if isinstance(cause, ssl.SSLError) or "handshake" in str(cause):
        return f"{cause} (is that port serving TLS, and is its certificate trusted?)"
    return None


def _check_url_files(url: str) -> None:
    """redis-py reports a missing certificate file as "Error 2 connecting", without its name."""
    for option, values in parse_qs(urlsplit(url).query).items():
        if option in FILE_OPTIONS and not os.path.exists(values[-1]):
            raise InvalidInput(f"Redis URL {redacted(url)!r}: {option}={values[-1]} does not exist")


def eviction_warning(redis: Redis) -> str | None:
    """Why this Redis may drop keys under memory pressure (a bits key evicted is a drive read
    in full), or None when its maxmemory-policy is noeviction."""
    try:
        value = redis.config_get("maxmemory-policy").get("maxmemory-policy")
    except ResponseError as exc:  # CONFIG renamed away or denied to this user
        return (
            f"cannot check Redis's maxmemory-policy ({exc}): make sure it is noeviction, or "
            "dirty bitmaps may be evicted and backups read whole drives"
        )
    policy = text(value) if value else ""
    if policy == "noeviction":
        return None
    return (
        f"Redis's maxmemory-policy is {policy or 'unknown'}: it may evict dirty bitmaps under "
        "memory pressure (each such drive is then read in full); set maxmemory-policy "
        "noeviction (README, Redis settings)"
    )


def eviction_warning_at(url: str) -> str | None:
    """``eviction_warning`` of the Redis at ``url``; None if it cannot be reached (whoever
    uses it reports that)."""
    try:
        client = connect(url)
    except TxnBackupError:
        return None
    try:
        return eviction_warning(client)
    except (RedisError, OSError):
        return None
    finally:
        client.close()


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients made without ``decode_responses`` return bytes)."""
    return value.decode() if isinstance(value, bytes) else value


# Delete a key only while it holds ARGV[1]: releasing a lock or a lease its owner still holds.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COMPARE_AND_EXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Turn a connection error or timeout that outlasted the retries into ServiceUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)}", str(exc)) from None
