"""The benchmark's fleet: a Redis, one worker process for the node ``bench``, a producer, and
on demand one worker per node of the multi-node VM.

Built from the demo's service helpers (txnbackup_cli.demo.services): the Redis that answers, else a
private one; keys under a prefix of the benchmark's own, deleted at the end. Each worker is
the real ``txnbackup worker`` with two pool processes; the ``bench`` worker also loads
bench.noop, so the bare canvas runs on the same broker and worker as the backups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.producer import Producer
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker
from txnbackup_cli.demo.services import (
    Worker,
    delete_keys,
    redis_for_demo,
    spawn,
    stop,
    wait_ready,
    worker_fleet,
    worker_program,
)

NODE = "bench"
NODES = ("bench-a", "bench-b")  # the multi-node VM's nodes, one worker each
CONCURRENCY = 2  # pool processes of the worker: one copies a drive, the other can commit
REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_PASSPHRASE = "txnbackup benchmark passphrase"  # the throw-away encrypted repositories


@dataclass(frozen=True)
class Fleet:
    settings: Settings
    producer: Producer
    tracker: Tracker
    worker: Worker
    redis_url: str
    private_redis: bool
    env: dict[str, str]  # the environment of a txnbackup command talking to this fleet


@contextmanager
def bench_fleet(workdir: Path, redis_url: str) -> Iterator[Fleet]:
    prefix = f"txnbackup-bench:{uuid.uuid4().hex[:10]}:"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_for_demo(redis_url, workdir))
        env = {
            "TXNBACKUP_REDIS_URL": redis.url,
            "TXNBACKUP_BROKER_URL": redis.url,
            "TXNBACKUP_KEY_PREFIX": prefix,
            "TXNBACKUP_BROKER_KEY_PREFIX": prefix,
            "TXNBACKUP_STATE_TTL": "3600",
            # Unlocks the encrypted case's repositories (bench.tools.TxnbackupEncrypted).
            "TXNBACKUP_PASSPHRASE": BENCH_PASSPHRASE,
            # and the plain cases' repositories, anywhere below the workdir, are plain on purpose.
            "TXNBACKUP_PLAIN_REPOSITORIES": str(workdir.resolve()),
        }
        settings = Settings.from_env(env)
        producer = Producer.from_settings(settings)
        if not redis.private:
            stack.callback(delete_keys, redis.url, prefix, [])
        worker = _start_worker(env, workdir)
        stack.callback(stop, worker.proc)
        wait_ready(producer.app, [worker])
        tracker = Tracker.from_settings(settings)
        full_env = {**os.environ, **env}
        yield Fleet(settings, producer, tracker, worker, redis.url, redis.private, full_env)


@contextmanager
def node_workers(fleet: Fleet, workdir: Path) -> Iterator[list[Worker]]:
    """One ``txnbackup worker --node N`` per node of ``NODES``, ready on entry, gone on exit."""
    with worker_fleet(NODES, fleet.env, workdir, fleet.producer.app) as workers:
        yield workers


def _start_worker(env: dict[str, str], workdir: Path) -> Worker:
    name = f"{NODE}@bench-{uuid.uuid4().hex[:6]}"
    argv = [str(worker_program()), "worker", "--node", NODE, "--name", name]
    argv += ["--concurrency", str(CONCURRENCY), "--without-gossip", "--without-mingle"]
    argv += ["--include", "bench.noop"]
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, **env, "PYTHONPATH": pythonpath}
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "worker.log"
    return Worker(NODE, name, log, spawn(argv, workdir, log, full_env))
