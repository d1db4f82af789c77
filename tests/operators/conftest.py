"""The operators' fleet: two workers serving metrics and a real Flower, with prefixes of its own.

Its own key and broker prefix keep its tasks, events and metric counts apart from every other
fleet on the same Redis, in this session or another. Started once for the session; every
process is stopped and every key deleted at the end.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL
from tests.fleet import SampleVM, new_vmid
from tests.fleet_plugin import delete_keys
from tests.operators.fleet import (
    FlowerProcess,
    MetricsWorker,
    Samples,
    env_with,
    start_flower,
    start_metrics_worker,
    stop_process,
)
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker

OPS_PREFIX = f"txnbackup-ops:{uuid.uuid4().hex[:10]}:"
OPS_ENV = {
    "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
    "TXNBACKUP_BROKER_URL": TEST_REDIS_URL,
    "TXNBACKUP_KEY_PREFIX": OPS_PREFIX,
    "TXNBACKUP_BROKER_KEY_PREFIX": OPS_PREFIX,
    "TXNBACKUP_STATE_TTL": "900",
    "TXNBACKUP_ROLLBACK_WAIT": "5",
}
STALE_COUNT = 1000  # what an earlier run of the default worker left in its metrics directory


@dataclass
class OpsFleet:
    env: dict[str, str]
    settings: Settings
    workers: dict[str, MetricsWorker]
    flower: FlowerProcess

    def scrape(self) -> Samples:
        """What Prometheus would collect from every worker of the fleet."""
        return [s for w in self.workers.values() for s in w.scrape()]


def leave_stale_metrics(directory: Path) -> None:
    """Metric files as a crashed earlier run of the worker would have left them."""
    directory.mkdir(parents=True)
    code = (
        "from prometheus_client import Counter\n"
        "Counter('txnbackup_backups', '', ['outcome']).labels('done')"
        f".inc({STALE_COUNT})\n"
    )
    env = env_with({"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert list(directory.glob("counter_*.db"))


@pytest.fixture(scope="session")
def ops_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsFleet]:
    logdir = tmp_path_factory.mktemp("operators")
    env = env_with(OPS_ENV)
    leave_stale_metrics(logdir / "metrics-default")
    workers: dict[str, MetricsWorker] = {}
    flower: FlowerProcess | None = None
    try:
        for node in ("default", "node2"):
            workers[node] = start_metrics_worker(node, env, logdir)
        flower = start_flower(env, logdir)
        yield OpsFleet(env, Settings.from_env(OPS_ENV), workers, flower)
    finally:
        if flower is not None:
            stop_process(flower.proc)
        for w in workers.values():
            w.worker.stop()
        delete_keys(OPS_PREFIX)


@pytest.fixture
def ops_producer(ops_fleet: OpsFleet) -> Producer:
    return Producer.from_settings(ops_fleet.settings)


@pytest.fixture
def ops_repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", SMALL_CHUNK)


@pytest.fixture
def ops_vm(tmp_path: Path, ops_fleet: OpsFleet) -> SampleVM:
    root = tmp_path / "drives"
    root.mkdir()
    return SampleVM(new_vmid(), root, Tracker.from_settings(ops_fleet.settings))
