"""A redis-server of one test only, started with the options the test is about (a password,
a tiny maxmemory, an eviction policy), on a free port of 127.0.0.1, stopped at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from txnbackup_cli.demo.services import find_redis_server, free_port, spawn, stop

READY_TIMEOUT = 10.0  # seconds for the server to accept connections


@contextmanager
def private_redis(directory: Path, *options: str) -> Iterator[int]:
    """Start ``redis-server OPTIONS`` without persistence; yield its port. Skips the test when
    there is no redis-server to start."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server to start a private Redis with")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(directory), *options]
    proc = spawn(argv, directory, directory / "redis.log")
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _accepts(port):
            assert proc.poll() is None, (
                f"redis-server exited: {(directory / 'redis.log').read_text()}"
            )
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


def _accepts(port: int) -> bool:
    client = Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (AuthenticationError, ResponseError):  # NOAUTH: it answers, it wants a password
        return True
    except RedisConnectionError:
        return False
    finally:
        client.close()
    return True
