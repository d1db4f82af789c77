"""Fleet fixtures: a real Redis broker and backend, real worker processes for two nodes.

The producer in the test process builds its Celery app from its Settings; the worker
processes read the same settings from their environment. Every test session uses its own
key prefix and broker key prefix, so several sessions can share one Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from redis import Redis

from tasks.producer import Producer
from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL
from tests.fleet import SampleVM, WorkerProcess, env_for_workers, new_vmid, start_worker
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker

SESSION_PREFIX = f"txnbackup-test:{uuid.uuid4().hex[:10]}:"
FLEET_ENV = {
    "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
    "TXNBACKUP_BROKER_URL": os.environ.get("TXNBACKUP_TEST_BROKER_URL", TEST_REDIS_URL),
    "TXNBACKUP_KEY_PREFIX": SESSION_PREFIX,
    "TXNBACKUP_BROKER_KEY_PREFIX": SESSION_PREFIX,
    "TXNBACKUP_STATE_TTL": "900",
    "TXNBACKUP_ROLLBACK_WAIT": "5",
    # The normal path is the authenticated one: every test fleet seals its records.
    "TXNBACKUP_SECRET": f"test-fleet-{uuid.uuid4().hex}",
}


def delete_keys(prefix: str) -> None:
    client = Redis.from_url(TEST_REDIS_URL)
    stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if stale:
        client.delete(*stale)
    client.close()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env(FLEET_ENV)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WorkerProcess]]:
    logdir = tmp_path_factory.mktemp("workers")
    env = env_for_workers(FLEET_ENV)
    workers: dict[str, WorkerProcess] = {}
    try:
        for node in ("default", "node2"):
            workers[node] = start_worker(node, env, logdir)
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()
        delete_keys(SESSION_PREFIX)


@pytest.fixture
def producer(settings: Settings, fleet: dict[str, WorkerProcess]) -> Producer:
    return Producer.from_settings(settings)


@pytest.fixture
def pipeline_repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", SMALL_CHUNK)


@pytest.fixture
def vm(tmp_path: Path, settings: Settings) -> SampleVM:
    root = tmp_path / "drives"
    root.mkdir()
    return SampleVM(new_vmid(), root, Tracker.from_settings(settings))


class Fleet:
    """A fleet of its own (own key and broker prefix): for tests that kill or starve workers."""

    def __init__(self, logdir: Path, overrides: dict[str, str]) -> None:
        self.prefix = f"txnbackup-test:{uuid.uuid4().hex[:10]}:"
        self.env = {
            **FLEET_ENV,
            "TXNBACKUP_KEY_PREFIX": self.prefix,
            "TXNBACKUP_BROKER_KEY_PREFIX": self.prefix,
            **overrides,
        }
        self.settings = Settings.from_env(self.env)
        self.logdir = logdir
        self.workers: dict[str, WorkerProcess] = {}
        self._producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer.from_settings(self.settings)
        return self._producer

    def start(
        self,
        node: str = "default",
        extra_env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> WorkerProcess:
        env = env_for_workers({**self.env, **(extra_env or {})})
        self.workers[node] = start_worker(node, env, self.logdir, args)
        return self.workers[node]

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        delete_keys(self.prefix)


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Fleet]]:
    """``make_fleet({"TXNBACKUP_LEASE_TTL": "3"})``: a fleet with those settings, no workers
    started yet (``fleet.start(node)``); stopped and its keys deleted after the test."""
    fleets: list[Fleet] = []

    def make(overrides: dict[str, str]) -> Fleet:
        logdir = tmp_path / f"fleet{len(fleets)}"
        logdir.mkdir()
        fleets.append(Fleet(logdir, overrides))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.stop()
