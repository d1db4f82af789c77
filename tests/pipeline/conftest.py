"""Pipeline fixtures: a real Redis broker and backend, real worker processes for two nodes.

The Celery app is configured from the environment when `tasks` is first imported, so the
environment is set here, before that import, and checked right after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL

SESSION_PREFIX = f"txnbackup-pipeline:{uuid.uuid4().hex[:10]}:"
PIPELINE_ENV = {
    "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
    "TXNBACKUP_BROKER_URL": os.environ.get("TXNBACKUP_TEST_BROKER_URL", TEST_REDIS_URL),
    "TXNBACKUP_KEY_PREFIX": SESSION_PREFIX,
    "TXNBACKUP_BROKER_KEY_PREFIX": SESSION_PREFIX,
    "TXNBACKUP_STATE_TTL": "900",
    "TXNBACKUP_ROLLBACK_WAIT": "5",
}
os.environ.update(PIPELINE_ENV)

from tasks.celeryapp import app  # noqa: E402
from tasks.producer import Producer  # noqa: E402
from tests.pipeline.fleet import (  # noqa: E402
    SampleVM,
    WorkerProcess,
    env_for_workers,
    new_vmid,
    start_worker,
)
from txnbackup.repository import Repository  # noqa: E402
from txnbackup.settings import Settings  # noqa: E402
from txnbackup.tracker import Tracker  # noqa: E402

if app.conf.broker_url != PIPELINE_ENV["TXNBACKUP_BROKER_URL"]:
    raise RuntimeError("tasks was imported before the pipeline test environment was set")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env(PIPELINE_ENV)


@pytest.fixture(scope="session")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> Iterator[dict[str, WorkerProcess]]:
    logdir = tmp_path_factory.mktemp("workers")
    env = env_for_workers(PIPELINE_ENV)
    workers: dict[str, WorkerProcess] = {}
    try:
        for node in ("default", "node2"):
            workers[node] = start_worker(node, env, logdir)
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()
        client = Redis.from_url(TEST_REDIS_URL)
        stale = list(client.scan_iter(match=f"{SESSION_PREFIX}*", count=1000))
        if stale:
            client.delete(*stale)


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
